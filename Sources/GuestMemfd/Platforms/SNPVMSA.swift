import CKVMHeaders

/// The SEV-ES/SNP VM save area (VMSA) of a vCPU: the page KVM fills from the
/// vCPU's registers at launch finish (`sev_es_sync_vmsa`) and the firmware
/// measures as a VMSA page.
///
/// Layout: `struct sev_es_save_area` (arch/x86/include/asm/svm.h), which
/// follows the AMD APM vol. 2, appendix B, "VMSA layout, state save area".
/// Fields not listed here stay zero.
public struct SNPVMSA: Sendable {
    public var regs: kvm_regs
    public var sregs: kvm_sregs
    /// `sev_features`, from KVM_SEV_INIT2's `vmsa_features`.
    public var sevFeatures: UInt64
    public var xcr0: UInt64 = 1
    /// Reset values of registers kvm_regs/kvm_sregs do not carry.
    public var dr6: UInt64 = 0xFFFF_0FF0
    public var dr7: UInt64 = 0x400
    public var pat: UInt64 = 0x0007_0406_0007_0406
    public var mxcsr: UInt32 = 0x1F80
    public var x87ControlWord: UInt16 = 0x37F

    public init(regs: kvm_regs, sregs: kvm_sregs, sevFeatures: UInt64) {
        self.regs = regs
        self.sregs = sregs
        self.sevFeatures = sevFeatures
    }

    /// Byte offsets in the save area.
    enum Offset {
        static let es = 0x000, cs = 0x010, ss = 0x020, ds = 0x030, fs = 0x040, gs = 0x050
        static let gdtr = 0x060, ldtr = 0x070, idtr = 0x080, tr = 0x090
        static let efer = 0x0D0, cr4 = 0x148, cr3 = 0x150, cr0 = 0x158, dr7 = 0x160, dr6 = 0x168
        static let rflags = 0x170, rip = 0x178, rsp = 0x1D8, rax = 0x1F8, cr2 = 0x240, gPAT = 0x268
        static let rcx = 0x308, rdx = 0x310, rbx = 0x318, rbp = 0x328, rsi = 0x330, rdi = 0x338, r8 = 0x340
        static let sevFeatures = 0x3B0, xcr0 = 0x3E8, mxcsr = 0x408, x87FCW = 0x410
    }

    /// The 4096-byte page.
    public var page: [UInt8] {
        var page = [UInt8](repeating: 0, count: Int(pageSize))
        page.withUnsafeMutableBytes { raw in
            func put<T>(_ value: T, _ offset: Int) { raw.storeBytes(of: value, toByteOffset: offset, as: T.self) }
            func segment(_ segment: kvm_segment, _ offset: Int) {
                // vmcb_seg: selector u16, attrib u16 (the descriptor's type..g bits packed), limit u32, base u64.
                let attrib = UInt16(segment.type & 0xF) | UInt16(segment.s & 1) << 4 | UInt16(segment.dpl & 3) << 5
                    | UInt16(segment.present & 1) << 7 | UInt16(segment.avl & 1) << 8 | UInt16(segment.l & 1) << 9
                    | UInt16(segment.db & 1) << 10 | UInt16(segment.g & 1) << 11
                put(segment.selector, offset)
                put(attrib, offset + 2)
                put(segment.limit, offset + 4)
                put(segment.base, offset + 8)
            }
            func table(_ table: kvm_dtable, _ offset: Int) {
                put(UInt32(table.limit), offset + 4)
                put(table.base, offset + 8)
            }
            segment(sregs.es, Offset.es)
            segment(sregs.cs, Offset.cs)
            segment(sregs.ss, Offset.ss)
            segment(sregs.ds, Offset.ds)
            segment(sregs.fs, Offset.fs)
            segment(sregs.gs, Offset.gs)
            table(sregs.gdt, Offset.gdtr)
            segment(sregs.ldt, Offset.ldtr)
            table(sregs.idt, Offset.idtr)
            segment(sregs.tr, Offset.tr)
            put(sregs.efer, Offset.efer)
            put(sregs.cr4, Offset.cr4)
            put(sregs.cr3, Offset.cr3)
            put(sregs.cr0, Offset.cr0)
            put(sregs.cr2, Offset.cr2)
            put(dr7, Offset.dr7)
            put(dr6, Offset.dr6)
            put(regs.rflags, Offset.rflags)
            put(regs.rip, Offset.rip)
            put(regs.rsp, Offset.rsp)
            put(regs.rax, Offset.rax)
            put(pat, Offset.gPAT)
            put(regs.rcx, Offset.rcx)
            put(regs.rdx, Offset.rdx)
            put(regs.rbx, Offset.rbx)
            put(regs.rbp, Offset.rbp)
            put(regs.rsi, Offset.rsi)
            put(regs.rdi, Offset.rdi)
            for (index, value) in [regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15].enumerated() {
                put(value, Offset.r8 + 8 * index)
            }
            put(sevFeatures, Offset.sevFeatures)
            put(xcr0, Offset.xcr0)
            put(mxcsr, Offset.mxcsr)
            put(x87ControlWord, Offset.x87FCW)
        }
        return page
    }
}

/// One SNP launch-digest step (SNP firmware ABI, PAGE_INFO structure):
/// `LD' = SHA-384(PAGE_INFO)`, where PAGE_INFO holds the current digest, the
/// page's SHA-384 for NORMAL and VMSA pages (zeros for the other types), the
/// structure's length 0x70, the page type and the GPA.
public func snpPageInfoDigest(current: SHA384Digest, contentsHash: SHA384Digest?, type: SNPPageType,
                              gpa: UInt64) -> SHA384Digest {
    var info = [UInt8](repeating: 0, count: 0x70)
    info.replaceSubrange(0..<48, with: current.bytes)
    if let contentsHash { info.replaceSubrange(0x30..<0x60, with: contentsHash.bytes) }
    info[0x60] = 0x70
    info[0x62] = type.rawValue
    withUnsafeBytes(of: gpa.littleEndian) { info.replaceSubrange(0x68..<0x70, with: $0) }
    return SHA384.hash(info)
}
