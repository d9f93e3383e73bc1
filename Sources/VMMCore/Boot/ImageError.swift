import GuestMemfd
import LaunchMeasurement
import Populate

/// Why a kernel or initrd cannot be booted as given. Each case reads as one
/// line naming what is wrong; `RunCommand` prints it with the file's role.
public enum ImageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file could not be opened or read.
    case unreadable(role: String, path: String, reason: String)
    /// The file has no bytes.
    case empty(role: String, path: String)
    /// A header or table runs past the end of the image.
    case truncated(what: String, offset: UInt64, count: UInt64, size: UInt64)
    /// Neither an ELF64 kernel nor a bzImage; `magic` is the first bytes seen.
    case unknownFormat(magic: [UInt8])
    /// An ELF file snpvmm does not load, with the reason ("a 32-bit ELF").
    case unsupportedELF(String)
    /// An ELF64 kernel without `XEN_ELFNOTE_PHYS32_ENTRY`.
    case noPVHEntryNote
    /// A malformed PVH entry note.
    case badPVHNote(String)
    /// A program header that cannot be loaded as described.
    case badSegment(index: Int, reason: String)
    /// A bzImage snpvmm does not boot, with the reason.
    case unsupportedBzImage(String)
    /// The command line is longer than the kernel or the layout accepts.
    case commandLineTooLong(length: Int, limit: Int)
    /// Something does not fit in guest memory as sized by `--memory`.
    case doesNotFit(what: String, size: UInt64?, detail: String)
    /// The launch plan breaks a rule: two regions overlap, or one lies outside RAM.
    case plan(PlanError)
    /// A machine shape the loaders do not lay out.
    case unsupportedRequest(String)

    public var description: String {
        switch self {
        case .unreadable(let role, let path, let reason):
            return "cannot read \(role) '\(path)': \(reason)"
        case .empty(let role, let path):
            return "\(role) '\(path)' is empty"
        case .truncated(let what, let offset, let count, let size):
            return "is cut short: its \(what) at offset \(Hex.number(offset)) (\(count) bytes) runs past the end of the \(size)-byte file"
        case .unknownFormat(let magic):
            let shown = magic.prefix(4).map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: " ")
            return "is neither an ELF64 kernel with a PVH entry note nor a Linux bzImage (it starts with \(shown))"
        case .unsupportedELF(let reason):
            return "is \(reason); snpvmm boots x86-64 ELF64 executables with a Xen PVH entry note"
        case .noPVHEntryNote:
            return "is an ELF64 kernel without a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot its bzImage"
        case .badPVHNote(let reason):
            return "has a malformed Xen PVH entry note: \(reason)"
        case .badSegment(let index, let reason):
            return "has a bad program header \(index): \(reason)"
        case .unsupportedBzImage(let reason):
            return "is a bzImage snpvmm cannot boot: \(reason)"
        case .commandLineTooLong(let length, let limit):
            return "the command line is \(length) bytes; this kernel accepts at most \(limit)"
        case .doesNotFit(let what, let size, let detail):
            return "\(what)\(size.map { " (\($0) bytes)" } ?? "") does not fit: \(detail)"
        case .plan(let error):
            return error.description
        case .unsupportedRequest(let reason):
            return reason
        }
    }

    /// True for the errors that describe the kernel file itself, whose
    /// descriptions read as a predicate of it ("is a 32-bit ELF ...").
    var describesKernelFile: Bool {
        switch self {
        case .truncated, .unknownFormat, .unsupportedELF, .noPVHEntryNote, .badPVHNote, .badSegment, .unsupportedBzImage:
            true
        case .unreadable, .empty, .commandLineTooLong, .doesNotFit, .plan, .unsupportedRequest:
            false
        }
    }

    /// The one line `snpvmm run` prints, naming the kernel where the error is about it.
    public func message(kernel path: String) -> String {
        describesKernelFile ? "kernel '\(path)' \(description)" : description
    }
}


extension String {
    public func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
