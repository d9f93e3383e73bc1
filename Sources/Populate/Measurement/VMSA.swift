import GuestMemfd
import CKVMHeaders

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
/// page itself is laid out by GuestMemfd's `SNPVMSA` (APM vol. 2 table B-4),
/// the same code the fake SNP firmware measures vCPUs with.
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
        // vmcb_seg attributes are the descriptor's type, S, DPL, P, AVL, L, D/B, G bits.
        func segment(selector: UInt16, attributes: UInt16, base: UInt64 = 0) -> kvm_segment {
            var segment = kvm_segment()
            segment.selector = selector
            segment.limit = 0xFFFF
            segment.base = base
            segment.type = UInt8(attributes & 0xF)
            segment.s = UInt8(attributes >> 4 & 1)
            segment.dpl = UInt8(attributes >> 5 & 3)
            segment.present = UInt8(attributes >> 7 & 1)
            return segment
        }
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
        var sregs = kvm_sregs()
        sregs.es = segment(selector: 0, attributes: 0x93)
        sregs.cs = segment(selector: 0xF000, attributes: csAttributes, base: UInt64(eip & 0xFFFF_0000))
        sregs.ss = segment(selector: 0, attributes: ssAttributes)
        sregs.ds = segment(selector: 0, attributes: 0x93)
        sregs.fs = segment(selector: 0, attributes: 0x93)
        sregs.gs = segment(selector: 0, attributes: 0x93)
        sregs.ldt = segment(selector: 0, attributes: 0x82)
        sregs.tr = segment(selector: 0, attributes: trAttributes)
        sregs.gdt.limit = 0xFFFF
        sregs.idt.limit = 0xFFFF
        sregs.efer = 0x1000 // EFER.SVME, which KVM sets
        sregs.cr4 = 0x40    // CR4.MCE, which KVM sets
        sregs.cr0 = 0x10    // CR0.ET
        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = UInt64(eip & 0xFFFF)
        regs.rdx = rdx
        var vmsa = SNPVMSA(regs: regs, sregs: sregs, sevFeatures: sevFeatures)
        vmsa.pat = gPAT
        vmsa.mxcsr = mxcsr
        vmsa.x87ControlWord = fcw
        return vmsa.page
    }
}
