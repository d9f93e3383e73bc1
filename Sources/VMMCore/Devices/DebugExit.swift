import GuestMemfd
/// QEMU's isa-debug-exit at port 0xF4 (as `-device isa-debug-exit,iobase=0xf4,iosize=4`):
/// a write of `v` ends the run, and snpvmm exits with status (v << 1) | 1,
/// as QEMU does (hw/misc/debugexit.c), so a guest can report a result
/// that can never be mistaken for a clean 0.
public final class DebugExit: PortDevice {
    public init() {}

    static let ports: ClosedRange<UInt16> = 0xF4...0xF7

    /// The exit status a written value maps to; the operating system keeps its low 8 bits.
    public static func exitStatus(for value: UInt32) -> Int32 {
        Int32(truncatingIfNeeded: (value << 1) | 1)
    }

    public func read(port: UInt16, size: Int) -> UInt32 { 0 }

    public func write(port: UInt16, size: Int, value: UInt32) -> RunEnd? {
        .debugExit(value: value)
    }
}
