import GuestMemfd
import LaunchMeasurement
/// An x86-64 ELF64 executable as a PVH loader needs it: its loadable
/// segments by physical address, and the 32-bit entry point from its Xen
/// PVH note.
///
/// Field offsets are those of `Elf64_Ehdr`, `Elf64_Phdr` and `Elf64_Nhdr`
/// (System V gABI, "ELF Header", "Program Header", "Note Section"; the same
/// layout as `include/uapi/linux/elf.h`).
public struct ELFKernel: Equatable, Sendable {
    /// One `PT_LOAD` program header with bytes to load.
    public struct Segment: Equatable, Sendable {
        /// The program header's index, for messages.
        public var index: Int
        var fileOffset: UInt64
        /// `p_paddr`: where the segment goes in guest-physical memory.
        public var physicalAddress: UInt64
        /// `p_filesz`: bytes taken from the file.
        public var fileSize: UInt64
        /// `p_memsz`: bytes of memory; those past `fileSize` are zero (the BSS).
        public var memorySize: UInt64

        /// The first byte past the segment in guest memory (checked not to wrap when parsed).
        var physicalEnd: UInt64 { physicalAddress + memorySize }
    }

    /// The `PT_LOAD` segments with a non-zero `p_memsz`, in program-header order.
    public var segments: [Segment]
    /// `XEN_ELFNOTE_PHYS32_ENTRY`, or nil when the kernel has no such note.
    public var pvhEntry: UInt32?

    static let magic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]  // "\x7fELF"

    // e_ident and Elf64_Ehdr
    private static let classOffset = 4, dataOffset = 5, typeOffset = 16, machineOffset = 18
    private static let phoffOffset = 32, phentsizeOffset = 54, phnumOffset = 56
    private static let headerSize = 64
    private static let elfClass64: UInt8 = 2, littleEndian: UInt8 = 1
    private static let executable: UInt16 = 2  // ET_EXEC
    private static let x86_64: UInt16 = 62  // EM_X86_64
    // Elf64_Phdr
    private static let programHeaderSize = 56
    /// Larger entries than `Elf64_Phdr` are allowed by the gABI; this bounds what is read.
    private static let maximumProgramHeaderSize = 256
    /// Notes are a few hundred bytes in practice; this bounds what is read.
    private static let maximumNoteSegmentSize: UInt64 = 1 << 20
    private static let loadable: UInt32 = 1, note: UInt32 = 4  // PT_LOAD, PT_NOTE
    /// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h): the
    /// physical address of the 32-bit PVH entry point, under note name "Xen".
    static let xenPhys32EntryNote: UInt32 = 18

    /// Parses the headers of `image`.
    ///
    /// - Throws: `ImageError` naming the header or program header that is
    ///   malformed, or the kind of ELF file that is not an x86-64 executable.
    public init(_ image: ImageSource) throws(ImageError) {
        let header = LittleEndianBytes(bytes: try image.read(offset: 0, count: Self.headerSize, "ELF header"),
                                       what: "ELF header")
        let elfClass = try header.u8(Self.classOffset)
        guard elfClass == Self.elfClass64 else {
            throw .unsupportedELF(elfClass == 1 ? "a 32-bit ELF (ELFCLASS32)" : "an ELF of unknown class \(elfClass)")
        }
        guard try header.u8(Self.dataOffset) == Self.littleEndian else { throw .unsupportedELF("a big-endian ELF") }
        let type = try header.u16(Self.typeOffset)
        guard type == Self.executable else {
            throw .unsupportedELF(type == 3 ? "a shared object (ET_DYN)" : type == 1 ? "a relocatable object (ET_REL)"
                                  : "an ELF of type \(type), not an executable")
        }
        let machine = try header.u16(Self.machineOffset)
        guard machine == Self.x86_64 else { throw .unsupportedELF("an ELF for machine \(machine), not x86-64 (62)") }
        let phoff = try header.u64(Self.phoffOffset)
        let phentsize = Int(try header.u16(Self.phentsizeOffset))
        let phnum = Int(try header.u16(Self.phnumOffset))
        guard phnum > 0 else { throw .unsupportedELF("an ELF with no program headers") }
        guard phentsize >= Self.programHeaderSize, phentsize <= Self.maximumProgramHeaderSize else {
            throw .unsupportedELF("an ELF whose program headers are \(phentsize) bytes each, not Elf64_Phdr's 56")
        }
        let table = try image.read(offset: phoff, count: phnum * phentsize, "program header table")

        var segments: [Segment] = []
        var notes: [(offset: UInt64, size: UInt64)] = []
        for index in 0..<phnum {
            let entry = LittleEndianBytes(bytes: Array(table[index * phentsize..<index * phentsize + Self.programHeaderSize]),
                                          what: "program header \(index)")
            let kind = try entry.u32(0)
            let offset = try entry.u64(8), paddr = try entry.u64(24)
            let filesz = try entry.u64(32), memsz = try entry.u64(40)
            switch kind {
            case Self.loadable:
                guard filesz <= memsz else {
                    throw .badSegment(index: index, reason: "p_filesz \(Hex.number(filesz)) exceeds p_memsz \(Hex.number(memsz))")
                }
                guard image.contains(offset: offset, count: filesz) else {
                    throw .badSegment(index: index, reason: "its \(filesz) file bytes at offset \(Hex.number(offset)) run past the end of the \(image.size)-byte file")
                }
                guard !paddr.addingReportingOverflow(memsz).overflow else {
                    throw .badSegment(index: index, reason: "p_paddr \(Hex.number(paddr)) + p_memsz \(Hex.number(memsz)) wraps past 2^64")
                }
                if memsz > 0 {
                    segments.append(Segment(index: index, fileOffset: offset, physicalAddress: paddr,
                                            fileSize: filesz, memorySize: memsz))
                }
            case Self.note:
                guard image.contains(offset: offset, count: filesz) else {
                    throw .badSegment(index: index, reason: "its note bytes at offset \(Hex.number(offset)) run past the end of the file")
                }
                guard filesz <= Self.maximumNoteSegmentSize else {
                    throw .badSegment(index: index, reason: "its \(filesz)-byte PT_NOTE segment is larger than 1 MiB")
                }
                notes.append((offset, filesz))
            default:
                continue
            }
        }
        guard !segments.isEmpty else { throw .unsupportedELF("an ELF with no loadable segment") }
        self.segments = segments

        var entry: UInt32?
        for note in notes where entry == nil {
            entry = try Self.pvhEntry(in: try image.read(offset: note.offset, count: Int(note.size), "PT_NOTE segment"))
        }
        self.pvhEntry = entry
    }

    /// Finds `XEN_ELFNOTE_PHYS32_ENTRY` among the notes of one `PT_NOTE`
    /// segment. Each note is `Elf64_Nhdr` (namesz, descsz, type, all 32-bit),
    /// then the name and the descriptor, each padded to 4 bytes.
    private static func pvhEntry(in notes: [UInt8]) throws(ImageError) -> UInt32? {
        let bytes = LittleEndianBytes(bytes: notes, what: "note")
        var offset = 0
        while notes.count - offset >= 12 {
            let nameSize = Int(try bytes.u32(offset)), descSize = Int(try bytes.u32(offset + 4))
            let type = try bytes.u32(offset + 8)
            let nameStart = offset + 12
            guard nameSize <= notes.count - nameStart else { throw .badPVHNote("a note's name runs past its segment") }
            let descStart = nameStart + (nameSize + 3) & ~3
            guard descStart <= notes.count, descSize <= notes.count - descStart else {
                if notes[nameStart..<nameStart + nameSize].starts(with: Array("Xen".utf8)) {
                    throw .badPVHNote("its descriptor runs past its segment")
                }
                return nil
            }
            let name = notes[nameStart..<nameStart + nameSize]
            if type == xenPhys32EntryNote, name.elementsEqual(Array("Xen\0".utf8)) {
                switch descSize {
                case 4:
                    return try bytes.u32(descStart)
                case 8:
                    let value = try bytes.u64(descStart)
                    guard value <= UInt64(UInt32.max) else {
                        throw .badPVHNote("the entry point \(Hex.number(value)) is above 4 GiB; a 32-bit entry cannot reach it")
                    }
                    return UInt32(value)
                default:
                    throw .badPVHNote("its descriptor is \(descSize) bytes, not 4 or 8")
                }
            }
            offset = descStart + (descSize + 3) & ~3
        }
        return nil
    }
}
