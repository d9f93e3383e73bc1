import GuestMemfd
import Foundation
import VMMCore

/// Small ELF64 images built field by field for the loader tests, with the
/// offsets of `Elf64_Ehdr`, `Elf64_Phdr` and `Elf64_Nhdr`.
struct ELFBuilder {
    struct Segment {
        var type: UInt32 = 1  // PT_LOAD
        var physicalAddress: UInt64
        var virtualAddress: UInt64? = nil
        var data: [UInt8]
        var memorySize: UInt64? = nil
    }

    var segments: [Segment]
    /// Adds a PT_NOTE segment with `XEN_ELFNOTE_PHYS32_ENTRY` when set.
    var pvhEntry: UInt64? = nil
    var noteDescriptorSize = 4
    var noteName: [UInt8] = Array("Xen\0".utf8)
    var elfClass: UInt8 = 2
    var type: UInt16 = 2
    var machine: UInt16 = 62

    /// A PVH kernel whose single segment at 1 MiB holds `code`, entered at its first byte.
    static func pvh(_ code: [UInt8], at address: UInt64 = 0x10_0000) -> ELFBuilder {
        ELFBuilder(segments: [Segment(physicalAddress: address, data: code)], pvhEntry: address)
    }

    func build() -> [UInt8] {
        var notes: [UInt8] = []
        if let pvhEntry {
            var note = LittleEndianWriter(count: 12)
            note.store(UInt32(noteName.count), at: 0)
            note.store(UInt32(noteDescriptorSize), at: 4)
            note.store(UInt32(18), at: 8)
            notes = note.bytes + noteName + [UInt8](repeating: 0, count: (4 - noteName.count % 4) % 4)
            var descriptor = LittleEndianWriter(count: max(noteDescriptorSize, 8))
            descriptor.store(pvhEntry, at: 0)
            notes += Array(descriptor.bytes.prefix(noteDescriptorSize))
        }
        let headers = segments.count + (notes.isEmpty ? 0 : 1)
        var offset = 64 + 56 * headers
        var table: [UInt8] = []
        var payload: [UInt8] = []
        func header(type: UInt32, fileOffset: Int, paddr: UInt64, vaddr: UInt64, filesz: Int, memsz: UInt64) {
            var entry = LittleEndianWriter(count: 56)
            entry.store(type, at: 0)
            entry.store(UInt32(5), at: 4)
            entry.store(UInt64(fileOffset), at: 8)
            entry.store(vaddr, at: 16)
            entry.store(paddr, at: 24)
            entry.store(UInt64(filesz), at: 32)
            entry.store(memsz, at: 40)
            entry.store(UInt64(0x1000), at: 48)
            table += entry.bytes
        }
        for segment in segments {
            header(type: segment.type, fileOffset: offset, paddr: segment.physicalAddress,
                   vaddr: segment.virtualAddress ?? segment.physicalAddress, filesz: segment.data.count,
                   memsz: segment.memorySize ?? UInt64(segment.data.count))
            payload += segment.data
            offset += segment.data.count
        }
        if !notes.isEmpty {
            header(type: 4, fileOffset: offset, paddr: 0, vaddr: 0, filesz: notes.count, memsz: 0)
            payload += notes
        }
        var elf = LittleEndianWriter(count: 64)
        elf.store([0x7F, 0x45, 0x4C, 0x46, elfClass, 1, 1], at: 0)
        elf.store(type, at: 16)
        elf.store(machine, at: 18)
        elf.store(UInt32(1), at: 20)
        elf.store(pvhEntry ?? 0, at: 24)
        elf.store(UInt64(64), at: 32)
        elf.store(UInt16(64), at: 52)
        elf.store(UInt16(56), at: 54)
        elf.store(UInt16(headers), at: 56)
        return elf.bytes + table + payload
    }
}

/// A bzImage with a protocol 2.15 setup header and `kernel` as its
/// protected-mode part, as boot.rst lays the file out.
struct BzImageBuilder {
    var setupSectors: UInt8 = 4
    var version: UInt16 = 0x020F
    var loadFlags: UInt8 = 0x01
    var xloadflags: UInt16 = 0x7F
    var relocatable: UInt8 = 1
    var kernelAlignment: UInt32 = 0x20_0000
    var preferredAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 0x40_0000
    var commandLineSize: UInt32 = 2047
    var initrdAddressMax: UInt32 = 0x7FFF_FFFF
    /// The byte at 0x201: the header ends at 0x202 plus this.
    var headerLength: UInt8 = 0x6A
    var kernel: [UInt8] = Array(repeating: 0x90, count: 0x1000)

    func build() -> [UInt8] {
        let sectors = Int(setupSectors == 0 ? 4 : setupSectors)
        var setup = LittleEndianWriter(count: (sectors + 1) * 512)
        setup.store(setupSectors, at: 0x1F1)
        setup.store(UInt16(0xAA55), at: 0x1FE)
        setup.store([0xEB, headerLength], at: 0x200)
        setup.store(Array("HdrS".utf8), at: 0x202)
        setup.store(version, at: 0x206)
        setup.store(loadFlags, at: 0x211)
        setup.store(UInt32(0x10_0000), at: 0x214)
        setup.store(initrdAddressMax, at: 0x22C)
        setup.store(kernelAlignment, at: 0x230)
        setup.store(relocatable, at: 0x234)
        setup.store(UInt8(21), at: 0x235)
        setup.store(xloadflags, at: 0x236)
        setup.store(commandLineSize, at: 0x238)
        setup.store(preferredAddress, at: 0x258)
        setup.store(initSize, at: 0x260)
        return setup.bytes + kernel
    }
}

/// A file under a fresh temporary directory, removed with it.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/snpvmm-test-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else { throw POSIXFailure(operation: "mkdtemp") }
        path = String(cString: result)
    }

    deinit {
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: path) {
            for entry in entries { try? FileManager.default.removeItem(atPath: path + "/" + entry) }
        }
        rmdir(path)
    }

    /// Writes `bytes` to `name` in the directory and returns its path.
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = path + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return file
    }
}

struct POSIXFailure: Error { let operation: String }
