import GuestMemfd
/// A kernel interface that records every call and fails chosen ones with a
/// chosen errno, over any other interface: the real kernel or `FakeKVM`.
///
/// A rule fails a call before it reaches the kernel below, so nothing of it
/// happens, as when a signal interrupts a call before its first step. To
/// fail a call part-way, after some pages of its work, use
/// `FakeKVM.interrupt(afterPages:with:in:)` on the fake below.
public final class FaultInjectingKernel: KernelInterface, @unchecked Sendable {
    /// Which calls a rule applies to.
    public enum Target: Hashable, Sendable, CustomStringConvertible {
        case ioctl(Ioctl)
        /// A `KVM_MEMORY_ENCRYPT_OP` sub-command, read from the `id` at the
        /// start of the command struct (SEV ids 22 and 100–102, TDX ids 0–5).
        case encryptCommand(EncryptCommand)
        case syscall(Syscall)

        public var description: String {
            switch self {
            case .ioctl(let ioctl): ioctl.rawValue
            case .encryptCommand(let command): command.rawValue
            case .syscall(let call): call.rawValue
            }
        }
    }

    /// How often a rule fires.
    public enum Mode: Hashable, Sendable {
        /// The next matching call fails, then the rule is spent.
        case once
        /// The next `n` matching calls fail.
        case times(Int)
        /// Every matching call fails.
        case always
        /// The first `n` matching calls succeed, then one fails.
        case afterCalls(Int)
        /// The first `n` matching calls succeed, then every later one fails:
        /// a fault that persists, such as memory the kernel cannot get.
        case fromCall(Int)
    }

    /// One call as it was made, and how it ended.
    public struct Call: Hashable, Sendable, CustomStringConvertible {
        public let operation: KVMOperation
        public let fd: CInt
        /// The errno it failed with, nil on success.
        public let errno: Errno?
        /// True when a rule made it fail without reaching the kernel below.
        public let injected: Bool

        public var description: String {
            "\(operation) fd \(fd) -> \(errno.map { $0.name } ?? "ok")\(injected ? " (injected)" : "")"
        }
    }

    private struct Rule {
        let target: Target
        let errno: Errno
        var mode: Mode
    }

    public let base: any KernelInterface
    private let mutex = FakeMutex()
    private var rules: [Rule] = []
    private var calls: [Call] = []

    public init(_ base: any KernelInterface) { self.base = base }

    /// Makes calls matching `target` fail with `errno` as `mode` says.
    public func inject(_ errno: Errno, into target: Target, _ mode: Mode = .once) {
        mutex.withLock { rules.append(Rule(target: target, errno: errno, mode: mode)) }
    }

    /// Drops every rule.
    public func clearRules() { mutex.withLock { rules.removeAll() } }

    /// Every call so far, in order.
    public var trace: [Call] { mutex.withLock { calls } }

    /// Calls matching `target` so far.
    public func count(of target: Target) -> Int {
        mutex.withLock { calls.filter { Self.matches(target, $0.operation) }.count }
    }

    private static func matches(_ target: Target, _ operation: KVMOperation) -> Bool {
        switch (target, operation) {
        case (.ioctl(let a), .ioctl(let b)): a == b
        case (.encryptCommand(let a), .encryptOp(let b)): a == b
        case (.syscall(let a), .syscall(let b)): a == b
        default: false
        }
    }

    /// Records the call and decides whether a rule fails it.
    private func intercept(_ operation: KVMOperation, fd: CInt) -> Errno? {
        mutex.withLock {
            guard let index = rules.firstIndex(where: { Self.matches($0.target, operation) }) else { return nil }
            switch rules[index].mode {
            case .once:
                return rules.remove(at: index).errno
            case .times(let n):
                let errno = rules[index].errno
                if n <= 1 { rules.remove(at: index) } else { rules[index].mode = .times(n - 1) }
                return errno
            case .always:
                return rules[index].errno
            case .afterCalls(let n):
                if n > 0 {
                    rules[index].mode = .afterCalls(n - 1)
                    return nil
                }
                return rules.remove(at: index).errno
            case .fromCall(let n):
                if n > 0 {
                    rules[index].mode = .fromCall(n - 1)
                    return nil
                }
                return rules[index].errno
            }
        }
    }

    private func record(_ operation: KVMOperation, fd: CInt, _ errno: Errno?, injected: Bool) {
        mutex.withLock { calls.append(Call(operation: operation, fd: fd, errno: errno, injected: injected)) }
    }

    /// Runs `body` unless a rule fails the call first, recording either way.
    private func perform<R>(_ operation: KVMOperation, fd: CInt, _ body: () throws(Errno) -> R) throws(Errno) -> R {
        if let errno = intercept(operation, fd: fd) {
            record(operation, fd: fd, errno, injected: true)
            throw errno
        }
        do {
            let result = try body()
            record(operation, fd: fd, nil, injected: false)
            return result
        } catch {
            record(operation, fd: fd, error, injected: false)
            throw error
        }
    }

    /// The operation an ioctl request stands for, reading an encrypt-op's sub-command id.
    private static func operation(_ request: UInt, _ argument: UInt) -> KVMOperation? {
        guard let ioctl = Ioctl(request: request) else { return nil }
        guard ioctl == .memoryEncryptOp, let pointer = UnsafeRawPointer(bitPattern: argument) else {
            return .ioctl(ioctl)
        }
        let id = pointer.loadUnaligned(as: UInt32.self)
        let sev: [EncryptCommand] = [.sevInit2, .snpLaunchStart, .snpLaunchUpdate, .snpLaunchFinish]
        let tdx: [EncryptCommand] = [.tdxCapabilities, .tdxInitVM, .tdxInitVCPU, .tdxInitMemRegion, .tdxFinalizeVM]
        if let command = sev.first(where: { $0.id == id }) ?? tdx.first(where: { $0.id == id }) {
            return .encryptOp(command)
        }
        return .ioctl(ioctl)
    }

    public func open(_ path: String, flags: CInt) throws(Errno) -> CInt {
        try perform(.syscall(.open), fd: -1) { () throws(Errno) in try base.open(path, flags: flags) }
    }

    public func close(_ fd: CInt) throws(Errno) {
        try perform(.syscall(.close), fd: fd) { () throws(Errno) in try base.close(fd) }
    }

    public func ioctl(_ fd: CInt, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        guard let operation = Self.operation(request, argument) else {
            return try base.ioctl(fd, request, argument)
        }
        return try perform(operation, fd: fd) { () throws(Errno) in try base.ioctl(fd, request, argument) }
    }

    public func lseek(_ fd: CInt, offset: Int, whence: CInt) throws(Errno) -> Int {
        try perform(.syscall(.lseek), fd: fd) { () throws(Errno) in try base.lseek(fd, offset: offset, whence: whence) }
    }

    public func fstat(_ fd: CInt) throws(Errno) -> FileStatus {
        try perform(.syscall(.fstat), fd: fd) { () throws(Errno) in try base.fstat(fd) }
    }

    public func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        try perform(.syscall(offset == nil ? .read : .pread), fd: fd) { () throws(Errno) in
            try base.read(fd, into: buffer, offset: offset)
        }
    }

    public func write(_ fd: CInt, from buffer: UnsafeRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        try perform(.syscall(offset == nil ? .write : .pwrite), fd: fd) { () throws(Errno) in
            try base.write(fd, from: buffer, offset: offset)
        }
    }

    public func mmap(address: UnsafeMutableRawPointer?, length: Int, protection: CInt, flags: CInt, fd: CInt,
                     offset: Int) throws(Errno) -> UnsafeMutableRawPointer
    {
        try perform(.syscall(.mmap), fd: fd) { () throws(Errno) in
            try base.mmap(address: address, length: length, protection: protection, flags: flags, fd: fd, offset: offset)
        }
    }

    public func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) {
        try perform(.syscall(.munmap), fd: -1) { () throws(Errno) in try base.munmap(address, length: length) }
    }

    public func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: CInt) throws(Errno) {
        try perform(.syscall(.madvise), fd: -1) { () throws(Errno) in
            try base.madvise(address, length: length, advice: advice)
        }
    }

    public func fallocate(_ fd: CInt, mode: CInt, offset: Int, length: Int) throws(Errno) {
        try perform(.syscall(.fallocate), fd: fd) { () throws(Errno) in
            try base.fallocate(fd, mode: mode, offset: offset, length: length)
        }
    }
}
