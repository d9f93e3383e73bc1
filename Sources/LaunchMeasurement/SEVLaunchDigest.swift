import CLibcrypto

/// The launch digest of a legacy SEV or SEV-ES guest: the value LAUNCH_MEASURE
/// signs (its HMAC covers it with the platform's nonce). The firmware hashes,
/// with SHA-256, every byte LAUNCH_UPDATE_DATA encrypts, in order, and for
/// SEV-ES then every VMSA LAUNCH_UPDATE_VMSA encrypts (AMD SEV API,
/// LAUNCH_UPDATE_DATA, LAUNCH_UPDATE_VMSA and LAUNCH_MEASURE: GCTX.LD).
///
/// For QEMU's layout (sev-snp-measure `sev_calc_launch_digest` and
/// `seves_calc_launch_digest`): the whole firmware image, then, for a
/// measured direct boot, the padded kernel-hashes table alone (QEMU encrypts
/// the table, not the page holding it), then one VMSA per vCPU.
public enum SEVLaunchDigest {
    public static func digest(firmware: [UInt8], kernelHashes: SEVKernelHashes?, vmsas: [[UInt8]]) -> [UInt8] {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else {
            fatalError("libcrypto could not set up a SHA-256 context (out of memory)")
        }
        defer { EVP_MD_CTX_free(context) }
        for part in [firmware, kernelHashes?.table ?? []] + vmsas {
            part.withUnsafeBytes { if let base = $0.baseAddress, $0.count > 0 { EVP_DigestUpdate(context, base, $0.count) } }
        }
        var output = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &output, &length)
        return output
    }
}
