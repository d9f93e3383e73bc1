/// MRTD, the build-time measurement of an Intel TDX trust domain.
///
/// MRTD is one running SHA-384 hash, not an extend chain: TDH.MNG.INIT opens
/// it, every TDH.MEM.PAGE.ADD and TDH.MR.EXTEND feeds it whole 128-byte
/// blocks, and TDH.MR.FINALIZE closes it once. Sources: intel/tdx-module
/// `tdh_mem_page_add.c`, `tdh_mr_extend.c`, `tdh_mr_finalize.c`;
/// `tdx-mrtd.md`.
///
/// Population code calls `addPage(gpa:contents:measure:)` per page as KVM's
/// `KVM_TDX_INIT_MEM_REGION` does (`arch/x86/kvm/vmx/tdx.c`: PAGE.ADD, then,
/// with `KVM_TDX_MEASURE_MEMORY_REGION`, 16 MR.EXTENDs of that page before
/// the next page), then `finalize()` as `KVM_TDX_FINALIZE_VM` does.
public struct TDXMeasurement: ~Copyable {
    private let context = SHA384()

    /// The chunk one TDH.MR.EXTEND measures (KVM's `TDX_EXTENDMR_CHUNKSIZE`).
    public static let extendChunkSize = 256

    /// TDH.MNG.INIT: an empty measurement.
    public init() {}

    /// TDH.MEM.PAGE.ADD of the page at `gpa`: one 128-byte block, "MEM.PAGE.ADD"
    /// then the GPA (u64 LE) at byte 16. The page's contents do not enter MRTD here.
    public mutating func pageAdd(gpa: UInt64) {
        context.update(Self.block(tag: "MEM.PAGE.ADD", gpa: gpa))
    }

    /// TDH.MR.EXTEND of the 256-byte chunk at `gpa`: a 128-byte block,
    /// "MR.EXTEND" then the GPA at byte 16, then the chunk's 256 bytes.
    /// - Throws: `TDXMeasurementError` unless `chunk` is 256 bytes and `gpa` 256-byte aligned.
    public mutating func mrExtend(gpa: UInt64, chunk: UnsafeRawBufferPointer) throws(TDXMeasurementError) {
        guard gpa % UInt64(Self.extendChunkSize) == 0 else { throw .unalignedExtend(gpa: gpa) }
        guard chunk.count == Self.extendChunkSize else { throw .wrongChunkLength(gpa: gpa, length: chunk.count) }
        context.update(Self.block(tag: "MR.EXTEND", gpa: gpa))
        context.update(chunk)
    }

    /// One page as `KVM_TDX_INIT_MEM_REGION` adds it: PAGE.ADD, then, when
    /// `measure` is set, MR.EXTEND of its 16 chunks in address order.
    /// `contents` may be nil (an all-zero page).
    /// - Throws: `TDXMeasurementError` for an unaligned GPA or contents that are not 4096 bytes.
    public mutating func addPage(gpa: UInt64, contents: UnsafeRawBufferPointer?, measure: Bool) throws(TDXMeasurementError) {
        guard gpa % 4096 == 0 else { throw .unalignedPage(gpa: gpa) }
        if let contents, contents.count != 4096 { throw .wrongPageLength(gpa: gpa, length: contents.count) }
        addCheckedPage(gpa: gpa, contents: contents, measure: measure)
    }

    /// `addPage` for a page-aligned GPA and 4096 bytes of contents (or nil).
    public mutating func addCheckedPage(gpa: UInt64, contents: UnsafeRawBufferPointer?, measure: Bool) {
        pageAdd(gpa: gpa)
        guard measure else { return }
        let zeros = [UInt8](repeating: 0, count: Self.extendChunkSize)
        for chunk in 0..<(4096 / Self.extendChunkSize) {
            let offset = chunk * Self.extendChunkSize
            context.update(Self.block(tag: "MR.EXTEND", gpa: gpa + UInt64(offset)))
            if let contents {
                context.update(UnsafeRawBufferPointer(rebasing: contents[offset..<(offset + Self.extendChunkSize)]))
            } else {
                context.update(zeros)
            }
        }
    }

    /// TDH.MR.FINALIZE: closes the hash and returns MRTD.
    public consuming func finalize() -> SHA384Digest {
        context.finalize()
    }

    /// A 128-byte header block: the ASCII tag, zeros, the GPA at byte 16, zeros.
    static func block(tag: String, gpa: UInt64) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 128)
        block.replaceSubrange(0..<tag.utf8.count, with: tag.utf8)
        for byte in 0..<8 { block[16 + byte] = UInt8(truncatingIfNeeded: gpa >> (8 * UInt64(byte))) }
        return block
    }
}

/// An operation the TDX module would refuse, so MRTD cannot include it.
public enum TDXMeasurementError: Error, Equatable, Sendable, CustomStringConvertible {
    case unalignedPage(gpa: UInt64)
    case wrongPageLength(gpa: UInt64, length: Int)
    case unalignedExtend(gpa: UInt64)
    case wrongChunkLength(gpa: UInt64, length: Int)

    public var description: String {
        switch self {
        case .unalignedPage(let gpa): return "TDH.MEM.PAGE.ADD needs a 4 KiB aligned GPA, got \(Hex.number(gpa))"
        case .wrongPageLength(let gpa, let length): return "page at GPA \(Hex.number(gpa)) has \(length) bytes of contents, not 4096"
        case .unalignedExtend(let gpa): return "TDH.MR.EXTEND needs a 256-byte aligned GPA, got \(Hex.number(gpa))"
        case .wrongChunkLength(let gpa, let length): return "TDH.MR.EXTEND at GPA \(Hex.number(gpa)) takes 256 bytes, got \(length)"
        }
    }
}
