/// An EFI GUID, held in the mixed-endian byte order firmware stores it in
/// (the first three fields little-endian, the last eight bytes as written;
/// Python's `uuid.bytes_le`).
public struct EFIGUID: Hashable, Sendable, CustomStringConvertible {
    /// The 16 bytes as they appear in the image.
    public let bytes: [UInt8]

    /// A GUID from its 16 stored bytes.
    public init?(storedBytes: some Collection<UInt8>) {
        guard storedBytes.count == 16 else { return nil }
        bytes = Array(storedBytes)
    }

    /// A GUID from its text form, e.g. "96b582de-1fb2-45f7-baea-a366c55a082d".
    /// Only for constants: traps on malformed text.
    public init(_ text: StaticString) {
        guard let canonical = Hex.decode("\(text)".filter { $0 != "-" }), canonical.count == 16 else {
            preconditionFailure("a GUID has 32 hex digits")
        }
        bytes = canonical[0..<4].reversed() + canonical[4..<6].reversed() + canonical[6..<8].reversed()
            + canonical[8..<16]
    }

    /// The text form, lower case.
    public var description: String {
        let canonical = bytes[0..<4].reversed() + bytes[4..<6].reversed() + bytes[6..<8].reversed() + bytes[8..<16]
        return [canonical[0..<4], canonical[4..<6], canonical[6..<8], canonical[8..<10], canonical[10..<16]]
            .map { Hex.encode($0) }.joined(separator: "-")
    }
}

/// The GUIDs of the OVMF footer table entries this project reads.
/// Source: edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`; sev-snp-measure `ovmf.py`.
public enum OVMFTableGUID {
    /// Marks the footer of the table, 32 bytes before the end of the image.
    public static let footer = EFIGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
    /// SEV_ES_RESET_BLOCK: the first u32 is the AP reset EIP.
    public static let sevESResetBlock = EFIGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
    /// SEV_HASH_TABLE_RV: the first u32 is the GPA of the kernel-hashes table.
    public static let sevHashTable = EFIGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
    /// OVMF_SEV_META_DATA: the first u32 is the SEV metadata's offset from the end of the image.
    public static let sevMetadata = EFIGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
    /// The TDX metadata offset: the first u32 is the TDVF descriptor's offset from the end of the image.
    public static let tdxMetadata = EFIGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
}

/// One entry of the OVMF footer ("GUIDed") table.
public struct OVMFTableEntry: Hashable, Sendable {
    public var guid: EFIGUID
    /// The entry's data, without its 18-byte trailer (u16 length, GUID).
    public var data: [UInt8]
    /// The image offset of the data's first byte.
    public var offset: Int

    /// The data's first four bytes as a little-endian u32. Shorter data
    /// gives the value of the bytes there are (none: 0), as sev-snp-measure's
    /// `int.from_bytes(entry[:4])` does.
    public var firstUInt32: UInt32 {
        data.prefix(4).enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
    }
}

/// The kind of one SEV metadata section. Source: edk2
/// `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`; sev-snp-measure `ovmf.py`.
public struct SEVMetadataSectionType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Memory the firmware uses before it validates memory: measured as ZERO pages.
    public static let snpSecMem = Self(rawValue: 1)
    /// The SNP secrets page.
    public static let snpSecrets = Self(rawValue: 2)
    /// The SNP CPUID page.
    public static let cpuid = Self(rawValue: 3)
    /// The SVSM calling area: ZERO pages.
    public static let svsmCAA = Self(rawValue: 4)
    /// The page that holds the kernel-hashes table for measured direct boot.
    public static let snpKernelHashes = Self(rawValue: 0x10)

    /// Whether the type is one sev-snp-measure knows.
    public var isKnown: Bool { [1, 2, 3, 4, 0x10].contains(rawValue) }

    public var description: String {
        switch self {
        case .snpSecMem: "SNP_SEC_MEM"
        case .snpSecrets: "SNP_SECRETS"
        case .cpuid: "CPUID"
        case .svsmCAA: "SVSM_CAA"
        case .snpKernelHashes: "SNP_KERNEL_HASHES"
        default: "type \(rawValue)"
        }
    }
}

/// One item of the SEV metadata: a guest-physical range and what it is.
public struct SEVMetadataSection: Hashable, Sendable {
    public var gpa: UInt32
    public var size: UInt32
    public var type: SEVMetadataSectionType

    public init(gpa: UInt32, size: UInt32, type: SEVMetadataSectionType) {
        self.gpa = gpa
        self.size = size
        self.type = type
    }
}

/// Why an OVMF image's footer table or SEV metadata could not be read. Each
/// case names the structure, the offset and the value that is wrong.
public enum OVMFError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The image cannot hold the 32 trailing bytes and the 18-byte footer.
    case imageTooSmall(size: Int)
    /// The footer says the table is longer than the image before it.
    case footerTableTooLarge(tableSize: Int, available: Int)
    /// An entry's length is shorter than its own 18-byte trailer.
    case entryTooShort(guid: EFIGUID, offset: Int, length: Int)
    /// An entry's length reaches past the start of the table.
    case entryOverrunsTable(guid: EFIGUID, offset: Int, length: Int, remaining: Int)
    /// The SEV metadata header does not fit inside the image.
    case metadataOutsideImage(offsetFromEnd: UInt32, imageSize: Int)
    /// The SEV metadata does not start with "ASEV".
    case wrongMetadataSignature(found: [UInt8], offset: Int)
    /// The SEV metadata version is not 1.
    case wrongMetadataVersion(UInt32)
    /// The header's size cannot hold its items, or the items run past the image.
    case metadataItemsOutside(count: UInt32, headerSize: UInt32, available: Int)

    public var description: String {
        switch self {
        case .imageTooSmall(let size):
            return "Invalid OVMF image: \(size) bytes cannot hold the footer table, which ends 32 bytes before the end"
        case .footerTableTooLarge(let tableSize, let available):
            return "Invalid OVMF footer table: its footer gives a size of \(tableSize) bytes, but only \(available) bytes precede it"
        case .entryTooShort(let guid, let offset, let length):
            return "Invalid entry size: OVMF footer table entry \(guid) at image offset \(Hex.number(offset)) gives length \(length), less than its 18-byte trailer"
        case .entryOverrunsTable(let guid, let offset, let length, let remaining):
            return "Invalid entry size: OVMF footer table entry \(guid) at image offset \(Hex.number(offset)) gives length \(length), but only \(remaining) bytes of the table remain"
        case .metadataOutsideImage(let offsetFromEnd, let imageSize):
            return "Invalid SEV metadata offset: \(Hex.number(offsetFromEnd)) from the end does not leave a 16-byte header inside the \(imageSize)-byte image"
        case .wrongMetadataSignature(let found, let offset):
            let text = Hex.encode(found, separator: " ")
            return "Wrong SEV metadata signature: expected 'ASEV' at image offset \(Hex.number(offset)), found \(text)"
        case .wrongMetadataVersion(let version):
            return "Wrong SEV metadata version: \(version), expected 1"
        case .metadataItemsOutside(let count, let headerSize, let available):
            return "Invalid SEV metadata: \(count) items of 12 bytes do not fit in its size \(headerSize) (16-byte header) or the \(available) bytes left in the image"
        }
    }
}

/// An OVMF firmware image with its footer table and SEV metadata parsed,
/// as sev-snp-measure reads it (`ovmf.py`; `snp-launch-digest.md` §2).
///
/// The whole image is loaded so that it ends at 4 GiB. Parsing never traps:
/// any byte string yields either an image or an `OVMFError`.
public struct OVMFImage: Sendable {
    /// The image bytes.
    public let bytes: [UInt8]
    /// The footer table entries, in the order they are walked (from the footer backwards).
    public let tableEntries: [OVMFTableEntry]
    /// The SEV metadata sections in table order, or nil when the image has none.
    public let sevMetadata: [SEVMetadataSection]?

    /// The image must end here: 4 GiB.
    public static let end: UInt64 = 0x1_0000_0000

    /// Parses `bytes`.
    /// - Throws: `OVMFError` for a damaged footer table or SEV metadata. A
    ///   missing footer GUID is not an error: the table is then empty.
    public init(bytes: [UInt8]) throws(OVMFError) {
        self.bytes = bytes
        tableEntries = try Self.parseFooterTable(bytes)
        sevMetadata = try Self.parseSEVMetadata(bytes, entries: tableEntries)
    }

    /// Reads and parses the image at `path`.
    public init(path: String) throws(OVMFImageLoadError) {
        let bytes: [UInt8]
        do { bytes = try FileBytes.read(path) } catch { throw .file(error) }
        do { try self.init(bytes: bytes) } catch { throw .image(error) }
    }

    /// Where the image is loaded: 4 GiB minus its size.
    public var loadAddress: UInt64 { Self.end &- UInt64(bytes.count) }

    /// The data of the entry with `guid`. Where a GUID repeats, the entry
    /// farthest from the footer wins, as in sev-snp-measure's dictionary.
    public func tableEntry(_ guid: EFIGUID) -> OVMFTableEntry? {
        tableEntries.last { $0.guid == guid }
    }

    /// The AP reset EIP from SEV_ES_RESET_BLOCK, or nil without that entry.
    public var sevESResetEIP: UInt32? { tableEntry(OVMFTableGUID.sevESResetBlock).map(\.firstUInt32) }

    /// The kernel-hashes table GPA from SEV_HASH_TABLE_RV, or nil without that entry.
    public var sevHashTableGPA: UInt32? { tableEntry(OVMFTableGUID.sevHashTable).map(\.firstUInt32) }

    /// The footer table: it ends 32 bytes before the end of the image with an
    /// 18-byte footer (u16 table size, footer GUID); entries are walked
    /// backwards, each ending with its own u16 length and GUID.
    static func parseFooterTable(_ bytes: [UInt8]) throws(OVMFError) -> [OVMFTableEntry] {
        let trailer = 18
        guard bytes.count >= 32 + trailer else { throw .imageTooSmall(size: bytes.count) }
        let footerStart = bytes.count - 32 - trailer
        guard let footerGUID = EFIGUID(storedBytes: bytes[(footerStart + 2)..<(footerStart + trailer)]),
              footerGUID == OVMFTableGUID.footer
        else { return [] }
        let tableSize = Int(bytes.loadLE(UInt16.self, at: footerStart)) - trailer
        guard tableSize >= 0 else { return [] }
        guard tableSize <= footerStart else { throw .footerTableTooLarge(tableSize: tableSize, available: footerStart) }
        let tableStart = footerStart - tableSize
        var end = footerStart
        var entries = [OVMFTableEntry]()
        while end - tableStart >= trailer {
            let length = Int(bytes.loadLE(UInt16.self, at: end - trailer))
            let guid = EFIGUID(storedBytes: bytes[(end - 16)..<end])!
            guard length >= trailer else { throw .entryTooShort(guid: guid, offset: end - trailer, length: length) }
            guard length <= end - tableStart else {
                throw .entryOverrunsTable(guid: guid, offset: end - trailer, length: length, remaining: end - tableStart)
            }
            let dataStart = end - length
            entries.append(OVMFTableEntry(guid: guid, data: Array(bytes[dataStart..<(end - trailer)]), offset: dataStart))
            end = dataStart
        }
        return entries
    }

    /// The SEV metadata: a 16-byte header ("ASEV", u32 size, u32 version 1,
    /// u32 item count) then 12-byte items (u32 GPA, u32 size, u32 type).
    static func parseSEVMetadata(_ bytes: [UInt8], entries: [OVMFTableEntry]) throws(OVMFError) -> [SEVMetadataSection]? {
        guard let entry = entries.last(where: { $0.guid == OVMFTableGUID.sevMetadata }) else { return nil }
        let offsetFromEnd = entry.firstUInt32
        guard Int(offsetFromEnd) <= bytes.count, bytes.count - Int(offsetFromEnd) + 16 <= bytes.count else {
            throw .metadataOutsideImage(offsetFromEnd: offsetFromEnd, imageSize: bytes.count)
        }
        let start = bytes.count - Int(offsetFromEnd)
        let signature = Array(bytes[start..<(start + 4)])
        guard signature == Array("ASEV".utf8) else { throw .wrongMetadataSignature(found: signature, offset: start) }
        let size = bytes.loadLE(UInt32.self, at: start + 4)
        let version = bytes.loadLE(UInt32.self, at: start + 8)
        guard version == 1 else { throw .wrongMetadataVersion(version) }
        let count = bytes.loadLE(UInt32.self, at: start + 12)
        let available = bytes.count - start - 16
        let needed = UInt64(count) * 12
        guard needed == 0 || (needed + 16 <= UInt64(size) && needed <= UInt64(available)) else {
            throw .metadataItemsOutside(count: count, headerSize: size, available: available)
        }
        return (0..<Int(count)).map { index in
            let item = start + 16 + index * 12
            return SEVMetadataSection(gpa: bytes.loadLE(UInt32.self, at: item),
                                      size: bytes.loadLE(UInt32.self, at: item + 4),
                                      type: SEVMetadataSectionType(rawValue: bytes.loadLE(UInt32.self, at: item + 8)))
        }
    }
}

/// Why an OVMF image could not be loaded from a file.
public enum OVMFImageLoadError: Error, Equatable, Sendable, CustomStringConvertible {
    case file(FileReadError)
    case image(OVMFError)

    public var description: String {
        switch self {
        case .file(let error): "\(error)"
        case .image(let error): "\(error)"
        }
    }
}

extension Array where Element == UInt8 {
    /// The little-endian integer at `offset`; the caller has checked the bounds.
    func loadLE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size {
            value |= T(self[offset + index]) << (8 * index)
        }
        return value
    }
}
