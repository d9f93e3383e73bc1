import GuestMemfd
import Fixtures
import Foundation
import VMMCore
import Testing

/// The ELF64 parser: segments by physical address, the PVH note, and a
/// typed error for every malformed header, never a trap.
@Suite struct ELFTests {
    @Test func fixtureGuestHasTwoSegmentsAtTheirPhysicalAddressesAndItsPVHEntry() throws {
        let elf = try ELFKernel(ImageSource(path: Fixtures.pvhCheckPath, role: "kernel"))
        #expect(elf.pvhEntry == 0x10_0000)
        #expect(elf.segments.map(\.physicalAddress) == [0x10_0000, 0x20_0000])
        // The data segment carries a BSS: more memory than file bytes.
        #expect(elf.segments[1].memorySize > elf.segments[1].fileSize)
    }

    @Test(arguments: [4, 8])
    func pvhEntryNoteIsReadWithEitherDescriptorSize(_ size: Int) throws {
        var builder = ELFBuilder.pvh([0xF4], at: 0x20_0000)
        builder.noteDescriptorSize = size
        #expect(try ELFKernel(ImageSource(bytes: builder.build())).pvhEntry == 0x20_0000)
    }

    @Test func kernelWithoutTheNoteParsesWithNoEntry() throws {
        var builder = ELFBuilder.pvh([0xF4])
        builder.pvhEntry = nil
        #expect(try ELFKernel(ImageSource(bytes: builder.build())).pvhEntry == nil)
    }

    @Test func segmentsWithoutMemoryAreSkippedAndOthersKept() throws {
        let builder = ELFBuilder(segments: [
            .init(physicalAddress: 0x10_0000, data: [1, 2, 3]),
            .init(physicalAddress: 0x30_0000, data: []),
            .init(type: 6, physicalAddress: 0x40_0000, data: [9]),  // PT_PHDR: not loaded
            .init(physicalAddress: 0x50_0000, data: [4], memorySize: 0x2000),
        ], pvhEntry: 0x10_0000)
        let elf = try ELFKernel(ImageSource(bytes: builder.build()))
        #expect(elf.segments.map(\.index) == [0, 3])
        #expect(elf.segments[1].fileSize == 1 && elf.segments[1].memorySize == 0x2000)
    }

    struct BadELF: CustomTestStringConvertible, Sendable {
        let name: String
        let bytes: [UInt8]
        let error: ImageError
        var testDescription: String { name }
    }

    static let badELFs: [BadELF] = {
        let good = ELFBuilder.pvh([0xF4])
        var class32 = good; class32.elfClass = 1
        var shared = good; shared.type = 3
        var arm = good; arm.machine = 183
        var wideNote = good; wideNote.noteDescriptorSize = 2
        var highEntry = good; highEntry.pvhEntry = 0x1_0000_0000; highEntry.noteDescriptorSize = 8
        let oversized = ELFBuilder(segments: [.init(physicalAddress: 0x10_0000, data: [1, 2], memorySize: 1)],
                                   pvhEntry: 0x10_0000)
        let wrapping = ELFBuilder(segments: [.init(physicalAddress: UInt64.max - 1, data: [1, 2], memorySize: 4)],
                                  pvhEntry: 0x10_0000)
        var pastEnd = good.build()
        pastEnd[64 + 8] = 0xF0  // p_offset of segment 0 far past the file
        var noHeaders = good.build()
        noHeaders[56] = 0; noHeaders[57] = 0
        return [
            BadELF(name: "header cut short", bytes: Array(good.build().prefix(40)),
                   error: .truncated(what: "ELF header", offset: 0, count: 64, size: 40)),
            BadELF(name: "32-bit", bytes: class32.build(), error: .unsupportedELF("a 32-bit ELF (ELFCLASS32)")),
            BadELF(name: "shared object", bytes: shared.build(), error: .unsupportedELF("a shared object (ET_DYN)")),
            BadELF(name: "arm64", bytes: arm.build(), error: .unsupportedELF("an ELF for machine 183, not x86-64 (62)")),
            BadELF(name: "no program headers", bytes: noHeaders, error: .unsupportedELF("an ELF with no program headers")),
            BadELF(name: "file size above memory size", bytes: oversized.build(),
                   error: .badSegment(index: 0, reason: "p_filesz 0x2 exceeds p_memsz 0x1")),
            BadELF(name: "segment wraps", bytes: wrapping.build(),
                   error: .badSegment(index: 0, reason: "p_paddr 0xfffffffffffffffe + p_memsz 0x4 wraps past 2^64")),
            BadELF(name: "segment past end of file", bytes: pastEnd,
                   error: .badSegment(index: 0, reason: "its 1 file bytes at offset 0xf0 run past the end of the \(pastEnd.count)-byte file")),
            BadELF(name: "2-byte note", bytes: wideNote.build(), error: .badPVHNote("its descriptor is 2 bytes, not 4 or 8")),
            BadELF(name: "entry above 4 GiB", bytes: highEntry.build(),
                   error: .badPVHNote("the entry point 0x100000000 is above 4 GiB; a 32-bit entry cannot reach it")),
        ]
    }()

    @Test(arguments: badELFs)
    func malformedHeadersAreTypedErrors(_ bad: BadELF) {
        #expect(throws: bad.error) { try ELFKernel(ImageSource(bytes: bad.bytes)) }
    }

    /// Every prefix of the fixture, and the fixture with bytes of its headers
    /// replaced by each of a few values, parses or fails with a one-line
    /// `ImageError`; a prefix without the whole ELF header always fails.
    @Test func truncatedAndCorruptedFixtureParsesOrIsRefusedInOneLine() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.pvhCheckPath)))
        for length in stride(from: 0, through: bytes.count, by: 7) {
            do {
                _ = try ELFKernel(ImageSource(bytes: Array(bytes.prefix(length))))
                #expect(length >= 64, "a \(length)-byte prefix has no whole ELF header")
            } catch {
                #expect(!error.description.isEmpty && !error.description.contains("\n"))
            }
        }
        #expect(throws: Never.self) { try ELFKernel(ImageSource(bytes: bytes)) }
        for offset in 0..<(64 + 3 * 56) {
            for value: UInt8 in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                var corrupted = bytes
                corrupted[offset] = value
                do {
                    _ = try ELFKernel(ImageSource(bytes: corrupted))
                } catch {
                    #expect(!error.description.isEmpty && !error.description.contains("\n"))
                }
            }
        }
    }
}
