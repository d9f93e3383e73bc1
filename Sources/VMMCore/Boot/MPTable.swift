import GuestMemfd
/// The Intel MultiProcessor table that tells a kernel without ACPI how many
/// CPUs there are and how ISA interrupts reach the IOAPIC; Linux finds it by
/// scanning the first KiB of the EBDA for the floating pointer.
///
/// Structures and numbers are from the Intel MultiProcessor Specification
/// 1.4, chapter 4 (floating pointer, configuration table header, entries);
/// the choice of entries follows Firecracker's `mptable.rs`, which mirrors
/// KVM's default routing (`kvm_setup_default_irq_routing()`: ISA IRQ n on
/// IOAPIC pin n).
public enum MPTable {
    /// The most CPUs whose table still fits in the EBDA's KiB.
    public static let maximumCPUs = 32
    /// IOAPIC pins the in-kernel IOAPIC has (`KVM_IOAPIC_NUM_PINS`).
    static let ioapicPins = 24
    /// The local APIC version the entries report (an integrated xAPIC).
    static let apicVersion: UInt8 = 0x14

    /// The table's bytes, to be placed at `address` (the EBDA): the 16-byte
    /// floating pointer, then the configuration table it points to.
    public static func bytes(cpus: Int, at address: UInt64) -> [UInt8] {
        precondition((1...maximumCPUs).contains(cpus), "MP table for \(cpus) CPUs")
        let ioapicID = UInt8(cpus)  // APIC ids 0..<cpus are the CPUs'
        var entries: [[UInt8]] = []
        for cpu in 0..<cpus {
            // Processor entry (type 0, 20 bytes): APIC id, version, flags EN | BP on CPU 0,
            // signature (family 6), feature flags FPU | APIC (CPUID.1:EDX bits 0 and 9).
            var entry = LittleEndianWriter(count: 20)
            entry.store(UInt8(0), at: 0)
            entry.store(UInt8(cpu), at: 1)
            entry.store(apicVersion, at: 2)
            entry.store(UInt8(cpu == 0 ? 0b11 : 0b01), at: 3)
            entry.store(UInt32(0x600), at: 4)
            entry.store(UInt32(1 << 0 | 1 << 9), at: 8)
            entries.append(entry.bytes)
        }
        // Bus entry (type 1, 8 bytes): bus 0 is ISA.
        entries.append([1, 0] + Array("ISA   ".utf8))
        // I/O APIC entry (type 2, 8 bytes): id, version 0x11, flags EN, address.
        var ioapic = LittleEndianWriter(count: 8)
        ioapic.store(UInt8(2), at: 0)
        ioapic.store(ioapicID, at: 1)
        ioapic.store(UInt8(0x11), at: 2)
        ioapic.store(UInt8(1), at: 3)
        ioapic.store(UInt32(Layout.ioapic), at: 4)
        entries.append(ioapic.bytes)
        // I/O interrupt entries (type 3, 8 bytes): vectored interrupt (INT), bus-default
        // polarity and trigger, ISA IRQ n to IOAPIC pin n.
        for irq in 0..<ioapicPins {
            entries.append([3, 0, 0, 0, 0, UInt8(irq), ioapicID, UInt8(irq)])
        }
        // Local interrupt entries (type 4, 8 bytes): ExtINT to LINT0 of every local APIC, NMI to LINT1.
        entries.append([4, 3, 0, 0, 0, 0, 0xFF, 0])
        entries.append([4, 1, 0, 0, 0, 0, 0xFF, 1])

        let body = entries.flatMap { $0 }
        let tableAddress = address + 16
        // Configuration table header (44 bytes): "PCMP", base table length, spec revision 4,
        // checksum, OEM id, product id, OEM table pointer and size 0, entry count, local APIC address.
        var header = LittleEndianWriter(count: 44)
        header.store(Array("PCMP".utf8), at: 0)
        header.store(UInt16(44 + body.count), at: 4)
        header.store(UInt8(4), at: 6)
        header.store(Array("SNPVMM  ".utf8), at: 8)
        header.store(Array("MINIMAL VMM ".utf8), at: 16)
        header.store(UInt16(entries.count), at: 34)
        header.store(UInt32(Layout.localAPIC), at: 36)
        var table = header.bytes + body
        table[7] = checksum(table)

        // Floating pointer (16 bytes): "_MP_", table address, length 1 (16-byte units),
        // spec revision 4, checksum, feature byte 1 = 0 (a table is present), IMCR absent.
        var pointer = LittleEndianWriter(count: 16)
        pointer.store(Array("_MP_".utf8), at: 0)
        pointer.store(UInt32(tableAddress), at: 4)
        pointer.store(UInt8(1), at: 8)
        pointer.store(UInt8(4), at: 9)
        var floating = pointer.bytes
        floating[10] = checksum(floating)
        return floating + table
    }

    /// The byte that makes `bytes` sum to zero modulo 256, for a checksum field still holding 0.
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(UInt8(0), &+)
    }
}
