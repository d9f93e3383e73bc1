import CKVMHeaders
import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate
import Testing

/// The fake firmware measures with its own code (KVMFake's
/// FirmwareMeasurement.swift), the engine with LaunchMeasurement's. These
/// tests drive both over inputs in which every measured field holds a value
/// of its own, so a field written at the wrong offset, with the wrong width
/// or left out, on either side, changes one measurement and not the other.
@Suite struct FirmwareAgreementTests {
    /// Registers in which no two fields share a value or a byte pattern.
    static func distinctRegisters() -> (kvm_regs, kvm_sregs) {
        var regs = kvm_regs()
        (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (0x1111_0000_0000_00A1, 0x2222_0000_0000_00B2, 0x3333_0000_0000_00C3, 0x4444_0000_0000_00D4)
        (regs.rsi, regs.rdi, regs.rsp, regs.rbp) = (0x5555_0000_0000_00E5, 0x6666_0000_0000_00F6, 0x7777_0000_0000_0017, 0x8888_0000_0000_0028)
        (regs.r8, regs.r9, regs.r10, regs.r11) = (0x0808_0000_0000_0808, 0x0909_0000_0000_0909, 0x1010_0000_0000_1010, 0x1111_1100_0000_1111)
        (regs.r12, regs.r13, regs.r14, regs.r15) = (0x1212_0000_0000_1212, 0x1313_0000_0000_1313, 0x1414_0000_0000_1414, 0x1515_0000_0000_1515)
        regs.rip = 0xFFFF_8000_0012_3456
        regs.rflags = 0x246
        var sregs = kvm_sregs()
        func segment(_ n: UInt16) -> kvm_segment {
            var s = kvm_segment()
            s.selector = 0x08 * n
            s.base = 0x1000_0000 * UInt64(n) + UInt64(n)
            s.limit = 0x000F_0000 + UInt32(n)
            s.type = UInt8(n & 0xF)
            s.s = UInt8(n & 1)
            s.dpl = UInt8(n & 3)
            s.present = 1
            s.avl = UInt8((n >> 1) & 1)
            s.l = UInt8((n >> 2) & 1)
            s.db = UInt8((n >> 3) & 1) ^ 1
            s.g = 1
            return s
        }
        (sregs.es, sregs.cs, sregs.ss, sregs.ds) = (segment(1), segment(2), segment(3), segment(4))
        (sregs.fs, sregs.gs, sregs.ldt, sregs.tr) = (segment(5), segment(6), segment(7), segment(9))
        sregs.gdt.base = 0xABC0_1000
        sregs.gdt.limit = 0x27
        sregs.idt.base = 0xDEF0_2000
        sregs.idt.limit = 0xFFF
        (sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4) = (0x8005_0033, 0xC2C2_C2C2, 0x0030_3000, 0x0000_06F0)
        sregs.efer = 0xD01
        return (regs, sregs)
    }

    @Test(arguments: [UInt64(0), 1 << 5])
    func theFakeFirmwareMeasuresAVCPUsVMSAAsTheEngineExpects(features: UInt64) throws {
        let guest = try FakeSNPGuest(size: 0x2000, vmsaFeatures: features)
        let (regs, sregs) = Self.distinctRegisters()
        try guest.vcpu.setRegs(regs)
        try guest.vcpu.setSregs(sregs)
        try guest.makePrivate(0, 0x1000)
        try guest.populate(pattern(1, seed: 7), at: 0)
        try guest.snp.launchFinish(SNPLaunchFinish())

        var digest = SNPLaunchDigest()
        digest.addPage(gpa: 0, type: .normal, contentsDigest: SHA384.hash(pattern(1, seed: 7)))
        // KVM adds SVM_SEV_FEAT_SNP_ACTIVE to what INIT2 was given (__sev_guest_init).
        let vmsa = SNPVMSA(regs: regs, sregs: sregs, sevFeatures: features | 1).page
        digest.addPage(gpa: SNPLaunchDigest.vmsaGPA, type: .vmsa, contentsDigest: SHA384.hash(vmsa))
        #expect(guest.fake.launchMeasurement(of: guest.vm) == digest.value.bytes)
    }

    @Test func theFakeFirmwareChainsPageInfoForEveryPageTypeAsTheEngineExpects() throws {
        let guest = try FakeSNPGuest(size: 0x10_0000)
        // GPAs with bits set in every byte the PAGE_INFO GPA field holds below 1 MiB.
        let pages: [(UInt64, SNPLaunchUpdate.PageType, SNPPageType)] = [
            (0x0_1000, .normal, .normal), (0x3_4000, .zero, .zero), (0x5_6000, .unmeasured, .unmeasured),
            (0x7_8000, .secrets, .secrets), (0xF_F000, .normal, .normal),
        ]
        var digest = SNPLaunchDigest()
        for (index, (gpa, updateType, pageType)) in pages.enumerated() {
            try guest.makePrivate(gpa, 0x1000)
            let contents = pattern(1, seed: UInt8(index + 3))
            try guest.populate(contents, at: gpa, type: updateType)
            digest.addPage(gpa: gpa, type: pageType, contentsDigest: pageType == .normal ? SHA384.hash(contents) : nil)
            #expect(guest.fake.launchMeasurement(of: guest.vm) == digest.value.bytes, "after the page at \(gpa)")
        }
    }
}
