#if canImport(Glibc)
import Glibc
#endif
import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import Populate
import Synchronization

/// Why a run could not go on, as opposed to the guest ending it.
public enum MachineFailure: Error, Equatable, CustomStringConvertible {
    /// A KVM call failed.
    case kvm(KVMError)
    /// KVM could not emulate a guest instruction (`KVM_EXIT_INTERNAL_ERROR`).
    case emulation(suberror: UInt32, vcpu: UInt32, rip: UInt64?)
    /// The hardware refused to enter the guest (`KVM_EXIT_FAIL_ENTRY`).
    case failedEntry(reason: UInt64, vcpu: UInt32)
    /// An exit a plain guest should never cause.
    case unexpectedExit(String, vcpu: UInt32)

    public var description: String {
        switch self {
        case .kvm(let error): return "\(error)"
        case .emulation(let suberror, let vcpu, let rip):
            let at = rip.map { " at rip \(Hex.number($0))" } ?? ""
            let what = suberror == 1 ? "could not emulate an instruction" : "reported an internal error"
            return "KVM \(what) of vCPU \(vcpu)\(at) (KVM_EXIT_INTERNAL_ERROR, suberror \(suberror))"
        case .failedEntry(let reason, let vcpu):
            return "KVM could not enter vCPU \(vcpu) (KVM_EXIT_FAIL_ENTRY, hardware reason \(Hex.number(reason)))"
        case .unexpectedExit(let exit, let vcpu):
            return "vCPU \(vcpu) stopped with an exit snpvmm does not handle: \(exit)"
        }
    }
}

/// Where a machine's RAM comes from.
public enum RAMBacking: String, Sendable, CaseIterable {
    /// One guest_memfd, which a confidential guest needs for private memory.
    case guestMemfd = "guest_memfd"
    /// A memfd mapped shared (QEMU's memory-backend-memfd): for guests whose
    /// memory is never private, on any KVM.
    case memfd
}

/// An x86 virtual machine on KVM: RAM in one or two memslots, the
/// in-kernel interrupt controllers and PIT, vCPUs with the host's
/// supported CPUID, and the port devices of `Devices/`.
///
/// Guest RAM is one file, mapped once; below 3 GiB it is one slot, and
/// beyond that the rest continues in a second slot at 4 GiB
/// (`Layout.ramRanges`). The file is a guest_memfd, or, with
/// `ram: .memfd`, a memfd mapped shared whose slots are ordinary memory
/// (`KVM_SET_USER_MEMORY_REGION`), which every KVM accepts.
///
/// A plain machine on guest_memfd creates it with MMAP | INIT_SHARED and
/// names the mapping as every slot's `userspace_addr`, because KVM's
/// instruction emulator reads guest memory through it. An SEV-SNP machine
/// (`platform: .snp`) is created with the SNP VM type and KVM_SEV_INIT2
/// before its vCPUs exist; where guest_memfd converts in place the slots
/// name its mapping as well, otherwise guest_memfd holds only private
/// memory and the slots' shared side is a memfd, and all RAM is made
/// private up front, as the guest expects of its memory.
public final class Machine {
    /// The launch this machine's VM, vCPUs and memory belong to.
    let session: LaunchSession
    public let vm: VM
    public let platform: Platform
    let ram: RAMBacking
    /// Guest RAM's guest_memfd; nil for memfd RAM.
    public let memfd: GuestMemfd?
    /// The host's mapping of `memfd`; nil where guest_memfd holds only private memory.
    let memory: GuestMemoryMapping?
    /// The slots' shared memory where guest_memfd does not provide it:
    /// all of RAM with `ram: .memfd`, or the shared side where guest_memfd
    /// holds only private memory.
    public let sharedMemory: SharedMemory?
    /// Whether guest_memfd keeps the memory attributes (in-place conversion).
    let convertsInGuestMemfd: Bool
    /// The SEV-SNP firmware interface of an SNP machine.
    let snp: SEVSNP?
    public let slots: [MemorySlot]
    public let vcpus: [VCPU]
    /// The CPUID the boot vCPU was given (an SNP guest's CPUID table is built from it).
    let cpuid: [kvm_cpuid_entry2]
    let bus = PortIOBus()
    /// The first KVM call a device failed to make (an interrupt it could not raise).
    private let deviceFailure = FirstFailure()

    /// - Parameters:
    ///   - platform: `.plain` or `.snp`; the caller has checked that the host offers it.
    ///   - ram: `.memfd` for a plain machine only; the caller has checked that the host offers the backing.
    ///   - output: receives the bytes the guest writes to its serial port.
    public init(kvm: KVM, platform: Platform = .plain, ram: RAMBacking = .guestMemfd, memorySize: UInt64, cpus: Int,
         output: @escaping @Sendable ([UInt8]) -> Void) throws(LaunchError) {
        precondition(platform == .plain || platform == .snp, "snpvmm runs plain and SEV-SNP machines")
        precondition(platform == .plain || ram == .guestMemfd, "private memory lives in guest_memfd")
        self.platform = platform
        self.ram = ram
        session = try LaunchSession(kvm: kvm, platform: platform == .snp ? .snp(SNPLaunch.parameters) : .plain)
        vm = session.vm
        snp = session.snp
        let supported: [kvm_cpuid_entry2], layout: [GuestMemoryLayout.Slot]
        do {
            (memfd, memory, sharedMemory, convertsInGuestMemfd, slots, layout) = try Self.buildMemory(
                vm: vm, platform: platform, ram: ram, memorySize: memorySize)
            supported = try kvm.getSupportedCPUID()
        } catch {
            throw .kvm(error)
        }
        for slot in layout { try session.addMemory(slot) }
        vcpus = try session.createVCPUs(cpus)
        cpuid = Self.cpuid(supported, apicID: 0)
        do {
            for vcpu in vcpus { try vcpu.setCPUID2(Self.cpuid(supported, apicID: vcpu.id)) }
        } catch {
            throw .kvm(error)
        }
        let irqVM = vm, failures = deviceFailure
        let serial = Serial8250(output: output, interrupt: {
            // An edge on ISA IRQ 4: raise and lower the line of the in-kernel PIC and
            // IOAPIC. A refused KVM_IRQ_LINE ends the run after this exit (see `handle`).
            do throws(KVMError) {
                try irqVM.irqLine(Serial8250.irq, level: true)
                try irqVM.irqLine(Serial8250.irq, level: false)
            } catch {
                failures.record(error)
            }
        })
        bus.register(serial, ports: Serial8250.ports)
        bus.register(DebugExit(), ports: DebugExit.ports)
        let i8042 = I8042()
        bus.register(i8042, ports: I8042.dataPort...I8042.dataPort)
        bus.register(i8042, ports: I8042.commandPort...I8042.commandPort)
        bus.register(CMOS(), ports: CMOS.ports)
    }

    /// Guest RAM, its slots and the interrupt controllers, in the order KVM wants them.
    private static func buildMemory(vm: VM, platform: Platform, ram: RAMBacking, memorySize: UInt64) throws(KVMError)
        -> (GuestMemfd?, GuestMemoryMapping?, SharedMemory?, Bool, [MemorySlot], [GuestMemoryLayout.Slot])
    {
        // Intel's real-mode support needs these pages reserved below 4 GiB; they lie in the device hole.
        try vm.setTSSAddr(Layout.kvmTSS)
        try vm.setIdentityMapAddr(Layout.kvmIdentityMap)

        let attributesInGuestMemfd = platform == .plain ? 0 : try vm.checkExtension(.guestMemfdMemoryAttributes)
        let convertsInGuestMemfd = attributesInGuestMemfd != 0
        let memfd: GuestMemfd?, memory: GuestMemoryMapping?, sharedMemory: SharedMemory?
        switch ram {
        case .guestMemfd:
            let shared = platform == .plain || convertsInGuestMemfd
            // Without MMAP a slot's shared accesses go to its userspace_addr; with it
            // KVM would serve them from guest_memfd too (KVM_MEMSLOT_GMEM_ONLY).
            let created = try vm.createGuestMemfd(size: memorySize, flags: shared ? [.mmap, .initShared] : [])
            memfd = created
            memory = shared ? try created.map() : nil
            sharedMemory = shared ? nil : try SharedMemory(size: memorySize, name: "guest-ram-shared")
        case .memfd:
            memfd = nil
            memory = nil
            sharedMemory = try SharedMemory(size: memorySize)
        }
        var slots: [MemorySlot] = [], layout: [GuestMemoryLayout.Slot] = []
        var offset: UInt64 = 0
        for (index, range) in Layout.ramRanges(memorySize: memorySize).enumerated() {
            let slot = MemorySlot(slot: UInt32(index), range: GuestRange(start: range.start, size: range.size), offset: offset)
            let userspaceAddress = (sharedMemory?.userspaceAddress ?? memory?.userspaceAddress ?? 0) + offset
            if let memfd {
                try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: slot.slot, guestPhysicalAddress: range.start,
                                                              size: range.size, memfd: memfd, offset: offset,
                                                              userspaceAddress: userspaceAddress))
            } else {
                // The original ioctl: kernels before 6.8 have no REGION2.
                try vm.setUserMemoryRegion(slot: slot.slot, guestPhysicalAddress: range.start, memorySize: range.size,
                                           userspaceAddress: userspaceAddress)
            }
            slots.append(slot)
            offset += range.size
            let layoutSlot: GuestMemoryLayout.Slot = if let memory {
                .init(range: slot.range, mapping: memory, fileOffset: slot.offset)
            } else if let memfd {
                .init(range: slot.range, memfd: memfd, fileOffset: slot.offset)
            } else {
                .init(range: slot.range, sharedMemory: sharedMemory!, fileOffset: slot.offset)
            }
            layout.append(layoutSlot)
        }
        if platform != .plain {
            // Page-state changes reach the VMM as KVM_HC_MAP_GPA_RANGE exits where
            // KVM offers them; otherwise as memory-fault exits on first access.
            let exits = try vm.checkExtension(.exitHypercall)
            let mapGPARange = 1 << Int(CKVM_HC_MAP_GPA_RANGE)
            if exits & mapGPARange != 0 { try vm.enableCap(.exitHypercall, arguments: [UInt64(mapGPARange)]) }
            if !convertsInGuestMemfd {
                for slot in slots { try vm.setMemoryAttributes(slot.range, attributes: .private) }
            }
        }
        // The interrupt controllers come after the RAM slots: on this project's
        // shadow-paging hosts, adding a 256 MiB slot to a VM that already has
        // an irqchip took 6.7 ms instead of 0.2 ms (measured with strace -T).
        try vm.createIRQChip()
        try vm.createPIT2()

        return (memfd, memory, sharedMemory, convertsInGuestMemfd, slots, layout)
    }

    /// The host's supported CPUID with this vCPU's APIC id in leaf 1
    /// (EBX[31:24], the initial APIC id) and leaves 0xB and 0x1F (EDX, the
    /// x2APIC id), as the Intel SDM's CPUID reference defines them.
    static func cpuid(_ entries: [kvm_cpuid_entry2], apicID: UInt32) -> [kvm_cpuid_entry2] {
        entries.map { entry in
            var entry = entry
            switch entry.function {
            case 1: entry.ebx = (entry.ebx & 0x00FF_FFFF) | (apicID << 24)
            case 0xB, 0x1F: entry.edx = apicID
            default: break
            }
            return entry
        }
    }

    /// Puts the boot vCPU in `state`; the other vCPUs wait for the start-up
    /// IPI the guest sends them, as on a PC.
    public func setBootState(_ state: BootCPUState) throws(KVMError) {
        try Machine.apply(state, to: vcpus[0])
    }

    /// Loads a boot state into a vCPU's registers (also a fake platform's,
    /// whose SNP VMSA is built from them).
    public static func apply(_ state: BootCPUState, to vcpu: VCPU) throws(KVMError) {
        let (regs, sregs) = try registers(for: state, from: vcpu)
        try vcpu.setSregs(sregs)
        try vcpu.setRegs(regs)
    }

    /// The registers of a vCPU in `state`, starting from its current segment registers.
    public static func registers(for state: BootCPUState, from vcpu: VCPU) throws(KVMError) -> (kvm_regs, kvm_sregs) {
        var sregs = try vcpu.getSregs()
        func load(_ segment: Segment, into register: inout kvm_segment) {
            register.base = UInt64(segment.base)
            register.limit = segment.byteLimit
            register.selector = segment.selector
            register.type = segment.type
            register.present = segment.present ? 1 : 0
            register.dpl = 0
            register.db = segment.defaultSize32 ? 1 : 0
            register.s = segment.isSystem ? 0 : 1
            register.l = segment.long ? 1 : 0
            register.g = segment.granularity4K ? 1 : 0
            register.avl = 0
            register.unusable = 0
        }
        load(state.code, into: &sregs.cs)
        for keyPath in [\kvm_sregs.ds, \.es, \.fs, \.gs, \.ss] { load(state.data, into: &sregs[keyPath: keyPath]) }
        load(state.task, into: &sregs.tr)
        sregs.gdt.base = state.gdtBase
        sregs.gdt.limit = state.gdtLimit
        // No IDT: both entry protocols start with interrupts off, and the guest installs its own.
        sregs.idt.base = 0
        sregs.idt.limit = 0
        sregs.cr0 = state.cr0
        sregs.cr3 = state.cr3
        sregs.cr4 = state.cr4
        sregs.efer = state.efer

        var regs = kvm_regs()
        regs.rip = state.rip
        regs.rsp = state.rsp
        regs.rsi = state.rsi
        regs.rbx = state.rbx
        regs.rflags = state.rflags
        return (regs, sregs)
    }

    /// Runs every vCPU until the guest ends the run or a vCPU fails. vCPU 0
    /// runs on the calling thread, the others on threads of their own.
    ///
    /// HLT does not leave the kernel when the irqchip is in the kernel, so
    /// a watchdog interrupts the vCPUs every `pollInterval` and reads their
    /// MP state: when every vCPU is halted with interrupts off, or waits for
    /// a start-up IPI, nothing can wake any of them and the run ends.
    public func run(pollInterval: UInt32 = 50_000) -> Result<RunEnd, MachineFailure> {
        Watchdog.installSignalHandler()
        let control = RunControl(vcpus: vcpus.count)
        control.setThread(0, pthread_self())
        var threads: [pthread_t] = []
        for index in 1..<vcpus.count {
            nonisolated(unsafe) let machine = self
            threads.append(spawnThread {
                control.setThread(index, pthread_self())
                machine.loop(index, control)
            })
        }
        let watchdog = spawnThread { Watchdog.run(control, interval: pollInterval) }
        loop(0, control)
        for thread in threads { pthread_join(thread, nil) }
        control.stopWatchdog()
        pthread_join(watchdog, nil)
        return control.result ?? .failure(.unexpectedExit("no result", vcpu: 0))
    }

    private func loop(_ index: Int, _ control: RunControl) {
        let vcpu = vcpus[index]
        // Threads inherit their creator's signal mask, and pool threads block
        // most signals: let the watchdog's through here, and only here.
        var watchdogOnly = sigset_t(), previous = sigset_t()
        sigemptyset(&watchdogOnly)
        sigaddset(&watchdogOnly, Watchdog.signal)
        pthread_sigmask(SIG_UNBLOCK, &watchdogOnly, &previous)
        defer {
            control.vcpuExited(index)
            pthread_sigmask(SIG_SETMASK, &previous, nil)
        }
        while !control.isFinished {
            do {
                try vcpu.run { exit, data in handle(exit, &data, vcpu: vcpu, control: control) }
            } catch {
                if error.errno == .interrupted {
                    checkParked(index, vcpu, control)
                    continue
                }
                control.finish(.failure(.kvm(error)))
                return
            }
            control.setParked(index, false)
        }
    }

    /// Answers one exit of `vcpu`; its data is valid during this call only.
    private func handle(_ exit: VCPUExit, _ data: inout VCPUExitData, vcpu: VCPU, control: RunControl) {
        switch exit {
        case .io(let io):
            if let end = bus.handle(io, data: &data) { control.finish(.success(end)) }
            if let failure = deviceFailure.error { control.finish(.failure(.kvm(failure))) }
        case .mmio(let access):
            // Nothing is mapped there: reads see all ones, writes are dropped.
            if !access.isWrite { for index in 0..<data.count { data[index] = 0xFF } }
        case .hlt:
            // Only without the in-kernel irqchip; kept for completeness. A
            // protected vCPU's flags cannot be read: nothing here wakes it.
            let regs = try? vcpu.getRegs()
            if regs.map({ $0.rflags & Self.interruptFlag == 0 }) ?? true {
                control.finish(.success(.haltedWithInterruptsOff))
            }
        case .hypercall(let number, let arguments) where number == UInt64(CKVM_HC_MAP_GPA_RANGE):
            vcpu.setHypercallResult(mapGPARange(arguments))
        case .memoryFault(let fault):
            // The guest touched memory as private while it was shared or the
            // other way round: an implicit conversion request (KVM_EXIT_MEMORY_FAULT).
            do {
                try convert(fault.range, toPrivate: fault.isPrivate)
            } catch {
                control.finish(.failure(.kvm(error)))
            }
        case .shutdown:
            control.finish(.success(.tripleFault))
        case .systemEvent(let type):
            control.finish(.success(.systemEvent(type: type)))
        case .internalError(let suberror):
            // RIP only adds to the report; a protected vCPU's cannot be read, and the report goes out without it.
            control.finish(.failure(.emulation(suberror: suberror, vcpu: vcpu.id, rip: try? vcpu.getRegs().rip)))
        case .failEntry(let reason):
            control.finish(.failure(.failedEntry(reason: reason, vcpu: vcpu.id)))
        case let other:
            control.finish(.failure(.unexpectedExit("\(other)", vcpu: vcpu.id)))
        }
    }

    /// RAM as the host writes it: the guest_memfd mapping, or the memfd
    /// (for SNP without in-place conversion, the slots' shared side).
    public var hostMemory: (any MappedGuestMemory)? { memory ?? sharedMemory }

    /// Guest memory as the population engine and conversions see it.
    var memoryLayout: GuestMemoryLayout { session.memory }

    /// Makes `range` private or shared at the guest's request. Where
    /// guest_memfd holds only private memory, pages made shared are also
    /// punched out of it: their private contents are gone for good, and the
    /// host gets the memory back.
    func convert(_ range: GuestRange, toPrivate: Bool) throws(KVMError) {
        try memoryLayout.convert(range, toPrivate: toPrivate, vm: vm, inGuestMemfd: convertsInGuestMemfd)
        guard !toPrivate, !convertsInGuestMemfd, let memfd else { return }
        for slot in slots where slot.range.overlaps(range) {
            let start = max(slot.range.start.rawValue, range.start.rawValue)
            let end = min(slot.range.start.rawValue + slot.range.size, range.start.rawValue + range.size)
            try memfd.punchHole(offset: slot.offset(of: GuestPhysicalAddress(start)), length: end - start)
        }
    }

    /// `KVM_HC_MAP_GPA_RANGE` (Documentation/virt/kvm/x86/hypercalls.rst):
    /// arguments are the first GPA, the page count and the attributes (bit 4
    /// set: encrypted, i.e. private). KVM has already checked alignment and
    /// overflow. Returns 0, or -EINVAL (KVM_EINVAL) for a range outside RAM
    /// or a conversion the kernel refused.
    public func mapGPARange(_ arguments: [UInt64]) -> Int64 {
        let gpa = arguments[0], pages = arguments[1]
        let (size, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        guard !overflow, size > 0 else { return -Int64(EINVAL) }
        let range = GuestRange(start: gpa, size: size)
        var covered: UInt64 = 0
        for slot in slots where slot.range.overlaps(range) {
            covered += min(slot.range.start.rawValue + slot.range.size, gpa + size) - max(slot.range.start.rawValue, gpa)
        }
        guard covered == size else { return -Int64(EINVAL) }
        do {
            try convert(range, toPrivate: arguments[2] & CKVM_MAP_GPA_RANGE_ENCRYPTED != 0)
        } catch {
            return -Int64(EINVAL)
        }
        return 0
    }

    /// RFLAGS.IF (Intel SDM Vol. 1, 3.4.3).
    static let interruptFlag: UInt64 = 1 << 9

    /// After a watchdog interruption: records whether this vCPU can only be
    /// woken by another (halted with IF clear, or waiting for INIT/SIPI).
    private func checkParked(_ index: Int, _ vcpu: VCPU, _ control: RunControl) {
        guard !control.isFinished else { return }
        let state: MPState
        do {
            state = try vcpu.getMPState()
        } catch {
            control.finish(.failure(.kvm(error)))
            return
        }
        var parked = state == .uninitialized || state == .initReceived
        // A protected vCPU's flags cannot be read (KVM_GET_REGS fails on SEV-ES and
        // later): it counts as running, so only the guest's own exit ends the run.
        if state == .halted, let regs = try? vcpu.getRegs() { parked = regs.rflags & Self.interruptFlag == 0 }
        control.setParked(index, parked)
        if control.allParked { control.finish(.success(.haltedWithInterruptsOff)) }
    }
}

/// The shared state of one run: its result, which vCPUs are parked, and
/// the threads the watchdog interrupts.
/// The first error recorded, from any thread.
final class FirstFailure: Sendable {
    private let first = Mutex<KVMError?>(nil)
    func record(_ error: KVMError) { first.withLock { if $0 == nil { $0 = error } } }
    var error: KVMError? { first.withLock { $0 } }
}

public final class RunControl: Sendable {
    private struct State {
        var result: Result<RunEnd, MachineFailure>?
        var parked: [Bool]
        var threads: [pthread_t?]
        var running: Int
        var watchdogStopped = false
    }

    private let state: Mutex<State>

    init(vcpus: Int) {
        state = Mutex(State(parked: Array(repeating: false, count: vcpus), threads: Array(repeating: nil, count: vcpus),
                            running: vcpus))
    }

    var result: Result<RunEnd, MachineFailure>? { state.withLock { $0.result } }
    var isFinished: Bool { state.withLock { $0.result != nil } }
    var allParked: Bool { state.withLock { !$0.parked.contains(false) } }
    var watchdogShouldStop: Bool { state.withLock { $0.watchdogStopped } }

    func setThread(_ index: Int, _ thread: pthread_t) { state.withLock { $0.threads[index] = thread } }
    func setParked(_ index: Int, _ parked: Bool) { state.withLock { $0.parked[index] = parked } }
    func vcpuExited(_ index: Int) { state.withLock { $0.threads[index] = nil; $0.running -= 1 } }
    func stopWatchdog() { state.withLock { $0.watchdogStopped = true } }

    /// Records the run's result; the first one wins.
    func finish(_ result: Result<RunEnd, MachineFailure>) {
        state.withLock { if $0.result == nil { $0.result = result } }
        interruptAll()
    }

    /// Sends the watchdog signal to every vCPU thread still running, which
    /// makes a `KVM_RUN` in progress return EINTR.
    ///
    /// The signals go out under the lock, so a thread cannot leave its loop,
    /// and be joined, between being looked up and being signalled.
    func interruptAll() {
        state.withLock { state in
            for thread in state.threads.compactMap({ $0 }) { pthread_kill(thread, Watchdog.signal) }
        }
    }
}

/// Interrupts the vCPU threads periodically so that each can check its MP state.
public enum Watchdog {
    static let signal = SIGUSR1

    /// Installs a handler that does nothing: the signal's only job is to make
    /// `KVM_RUN` return EINTR. SA_RESTART keeps other syscalls going.
    static func installSignalHandler() { _ = installed }

    private static let installed: Bool = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = SA_RESTART
        sigemptyset(&action.sa_mask)
        return sigaction(signal, &action, nil) == 0
    }()

    static func run(_ control: RunControl, interval: UInt32) {
        while !control.watchdogShouldStop {
            usleep(interval)
            control.interruptAll()
        }
    }
}

/// Starts a joinable thread running `body`.
public func spawnThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let status = pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    precondition(status == 0, "pthread_create failed: \(status)")
    return thread
}

extension VM {
    /// Creates `size` bytes of RAM with `backing`, binds it as memslot 0 at
    /// guest-physical 0, and returns the slot, whose mapping the host
    /// writes: the memory of snpvmm's small real-mode guests (`probe`,
    /// `bench cycles`).
    public func bindSmallRAM(_ backing: RAMBacking, size: UInt64) throws(KVMError) -> GuestMemoryLayout.Slot {
        let range = GuestRange(start: 0, size: size)
        switch backing {
        case .guestMemfd:
            let mapping = try createGuestMemfd(size: size, flags: [.mmap, .initShared]).map()
            try setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: mapping))
            return GuestMemoryLayout.Slot(range: range, mapping: mapping)
        case .memfd:
            let memory = try SharedMemory(size: size, name: "guest-ram")
            try setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0, memorySize: size, userspaceAddress: memory.userspaceAddress)
            return GuestMemoryLayout.Slot(range: range, sharedMemory: memory)
        }
    }
}

extension VCPU {
    /// Starts the vCPU in real mode at 0:`rip` with CS and DS based at 0 and
    /// interrupts off, keeping KVM's reset state otherwise, and lets `adjust`
    /// set further registers: the entry state of snpvmm's small real-mode
    /// guests (`probe`, `bench cycles`).
    public func enterRealMode(at rip: UInt64, adjust: (inout kvm_regs) -> Void = { _ in }) throws(KVMError) {
        var sregs = try getSregs()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        sregs.ds.base = 0
        sregs.ds.selector = 0
        try setSregs(sregs)
        var regs = try getRegs()
        regs.rip = rip
        regs.rflags = 0x2  // bit 1 is always set; IF clear
        adjust(&regs)
        try setRegs(regs)
    }
}
