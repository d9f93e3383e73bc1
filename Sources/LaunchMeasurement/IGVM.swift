// IGVM (Independent Guest Virtual Machine) files, format version 1: a
// fixed header, then variable headers in three sections (platforms,
// initialization, directives), then the data the headers point to by file
// offset. Layout from the IGVM specification and microsoft/igvm's
// `igvm_defs`; the checks are the reader's own, each naming the header.

/// The kind of one variable header (`IGVM_VHT_*`).
public struct IGVMHeaderType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let supportedPlatform = Self(rawValue: 0x001)
    public static let guestPolicy = Self(rawValue: 0x101)
    public static let relocatableRegion = Self(rawValue: 0x102)
    public static let pageTableRelocationRegion = Self(rawValue: 0x103)
    public static let parameterArea = Self(rawValue: 0x301)
    public static let pageData = Self(rawValue: 0x302)
    public static let parameterInsert = Self(rawValue: 0x303)
    public static let vpContext = Self(rawValue: 0x304)
    public static let requiredMemory = Self(rawValue: 0x305)
    public static let vpCount = Self(rawValue: 0x307)
    public static let srat = Self(rawValue: 0x308)
    public static let madt = Self(rawValue: 0x309)
    public static let mmioRanges = Self(rawValue: 0x30A)
    public static let snpIDBlock = Self(rawValue: 0x30B)
    public static let memoryMap = Self(rawValue: 0x30C)
    public static let errorRange = Self(rawValue: 0x30D)
    public static let commandLine = Self(rawValue: 0x30E)
    public static let slit = Self(rawValue: 0x30F)
    public static let pptt = Self(rawValue: 0x310)
    public static let vbsMeasurement = Self(rawValue: 0x311)
    public static let deviceTree = Self(rawValue: 0x312)
    public static let environmentInfo = Self(rawValue: 0x313)

    /// Bit 31: a reader that does not know the type may skip the header.
    public static let optionalBit: UInt32 = 1 << 31

    /// The parameter usages: each names a parameter area and a byte offset in it.
    public static let parameterUsages: Set<Self> = [.vpCount, .srat, .madt, .mmioRanges, .memoryMap, .commandLine,
                                                    .slit, .pptt, .deviceTree, .environmentInfo]

    static let names: [UInt32: String] = [
        0x001: "SUPPORTED_PLATFORM", 0x101: "GUEST_POLICY", 0x102: "RELOCATABLE_REGION",
        0x103: "PAGE_TABLE_RELOCATION_REGION", 0x301: "PARAMETER_AREA", 0x302: "PAGE_DATA",
        0x303: "PARAMETER_INSERT", 0x304: "VP_CONTEXT", 0x305: "REQUIRED_MEMORY", 0x307: "VP_COUNT_PARAMETER",
        0x308: "SRAT", 0x309: "MADT", 0x30A: "MMIO_RANGES", 0x30B: "SNP_ID_BLOCK", 0x30C: "MEMORY_MAP",
        0x30D: "ERROR_RANGE", 0x30E: "COMMAND_LINE", 0x30F: "SLIT", 0x310: "PPTT", 0x311: "VBS_MEASUREMENT",
        0x312: "DEVICE_TREE", 0x313: "ENVIRONMENT_INFO",
    ]

    /// The section a header belongs to: 0 platform, 1 initialization, 2 directive; nil outside them.
    var section: Int? {
        switch rawValue & ~Self.optionalBit {
        case 0x001...0x100: 0
        case 0x101...0x200: 1
        case 0x301...0x400: 2
        default: nil
        }
    }

    /// The body length the type has, where it is fixed.
    var bodyLength: Int? {
        switch self {
        case .supportedPlatform, .guestPolicy, .parameterArea, .parameterInsert, .errorRange: 16
        case .pageData, .requiredMemory: 24
        case .vpContext: 20
        case .snpIDBlock: 696
        default: Self.parameterUsages.contains(self) ? 8 : nil
        }
    }

    public var description: String {
        Self.names[rawValue & ~Self.optionalBit] ?? "type 0x\(String(rawValue, radix: 16))"
    }
}

/// The platform a SUPPORTED_PLATFORM header declares (`IGVM_PLATFORM_TYPE`).
public enum IGVMPlatformType: UInt8, Sendable, CustomStringConvertible {
    case native = 0, vsmIsolation = 1, sevSNP = 2, tdx = 3, sev = 4, sevES = 5

    public var description: String {
        switch self {
        case .native: "NATIVE"
        case .vsmIsolation: "VSM_ISOLATION"
        case .sevSNP: "SEV_SNP"
        case .tdx: "TDX"
        case .sev: "SEV"
        case .sevES: "SEV_ES"
        }
    }
}

/// The kind of data one PAGE_DATA holds (`IGVM_PAGE_DATA_TYPE`).
public enum IGVMPageDataType: UInt16, Sendable, CustomStringConvertible {
    case normal = 0, secrets = 1, cpuidData = 2, cpuidXF = 3

    public var description: String {
        switch self {
        case .normal: "NORMAL"
        case .secrets: "SECRETS"
        case .cpuidData: "CPUID_DATA"
        case .cpuidXF: "CPUID_XF"
        }
    }
}

/// One platform the file supports.
public struct IGVMPlatform: Sendable, Equatable {
    /// The SUPPORTED_PLATFORM header's index.
    public var header: Int
    public var compatibilityMask: UInt32
    public var highestVTL: UInt8
    public var type: IGVMPlatformType
    public var version: UInt16
    public var sharedGPABoundary: UInt64
}

/// One directive or initialization header, as the file gives it.
public enum IGVMDirective: Sendable, Equatable {
    case guestPolicy(policy: UInt64, compatibilityMask: UInt32)
    /// A parameter area of `size` bytes, initially zero or from `fileOffset`.
    case parameterArea(size: UInt64, index: UInt32, fileOffset: UInt32)
    /// One page, or 512 with `large` (a 2 MiB page); `data` is nil for a page of zeros (file offset 0).
    case pageData(gpa: UInt64, compatibilityMask: UInt32, fileOffset: UInt32, large: Bool, unmeasured: Bool, shared: Bool,
                  type: IGVMPageDataType)
    case parameterInsert(gpa: UInt64, compatibilityMask: UInt32, index: UInt32)
    /// A vCPU's initial state: for SEV-SNP a 4096-byte VMSA at `fileOffset`.
    case vpContext(gpa: UInt64, compatibilityMask: UInt32, fileOffset: UInt32, vpIndex: UInt16)
    case requiredMemory(gpa: UInt64, compatibilityMask: UInt32, size: UInt32, flags: UInt32)
    /// A parameter usage: what the loader writes at `byteOffset` of parameter area `index`.
    case parameterUsage(IGVMHeaderType, index: UInt32, byteOffset: UInt32)
    /// SNP_ID_BLOCK, kept whole; the launch digest it names is at body offset 8.
    case snpIDBlock(compatibilityMask: UInt32, body: [UInt8])
    case errorRange(gpa: UInt64, compatibilityMask: UInt32, size: UInt32)
    /// An optional header of a type this reader does not know, skipped.
    case skipped(IGVMHeaderType)

    /// The compatibility mask the header carries, where it has one.
    public var compatibilityMask: UInt32? {
        switch self {
        case .guestPolicy(_, let mask), .pageData(_, let mask, _, _, _, _, _), .parameterInsert(_, let mask, _),
             .vpContext(_, let mask, _, _), .requiredMemory(_, let mask, _, _), .snpIDBlock(let mask, _),
             .errorRange(_, let mask, _):
            mask
        case .parameterArea, .parameterUsage, .skipped: nil
        }
    }
}

/// Why an IGVM file was refused; each names the header and field.
public struct IGVMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The variable header's index (0-based, in file order), or nil for the fixed header.
    public var header: Int?
    public var type: IGVMHeaderType?
    public var reason: String

    public init(header: Int? = nil, type: IGVMHeaderType? = nil, _ reason: String) {
        self.header = header
        self.type = type
        self.reason = reason
    }

    public var description: String {
        guard let header else { return "IGVM fixed header: \(reason)" }
        return "IGVM header \(header)\(type.map { " (\($0))" } ?? ""): \(reason)"
    }
}

/// A parsed, checked IGVM file.
public struct IGVMFile: Sendable {
    public static let magic: UInt32 = 0x4D56_4749  // "IGVM"
    public static let fixedHeaderSize = 24
    public static let pageSize = 4096
    /// The largest parameter area accepted: 256 MiB.
    public static let maximumParameterArea: UInt64 = 256 << 20

    public let bytes: [UInt8]
    public let platforms: [IGVMPlatform]
    /// Initialization headers and directives, in file order, with each one's header index.
    public let directives: [(index: Int, directive: IGVMDirective)]

    public init(bytes: [UInt8]) throws(IGVMError) {
        self.bytes = bytes
        guard bytes.count >= Self.fixedHeaderSize else {
            throw IGVMError("the file is \(bytes.count) bytes, shorter than the 24-byte fixed header")
        }
        let magic = bytes.loadLE(UInt32.self, at: 0), version = bytes.loadLE(UInt32.self, at: 4)
        let offset = Int(bytes.loadLE(UInt32.self, at: 8)), size = Int(bytes.loadLE(UInt32.self, at: 12))
        let total = Int(bytes.loadLE(UInt32.self, at: 16)), checksum = bytes.loadLE(UInt32.self, at: 20)
        guard magic == Self.magic else { throw IGVMError("magic is 0x\(String(magic, radix: 16)), not 0x4d564749 (\"IGVM\")") }
        guard version == 1 else { throw IGVMError("format_version is \(version); this reader takes version 1") }
        guard total == bytes.count else { throw IGVMError("total_file_size is \(total), but the file is \(bytes.count) bytes") }
        guard offset >= Self.fixedHeaderSize, offset % 8 == 0 else {
            throw IGVMError("variable_header_offset \(offset) is not an 8-aligned offset past the fixed header")
        }
        guard size <= total - min(offset, total), offset <= total else {
            throw IGVMError("variable headers [\(offset), +\(size)) run past the end of the \(total)-byte file")
        }
        var covered = Array(bytes[0..<Self.fixedHeaderSize])
        covered.replaceSubrange(20..<24, with: [0, 0, 0, 0])
        let computed = CRC32.checksum(covered + bytes[offset..<(offset + size)])
        guard computed == checksum else {
            throw IGVMError("checksum is 0x\(String(checksum, radix: 16)), but the CRC-32 of the header and variable headers is 0x\(String(computed, radix: 16))")
        }
        var platforms: [IGVMPlatform] = [], directives: [(Int, IGVMDirective)] = []
        var cursor = offset, index = 0, section = 0
        let end = offset + size
        while cursor < end {
            guard end - cursor >= 8 else { throw IGVMError(header: index, "\(end - cursor) bytes left, too few for a type and length") }
            let rawType = bytes.loadLE(UInt32.self, at: cursor), length = Int(bytes.loadLE(UInt32.self, at: cursor + 4))
            let type = IGVMHeaderType(rawValue: rawType)
            let body = cursor + 8
            guard length <= end - body else {
                throw IGVMError(header: index, type: type, "length \(length) runs past the end of the variable headers")
            }
            let known = IGVMHeaderType(rawValue: rawType & ~IGVMHeaderType.optionalBit)
            guard let headerSection = type.section else {
                throw IGVMError(header: index, type: type, "type 0x\(String(rawType, radix: 16)) is in no section")
            }
            guard headerSection >= section else {
                throw IGVMError(header: index, type: type, "a \(["platform", "initialization", "directive"][headerSection]) header after the \(["platform", "initialization", "directive"][section]) section began")
            }
            section = headerSection
            let fields = Array(bytes[body..<(body + length)])
            if IGVMHeaderType.names[known.rawValue] == nil {
                guard rawType & IGVMHeaderType.optionalBit != 0 else {
                    throw IGVMError(header: index, type: type, "unknown type 0x\(String(rawType, radix: 16)) without the optional bit (31)")
                }
                directives.append((index, .skipped(type)))
            } else {
                if let expected = known.bodyLength, length != expected {
                    throw IGVMError(header: index, type: known, "length is \(length); the header's body is \(expected) bytes")
                }
                try Self.read(known, fields, index: index, platforms: &platforms, directives: &directives)
            }
            cursor = body + (length + 7) / 8 * 8
            // Padding up to the next 8-byte boundary must be zero.
            if cursor > end || bytes[(body + length)..<min(cursor, end)].contains(where: { $0 != 0 }) {
                throw IGVMError(header: index, type: known, "the padding after the body is not zero")
            }
            index += 1
        }
        self.platforms = platforms
        self.directives = directives
        try check()
    }

    /// Reads one known header's body.
    private static func read(_ type: IGVMHeaderType, _ f: [UInt8], index: Int, platforms: inout [IGVMPlatform],
                             directives: inout [(Int, IGVMDirective)]) throws(IGVMError) {
        switch type {
        case .supportedPlatform:
            let mask = f.loadLE(UInt32.self, at: 0)
            guard mask != 0, mask & (mask - 1) == 0 else {
                throw IGVMError(header: index, type: type, "compatibility_mask 0x\(String(mask, radix: 16)) is not a single bit")
            }
            guard let platformType = IGVMPlatformType(rawValue: f[5]) else {
                throw IGVMError(header: index, type: type, "platform_type \(f[5]) is not a known platform")
            }
            guard f.loadLE(UInt16.self, at: 6) == 1 else {
                throw IGVMError(header: index, type: type, "platform_version is \(f.loadLE(UInt16.self, at: 6)), not 1")
            }
            guard !platforms.contains(where: { $0.compatibilityMask == mask || $0.type == platformType }) else {
                throw IGVMError(header: index, type: type, "platform \(platformType) or mask 0x\(String(mask, radix: 16)) is declared twice")
            }
            platforms.append(IGVMPlatform(header: index, compatibilityMask: mask, highestVTL: f[4], type: platformType,
                                          version: f.loadLE(UInt16.self, at: 6), sharedGPABoundary: f.loadLE(UInt64.self, at: 8)))
        case .guestPolicy:
            guard f.loadLE(UInt32.self, at: 12) == 0 else { throw IGVMError(header: index, type: type, "reserved is not zero") }
            directives.append((index, .guestPolicy(policy: f.loadLE(UInt64.self, at: 0), compatibilityMask: f.loadLE(UInt32.self, at: 8))))
        case .parameterArea:
            directives.append((index, .parameterArea(size: f.loadLE(UInt64.self, at: 0), index: f.loadLE(UInt32.self, at: 8),
                                                     fileOffset: f.loadLE(UInt32.self, at: 12))))
        case .pageData:
            let flags = f.loadLE(UInt32.self, at: 16), rawDataType = f.loadLE(UInt16.self, at: 20)
            guard flags & ~0x7 == 0 else {
                throw IGVMError(header: index, type: type, "flags 0x\(String(flags, radix: 16)) set bits beyond 2MB (0), UNMEASURED (1) and SHARED (2)")
            }
            guard f.loadLE(UInt16.self, at: 22) == 0 else { throw IGVMError(header: index, type: type, "reserved is not zero") }
            guard let dataType = IGVMPageDataType(rawValue: rawDataType) else {
                throw IGVMError(header: index, type: type, "data_type \(rawDataType) is not NORMAL, SECRETS, CPUID_DATA or CPUID_XF")
            }
            directives.append((index, .pageData(gpa: f.loadLE(UInt64.self, at: 0), compatibilityMask: f.loadLE(UInt32.self, at: 8),
                                                fileOffset: f.loadLE(UInt32.self, at: 12), large: flags & 1 != 0,
                                                unmeasured: flags & 2 != 0, shared: flags & 4 != 0, type: dataType)))
        case .parameterInsert:
            directives.append((index, .parameterInsert(gpa: f.loadLE(UInt64.self, at: 0), compatibilityMask: f.loadLE(UInt32.self, at: 8),
                                                       index: f.loadLE(UInt32.self, at: 12))))
        case .vpContext:
            directives.append((index, .vpContext(gpa: f.loadLE(UInt64.self, at: 0), compatibilityMask: f.loadLE(UInt32.self, at: 8),
                                                 fileOffset: f.loadLE(UInt32.self, at: 12), vpIndex: f.loadLE(UInt16.self, at: 16))))
        case .requiredMemory:
            directives.append((index, .requiredMemory(gpa: f.loadLE(UInt64.self, at: 0), compatibilityMask: f.loadLE(UInt32.self, at: 8),
                                                      size: f.loadLE(UInt32.self, at: 12), flags: f.loadLE(UInt32.self, at: 16))))
        case .snpIDBlock:
            directives.append((index, .snpIDBlock(compatibilityMask: f.loadLE(UInt32.self, at: 0), body: f)))
        case .errorRange:
            directives.append((index, .errorRange(gpa: f.loadLE(UInt64.self, at: 0), compatibilityMask: f.loadLE(UInt32.self, at: 8),
                                                  size: f.loadLE(UInt32.self, at: 12))))
        case .relocatableRegion, .pageTableRelocationRegion, .vbsMeasurement:
            throw IGVMError(header: index, type: type, "is not supported by this loader (a relocatable or VBS image)")
        default:
            directives.append((index, .parameterUsage(type, index: f.loadLE(UInt32.self, at: 0), byteOffset: f.loadLE(UInt32.self, at: 4))))
        }
    }

    /// Cross-header rules: masks of declared platforms, data inside the file,
    /// aligned pages that do not overlap per platform, parameter areas
    /// declared once before use and inserted once.
    private func check() throws(IGVMError) {
        let declared = platforms.reduce(UInt32(0)) { $0 | $1.compatibilityMask }
        var areas: [UInt32: UInt64] = [:], inserted: Set<UInt32> = []
        var pages: [UInt32: Set<UInt64>] = [:]
        func fail(_ index: Int, _ directive: IGVMDirective, _ reason: String) -> IGVMError {
            IGVMError(header: index, type: Self.headerType(of: directive), reason)
        }
        func dataFits(_ offset: UInt32, _ size: Int) -> Bool { offset == 0 || Int(offset) + size <= bytes.count }
        /// Records the pages from `gpa` as given for each platform in `mask`; a page given twice is refused.
        func claim(_ gpa: UInt64, bytes: UInt64, mask: UInt32, _ index: Int, _ directive: IGVMDirective) throws(IGVMError) {
            guard gpa <= UInt64.max - bytes else {
                throw fail(index, directive, "gpa 0x\(String(gpa, radix: 16)) + \(bytes) bytes runs past the 64-bit address space")
            }
            for bit in 0..<32 where mask & (1 << bit) != 0 {
                for page in stride(from: gpa, to: gpa + bytes, by: Self.pageSize) {
                    guard pages[1 << bit, default: []].insert(page).inserted else {
                        throw fail(index, directive, "page 0x\(String(page, radix: 16)) is already given for mask 0x\(String(1 << bit, radix: 16))")
                    }
                }
            }
        }
        for (index, directive) in directives {
            if let mask = directive.compatibilityMask, mask == 0 || mask & ~declared != 0 {
                throw fail(index, directive, "compatibility_mask 0x\(String(mask, radix: 16)) names a platform the file does not declare (declared 0x\(String(declared, radix: 16)))")
            }
            switch directive {
            case let .parameterArea(size, area, fileOffset):
                guard size > 0, size % UInt64(Self.pageSize) == 0 else {
                    throw fail(index, directive, "number_of_bytes \(size) is not a positive multiple of 4096")
                }
                // Loaders fill parameter areas in host memory; real ones are a few pages.
                guard size <= Self.maximumParameterArea else {
                    throw fail(index, directive, "number_of_bytes \(size) is more than the \(Self.maximumParameterArea >> 20) MiB a parameter area may have")
                }
                guard areas[area] == nil else { throw fail(index, directive, "parameter_area_index \(area) is declared twice") }
                guard dataFits(fileOffset, Int(size)) else {
                    throw fail(index, directive, "file_offset \(fileOffset) + \(size) bytes runs past the end of the \(bytes.count)-byte file")
                }
                areas[area] = size
            case let .pageData(gpa, mask, fileOffset, large, _, _, _):
                // The igvm crate and QEMU take a 2 MiB page at any 4 KiB-aligned GPA.
                let size = large ? 1 << 21 : Self.pageSize
                guard gpa % UInt64(Self.pageSize) == 0 else {
                    throw fail(index, directive, "gpa 0x\(String(gpa, radix: 16)) is not 4 KiB aligned")
                }
                guard dataFits(fileOffset, Self.pageSize) else {
                    throw fail(index, directive, "file_offset \(fileOffset) + 4096 bytes runs past the end of the \(bytes.count)-byte file")
                }
                try claim(gpa, bytes: UInt64(size), mask: mask, index, directive)
            case let .parameterInsert(gpa, mask, area):
                guard let size = areas[area] else { throw fail(index, directive, "parameter_area_index \(area) is not declared before it") }
                guard gpa % UInt64(Self.pageSize) == 0 else { throw fail(index, directive, "gpa 0x\(String(gpa, radix: 16)) is not 4 KiB aligned") }
                guard inserted.insert(area).inserted else { throw fail(index, directive, "parameter area \(area) is inserted twice") }
                try claim(gpa, bytes: size, mask: mask, index, directive)
            case let .vpContext(gpa, mask, fileOffset, _):
                guard platforms.contains(where: { $0.compatibilityMask == mask }) else {
                    throw fail(index, directive, "compatibility_mask 0x\(String(mask, radix: 16)) is not exactly one platform's")
                }
                guard gpa % UInt64(Self.pageSize) == 0 else { throw fail(index, directive, "gpa 0x\(String(gpa, radix: 16)) is not 4 KiB aligned") }
                guard fileOffset != 0, dataFits(fileOffset, Self.pageSize) else {
                    throw fail(index, directive, "file_offset \(fileOffset) does not name 4096 bytes of VMSA inside the \(bytes.count)-byte file")
                }
            case let .parameterUsage(_, area, byteOffset):
                guard let size = areas[area] else { throw fail(index, directive, "parameter_area_index \(area) is not declared before it") }
                guard !inserted.contains(area) else { throw fail(index, directive, "parameter area \(area) was already inserted") }
                guard UInt64(byteOffset) < size else {
                    throw fail(index, directive, "byte_offset \(byteOffset) is outside the \(size)-byte parameter area \(area)")
                }
            default:
                break
            }
        }
    }

    /// The header type a directive was read from.
    public static func headerType(of directive: IGVMDirective) -> IGVMHeaderType {
        switch directive {
        case .guestPolicy: .guestPolicy
        case .parameterArea: .parameterArea
        case .pageData: .pageData
        case .parameterInsert: .parameterInsert
        case .vpContext: .vpContext
        case .requiredMemory: .requiredMemory
        case .parameterUsage(let type, _, _): type
        case .snpIDBlock: .snpIDBlock
        case .errorRange: .errorRange
        case .skipped(let type): type
        }
    }

    /// The 4096 bytes at `offset`, or zeros for offset 0.
    public func page(at offset: UInt32) -> [UInt8] {
        offset == 0 ? [UInt8](repeating: 0, count: Self.pageSize) : Array(bytes[Int(offset)..<(Int(offset) + Self.pageSize)])
    }

    /// The SEV-SNP platform's compatibility mask, if the file declares it.
    public var snpMask: UInt32? { platforms.first { $0.type == .sevSNP }?.compatibilityMask }
}

/// CRC-32 as zlib and IEEE 802.3 define it (reflected polynomial 0xEDB88320,
/// initial and final XOR 0xFFFFFFFF): IGVM's header checksum.
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { byte in
        var value = UInt32(byte)
        for _ in 0..<8 { value = value & 1 != 0 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
