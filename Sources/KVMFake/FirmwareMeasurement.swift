import CKVMHeaders
import CLibcrypto

// The fake firmware's own measurement code. It is written from the specs
// and the kernel apart from the LaunchMeasurement library and shares no
// function with it, so that a test comparing what the fake firmware
// measured with what Populate expected catches a layout error on either
// side. SHA-2 itself comes from libcrypto, called here directly.

/// One-shot SHA-2 digests through libcrypto's EVP interface.
enum FirmwareHash {
    case sha256, sha384, sha512

    func digest(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let md: OpaquePointer? = switch self {
        case .sha256: EVP_sha256()
        case .sha384: EVP_sha384()
        case .sha512: EVP_sha512()
        }
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_Digest(bytes.baseAddress, bytes.count, &output, &length, md, nil) == 1 else {
            fatalError("libcrypto could not compute a digest")
        }
        return Array(output.prefix(Int(length)))
    }

    func digest(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { digest($0) } }
}

/// A SHA-384 over a message given in parts: the TDX module's MRTD, which
/// TDH.MEM.PAGE.ADD and TDH.MR.EXTEND update and TDH.MR.FINALIZE closes.
final class FirmwareSHA384Stream: @unchecked Sendable {
    private let context: OpaquePointer

    init() {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex(context, EVP_sha384(), nil) == 1 else {
            fatalError("libcrypto could not set up a SHA-384 context")
        }
        self.context = context
    }

    deinit { EVP_MD_CTX_free(context) }

    func update(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress, bytes.count > 0 { EVP_DigestUpdate(context, base, bytes.count) }
    }

    func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The digest; the stream takes no more input afterwards.
    func finish() -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 48)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &output, &length)
        return output
    }
}

/// The SEV-SNP firmware's launch-digest step (SEV-SNP firmware ABI
/// specification, SNP_LAUNCH_UPDATE, "PAGE_INFO structure"): the new digest
/// is SHA-384 of the 0x70-byte PAGE_INFO
///
///     0x00 DIGEST_CUR[48]   the digest so far
///     0x30 CONTENTS[48]     SHA-384 of the page for NORMAL and VMSA, else zero
///     0x60 LENGTH (u16)     0x70
///     0x62 PAGE_TYPE (u8)
///     0x63 IMI_PAGE, VMPL3..VMPL1 permissions (u8 each): zero at launch
///     0x68 GPA (u64)
enum FirmwarePageInfo {
    static func extend(_ digest: [UInt8], contents: [UInt8]?, pageType: UInt8, gpa: UInt64) -> [UInt8] {
        var info = [UInt8](repeating: 0, count: 0x70)
        for index in 0..<48 { info[index] = digest[index] }
        if let contents { for index in 0..<48 { info[0x30 + index] = contents[index] } }
        info[0x60] = 0x70
        info[0x61] = 0x00
        info[0x62] = pageType
        var gpa = gpa
        for index in 0..<8 {
            info[0x68 + index] = UInt8(truncatingIfNeeded: gpa)
            gpa >>= 8
        }
        return FirmwareHash.sha384.digest(info)
    }
}

/// The VMSA KVM builds for a vCPU at KVM_SEV_SNP_LAUNCH_FINISH
/// (`sev_es_sync_vmsa`, arch/x86/kvm/svm/sev.c): the VMCB save area as
/// KVM_SET_SREGS left it (with the VMCB's own adjustments of EFER, CR4, CR0), the general registers and RIP, XCR0, DR6, DR7,
/// `sev_features` from KVM_SEV_INIT2, and the x87/SSE control words of the
/// vCPU's FPU state. Offsets are those of `struct sev_es_save_area`
/// (arch/x86/include/asm/svm.h).
enum FirmwareVMSA {
    /// The fake's vCPUs keep only kvm_regs and kvm_sregs; the rest are their reset values.
    static func page(regs: kvm_regs, sregs: kvm_sregs, sevFeatures: UInt64) -> [UInt8] {
        var area = [UInt8](repeating: 0, count: 4096)
        func store(_ value: UInt64, at offset: Int, bytes: Int = 8) {
            for index in 0..<bytes { area[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
        }
        // struct vmcb_seg { u16 selector; u16 attrib; u32 limit; u64 base; }, with
        // attrib packed as svm_set_segment does: type, s, dpl, p, avl, l, db, g.
        func store(segment: kvm_segment, at offset: Int) {
            var attrib = UInt64(segment.type) & 0xF
            attrib |= (UInt64(segment.s) & 1) << 4
            attrib |= (UInt64(segment.dpl) & 3) << 5
            attrib |= (UInt64(segment.present) & 1) << 7
            attrib |= (UInt64(segment.avl) & 1) << 8
            attrib |= (UInt64(segment.l) & 1) << 9
            attrib |= (UInt64(segment.db) & 1) << 10
            attrib |= (UInt64(segment.g) & 1) << 11
            store(UInt64(segment.selector), at: offset, bytes: 2)
            store(attrib, at: offset + 2, bytes: 2)
            store(UInt64(segment.limit), at: offset + 4, bytes: 4)
            store(segment.base, at: offset + 8)
        }
        store(segment: sregs.es, at: 0x00)
        store(segment: sregs.cs, at: 0x10)
        store(segment: sregs.ss, at: 0x20)
        store(segment: sregs.ds, at: 0x30)
        store(segment: sregs.fs, at: 0x40)
        store(segment: sregs.gs, at: 0x50)
        store(UInt64(sregs.gdt.limit), at: 0x64, bytes: 4)
        store(sregs.gdt.base, at: 0x68)
        store(segment: sregs.ldt, at: 0x70)
        store(UInt64(sregs.idt.limit), at: 0x84, bytes: 4)
        store(sregs.idt.base, at: 0x88)
        store(segment: sregs.tr, at: 0x90)
        // The VMCB's copies: svm_set_efer adds SVME, svm_set_cr4 adds MCE (the
        // host has it), svm_set_cr0 clears CD and NW (KVM_X86_QUIRK_CD_NW_CLEARED).
        store(sregs.efer | 0x1000, at: 0xD0)
        store(sregs.cr4 | 0x40, at: 0x148)
        store(sregs.cr3, at: 0x150)
        store(sregs.cr0 & ~UInt64(0x6000_0000), at: 0x158)
        store(0x400, at: 0x160)              // DR7 at reset
        store(0xFFFF_0FF0, at: 0x168)        // DR6 at reset
        store(regs.rflags, at: 0x170)
        store(regs.rip, at: 0x178)
        store(regs.rsp, at: 0x1D8)
        store(regs.rax, at: 0x1F8)
        store(sregs.cr2, at: 0x240)
        store(0x0007_0406_0007_0406, at: 0x268) // G_PAT at reset
        store(regs.rcx, at: 0x308)
        store(regs.rdx, at: 0x310)
        store(regs.rbx, at: 0x318)
        store(regs.rbp, at: 0x328)
        store(regs.rsi, at: 0x330)
        store(regs.rdi, at: 0x338)
        let high = [regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15]
        for (index, value) in high.enumerated() { store(value, at: 0x340 + 8 * index) }
        store(sevFeatures, at: 0x3B0)
        store(1, at: 0x3E8)                  // XCR0: x87 only at reset
        store(0x1F80, at: 0x408, bytes: 4)   // MXCSR at reset
        store(0x37F, at: 0x410, bytes: 2)    // x87 FCW at reset
        return area
    }
}
