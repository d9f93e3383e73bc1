import GuestMemfd
import Foundation
import VMMCore
import Testing

/// The bzImage setup header and the boot_params built from it
/// (Documentation/arch/x86/boot.rst, zero-page.rst).
@Suite struct BzImageTests {
    @Test func setupHeaderFieldsAreReadAtTheirOffsets() throws {
        var builder = BzImageBuilder()
        builder.setupSectors = 0  // boot.rst: 0 means 4
        let image = try BzImage(ImageSource(bytes: builder.build()))
        #expect(image.protocolVersion == 0x020F)
        #expect(image.kernelOffset == 5 * 512)
        #expect(image.kernelSize == 0x1000)
        #expect(image.relocatable)
        #expect(image.kernelAlignment == 0x20_0000)
        #expect(image.preferredAddress == 0x100_0000)
        #expect(image.initSize == 0x40_0000)
        #expect(image.commandLineLimit == 2047)
        #expect(image.initrdAddressMax == 0x7FFF_FFFF)
        #expect(image.setupHeader.count == 0x202 + 0x6A - 0x1F1)
    }

    @Test func relocatableKernelRunsAtItsAlignedLoadAddressButNotBelowPrefAddress() throws {
        var builder = BzImageBuilder()
        let image = try BzImage(ImageSource(bytes: builder.build()))
        #expect(image.runAddress(loadAddress: 0x10_0000) == 0x100_0000)
        #expect(image.runAddress(loadAddress: 0x210_0000) == 0x220_0000)
        builder.relocatable = 0
        #expect(try BzImage(ImageSource(bytes: builder.build())).runAddress(loadAddress: 0x10_0000) == 0x100_0000)
    }

    /// boot_params, field by field: the kernel's header copied at 0x1F1,
    /// then what the loader writes.
    @Test func bootParamsCarryTheLoaderFieldsCommandLineInitrdAndE820() throws {
        let image = try BzImage(ImageSource(bytes: BzImageBuilder().build()))
        let map = Layout.memoryMap(memorySize: 256 << 20)
        let page = image.bootParams(loadAddress: 0x10_0000, commandLine: 0x2_0000,
                                    initrd: (0x0FF0_0000, 0x1234), memoryMap: map)
        let fields = LittleEndianBytes(bytes: page, what: "boot_params")
        #expect(page.count == 4096)
        #expect(try fields.u16(0x1FE) == 0xAA55)         // boot_flag, copied
        #expect(try fields.u32(0x202) == 0x5372_6448)    // "HdrS", copied
        #expect(try fields.u16(0x1FA) == 0xFFFF)         // vid_mode: normal
        #expect(try fields.u8(0x210) == 0xFF)            // type_of_loader: undefined
        #expect(try fields.u32(0x214) == 0x10_0000)      // code32_start
        #expect(try fields.u32(0x218) == 0x0FF0_0000)    // ramdisk_image
        #expect(try fields.u32(0x21C) == 0x1234)         // ramdisk_size
        #expect(try fields.u32(0x228) == 0x2_0000)       // cmd_line_ptr
        #expect(try fields.u32(0x0C0) == 0)              // ext_ramdisk_image
        #expect(try fields.u32(0x0C8) == 0)              // ext_cmd_line_ptr
        #expect(try fields.u8(0x1E8) == 3)               // e820_entries
        for (index, entry) in map.enumerated() {
            let offset = 0x2D0 + 20 * index
            #expect(try fields.u64(offset) == entry.start)
            #expect(try fields.u64(offset + 8) == entry.size)
            #expect(try fields.u32(offset + 16) == entry.type.rawValue)
        }
    }

    struct BadBzImage: CustomTestStringConvertible, Sendable {
        let name: String
        let bytes: [UInt8]
        let error: ImageError
        var testDescription: String { name }
    }

    static let badImages: [BadBzImage] = {
        var old = BzImageBuilder(); old.version = 0x020B
        var zImage = BzImageBuilder(); zImage.loadFlags = 0
        var no64 = BzImageBuilder(); no64.xloadflags = 0x02
        var short = BzImageBuilder(); short.headerLength = 0x30
        var noKernel = BzImageBuilder(); noKernel.kernel = []
        let noKernelBytes = noKernel.build()
        return [
            BadBzImage(name: "protocol 2.11", bytes: old.build(),
                       error: .unsupportedBzImage("boot protocol 2.11 predates 2.12, the first with a 64-bit entry")),
            BadBzImage(name: "zImage", bytes: zImage.build(),
                       error: .unsupportedBzImage("it is a zImage (LOADED_HIGH clear in loadflags)")),
            BadBzImage(name: "no 64-bit entry", bytes: no64.build(),
                       error: .unsupportedBzImage("it has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)")),
            BadBzImage(name: "header too short", bytes: short.build(),
                       error: .unsupportedBzImage("its 65-byte setup header ends before xloadflags at 0x236")),
            BadBzImage(name: "no protected-mode kernel", bytes: noKernelBytes,
                       error: .truncated(what: "protected-mode kernel", offset: 0xA00, count: 1, size: 0xA00)),
        ]
    }()

    @Test(arguments: badImages)
    func unsupportedImagesAreTypedErrors(_ bad: BadBzImage) {
        #expect(throws: bad.error) { try BzImage(ImageSource(bytes: bad.bytes)) }
    }

    @Test func everyPrefixOfAnImageIsRefusedInOneLineAndAnyJumpByteParsesOrIsRefused() {
        let bytes = BzImageBuilder().build()
        // Up to 0x300 bytes no prefix holds both the setup header and the protected-mode kernel.
        for length in 0...0x300 {
            do {
                _ = try BzImage(ImageSource(bytes: Array(bytes.prefix(length))))
                Issue.record("a \(length)-byte prefix was accepted")
            } catch {
                #expect(!error.description.isEmpty && !error.description.contains("\n"))
            }
        }
        var jump = bytes, parsed = 0
        for value in UInt8.min...UInt8.max {
            jump[0x201] = value
            do {
                _ = try BzImage(ImageSource(bytes: jump))
                parsed += 1
            } catch {
                #expect(!error.description.isEmpty && !error.description.contains("\n"))
            }
        }
        #expect(parsed > 0)
    }

    /// Debian's kernel, when scripts/setup has fetched it.
    @Test(.enabled(if: DebianKernel.path != nil, "Debian's kernel is not in .build-fixtures (run scripts/setup)"))
    func debianKernelHeaderIsProtocol215With64BitEntry() throws {
        let image = try BzImage(ImageSource(path: DebianKernel.path!, role: "kernel"))
        #expect(image.protocolVersion >= 0x020F)
        #expect(image.relocatable)
        #expect(image.commandLineLimit >= 255)
        #expect(image.initSize > 0)
    }
}
