import GuestMemfd
import Synchronization

/// Why a run ended, as the devices and the vCPU loop report it.
public enum RunEnd: Equatable, Sendable {
    /// The guest wrote `value` to isa-debug-exit; snpvmm exits with (value << 1) | 1.
    case debugExit(value: UInt32)
    /// The guest pulsed the reset line through the i8042 (0xFE to port 0x64).
    case i8042Reset
    /// A triple fault (`KVM_EXIT_SHUTDOWN`).
    case tripleFault
    /// Every vCPU is halted with interrupts off, or waits for a start-up IPI no one will send.
    case haltedWithInterruptsOff
    /// KVM reported a system event (`KVM_EXIT_SYSTEM_EVENT`): 1 shutdown, 2 reset, 3 crash.
    case systemEvent(type: UInt32)

    /// The guest asked to be reset: through the i8042, by a triple fault, or
    /// with a reset system event (KVM_SYSTEM_EVENT_RESET, 2). QEMU resets the
    /// machine on each (qemu_system_reset_request) unless -no-reboot is given.
    public var isReset: Bool {
        switch self {
        case .i8042Reset, .tripleFault: true
        case .systemEvent(let type): type == 2
        case .debugExit, .haltedWithInterruptsOff: false
        }
    }

    /// How the run ended, for a log line.
    public var summary: String {
        switch self {
        case .debugExit(let value): "isa-debug-exit \(value)"
        case .i8042Reset: "i8042 reset"
        case .tripleFault: "triple fault (KVM_EXIT_SHUTDOWN)"
        case .haltedWithInterruptsOff: "every vCPU halted with interrupts off"
        case .systemEvent(let type): "KVM_EXIT_SYSTEM_EVENT type \(type)"
        }
    }
}

/// A device on the x86 port I/O bus. Accesses arrive one at a time under
/// the bus lock, so devices keep plain mutable state.
public protocol PortDevice: AnyObject {
    /// Reads `size` bytes (1, 2 or 4) at `port`.
    func read(port: UInt16, size: Int) -> UInt32
    /// Writes `size` bytes at `port`; a device may end the run.
    func write(port: UInt16, size: Int, value: UInt32) -> RunEnd?
}

/// The port I/O bus: routes `KVM_EXIT_IO` to the device owning the port.
///
/// Ports no device owns behave like an empty ISA bus: reads return all
/// ones and writes are dropped, so a guest probing for hardware it does not
/// find carries on.
///
/// vCPU threads share the bus; one lock serialises every access, and the
/// devices and the device table are touched only under it.
public final class PortIOBus: @unchecked Sendable {
    private struct Entry {
        let ports: ClosedRange<UInt16>
        let device: any PortDevice
    }

    private let lock = Mutex(())
    private var entries: [Entry] = []

    /// Gives `device` the ports in `ports`.
    func register(_ device: any PortDevice, ports: ClosedRange<UInt16>) {
        lock.withLock { _ in entries.append(Entry(ports: ports, device: device)) }
    }

    /// Performs every access of one port exit (more than one for `rep ins/outs`),
    /// filling the exit's data for reads. Returns how the run ends, if a device ends it.
    func handle(_ io: IOExit, data: inout VCPUExitData) -> RunEnd? {
        lock.withLock { _ -> RunEnd? in
            let device = entries.first { $0.ports.contains(io.port) }?.device
            for access in 0..<io.count {
                let offset = access * io.size
                switch io.direction {
                case .in:
                    let value = device?.read(port: io.port, size: io.size) ?? UInt32.max
                    for byte in 0..<io.size { data[offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * byte)) }
                case .out:
                    var value: UInt32 = 0
                    for byte in 0..<min(io.size, 4) { value |= UInt32(io.written[offset + byte]) << (8 * byte) }
                    if let end = device?.write(port: io.port, size: io.size, value: value) { return end }
                }
            }
            return nil
        }
    }
}

/// The CMOS/RTC index and data ports (0x70, 0x71), present so that a
/// guest reading the real-time clock sees no update in progress rather
/// than the all-ones of an empty bus (with register A's UIP bit set, Linux
/// would wait for an update that never ends). Every register reads as 0.
public final class CMOS: PortDevice {
    static let ports: ClosedRange<UInt16> = 0x70...0x71
    private var index: UInt8 = 0

    public func read(port: UInt16, size: Int) -> UInt32 { port == 0x70 ? UInt32(index) : 0 }

    public func write(port: UInt16, size: Int, value: UInt32) -> RunEnd? {
        if port == 0x70 { index = UInt8(truncatingIfNeeded: value) & 0x7F }
        return nil
    }
}
