import GuestMemfd
import CKVMHeaders
#if canImport(Glibc)
import Glibc
#endif

/// What a fake vCPU does when it runs. The fake executes no instructions:
/// a test gives each vCPU a script of guest-visible actions, and `KVM_RUN`
/// carries them out against the fake's memory, attributes and memslots,
/// exiting to userspace where KVM would.
public enum FakeGuestStep: Hashable, Sendable {
    /// Read `count` bytes at `gpa`, as a private (encrypted) or shared access.
    case read(gpa: UInt64, count: Int, isPrivate: Bool)
    /// Write `bytes` at `gpa`.
    case write(gpa: UInt64, bytes: [UInt8], isPrivate: Bool)
    /// `out` to a port.
    case portOut(port: UInt16, bytes: [UInt8])
    /// The `KVM_HC_MAP_GPA_RANGE` hypercall: ask the host to convert pages.
    case mapGPARange(gpa: UInt64, pages: UInt64, toPrivate: Bool)
    /// Any hypercall with the guest's own arguments (for `KVM_HC_MAP_GPA_RANGE`:
    /// the GPA, the page count and the attribute bits); it exits to the host
    /// where `KVM_CAP_EXIT_HYPERCALL` enabled its number.
    case hypercall(nr: UInt64, arguments: [UInt64])
    /// Read or write where the VM type decides whether the access is private:
    /// on `KVM_X86_SW_PROTECTED_VM` the page's attribute (the guest has no
    /// C-bit, so KVM takes the attribute as the access), elsewhere shared.
    case load(gpa: UInt64, count: Int)
    case store(gpa: UInt64, bytes: [UInt8])
    /// A triple fault: the run ends with `KVM_EXIT_SHUTDOWN`.
    case shutdown
    /// `KVM_EXIT_SYSTEM_EVENT` of `type` (1 shutdown, 2 reset, 3 crash, ...).
    case systemEvent(type: UInt32)
    /// HLT: the run ends with `KVM_EXIT_HLT`.
    case halt
}

final class FakeVCPU {
    let id: UInt32
    let vm: FakeVM
    /// The kvm_run area, backed by a memfd so every mapping of the vCPU
    /// descriptor sees the same bytes.
    let runFD: CInt
    let runView: UnsafeMutableRawPointer
    let runSize: Int
    var regs = kvm_regs()
    var sregs = kvm_sregs()
    var cpuid: [kvm_cpuid_entry2] = []
    var script: [FakeGuestStep] = []
    var nextStep = 0
    /// Bytes the script's reads returned, in order.
    var reads: [[UInt8]] = []
    /// The bytes of an MMIO read the host answers in kvm_run before the next run.
    var pendingMMIORead: Int?
    /// TDX: KVM_TDX_INIT_VCPU has run.
    var tdInitialised = false

    init(id: UInt32, vm: FakeVM, runSize: Int) throws(Errno) {
        self.id = id
        self.vm = vm
        self.runSize = runSize
        (runFD, runView) = try makeSharedMemory(name: "fake-kvm-run", size: runSize)
        // The architectural reset state KVM gives a new vCPU (kvm_vcpu_reset):
        // CS 0xf000 with base 0xffff0000, RIP 0xfff0, RFLAGS bit 1.
        regs.rip = 0xFFF0
        regs.rflags = 0x2
        sregs.cs.selector = 0xF000
        sregs.cs.base = 0xFFFF_0000
        sregs.cs.limit = 0xFFFF
        for keyPath in [\kvm_sregs.ds, \kvm_sregs.es, \kvm_sregs.fs, \kvm_sregs.gs, \kvm_sregs.ss] {
            sregs[keyPath: keyPath].limit = 0xFFFF
        }
        sregs.cr0 = 0x6000_0010
    }

    deinit {
        munmap(runView, runSize)
        Glibc.close(runFD)
    }

    var run: UnsafeMutablePointer<kvm_run> { runView.assumingMemoryBound(to: kvm_run.self) }
}
