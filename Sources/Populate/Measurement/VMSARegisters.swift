import CKVMHeaders
import GuestMemfd
import LaunchMeasurement

extension SNPVMSA {
    /// The VMSA KVM builds from a vCPU's registers at launch finish
    /// (`sev_es_sync_vmsa`, which copies the VMCB save area): segments,
    /// control registers and EFER from KVM_SET_SREGS as the VMCB holds them
    /// (EFER with SVME, `svm_set_efer`; CR4 with MCE, `svm_set_cr4`; CR0
    /// without CD and NW, `svm_set_cr0` under the default
    /// KVM_X86_QUIRK_CD_NW_CLEARED), the general registers, RIP and RFLAGS
    /// from KVM_SET_REGS, and `sev_features` from KVM_SEV_INIT2. The rest
    /// keep their reset values.
    public init(regs: kvm_regs, sregs: kvm_sregs, sevFeatures: UInt64) {
        self.init()
        (es, cs, ss, ds) = (VMSASegment(sregs.es), VMSASegment(sregs.cs), VMSASegment(sregs.ss), VMSASegment(sregs.ds))
        (fs, gs, ldtr, tr) = (VMSASegment(sregs.fs), VMSASegment(sregs.gs), VMSASegment(sregs.ldt), VMSASegment(sregs.tr))
        gdtr = VMSASegment(limit: UInt32(sregs.gdt.limit), base: sregs.gdt.base)
        idtr = VMSASegment(limit: UInt32(sregs.idt.limit), base: sregs.idt.base)
        (efer, cr0, cr2, cr3, cr4) = (sregs.efer | Self.eferSVME, sregs.cr0 & ~Self.cr0CacheDisable, sregs.cr2, sregs.cr3,
                                      sregs.cr4 | Self.cr4MCE)
        (rflags, rip, rsp, rbp) = (regs.rflags, regs.rip, regs.rsp, regs.rbp)
        (rax, rbx, rcx, rdx, rsi, rdi) = (regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi)
        r8to15 = [regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15]
        self.sevFeatures = sevFeatures
    }
}

extension SNPVMSA {
    /// EFER.SVME, which an SVM guest's VMCB always has.
    static let eferSVME: UInt64 = 1 << 12
    /// CR4.MCE, which KVM keeps set in the VMCB on hosts with machine checks.
    static let cr4MCE: UInt64 = 1 << 6
    /// CR0.CD and CR0.NW, which KVM clears in the VMCB.
    static let cr0CacheDisable: UInt64 = 1 << 30 | 1 << 29
}

extension VMSASegment {
    /// A KVM segment with its descriptor bits packed as `vmcb_seg.attrib`.
    public init(_ segment: kvm_segment) {
        let attributes = UInt16(segment.type & 0xF) | UInt16(segment.s & 1) << 4 | UInt16(segment.dpl & 3) << 5
            | UInt16(segment.present & 1) << 7 | UInt16(segment.avl & 1) << 8 | UInt16(segment.l & 1) << 9
            | UInt16(segment.db & 1) << 10 | UInt16(segment.g & 1) << 11
        self.init(selector: segment.selector, attributes: attributes, limit: segment.limit, base: segment.base)
    }
}

extension SNPVMSA {
    /// The vCPU state from which KVM would build exactly `page` at launch
    /// finish: the registers and segments `init(regs:sregs:sevFeatures:)`
    /// reads, decoded from the save area. Nil when the page holds state KVM
    /// does not set from them (another field non-zero, EFER without SVME,
    /// CR4 without MCE, CR0 with CD or NW), as the launch would then measure
    /// a different VMSA; `firstDifference` names the first such byte.
    public static func vcpuState(of page: [UInt8]) -> (regs: kvm_regs, sregs: kvm_sregs, sevFeatures: UInt64, firstDifference: Int?) {
        func u64(_ offset: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(page[offset + $1]) << (8 * $1) } }
        func u32(_ offset: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(page[offset + $1]) << (8 * $1) } }
        func u16(_ offset: Int) -> UInt16 { UInt16(page[offset]) | UInt16(page[offset + 1]) << 8 }
        func segment(_ offset: Int) -> kvm_segment {
            var segment = kvm_segment()
            let attributes = u16(offset + 2)
            segment.selector = u16(offset)
            segment.limit = u32(offset + 4)
            segment.base = u64(offset + 8)
            segment.type = UInt8(attributes & 0xF)
            segment.s = UInt8(attributes >> 4 & 1)
            segment.dpl = UInt8(attributes >> 5 & 3)
            segment.present = UInt8(attributes >> 7 & 1)
            segment.avl = UInt8(attributes >> 8 & 1)
            segment.l = UInt8(attributes >> 9 & 1)
            segment.db = UInt8(attributes >> 10 & 1)
            segment.g = UInt8(attributes >> 11 & 1)
            return segment
        }
        var sregs = kvm_sregs()
        (sregs.es, sregs.cs, sregs.ss, sregs.ds) = (segment(Offset.es), segment(Offset.cs), segment(Offset.ss), segment(Offset.ds))
        (sregs.fs, sregs.gs, sregs.ldt, sregs.tr) = (segment(Offset.fs), segment(Offset.gs), segment(Offset.ldtr), segment(Offset.tr))
        sregs.gdt.limit = UInt16(truncatingIfNeeded: u32(Offset.gdtr + 4))
        sregs.gdt.base = u64(Offset.gdtr + 8)
        sregs.idt.limit = UInt16(truncatingIfNeeded: u32(Offset.idtr + 4))
        sregs.idt.base = u64(Offset.idtr + 8)
        (sregs.efer, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4) = (u64(Offset.efer), u64(Offset.cr0), u64(Offset.cr2),
                                                                    u64(Offset.cr3), u64(Offset.cr4))
        var regs = kvm_regs()
        (regs.rflags, regs.rip, regs.rsp, regs.rbp) = (u64(Offset.rflags), u64(Offset.rip), u64(Offset.rsp), u64(Offset.rbp))
        (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (u64(Offset.rax), u64(Offset.rbx), u64(Offset.rcx), u64(Offset.rdx))
        (regs.rsi, regs.rdi) = (u64(Offset.rsi), u64(Offset.rdi))
        (regs.r8, regs.r9, regs.r10, regs.r11) = (u64(Offset.r8), u64(Offset.r8 + 8), u64(Offset.r8 + 16), u64(Offset.r8 + 24))
        (regs.r12, regs.r13, regs.r14, regs.r15) = (u64(Offset.r8 + 32), u64(Offset.r8 + 40), u64(Offset.r8 + 48), u64(Offset.r8 + 56))
        let features = u64(Offset.sevFeatures)
        let rebuilt = SNPVMSA(regs: regs, sregs: sregs, sevFeatures: features).page
        let difference = zip(rebuilt, page).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        return (regs, sregs, features, difference)
    }
}
