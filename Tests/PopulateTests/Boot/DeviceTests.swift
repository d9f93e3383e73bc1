import GuestMemfd
import VMMCore
import Testing

/// The port devices, register by register.
@Suite struct DeviceTests {
    final class Wires {
        var output: [UInt8] = []
        var interrupts = 0
    }

    func serial() -> (Serial8250, Wires) {
        let wires = Wires()
        let uart = Serial8250(output: { wires.output += $0 }, interrupt: { wires.interrupts += 1 })
        return (uart, wires)
    }

    @Test func transmittedBytesReachTheOutputAndTheLineIsAlwaysReady() {
        let (uart, wires) = serial()
        for byte in "ok\n".utf8 { _ = uart.write(port: 0x3F8, size: 1, value: UInt32(byte)) }
        #expect(wires.output == Array("ok\n".utf8))
        #expect(uart.read(port: 0x3FD, size: 1) == 0x60)  // LSR: THRE | TEMT
        #expect(wires.interrupts == 0)                     // IER is clear
    }

    /// Linux's 8250 probe (autoconfig in drivers/tty/serial/8250/8250_port.c):
    /// IER keeps its low nibble, the scratch register holds a value, and in
    /// loopback MCR 0x1A reads back as MSR 0x90.
    @Test func linuxProbeSeesAUART() {
        let (uart, _) = serial()
        _ = uart.write(port: 0x3F9, size: 1, value: 0)
        #expect(uart.read(port: 0x3F9, size: 1) == 0)
        _ = uart.write(port: 0x3F9, size: 1, value: 0xFF)
        #expect(uart.read(port: 0x3F9, size: 1) == 0x0F)
        _ = uart.write(port: 0x3FF, size: 1, value: 0x5A)
        #expect(uart.read(port: 0x3FF, size: 1) == 0x5A)
        _ = uart.write(port: 0x3FC, size: 1, value: 0x1A)
        #expect(uart.read(port: 0x3FE, size: 1) & 0xF0 == 0x90)
    }

    @Test func loopbackBytesAreReceivedNotTransmitted() {
        let (uart, wires) = serial()
        _ = uart.write(port: 0x3FC, size: 1, value: 0x10)
        _ = uart.write(port: 0x3F8, size: 1, value: 0x41)
        #expect(wires.output.isEmpty)
        #expect(uart.read(port: 0x3FD, size: 1) & 1 == 1)  // data ready
        #expect(uart.read(port: 0x3F8, size: 1) == 0x41)
        #expect(uart.read(port: 0x3FD, size: 1) & 1 == 0)
    }

    @Test func transmitterEmptyInterruptIsRaisedWhenEnabledAndClearedByReadingIIR() {
        let (uart, wires) = serial()
        #expect(uart.read(port: 0x3FA, size: 1) == 0x01)   // no interrupt
        _ = uart.write(port: 0x3F9, size: 1, value: 0x02)  // IER: THR empty
        #expect(wires.interrupts == 1)
        #expect(uart.read(port: 0x3FA, size: 1) == 0x02)
        #expect(uart.read(port: 0x3FA, size: 1) == 0x01)
        _ = uart.write(port: 0x3F8, size: 1, value: 0x41)
        #expect(wires.interrupts == 2)
        #expect(uart.read(port: 0x3FA, size: 1) == 0x02)
    }

    @Test func divisorLatchHidesDataAndInterruptEnable() {
        let (uart, wires) = serial()
        _ = uart.write(port: 0x3FB, size: 1, value: 0x83)
        _ = uart.write(port: 0x3F8, size: 1, value: 0x01)
        _ = uart.write(port: 0x3F9, size: 1, value: 0x00)
        #expect(uart.read(port: 0x3F8, size: 1) == 0x01)
        _ = uart.write(port: 0x3FB, size: 1, value: 0x03)
        #expect(wires.output.isEmpty)
        #expect(uart.read(port: 0x3F9, size: 1) == 0)
    }

    @Test(arguments: [(UInt32(0), Int32(1)), (0x10, 33), (0x11, 35), (0x7F, 255)])
    func debugExitStatusIsValueShiftedLeftWithBitZeroSet(_ value: UInt32, _ status: Int32) {
        #expect(DebugExit().write(port: 0xF4, size: 4, value: value) == .debugExit(value: value))
        #expect(DebugExit.exitStatus(for: value) & 0xFF == status)
    }

    @Test func i8042ResetCommandEndsTheRunAndNothingElseDoes() {
        let controller = I8042()
        #expect(controller.write(port: 0x64, size: 1, value: 0xAA) == nil)
        #expect(controller.write(port: 0x60, size: 1, value: 0xFE) == nil)
        #expect(controller.read(port: 0x64, size: 1) & 0x02 == 0)  // input buffer never full
        #expect(controller.write(port: 0x64, size: 1, value: 0xFE) == .i8042Reset)
    }
}
