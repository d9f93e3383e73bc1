import CKVMHeaders

/// Why `KVM_RUN` returned, decoded from the vCPU's `kvm_run` area.
public enum VCPUExit {
    /// `KVM_EXIT_IO`: a port access; an `in` is answered through `VCPUExitData` in `run(_:)`.
    case io(IOExit)
    /// `KVM_EXIT_MMIO`: an access to a guest-physical address no memslot backs.
    case mmio(MMIOExit)
    /// `KVM_EXIT_HLT`: HLT without an in-kernel irqchip.
    case hlt
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    case shutdown
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused the vCPU state.
    case failEntry(hardwareReason: UInt64)
    /// `KVM_EXIT_INTERNAL_ERROR`, e.g. suberror 1 for an instruction KVM cannot emulate.
    case internalError(suberror: UInt32)
    /// `KVM_EXIT_SYSTEM_EVENT`: shutdown, reset, crash, or SEV termination (type 6).
    case systemEvent(type: UInt32)
    /// `KVM_EXIT_HYPERCALL`, e.g. `KVM_HC_MAP_GPA_RANGE` (12) for an explicit conversion.
    case hypercall(nr: UInt64, arguments: [UInt64])
    /// `KVM_EXIT_MEMORY_FAULT`: the guest touched memory whose attribute does
    /// not match its access, or private memory with no guest_memfd behind it.
    case memoryFault(MemoryFault)
    /// Any other exit reason.
    case other(reason: UInt32)
}

/// A port access that exited to userspace.
public struct IOExit: Hashable, Sendable {
    public enum Direction: Sendable { case `in`, out }
    public let direction: Direction
    public let port: UInt16
    /// Bytes per access: 1, 2 or 4.
    public let size: Int
    /// Accesses in a string instruction (`rep outsb`), 1 otherwise.
    public let count: Int
    /// What the guest wrote, for `out` (`size * count` bytes); empty for `in`,
    /// whose bytes the handler of `VCPU.run(_:)` writes into `VCPUExitData`.
    public let written: [UInt8]

    /// The first access's value, little-endian (0 for `in`).
    public var value: UInt32 {
        var result: UInt32 = 0
        for index in 0..<min(size, 4, written.count) { result |= UInt32(written[index]) << (8 * index) }
        return result
    }
}

/// A guest-physical access no memslot backs.
public struct MMIOExit: Hashable, Sendable {
    public let physicalAddress: UInt64
    public let isWrite: Bool
    /// Bytes accessed, at most 8.
    public let length: Int
    /// What the guest wrote; empty for a read, answered through `VCPUExitData`.
    public let written: [UInt8]
}

/// The data bytes of the exit `VCPU.run(_:)` hands to its handler: the
/// bytes of a port access or MMIO access inside the vCPU's `kvm_run` area,
/// which the handler fills for a read. It is lent to the handler alone: it
/// cannot be copied, and the handler receives it `inout`, so it cannot
/// outlive the call (the next `KVM_RUN` rewrites the area).
public struct VCPUExitData: ~Copyable {
    private let base: UnsafeMutableRawPointer?
    /// The bytes the exit carries (0 for exits with no data).
    public let count: Int

    init(base: UnsafeMutableRawPointer?, count: Int) {
        self.base = base
        self.count = base == nil ? 0 : count
    }

    public subscript(index: Int) -> UInt8 {
        get {
            precondition(index >= 0 && index < count, "exit data index out of range")
            return base!.load(fromByteOffset: index, as: UInt8.self)
        }
        nonmutating set {
            precondition(index >= 0 && index < count, "exit data index out of range")
            base!.storeBytes(of: newValue, toByteOffset: index, as: UInt8.self)
        }
    }

    /// A copy of the bytes.
    public var bytes: [UInt8] { (0..<count).map { self[$0] } }
}

/// The fields of `KVM_EXIT_MEMORY_FAULT`.
public struct MemoryFault: Hashable, Sendable {
    /// True when the guest's access was private (`KVM_MEMORY_EXIT_FLAG_PRIVATE`).
    public let isPrivate: Bool
    public let range: GuestRange
}

/// A vCPU's `KVM_MP_STATE_*` (include/uapi/linux/kvm.h).
public struct MPState: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `KVM_MP_STATE_RUNNABLE`.
    public static let runnable = MPState(rawValue: UInt32(KVM_MP_STATE_RUNNABLE))
    /// `KVM_MP_STATE_UNINITIALIZED`: an application processor waiting for INIT.
    public static let uninitialized = MPState(rawValue: UInt32(KVM_MP_STATE_UNINITIALIZED))
    /// `KVM_MP_STATE_INIT_RECEIVED`: waiting for a start-up IPI.
    public static let initReceived = MPState(rawValue: UInt32(KVM_MP_STATE_INIT_RECEIVED))
    /// `KVM_MP_STATE_HALTED`: halted until an interrupt arrives.
    public static let halted = MPState(rawValue: UInt32(KVM_MP_STATE_HALTED))
}

/// A virtual CPU and its mapped `kvm_run` area.
///
/// A vCPU is driven from one thread at a time, so the type is not `Sendable`.
public final class VCPU: KernelObject {
    public let vm: VM
    public let id: UInt32
    /// The raw descriptor, for embedding VMMs; closed on release unless it was adopted as borrowed.
    public let fd: CInt
    /// The shared `struct kvm_run` the kernel fills on every exit.
    let runArea: UnsafeMutableRawPointer
    let runSize: Int
    public var kernel: any KernelInterface { vm.kernel }
    var objectKind: KVMObjectKind { .vcpu }

    private let ownsDescriptor: Bool

    init(vm: VM, id: UInt32, fd: CInt, run: UnsafeMutableRawPointer, runSize: Int, ownsDescriptor: Bool) {
        self.vm = vm
        self.id = id
        self.fd = fd
        self.runArea = run
        self.runSize = runSize
        self.ownsDescriptor = ownsDescriptor
    }

    deinit {
        try? kernel.munmap(runArea, length: runSize)
        if ownsDescriptor { try? kernel.close(fd) }
    }

    private var state: UnsafeMutablePointer<kvm_run> { runArea.assumingMemoryBound(to: kvm_run.self) }

    /// Runs the vCPU until it exits to userspace.
    ///
    /// The corresponding ioctl is `KVM_RUN` (vCPU ioctl).
    /// - Throws: EINTR when a signal interrupted the run (the caller decides
    ///   whether to re-enter); any other errno except the EFAULT that comes
    ///   with a memory-fault exit, which is returned as `.memoryFault`.
    public func run() throws(KVMError) -> VCPUExit {
        try run { exit, _ in exit }
    }

    /// Runs the vCPU until it exits to userspace and hands the exit to
    /// `handle` with its data bytes, which `handle` fills for an `in` or an
    /// MMIO read; the data is valid only during the call.
    ///
    /// The corresponding ioctl is `KVM_RUN` (vCPU ioctl).
    public func run<Result>(_ handle: (VCPUExit, inout VCPUExitData) -> Result) throws(KVMError) -> Result {
        // A stale exit reason must never be read as this run's: the kernel
        // writes it only on the paths that report an exit.
        state.pointee.exit_reason = UInt32(KVM_EXIT_UNKNOWN)
        do {
            _ = try kernel.ioctl(fd, Ioctl.run.request, 0)
        } catch {
            guard error == .badAddress, state.pointee.exit_reason == UInt32(CKVM_EXIT_MEMORY_FAULT) else {
                throw KVMError(.ioctl(.run), on: .vcpu, fd: fd, errno: error, detail: "vCPU \(id)")
            }
        }
        var data = exitData()
        return handle(decodeExit(), &data)
    }

    /// The data bytes of the current exit: a port access's at `io.data_offset`, an MMIO access's in `mmio.data`.
    private func exitData() -> VCPUExitData {
        switch Int32(state.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = state.pointee.io
            return VCPUExitData(base: runArea + Int(io.data_offset), count: Int(io.size) * Int(io.count))
        case KVM_EXIT_MMIO:
            return VCPUExitData(base: UnsafeMutableRawPointer(ckvm_run_mmio_data(state)), count: min(Int(state.pointee.mmio.len), 8))
        default:
            return VCPUExitData(base: nil, count: 0)
        }
    }

    private func decodeExit() -> VCPUExit {
        let reason = state.pointee.exit_reason
        switch Int32(reason) {
        case KVM_EXIT_IO:
            let io = state.pointee.io
            let isIn = io.direction == UInt8(KVM_EXIT_IO_IN)
            let bytes = isIn ? 0 : Int(io.size) * Int(io.count)
            let written = [UInt8](UnsafeRawBufferPointer(start: runArea + Int(io.data_offset), count: bytes))
            return .io(IOExit(direction: isIn ? .in : .out, port: io.port, size: Int(io.size), count: Int(io.count),
                              written: written))
        case KVM_EXIT_MMIO:
            let length = min(Int(state.pointee.mmio.len), 8)
            let isWrite = state.pointee.mmio.is_write != 0
            let written = isWrite ? [UInt8](UnsafeRawBufferPointer(start: ckvm_run_mmio_data(state), count: length)) : []
            return .mmio(MMIOExit(physicalAddress: state.pointee.mmio.phys_addr, isWrite: isWrite, length: length,
                                  written: written))
        case KVM_EXIT_HLT: return .hlt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(hardwareReason: state.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: state.pointee.internal.suberror)
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: state.pointee.system_event.type)
        case KVM_EXIT_HYPERCALL:
            let call = state.pointee.hypercall
            return .hypercall(nr: call.nr, arguments: [call.args.0, call.args.1, call.args.2,
                                                        call.args.3, call.args.4, call.args.5])
        case CKVM_EXIT_MEMORY_FAULT:
            let fault = ckvm_run_memory_fault(state).pointee
            return .memoryFault(MemoryFault(isPrivate: fault.flags & CKVM_MEMORY_EXIT_FLAG_PRIVATE != 0,
                                            range: GuestRange(start: fault.gpa, size: fault.size)))
        default: return .other(reason: reason)
        }
    }

    /// Sets the value a `KVM_EXIT_HYPERCALL` returns to the guest when the
    /// vCPU next runs (`kvm_run.hypercall.ret`: 0, or a negative errno).
    public func setHypercallResult(_ value: Int64) {
        state.pointee.hypercall.ret = UInt64(bitPattern: value)
    }

    /// Reads the general-purpose registers.
    ///
    /// The corresponding ioctl is `KVM_GET_REGS` (vCPU ioctl).
    public func getRegs() throws(KVMError) -> kvm_regs {
        var regs = kvm_regs()
        try call(.getRegs, pointerTo: &regs)
        return regs
    }

    /// Writes the general-purpose registers.
    ///
    /// The corresponding ioctl is `KVM_SET_REGS` (vCPU ioctl).
    public func setRegs(_ regs: kvm_regs) throws(KVMError) {
        var value = regs
        try call(.setRegs, pointerTo: &value)
    }

    /// Reads the segment, control and descriptor-table registers.
    ///
    /// The corresponding ioctl is `KVM_GET_SREGS` (vCPU ioctl).
    public func getSregs() throws(KVMError) -> kvm_sregs {
        var sregs = kvm_sregs()
        try call(.getSregs, pointerTo: &sregs)
        return sregs
    }

    /// Writes the segment, control and descriptor-table registers.
    ///
    /// The corresponding ioctl is `KVM_SET_SREGS` (vCPU ioctl).
    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) {
        var value = sregs
        try call(.setSregs, pointerTo: &value)
    }

    /// Sets the CPUID the guest sees.
    ///
    /// The corresponding ioctl is `KVM_SET_CPUID2` (vCPU ioctl).
    public func setCPUID2(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        var buffer = CPUIDBuffer(entries: entries)
        _ = try buffer.withHeader { (header: UnsafeMutablePointer<kvm_cpuid2>) throws(KVMError) in
            try call(.setCPUID2, UInt(bitPattern: header), detail: "\(entries.count) entries")
        }
    }

    /// Reads the vCPU's multiprocessing state: whether it runs, waits for a
    /// start-up IPI, or is halted waiting for an interrupt. With the
    /// in-kernel irqchip, HLT never exits to userspace, so this is how a VMM
    /// sees a halted vCPU.
    ///
    /// The corresponding ioctl is `KVM_GET_MP_STATE` (vCPU ioctl).
    public func getMPState() throws(KVMError) -> MPState {
        var value = kvm_mp_state()
        try call(.getMPState, pointerTo: &value)
        return MPState(rawValue: value.mp_state)
    }

    /// Issues one pre-fault call and returns the part of `range` still to do,
    /// exactly as the kernel wrote it back.
    ///
    /// The kernel maps what it can chunk by chunk and returns success if any
    /// chunk was done; it fails only when the first chunk fails, so a thrown
    /// error means nothing in this call was mapped.
    ///
    /// The corresponding ioctl is `KVM_PRE_FAULT_MEMORY` (vCPU ioctl).
    /// - Throws: EOPNOTSUPP without TDP, or before an SNP/TDX VM is finalised;
    ///   EINVAL for an unaligned or empty range; ENOENT for a range no
    ///   memslot covers; EINTR or EAGAIN when the caller should resume; EIO.
    public func preFaultMemory(_ range: GuestRange) throws(KVMError) -> GuestRange {
        var value = ckvm_pre_fault_memory()
        value.gpa = range.start.rawValue
        value.size = range.size
        try call(.preFaultMemory, pointerTo: &value, range: range)
        return GuestRange(start: value.gpa, size: value.size)
    }

    /// Pre-faults all of `range`, resuming after EINTR and EAGAIN from the
    /// progress the kernel wrote back; the original range is never re-sent.
    ///
    /// - Parameter interruptionLimit: how many EINTR/EAGAIN answers in a row
    ///   to accept before giving up.
    /// - Returns: how many calls resumed what an earlier one left (after
    ///   EINTR or EAGAIN, or a call the kernel cut short).
    /// - Throws: `KVMError` whose `range` is what remained and whose
    ///   `completedBytes` is what was mapped before the failure.
    @discardableResult
    public func preFaultMemory(covering range: GuestRange, interruptionLimit: Int = 64) throws(KVMError) -> Int {
        var remaining = range
        var interruptions = 0, resumptions = 0
        while remaining.size > 0 {
            do throws(KVMError) {
                let next = try preFaultMemory(remaining)
                guard next.size < remaining.size else {
                    throw KVMError(.ioctl(.preFaultMemory), on: .vcpu, fd: fd, errno: .ioError, range: remaining,
                                   detail: "the kernel reported success without progress",
                                   completedBytes: range.size - remaining.size)
                }
                remaining = next
                interruptions = 0
                if remaining.size > 0 { resumptions += 1 }
            } catch {
                var error = error
                let transient = error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable
                if transient && interruptions < interruptionLimit && error.completedBytes == nil {
                    interruptions += 1
                    resumptions += 1
                    continue
                }
                error.completedBytes = range.size - remaining.size
                throw error
            }
        }
        return resumptions
    }
}

extension VCPU {
    /// Issues a vCPU-scope `KVM_MEMORY_ENCRYPT_OP` (the TDX vCPU commands).
    func memoryEncryptOp(_ command: UnsafeMutableRawPointer) throws(Errno) {
        _ = try kernel.ioctl(fd, Ioctl.memoryEncryptOp.request, UInt(bitPattern: command))
    }
}
