/// The SEV-SNP launch digest: the chain of PAGE_INFO hashes the firmware
/// folds every launched page into, whose last value is the MEASUREMENT of
/// the attestation report.
///
/// Each page sets `LD = SHA-384(PAGE_INFO)`, where PAGE_INFO carries the
/// current LD, the page's contents hash, its type and its GPA. There is no
/// finalisation step. Sources: AMD SEV-SNP firmware ABI, "PAGE_INFO
/// structure" (the table sev-snp-measure's `gctx.py` cites as SNP spec 8.17.2
/// Table 67); `snp-launch-digest.md` §1.
///
/// Population code can feed it page by page as it issues
/// `KVM_SEV_SNP_LAUNCH_UPDATE`, then add one VMSA page per vCPU, which is
/// what KVM measures at `KVM_SEV_SNP_LAUNCH_FINISH`.
public struct SNPLaunchDigest: Sendable, Equatable {
    /// The current launch digest (LD).
    public private(set) var value: SHA384Digest

    /// The GPA the RMP records for every VMSA page: (u64)-1, page aligned,
    /// bits above 51 cleared. KVM's `INITIAL_VMSA_GPA` has the same value.
    public static let vmsaGPA: UInt64 = 0xFFFF_FFFF_F000

    /// Starts a chain at `start`: 48 zero bytes for a new launch, or a digest
    /// computed earlier (sev-snp-measure's `--snp-ovmf-hash`).
    public init(start: SHA384Digest = .zero) {
        value = start
    }

    /// Adds one page as the firmware measures it.
    ///
    /// NORMAL and VMSA pages contribute the SHA-384 of their 4096 bytes;
    /// ZERO, UNMEASURED, SECRETS and CPUID pages contribute only their type
    /// and GPA, so `contents` is ignored for them and may be nil.
    /// - Throws: `SNPLaunchDigestError` when a NORMAL or VMSA page comes
    ///   without exactly 4096 bytes of contents.
    public mutating func addPage(gpa: UInt64, type: SNPPageType, contents: UnsafeRawBufferPointer?)
        throws(SNPLaunchDigestError)
    {
        guard Self.typeHashesContents(type) else {
            addPage(gpa: gpa, type: type, contentsDigest: nil)
            return
        }
        guard let contents else { throw .missingContents(gpa: gpa, type: type) }
        guard contents.count == 4096 else { throw .wrongPageLength(gpa: gpa, type: type, length: contents.count) }
        addPage(gpa: gpa, type: type, contentsDigest: SHA384.hash(contents))
    }

    /// Adds one page whose contents hash is already known (nil for the page
    /// types that carry none). This is the link the batch forms use after
    /// hashing pages in parallel.
    /// The link itself is `snpPageInfoDigest`.
    public mutating func addPage(gpa: UInt64, type: SNPPageType, contentsDigest: SHA384Digest?) {
        value = snpPageInfoDigest(current: value, contentsHash: contentsDigest, type: type, gpa: gpa)
    }

    /// Adds `count` consecutive pages from `gpa` of a type that carries no
    /// contents hash (ZERO, UNMEASURED, SECRETS, CPUID), one link each.
    public mutating func addPages(gpa: UInt64, count: UInt64, type: SNPPageType) {
        for index in 0..<count {
            addPage(gpa: gpa &+ index &* 4096, type: type, contentsDigest: nil)
        }
    }

    /// Adds consecutive NORMAL pages from `gpa` whose bytes are `contents`
    /// (a multiple of 4096 bytes), as one launch update of the whole range is
    /// measured. The page hashes are computed on all cores and chained in
    /// ascending GPA order, the chain overlapping the hashing.
    /// - Throws: `SNPLaunchDigestError.notWholePages` for a partial page.
    public mutating func addNormalPages(gpa: UInt64, contents: UnsafeRawBufferPointer) throws(SNPLaunchDigestError) {
        guard contents.count % 4096 == 0 else { throw .notWholePages(gpa: gpa, length: contents.count) }
        // One PAGE_INFO buffer for the whole run: each page's digest is
        // written over the current digest at its start, ready for the next.
        let chain = PageDigester(.sha384)
        var info = [UInt8](repeating: 0, count: 0x70)
        info.replaceSubrange(0..<48, with: value.bytes)
        info[0x60] = 0x70
        info[0x62] = SNPPageType.normal.rawValue
        info.withUnsafeMutableBytes { info in
            ParallelPageHasher.forEachPageDigest(contents, algorithm: .sha384) { page, digest in
                (info.baseAddress! + 0x30).copyMemory(from: digest.baseAddress!, byteCount: 48)
                info.storeBytes(of: (gpa &+ UInt64(page) &* 4096).littleEndian, toByteOffset: 0x68, as: UInt64.self)
                chain.digest(UnsafeRawBufferPointer(info), into: info.baseAddress!)
            }
        }
        value = SHA384Digest(bytes: Array(info[0..<48]))
    }

    /// Adds consecutive NORMAL pages from `gpa` whose bytes are `contents`.
    public mutating func addNormalPages(gpa: UInt64, contents: [UInt8]) throws(SNPLaunchDigestError) {
        try contents.withUnsafeBytes { bytes in
            Result { () throws(SNPLaunchDigestError) in try addNormalPages(gpa: gpa, contents: bytes) }
        }.get()
    }

    /// Adds one vCPU's VMSA page (4096 bytes) at `vmsaGPA`, as KVM does for
    /// each vCPU in index order at launch finish.
    public mutating func addVMSA(_ page: [UInt8]) throws(SNPLaunchDigestError) {
        try page.withUnsafeBytes { bytes in
            Result { () throws(SNPLaunchDigestError) in try addPage(gpa: Self.vmsaGPA, type: .vmsa, contents: bytes) }
        }.get()
    }

    /// Whether the firmware hashes the page's bytes into CONTENTS.
    public static func typeHashesContents(_ type: SNPPageType) -> Bool {
        type == .normal || type == .vmsa
    }
}

/// A page the launch digest cannot take as given.
public enum SNPLaunchDigestError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A NORMAL or VMSA page came without contents.
    case missingContents(gpa: UInt64, type: SNPPageType)
    /// A NORMAL or VMSA page's contents are not 4096 bytes.
    case wrongPageLength(gpa: UInt64, type: SNPPageType, length: Int)
    /// A batch of NORMAL pages is not a whole number of pages.
    case notWholePages(gpa: UInt64, length: Int)
    /// A launch step names firmware pages the image does not have.
    case outsideFirmwareImage(offset: Int, pageCount: UInt64, imageSize: Int)

    public var description: String {
        switch self {
        case .missingContents(let gpa, let type):
            "\(type) page at GPA 0x\(String(gpa, radix: 16)) needs its 4096 bytes of contents to be measured"
        case .wrongPageLength(let gpa, let type, let length):
            "\(type) page at GPA 0x\(String(gpa, radix: 16)) has \(length) bytes of contents, not 4096"
        case .notWholePages(let gpa, let length):
            "NORMAL pages from GPA 0x\(String(gpa, radix: 16)) span \(length) bytes, not a multiple of 4096"
        case .outsideFirmwareImage(let offset, let pageCount, let imageSize):
            "\(pageCount) firmware pages from offset 0x\(String(offset, radix: 16)) run past the end of the \(imageSize)-byte image"
        }
    }
}
