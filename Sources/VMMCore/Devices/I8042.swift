import GuestMemfd
/// The i8042 keyboard controller reduced to the one thing a VMM without a
/// keyboard needs from it: the reset line. Writing command 0xFE ("pulse
/// output line 0", the CPU reset) to port 0x64 ends the run; this is how
/// Linux reboots by default when ACPI offers nothing (`reboot=k`,
/// arch/x86/kernel/reboot.c).
///
/// No keyboard is attached, so both ports otherwise read as the empty bus
/// does (all ones) with one exception: the status register's "input buffer
/// full" bit reads clear, so a guest waiting to send a command (Linux's
/// `kb_wait()` before the reset) need not spin. Linux's i8042 driver sees
/// an output buffer that never drains and reports "No controller found".
public final class I8042: PortDevice {
    public init() {}

    /// The data port; 0x61 to 0x63 between the two belong to other devices (the PIT's speaker gate).
    static let dataPort: UInt16 = 0x60
    static let commandPort: UInt16 = 0x64
    static let resetCommand: UInt8 = 0xFE
    /// All status bits set except bit 1, input buffer full.
    static let status: UInt32 = 0xFD

    public func read(port: UInt16, size: Int) -> UInt32 {
        port == Self.commandPort ? Self.status : UInt32.max
    }

    public func write(port: UInt16, size: Int, value: UInt32) -> RunEnd? {
        port == Self.commandPort && UInt8(truncatingIfNeeded: value) == Self.resetCommand ? .i8042Reset : nil
    }
}
