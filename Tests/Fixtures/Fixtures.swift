/// Guest programs and images the tests run. Each guest's source lives in
/// `Guests/`, and `build-guests.sh` regenerates the bytes below from it; a
/// test assembles the sources again and compares.
public enum Fixtures {
    /// `Guests/checksum16.S`: real mode, entered at 0000:1000 with DS = 0,
    /// SI = data address and CX = length. Computes h = h * 31 + byte over the
    /// block, reports h with `out %eax, $0x510`, then halts.
    public static let checksum16: [UInt8] = [
        0x66, 0x31, 0xC0,        // xor   %eax, %eax
        0x66, 0x31, 0xDB,        // xor   %ebx, %ebx
        0x66, 0x6B, 0xC0, 0x1F,  // 1: imul $31, %eax, %eax
        0x8A, 0x1C,              // mov   (%si), %bl
        0x66, 0x01, 0xD8,        // add   %ebx, %eax
        0x46,                    // inc   %si
        0xE2, 0xF4,              // loop  1b
        0xBA, 0x10, 0x05,        // mov   $0x510, %dx
        0x66, 0xEF,              // out   %eax, (%dx)
        0xF4,                    // hlt
    ]

    /// The port `checksum16` reports on.
    public static let checksumPort: UInt16 = 0x510

    /// The hash `checksum16` computes, for checking its report.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.reduce(0) { $0 &* 31 &+ UInt32($1) }
    }

    /// `Guests/pvh-check.elf`, built from `Guests/pvh-check.S` and
    /// `pvh-check.ld` by `build-guests.sh`: an ELF64 PVH guest that checks
    /// its BSS, its data, `hvm_start_info`, its CPU state, the memory map
    /// and module 0, prints each result on COM1 and reports through
    /// isa-debug-exit: `pvhCheckPassed` when every check passed.
    public static let pvhCheckPath: String = guestSources + "/pvh-check.elf"

    /// The isa-debug-exit values `pvh-check` writes; snpvmm exits with (value << 1) | 1.
    public static let pvhCheckPassed: UInt32 = 0x10
    public static let pvhCheckFailed: UInt32 = 0x11

    /// A module `pvh-check` accepts: `payload` followed by its hash
    /// (`checksum`), little-endian.
    public static func pvhCheckModule(_ payload: [UInt8]) -> [UInt8] {
        let hash = checksum(payload)
        return payload + (0..<4).map { UInt8(truncatingIfNeeded: hash >> (8 * $0)) }
    }

    /// The directory of the guest sources, for tests that rebuild them.
    public static let guestSources: String = {
        let file = "\(#filePath)"
        return String(file[..<file.lastIndex(of: "/")!]) + "/Guests"
    }()

    /// The directory of the measurement fixtures: Debian's OVMF images,
    /// small boot inputs and the reference vectors `regenerate.py` writes.
    public static let measurementDirectory: String = {
        let file = "\(#filePath)"
        return String(file[..<file.lastIndex(of: "/")!]) + "/Measurement"
    }()
}
