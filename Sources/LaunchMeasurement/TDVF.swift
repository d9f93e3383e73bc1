/// The kind of one TDVF metadata section. Source: TDVF design guide,
/// "TDVF metadata"; QEMU `hw/i386/tdvf.c`, which accepts these four.
public struct TDVFSectionType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Boot firmware volume: code, copied from the image.
    public static let bfv = Self(rawValue: 0)
    /// Configuration firmware volume: variables, copied from the image.
    public static let cfv = Self(rawValue: 1)
    /// The TD HOB the VMM writes at launch.
    public static let tdHOB = Self(rawValue: 2)
    /// Temporary memory, initially zero.
    public static let tempMem = Self(rawValue: 3)

    public var description: String {
        switch self {
        case .bfv: "BFV"
        case .cfv: "CFV"
        case .tdHOB: "TD_HOB"
        case .tempMem: "TempMem"
        default: "type \(rawValue)"
        }
    }
}

/// One TDVF metadata section (32 bytes in the image).
public struct TDVFSection: Hashable, Sendable {
    public var dataOffset: UInt32
    public var rawDataSize: UInt32
    public var memoryAddress: UInt64
    public var memoryDataSize: UInt64
    public var type: TDVFSectionType
    public var attributes: UInt32

    /// Attribute bit 0: the VMM measures the pages with TDH.MR.EXTEND.
    public static let mrExtend: UInt32 = 1 << 0
    /// Attribute bit 1: the pages are accepted later (TDH.MEM.PAGE.AUG), so not added at build time.
    public static let pageAug: UInt32 = 1 << 1

    public var isExtended: Bool { attributes & Self.mrExtend != 0 }
    public var isPageAug: Bool { attributes & Self.pageAug != 0 }
}

/// Why a TDVF image's metadata cannot be used.
public enum TDVFError: Error, Equatable, Sendable, CustomStringConvertible {
    case footerTable(OVMFError)
    case noMetadataOffset
    case metadataOutsideImage(offsetFromEnd: UInt32, imageSize: Int)
    case wrongSignature(found: [UInt8])
    case wrongVersion(UInt32)
    case tooFewSections(UInt32)
    case lengthMismatch(length: UInt32, sections: UInt32)
    case invalidSection(index: Int, reason: String)
    case tooManyPages(pages: UInt64)

    public var description: String {
        switch self {
        case .footerTable(let error): return "\(error)"
        case .noMetadataOffset:
            return "Cannot find the TDX metadata offset entry (GUID \(OVMFTableGUID.tdxMetadata)) in the OVMF footer table: not a TDVF image"
        case .metadataOutsideImage(let offset, let size):
            return "TDVF metadata offset 0x\(String(offset, radix: 16)) from the end does not leave the metadata inside the \(size)-byte image"
        case .wrongSignature(let found):
            return "Invalid TDVF signature in metadata: expected 'TDVF', found \(found.map { String($0, radix: 16) }.joined(separator: " "))"
        case .wrongVersion(let version): return "TDVF metadata version \(version) is not 1"
        case .tooFewSections(let count): return "Invalid number of TDVF metadata sections (\(count)); at least 2 are needed"
        case .lengthMismatch(let length, let sections):
            return "TDVF metadata length 0x\(String(length, radix: 16)) does not match \(sections) sections (expected 0x\(String(16 + 32 * UInt64(sections), radix: 16)))"
        case .invalidSection(let index, let reason): return "TDVF metadata section \(index): \(reason)"
        case .tooManyPages(let pages):
            return "TDVF metadata sections add \(pages) pages (0x\(String(pages * 4096, radix: 16)) bytes) at build time; at most 4 GiB is accepted"
        }
    }
}

/// A TDVF (OVMF built for TDX) image and its metadata, read as QEMU's
/// `tdvf_parse_metadata` reads it: the footer-table entry gives the
/// descriptor's offset from the end of the image; the descriptor is "TDVF",
/// u32 length, u32 version 1, u32 section count, then 32-byte sections.
public struct TDVFImage: Sendable {
    public let bytes: [UInt8]
    public let sections: [TDVFSection]

    /// Parses `bytes`. Never traps: any bytes give an image or a `TDVFError`.
    public init(bytes: [UInt8]) throws(TDVFError) {
        self.bytes = bytes
        let entries: [OVMFTableEntry]
        do { entries = try OVMFImage.parseFooterTable(bytes) } catch { throw .footerTable(error) }
        guard let entry = entries.last(where: { $0.guid == OVMFTableGUID.tdxMetadata }) else { throw .noMetadataOffset }
        let offsetFromEnd = entry.firstUInt32
        guard Int(offsetFromEnd) <= bytes.count, offsetFromEnd >= 16 else {
            throw .metadataOutsideImage(offsetFromEnd: offsetFromEnd, imageSize: bytes.count)
        }
        let start = bytes.count - Int(offsetFromEnd)
        let signature = Array(bytes[start..<(start + 4)])
        guard signature == Array("TDVF".utf8) else { throw .wrongSignature(found: signature) }
        let length = bytes.loadLE(UInt32.self, at: start + 4)
        guard UInt64(start) + UInt64(length) <= UInt64(bytes.count) else {
            throw .metadataOutsideImage(offsetFromEnd: offsetFromEnd, imageSize: bytes.count)
        }
        let version = bytes.loadLE(UInt32.self, at: start + 8)
        guard version == 1 else { throw .wrongVersion(version) }
        let count = bytes.loadLE(UInt32.self, at: start + 12)
        guard count >= 2 else { throw .tooFewSections(count) }
        guard UInt64(length) == 16 + 32 * UInt64(count) else { throw .lengthMismatch(length: length, sections: count) }
        var sections = [TDVFSection]()
        for index in 0..<Int(count) {
            let at = start + 16 + 32 * index
            let section = TDVFSection(dataOffset: bytes.loadLE(UInt32.self, at: at),
                                      rawDataSize: bytes.loadLE(UInt32.self, at: at + 4),
                                      memoryAddress: bytes.loadLE(UInt64.self, at: at + 8),
                                      memoryDataSize: bytes.loadLE(UInt64.self, at: at + 16),
                                      type: TDVFSectionType(rawValue: bytes.loadLE(UInt32.self, at: at + 24)),
                                      attributes: bytes.loadLE(UInt32.self, at: at + 28))
            if let reason = Self.problem(with: section, imageSize: bytes.count) {
                throw .invalidSection(index: index, reason: reason)
            }
            sections.append(section)
        }
        // Each section is below 2^52 bytes (checked above), so the sum cannot wrap before it passes the bound.
        var pages: UInt64 = 0
        for section in sections where !section.isPageAug {
            pages += section.memoryDataSize / 4096
            guard pages <= Self.maximumBuildTimePages else { throw .tooManyPages(pages: pages) }
        }
        self.sections = sections
    }

    /// The most pages the sections may add before the TD runs, in all:
    /// 4 GiB, the 32-bit space TDVF's sections lie in. Real images add a
    /// few MiB; the bound keeps a damaged image (a TempMem section of 2^50
    /// bytes) from making MRTD run for days, one SHA-384 update per page.
    public static let maximumBuildTimePages: UInt64 = 1 << 20

    /// What is wrong with `section`, or nil. QEMU's `tdvf_parse_and_check_section_entry`
    /// checks, plus the image bounds of measured bytes and attribute sense.
    static func problem(with section: TDVFSection, imageSize: Int) -> String? {
        if section.memoryDataSize < UInt64(section.rawDataSize) {
            return "RawDataSize \(Hex.number(UInt64(section.rawDataSize))) exceeds MemoryDataSize \(Hex.number(section.memoryDataSize))"
        }
        if section.memoryAddress % 4096 != 0 { return "MemoryAddress \(Hex.number(section.memoryAddress)) is not 4 KiB aligned" }
        if section.memoryDataSize % 4096 != 0 { return "MemoryDataSize \(Hex.number(section.memoryDataSize)) is not 4 KiB aligned" }
        let (end, overflow) = section.memoryAddress.addingReportingOverflow(section.memoryDataSize)
        if overflow || end > 1 << 52 {
            return "[\(Hex.number(section.memoryAddress)), +\(Hex.number(section.memoryDataSize))) reaches past the 52-bit guest-physical address space of a TD"
        }
        switch section.type {
        case .bfv, .cfv:
            if section.rawDataSize == 0 { return "\(section.type) section has RawDataSize 0" }
            // QEMU copies MemoryDataSize bytes from DataOffset in the image.
            if UInt64(section.dataOffset) + section.memoryDataSize > UInt64(imageSize) {
                return "\(section.type) data [\(Hex.number(UInt64(section.dataOffset))), \(Hex.number(UInt64(section.dataOffset) + section.memoryDataSize))) runs past the end of the \(imageSize)-byte image"
            }
        case .tdHOB, .tempMem:
            if section.rawDataSize != 0 { return "\(section.type) section has RawDataSize \(Hex.number(UInt64(section.rawDataSize))), expected 0" }
            if section.type == .tdHOB, section.isExtended {
                return "TD_HOB section has MR.EXTEND, but its contents are written by the VMM at launch and cannot be measured offline"
            }
        default:
            return "unsupported section type \(section.type.rawValue)"
        }
        if section.isPageAug, section.isExtended {
            return "attributes \(Hex.number(UInt64(section.attributes))) ask for MR.EXTEND of pages that PAGE.AUG adds after build time"
        }
        return nil
    }

    /// MRTD of a TD launched from this image: for each section in metadata
    /// order, each page is added (TDH.MEM.PAGE.ADD) and, for MR.EXTEND
    /// sections, measured (16 × TDH.MR.EXTEND) before the next page; PAGE.AUG
    /// sections are skipped. Firmware volumes come from the image at
    /// DataOffset; TD_HOB and TempMem pages are zero.
    ///
    /// Order: QEMU `target/i386/kvm/tdx.c` (one KVM_TDX_INIT_MEM_REGION per
    /// section) and KVM `tdx_vcpu_init_mem_region`; cross-checked with
    /// td-shim's `td_shim_tee_info_hash.py`.
    public var mrtd: SHA384Digest {
        var measurement = TDXMeasurement()
        bytes.withUnsafeBytes { image in
            for section in sections where !section.isPageAug {
                for page in 0..<(section.memoryDataSize / 4096) {
                    let gpa = section.memoryAddress + page * 4096
                    var contents: UnsafeRawBufferPointer?
                    if section.type == .bfv || section.type == .cfv {
                        let offset = Int(section.dataOffset) + Int(page) * 4096
                        contents = UnsafeRawBufferPointer(rebasing: image[offset..<(offset + 4096)])
                    }
                    // The sections were checked at parse time: aligned, whole pages inside the image.
                    measurement.addCheckedPage(gpa: gpa, contents: contents, measure: section.isExtended)
                }
            }
        }
        return measurement.finalize()
    }
}
