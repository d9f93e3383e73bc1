import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import Populate

/// Where snpvmm places the pages an SEV-SNP guest kernel finds through its
/// confidential computing blob: the CPUID table, which the firmware checks
/// at launch, and the secrets page, which the firmware fills. Linux stops
/// an SNP guest without them (snp_init, snp_setup_cpuid_table).
public enum SNPGuestPages {
    /// The plan regions: the CPUID page (its table is written at launch,
    /// from the CPUID the vCPUs get), the secrets page and the CC blob.
    static func regions() -> [PlanRegion] {
        [
            PlanRegion(name: "SNP CPUID table", range: GuestRange(start: Layout.snpCPUIDPage, size: pageSize),
                       contents: .zeros, kind: .cpuid),
            PlanRegion(name: "SNP secrets page", range: GuestRange(start: Layout.snpSecretsPage, size: pageSize),
                       contents: .zeros, kind: .secrets),
            PlanRegion(name: "SNP CC blob", range: GuestRange(start: Layout.snpCCBlob, size: pageSize),
                       contents: .bytes(SNPCCBlob.bytes(secretsPage: Layout.snpSecretsPage, cpuidPage: Layout.snpCPUIDPage))),
        ]
    }
}
