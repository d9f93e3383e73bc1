import GuestMemfd
/// An 8250/16450-style UART at COM1 (0x3F8, IRQ 4) whose transmitter
/// writes to an output sink: enough for Linux's `console=ttyS0`, its
/// `earlyprintk=serial` and the decompressor's early console.
///
/// Register behaviour follows the PC16550D datasheet (and the register
/// names of include/uapi/linux/serial_reg.h); the model is that of
/// rust-vmm's vm-superio `Serial`: the transmitter is always empty, so the
/// line status always shows THRE and TEMT, and a "THR empty" interrupt is
/// raised whenever it is enabled or a byte has been sent. Input is only what
/// the guest sends itself in loopback mode, which Linux uses to detect the port.
public final class Serial8250: PortDevice {
    static let ports: ClosedRange<UInt16> = 0x3F8...0x3FF
    static let irq: UInt32 = 4

    // Register offsets from the base port.
    private static let data = 0, interruptEnable = 1, interruptIdentification = 2, lineControl = 3
    private static let modemControl = 4, lineStatus = 5, modemStatus = 6, scratch = 7
    // Bits.
    private static let ierReceivedData: UInt8 = 0x01, ierTransmitterEmpty: UInt8 = 0x02
    private static let iirNoInterrupt: UInt8 = 0x01, iirTransmitterEmpty: UInt8 = 0x02, iirReceivedData: UInt8 = 0x04
    private static let iirFIFOsEnabled: UInt8 = 0xC0
    private static let lcrDivisorLatch: UInt8 = 0x80
    private static let mcrLoopback: UInt8 = 0x10
    private static let lsrDataReady: UInt8 = 0x01, lsrTransmitterEmpty: UInt8 = 0x20, lsrIdle: UInt8 = 0x40
    /// With no line attached: carrier detect, data set ready and clear to send.
    private static let msrConnected: UInt8 = 0xB0

    private let output: ([UInt8]) -> Void
    private let interrupt: () -> Void

    private var interruptEnableRegister: UInt8 = 0
    private var lineControlRegister: UInt8 = 0x03  // 8 data bits
    private var modemControlRegister: UInt8 = 0x08  // OUT2
    private var scratchRegister: UInt8 = 0
    private var fifoControl: UInt8 = 0
    private var divisorLow: UInt8 = 0x0C  // 9600 baud from the 1.8432 MHz clock
    private var divisorHigh: UInt8 = 0
    private var transmitterEmptyPending = false
    private var received: [UInt8] = []

    /// - Parameters:
    ///   - output: receives each byte the guest transmits, as it is transmitted.
    ///   - interrupt: pulses the UART's interrupt line.
    public init(output: @escaping ([UInt8]) -> Void, interrupt: @escaping () -> Void) {
        self.output = output
        self.interrupt = interrupt
    }

    private var divisorLatch: Bool { lineControlRegister & Self.lcrDivisorLatch != 0 }
    private var loopback: Bool { modemControlRegister & Self.mcrLoopback != 0 }

    public func read(port: UInt16, size: Int) -> UInt32 {
        let register = Int(port - Self.ports.lowerBound)
        let value: UInt8
        switch register {
        case Self.data where divisorLatch: value = divisorLow
        case Self.data:
            value = received.isEmpty ? 0 : received.removeFirst()
        case Self.interruptEnable where divisorLatch: value = divisorHigh
        case Self.interruptEnable: value = interruptEnableRegister
        case Self.interruptIdentification:
            let fifo = fifoControl & 1 != 0 ? Self.iirFIFOsEnabled : 0
            if interruptEnableRegister & Self.ierReceivedData != 0 && !received.isEmpty {
                value = Self.iirReceivedData | fifo
            } else if transmitterEmptyPending {
                // Reading IIR while it names "THR empty" clears that interrupt (PC16550D, table 4).
                transmitterEmptyPending = false
                value = Self.iirTransmitterEmpty | fifo
            } else {
                value = Self.iirNoInterrupt | fifo
            }
        case Self.lineControl: value = lineControlRegister
        case Self.modemControl: value = modemControlRegister
        case Self.lineStatus:
            value = Self.lsrTransmitterEmpty | Self.lsrIdle | (received.isEmpty ? 0 : Self.lsrDataReady)
        case Self.modemStatus:
            if loopback {
                // Loopback wires DTR to DSR, RTS to CTS, OUT1 to RI and OUT2 to DCD.
                let mcr = modemControlRegister
                value = (mcr & 0x02) << 3 | (mcr & 0x01) << 5 | (mcr & 0x04) << 4 | (mcr & 0x08) << 4
            } else {
                value = Self.msrConnected
            }
        default: value = scratchRegister
        }
        return UInt32(value)
    }

    public func write(port: UInt16, size: Int, value: UInt32) -> RunEnd? {
        let register = Int(port - Self.ports.lowerBound)
        let byte = UInt8(truncatingIfNeeded: value)
        switch register {
        case Self.data where divisorLatch: divisorLow = byte
        case Self.data:
            if loopback {
                if received.count < 16 { received.append(byte) }
                if interruptEnableRegister & Self.ierReceivedData != 0 { interrupt() }
            } else {
                output([byte])
            }
            transmitterEmptyChanged()
        case Self.interruptEnable where divisorLatch: divisorHigh = byte
        case Self.interruptEnable:
            interruptEnableRegister = byte & 0x0F
            transmitterEmptyChanged()
        case Self.interruptIdentification: fifoControl = byte & 0xC9
        case Self.lineControl: lineControlRegister = byte
        case Self.modemControl: modemControlRegister = byte & 0x1F
        case Self.scratch: scratchRegister = byte
        default: break  // the line and modem status registers are read-only
        }
        return nil
    }

    /// The transmitter is empty again (it always is at once): with the
    /// "THR empty" interrupt enabled, that interrupt becomes pending.
    private func transmitterEmptyChanged() {
        guard interruptEnableRegister & Self.ierTransmitterEmpty != 0 else {
            transmitterEmptyPending = false
            return
        }
        transmitterEmptyPending = true
        interrupt()
    }
}
