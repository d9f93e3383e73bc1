/// The SEV kernel-hashes table QEMU places in guest memory for measured
/// direct boot, and which OVMF checks the kernel, initrd and command line
/// against. Under SNP the page holding it is measured as a NORMAL page.
///
/// Layout (QEMU `target/i386/sev.c` `SevHashTable`; sev-snp-measure
/// `sev_hashes.py`; `snp-launch-digest.md` §5): a 16-byte table GUID, a u16
/// length of 168, then three 50-byte entries (GUID, u16 length 50, SHA-256)
/// for the command line, the initrd and the kernel, padded with zeros to a
/// multiple of 16 bytes.
public struct SEVKernelHashes: Equatable, Sendable {
    public var kernelSHA256: [UInt8]
    public var initrdSHA256: [UInt8]
    public var cmdlineSHA256: [UInt8]

    static let tableGUID = EFIGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
    static let cmdlineGUID = EFIGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
    static let initrdGUID = EFIGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
    static let kernelGUID = EFIGUID("4de79437-abd2-427f-b835-d5b172d2045b")

    /// The table's length without padding.
    public static let tableLength = 16 + 2 + 3 * 50
    /// The table's length padded to 16 bytes.
    public static let paddedLength = (tableLength + 15) & ~15

    /// Hashes of the three boot inputs.
    ///
    /// - Parameters:
    ///   - kernel: the whole kernel file as given (bzImage bytes).
    ///   - initrd: the initrd file, or nil: hashed as the empty string.
    ///   - cmdline: the command line, or nil or empty: hashed as one NUL byte;
    ///     otherwise its UTF-8 bytes and a NUL.
    public init(kernel: [UInt8], initrd: [UInt8]?, cmdline: String?) {
        kernelSHA256 = MessageDigest.sha256.hash(kernel)
        initrdSHA256 = MessageDigest.sha256.hash(initrd ?? [])
        let text = cmdline.map { Array($0.utf8) } ?? []
        cmdlineSHA256 = MessageDigest.sha256.hash(text + [0])
    }

    /// The padded table (176 bytes).
    public var table: [UInt8] {
        var table = SEVKernelHashes.tableGUID.bytes + [UInt8(Self.tableLength & 0xFF), UInt8(Self.tableLength >> 8)]
        for (guid, digest) in [(Self.cmdlineGUID, cmdlineSHA256), (Self.initrdGUID, initrdSHA256), (Self.kernelGUID, kernelSHA256)] {
            table += guid.bytes + [50, 0] + digest
        }
        return table + [UInt8](repeating: 0, count: Self.paddedLength - Self.tableLength)
    }

    /// The 4096-byte page with the table at `offset` (the low 12 bits of the
    /// SEV_HASH_TABLE_RV GPA) and zeros elsewhere, or nil where the table
    /// would not fit in the page.
    public func page(tableOffset offset: Int) -> [UInt8]? {
        guard offset >= 0, offset + Self.paddedLength <= 4096 else { return nil }
        var page = [UInt8](repeating: 0, count: 4096)
        page.replaceSubrange(offset..<(offset + Self.paddedLength), with: table)
        return page
    }
}
