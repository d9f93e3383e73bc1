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
