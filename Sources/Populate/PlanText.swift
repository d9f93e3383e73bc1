import LaunchMeasurement
import GuestMemfd
/// A launch plan written as text, one region a line, for plans kept in files:
///
///     # name    kind        gpa       size      contents
///     kernel    normal      0x100000  0x400000  file /boot/vmlinuz 0 4194304
///     config    unmeasured  0x80000   0x1000    hex 0102030405
///     stack     zero        0x90000   0x2000    zeros
///
/// Fields are separated by spaces; `#` starts a comment. Numbers are decimal
/// or 0x-prefixed hexadecimal. Kinds are `PageKind`'s names. Contents are
/// `zeros`, `hex BYTES`, or `file PATH [OFFSET [LENGTH]]` (a path without
/// spaces; LENGTH defaults to the region's size). The order of the lines is
/// the measurement order.
extension LaunchPlan {
    /// Reads a plan; the result still needs `validate(memory:)`.
    /// - Throws: `PlanTextError` naming the line and what is wrong with it.
    public init(text: String) throws(PlanTextError) {
        var regions: [PlanRegion] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard !fields.isEmpty else { continue }
            func fail(_ message: String) -> PlanTextError { PlanTextError(line: index + 1, message: message) }
            guard fields.count >= 5 else {
                throw fail("expected 'name kind gpa size contents', found \(fields.count) field\(fields.count == 1 ? "" : "s")")
            }
            let name = fields[0]
            guard let kind = PageKind(rawValue: fields[1]) else {
                throw fail("unknown kind '\(fields[1])' for region '\(name)'; kinds are \(PageKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            func number(_ text: String, _ what: String) throws(PlanTextError) -> UInt64 {
                let value = text.hasPrefix("0x") || text.hasPrefix("0X") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
                guard let value else { throw fail("\(what) '\(text)' of region '\(name)' is not a number") }
                return value
            }
            let gpa = try number(fields[2], "gpa"), size = try number(fields[3], "size")
            let contents: RegionContents
            switch fields[4] {
            case "zeros":
                guard fields.count == 5 else { throw fail("'zeros' of region '\(name)' takes nothing after it") }
                contents = .zeros
            case "hex":
                guard fields.count == 6, fields[5].count % 2 == 0 else {
                    throw fail("'hex' of region '\(name)' needs one even-length string of hex digits")
                }
                guard let bytes = Hex.decode(fields[5]) else {
                    let digits = Array(fields[5])
                    let pair = stride(from: 0, to: digits.count, by: 2).map { String(digits[$0..<($0 + 2)]) }
                        .first { Hex.decode($0) == nil } ?? String(fields[5])
                    throw fail("'\(pair)' in the hex of region '\(name)' is not a byte")
                }
                contents = .bytes(bytes)
            case "file":
                guard (6...8).contains(fields.count) else {
                    throw fail("'file' of region '\(name)' takes a path, then an optional offset and length")
                }
                let offset = fields.count > 6 ? try number(fields[6], "file offset") : 0
                let length = fields.count > 7 ? try number(fields[7], "file length") : size
                contents = .file(path: fields[5], offset: offset, length: length)
            default:
                throw fail("unknown contents '\(fields[4])' for region '\(name)'; give zeros, hex or file")
            }
            regions.append(PlanRegion(name: name, range: GuestRange(start: gpa, size: size), contents: contents, kind: kind))
        }
        self.init(regions: regions)
    }
}

/// A line of a plan text that could not be read.
public struct PlanTextError: Error, Equatable, Sendable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "plan line \(line): \(message)" }
}
