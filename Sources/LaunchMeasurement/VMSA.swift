
/// The VMM whose initial vCPU state an SNP measurement assumes. They differ
/// in a few VMSA registers and in how some metadata sections are measured.
public enum SNPVMMType: String, Sendable, CaseIterable {
    case qemu = "QEMU"
    case ec2
    case gce
}

/// The initial VMSA of an SEV-SNP vCPU as each VMM type launches it.
///
/// The register values are sev-snp-measure's `vmsa.py` `build_save_area`
/// (`snp-launch-digest.md` §6): the x86 reset state KVM gives a vCPU, with
/// EFER.SVME and CR4.MCE that KVM sets, and the per-VMM differences. The
/// page itself is laid out by `SNPVMSA` (APM vol. 2 table B-4).
public enum SNPInitialVMSA {
    /// The BSP starts at the reset vector.
    public static let bspEIP: UInt32 = 0xFFFF_FFF0

    /// The 4096-byte VMSA of a vCPU that starts at `eip`.
    ///
    /// - Parameters:
    ///   - eip: `bspEIP` for vCPU 0, the SEV_ES_RESET_BLOCK value for the others.
    ///   - sevFeatures: the SEV_FEATURES word (`--guest-features`), copied verbatim.
    ///   - vcpuSignature: CPUID Fn0000_0001_EAX, which QEMU puts in RDX.
    public static func page(eip: UInt32, sevFeatures: UInt64, vcpuSignature: UInt64, vmmType: SNPVMMType) -> [UInt8] {
        // EC2's BSP code segment is not yet accessed; EC2 and GCE report a
        // fixed RDX and leave MXCSR and FCW zero; GCE overwrites G_PAT.
        var csAttributes: UInt16 = 0x9B, ssAttributes: UInt16 = 0x93, trAttributes: UInt16 = 0x8B
        var rdx = vcpuSignature, mxcsr: UInt32 = 0x1F80, fcw: UInt16 = 0x37F
        var gPAT: UInt64 = 0x0007_0406_0007_0406 // the PAT reset value, APM vol. 2 §A.3
        switch vmmType {
        case .qemu:
            break
        case .ec2:
            if eip == bspEIP { csAttributes = 0x9A }
            (ssAttributes, trAttributes) = (0x92, 0x83)
            (rdx, mxcsr, fcw) = (0x600, 0, 0)
        case .gce:
            gPAT = 0x0007_0106
            (rdx, mxcsr, fcw) = (0x600, 0, 0)
        }
        var vmsa = SNPVMSA()
        let flat = { (attributes: UInt16) in VMSASegment(attributes: attributes, limit: 0xFFFF) }
        (vmsa.es, vmsa.ds, vmsa.fs, vmsa.gs) = (flat(0x93), flat(0x93), flat(0x93), flat(0x93))
        vmsa.cs = VMSASegment(selector: 0xF000, attributes: csAttributes, limit: 0xFFFF, base: UInt64(eip & 0xFFFF_0000))
        vmsa.ss = flat(ssAttributes)
        vmsa.ldtr = flat(0x82)
        vmsa.tr = flat(trAttributes)
        vmsa.gdtr.limit = 0xFFFF
        vmsa.idtr.limit = 0xFFFF
        vmsa.efer = 0x1000 // EFER.SVME, which KVM sets
        vmsa.cr4 = 0x40    // CR4.MCE, which KVM sets
        vmsa.cr0 = 0x10    // CR0.ET
        vmsa.rflags = 0x2
        vmsa.rip = UInt64(eip & 0xFFFF)
        vmsa.rdx = rdx
        vmsa.sevFeatures = sevFeatures
        vmsa.pat = gPAT
        vmsa.mxcsr = mxcsr
        vmsa.x87ControlWord = fcw
        return vmsa.page
    }
}
