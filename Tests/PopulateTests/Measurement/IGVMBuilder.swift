/// Writes IGVM files from the format's layout, for tests: independent of the
/// reader (its own CRC-32, bit by bit, and its own header encoding).
struct IGVMBuilder {
    /// One variable header; `data` is appended after the headers and its
    /// offset written into the body at `offsetField`.
    struct Header {
        var type: UInt32
        var body: [UInt8]
        var data: [UInt8]?
        var offsetField: Int?
    }

    var headers: [Header] = []
    /// Overrides applied after building: (file offset, bytes).
    var patches: [(Int, [UInt8])] = []
    var recomputeChecksum = true

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    /// SUPPORTED_PLATFORM: SEV_SNP (2) with mask 1 unless told.
    mutating func platform(mask: UInt32 = 1, type: UInt8 = 2) {
        headers.append(Header(type: 0x001, body: Self.le(mask) + [0, type] + Self.le(UInt16(1)) + Self.le(UInt64(0))))
    }

    mutating func policy(_ value: UInt64, mask: UInt32 = 1) {
        headers.append(Header(type: 0x101, body: Self.le(value) + Self.le(mask) + Self.le(UInt32(0))))
    }

    /// PAGE_DATA; flags bit 0 2 MiB, bit 1 unmeasured; data types 0 NORMAL, 1 SECRETS, 2 CPUID_DATA, 3 CPUID_XF.
    mutating func page(_ gpa: UInt64, data: [UInt8]? = nil, flags: UInt32 = 0, type: UInt16 = 0, mask: UInt32 = 1) {
        let body = Self.le(gpa) + Self.le(mask) + Self.le(UInt32(0)) + Self.le(flags) + Self.le(type) + Self.le(UInt16(0))
        headers.append(Header(type: 0x302, body: body, data: data, offsetField: data == nil ? nil : 12))
    }

    mutating func parameterArea(index: UInt32, bytes: UInt64) {
        headers.append(Header(type: 0x301, body: Self.le(bytes) + Self.le(index) + Self.le(UInt32(0))))
    }

    mutating func parameterInsert(_ gpa: UInt64, index: UInt32, mask: UInt32 = 1) {
        headers.append(Header(type: 0x303, body: Self.le(gpa) + Self.le(mask) + Self.le(index)))
    }

    /// A parameter usage (VP_COUNT 0x307, MEMORY_MAP 0x30C, ...).
    mutating func usage(_ type: UInt32, index: UInt32, offset: UInt32 = 0) {
        headers.append(Header(type: type, body: Self.le(index) + Self.le(offset)))
    }

    mutating func vmsa(_ page: [UInt8], gpa: UInt64 = 0xFFFF_FFFF_F000, mask: UInt32 = 1) {
        let body = Self.le(gpa) + Self.le(mask) + Self.le(UInt32(0)) + Self.le(UInt16(0)) + Self.le(UInt16(0))
        headers.append(Header(type: 0x304, body: body, data: page, offsetField: 12))
    }

    mutating func raw(type: UInt32, body: [UInt8]) { headers.append(Header(type: type, body: body)) }

    func build() -> [UInt8] {
        var variable: [UInt8] = []
        let headerBytes = headers.reduce(0) { $0 + 8 + ($1.body.count + 7) / 8 * 8 }
        var data: [UInt8] = []
        for header in headers {
            var body = header.body
            if let blob = header.data, let field = header.offsetField {
                let offset = UInt32(24 + headerBytes + data.count)
                body.replaceSubrange(field..<(field + 4), with: Self.le(offset))
                data += blob
            }
            variable += Self.le(header.type) + Self.le(UInt32(body.count)) + body
            variable += [UInt8](repeating: 0, count: (8 - body.count % 8) % 8)
        }
        let total = 24 + variable.count + data.count
        var file = Self.le(UInt32(0x4D56_4749)) + Self.le(UInt32(1)) + Self.le(UInt32(24)) + Self.le(UInt32(variable.count))
            + Self.le(UInt32(total)) + Self.le(UInt32(0)) + variable + data
        for (offset, bytes) in patches { file.replaceSubrange(offset..<(offset + bytes.count), with: bytes) }
        if recomputeChecksum {
            let crc = Self.crc32(Array(file[0..<20]) + [0, 0, 0, 0] + Array(file[24..<(24 + variable.count)]))
            file.replaceSubrange(20..<24, with: Self.le(crc))
        }
        return file
    }

    /// CRC-32 (IEEE 802.3), bit by bit.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (crc & 1 == 1 ? 0xEDB8_8320 : 0) }
        }
        return ~crc
    }
}
