import GuestMemfd
import LaunchMeasurement
/// A Linux bzImage as the x86 boot protocol describes it
/// (Documentation/arch/x86/boot.rst): the setup header at 0x1F1, and the
/// protected-mode kernel after the real-mode setup sectors. snpvmm boots it
/// through the 64-bit entry, so the real-mode setup code never runs.
///
/// Offsets below are into the image and, equally, into `struct boot_params`
/// (the "zero page"), which embeds the setup header at the same offset.
public struct BzImage: Equatable, Sendable {
    /// The setup header's bytes, from 0x1F1 to its end, copied into boot_params.
    public var setupHeader: [UInt8]
    /// `version` (0x206): the boot protocol, major << 8 | minor.
    public var protocolVersion: UInt16
    /// The protected-mode kernel's offset in the file: (setup_sects + 1) * 512.
    public var kernelOffset: UInt64
    /// The protected-mode kernel's size in the file.
    public var kernelSize: UInt64
    /// `relocatable_kernel` (0x234).
    public var relocatable: Bool
    /// `kernel_alignment` (0x230).
    public var kernelAlignment: UInt32
    /// `pref_address` (0x258): where a non-relocatable kernel runs, and the
    /// lowest address a relocatable one decompresses to.
    public var preferredAddress: UInt64
    /// `init_size` (0x260): memory the kernel needs from its run address before it reads the memory map.
    public var initSize: UInt32
    /// `cmdline_size` (0x238): the longest command line, without its NUL.
    public var commandLineLimit: Int
    /// `initrd_addr_max` (0x22C): the highest address the initrd may occupy.
    public var initrdAddressMax: UInt32

    // Setup-header fields (boot.rst, "The Real-Mode Kernel Header").
    static let setupHeaderStart = 0x1F1
    static let setupSectsOffset = 0x1F1, bootFlagOffset = 0x1FE, jumpOffset = 0x200, headerMagicOffset = 0x202
    static let versionOffset = 0x206, typeOfLoaderOffset = 0x210, loadFlagsOffset = 0x211, code32StartOffset = 0x214
    static let ramdiskImageOffset = 0x218, ramdiskSizeOffset = 0x21C, cmdLinePtrOffset = 0x228
    static let initrdAddrMaxOffset = 0x22C, kernelAlignmentOffset = 0x230, relocatableOffset = 0x234
    static let xloadflagsOffset = 0x236, cmdlineSizeOffset = 0x238, prefAddressOffset = 0x258, initSizeOffset = 0x260
    static let vidModeOffset = 0x1FA
    // boot_params fields outside the header (Documentation/arch/x86/zero-page.rst).
    static let extRamdiskImageOffset = 0x0C0, extRamdiskSizeOffset = 0x0C4, extCmdLinePtrOffset = 0x0C8
    static let e820EntriesOffset = 0x1E8, e820TableOffset = 0x2D0
    /// `boot_params.cc_blob_address` (zero-page.rst).
    static let ccBlobAddressOffset = 0x13C
    /// `E820_MAX_ENTRIES_ZEROPAGE` (arch/x86/include/uapi/asm/bootparam.h); each entry is 20 bytes.
    static let e820Capacity = 128, e820EntrySize = 20

    /// "HdrS" at 0x202.
    static let headerMagic: UInt32 = 0x5372_6448
    /// 0xAA55 at 0x1FE.
    static let bootFlag: UInt16 = 0xAA55
    /// `LOADED_HIGH` in loadflags: the protected-mode code loads at 0x100000 (a bzImage).
    static let loadedHigh: UInt8 = 1 << 0
    /// `XLF_KERNEL_64` in xloadflags: the kernel has the 64-bit entry at load address + 0x200.
    static let kernel64: UInt16 = 1 << 0
    /// Protocol 2.12 (kernel 3.8) added xloadflags, which snpvmm needs to find the 64-bit entry.
    static let minimumVersion: UInt16 = 0x020C
    /// The 64-bit entry's offset from the load address ("64-bit Boot Protocol").
    static let entryOffset64: UInt64 = 0x200
    /// `type_of_loader` 0xFF: a boot loader without an assigned id.
    static let undefinedLoader: UInt8 = 0xFF

    /// True when `image` carries the setup-header signature: 0xAA55 at 0x1FE and "HdrS" at 0x202.
    static func matches(_ image: ImageSource) -> Bool {
        guard let bytes = try? image.read(offset: UInt64(bootFlagOffset), count: 8, "setup header") else { return false }
        let header = LittleEndianBytes(bytes: bytes, what: "setup header")
        return (try? header.u16(0)) == bootFlag && (try? header.u32(headerMagicOffset - bootFlagOffset)) == headerMagic
    }

    /// Reads and checks the setup header of `image`.
    ///
    /// - Throws: `ImageError.unsupportedBzImage` for a zImage, a protocol
    ///   older than 2.12, a kernel without the 64-bit entry, or a header too
    ///   short for its protocol; `.truncated` when the image ends early.
    public init(_ image: ImageSource) throws(ImageError) {
        // The header ends at 0x202 plus the jump's signed offset byte at 0x201 (boot.rst, "32-bit Boot Protocol").
        let jump = LittleEndianBytes(bytes: try image.read(offset: UInt64(Self.jumpOffset), count: 2, "setup header jump"),
                                     what: "setup header jump")
        let headerEnd = Self.headerMagicOffset + Int(try jump.u8(1))
        let header = try image.read(offset: UInt64(Self.setupHeaderStart), count: headerEnd - Self.setupHeaderStart,
                                    "setup header")
        // Read fields at their boot_params offsets.
        let fields = LittleEndianBytes(bytes: [UInt8](repeating: 0, count: Self.setupHeaderStart) + header,
                                       what: "setup header")
        func field<T>(_ read: (Int) throws(ImageError) -> T, _ offset: Int, _ name: String) throws(ImageError) -> T {
            do { return try read(offset) } catch {
                throw .unsupportedBzImage("its \(header.count)-byte setup header ends before \(name) at \(Hex.number(offset))")
            }
        }
        let version = try field(fields.u16, Self.versionOffset, "version")
        guard version >= Self.minimumVersion else {
            throw .unsupportedBzImage("boot protocol \(version >> 8).\(String(version & 0xFF).leftPadded(to: 2)) predates 2.12, the first with a 64-bit entry")
        }
        guard try field(fields.u8, Self.loadFlagsOffset, "loadflags") & Self.loadedHigh != 0 else {
            throw .unsupportedBzImage("it is a zImage (LOADED_HIGH clear in loadflags)")
        }
        guard try field(fields.u16, Self.xloadflagsOffset, "xloadflags") & Self.kernel64 != 0 else {
            throw .unsupportedBzImage("it has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)")
        }
        var setupSectors = UInt64(try field(fields.u8, Self.setupSectsOffset, "setup_sects"))
        if setupSectors == 0 { setupSectors = 4 }  // boot.rst: "If this field is 0, the real value is 4."
        kernelOffset = (setupSectors + 1) * 512
        guard kernelOffset < image.size else {
            throw .truncated(what: "protected-mode kernel", offset: kernelOffset, count: 1, size: image.size)
        }
        kernelSize = image.size - kernelOffset
        setupHeader = header
        protocolVersion = version
        relocatable = try field(fields.u8, Self.relocatableOffset, "relocatable_kernel") != 0
        kernelAlignment = try field(fields.u32, Self.kernelAlignmentOffset, "kernel_alignment")
        preferredAddress = try field(fields.u64, Self.prefAddressOffset, "pref_address")
        initSize = try field(fields.u32, Self.initSizeOffset, "init_size")
        commandLineLimit = Int(try field(fields.u32, Self.cmdlineSizeOffset, "cmdline_size"))
        initrdAddressMax = try field(fields.u32, Self.initrdAddrMaxOffset, "initrd_addr_max")
    }

    /// The address the kernel decompresses to and runs at when loaded at
    /// `loadAddress`: a relocatable kernel rounds its load address up to
    /// `kernel_alignment` but never goes below `pref_address`
    /// (LOAD_PHYSICAL_ADDR; arch/x86/boot/compressed/head_64.S, startup_64);
    /// any other kernel runs at `pref_address` (boot.rst, init_size).
    /// Nil where the arithmetic would wrap.
    public func runAddress(loadAddress: UInt64) -> UInt64? {
        guard relocatable else { return preferredAddress }
        let alignment = UInt64(max(kernelAlignment, 1))
        let (sum, overflow) = loadAddress.addingReportingOverflow(alignment - 1)
        guard !overflow else { return nil }
        return max(sum / alignment * alignment, preferredAddress)
    }

    /// `struct boot_params` for the 64-bit entry: the kernel's own setup
    /// header with the loader's fields written, the command line, the
    /// initrd and the e820 map.
    ///
    /// `ccBlob` is an SEV-SNP guest's confidential computing blob, written
    /// to `cc_blob_address` (zero-page.rst, offset 0x13c), where the
    /// decompressor looks first (find_cc_blob).
    public func bootParams(loadAddress: UInt64, commandLine: UInt64, initrd: (address: UInt64, size: UInt64)?,
                    memoryMap: [MemoryMapEntry], ccBlob: UInt64? = nil) -> [UInt8] {
        precondition(memoryMap.count <= Self.e820Capacity, "more e820 entries than boot_params holds")
        var page = LittleEndianWriter(count: 4096)
        page.store(setupHeader, at: Self.setupHeaderStart)
        page.store(UInt16(0xFFFF), at: Self.vidModeOffset)  // vid_mode: "normal" (boot.rst, special command line options)
        page.store(Self.undefinedLoader, at: Self.typeOfLoaderOffset)
        page.store(UInt32(truncatingIfNeeded: loadAddress), at: Self.code32StartOffset)
        page.store(UInt32(truncatingIfNeeded: commandLine), at: Self.cmdLinePtrOffset)
        page.store(UInt32(truncatingIfNeeded: commandLine >> 32), at: Self.extCmdLinePtrOffset)
        if let initrd {
            page.store(UInt32(truncatingIfNeeded: initrd.address), at: Self.ramdiskImageOffset)
            page.store(UInt32(truncatingIfNeeded: initrd.size), at: Self.ramdiskSizeOffset)
            page.store(UInt32(truncatingIfNeeded: initrd.address >> 32), at: Self.extRamdiskImageOffset)
            page.store(UInt32(truncatingIfNeeded: initrd.size >> 32), at: Self.extRamdiskSizeOffset)
        }
        if let ccBlob { page.store(UInt32(truncatingIfNeeded: ccBlob), at: Self.ccBlobAddressOffset) }
        page.store(UInt8(memoryMap.count), at: Self.e820EntriesOffset)
        for (index, entry) in memoryMap.enumerated() {
            let offset = Self.e820TableOffset + index * Self.e820EntrySize
            page.store(entry.start, at: offset)
            page.store(entry.size, at: offset + 8)
            page.store(entry.type.rawValue, at: offset + 16)
        }
        return page.bytes
    }
}
