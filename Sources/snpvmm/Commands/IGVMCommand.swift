import LaunchMeasurement
import VMMCore

/// `snpvmm igvm inspect FILE [--json]`: an IGVM file's headers, one line
/// each (type, GPA range, flags, data hash), for finding where two
/// measurements of a file part.
enum IGVMCommand {
    static let summary = """
        igvm inspect FILE [--json]
                            list an IGVM file's headers and directives, one line
                            each; see igvm --help
        """

    static let help = """
        usage: snpvmm igvm inspect FILE [--json]

        Reads an IGVM file (format version 1), checks it as `measure --igvm` does,
        and prints one line per variable header: its index, type, and fields: the
        platform and compatibility mask, the GPA range, page flags (2MB, UNMEASURED,
        SHARED) and data type, the parameter area, and the SHA-384 of page and VMSA
        data ("zeros" for a page without data). --json prints one object per header.
        Exit status: 0 for a well-formed file, 2 for a malformed one or a usage error.
        """

    static let parser = ArgumentParser(options: [
        ArgumentParser.help, OptionSpec(names: ["--json"], takesValue: false),
    ], dialect: .snpvmm(command: "igvm inspect"))

    static func run(_ arguments: [String]) -> ExitCode {
        if arguments.first.map({ ["--help", "-h"].contains($0) }) == true {
            print(help)
            return .success
        }
        guard arguments.first == "inspect" else {
            fail("igvm: give a subcommand: igvm inspect FILE [--json]", status: .usage)
        }
        // The file is the one argument that is not an option.
        let rest = Array(arguments.dropFirst())
        let files = rest.filter { !$0.hasPrefix("-") }
        let given: ParsedArguments
        do { given = try parser.parse(rest.filter { $0.hasPrefix("-") }) } catch { fail("igvm inspect: \(error)", status: .usage) }
        if given.has("--help") {
            print(help)
            return .success
        }
        guard files.count == 1, let path = files.first else {
            fail("igvm inspect: give one IGVM file (got \(files.count))", status: .usage)
        }
        let file: IGVMFile
        do {
            file = try IGVMFile(bytes: try FileBytes.read(path))
        } catch let error as IGVMError {
            fail("igvm inspect: \(path): \(error)", status: .usage)
        } catch {
            fail("igvm inspect: \(error)", status: .usage)
        }
        let rows = describe(file)
        if given.has("--json") {
            print("[\n" + rows.map { row in
                "  {" + row.map { "\"\($0.key)\": \(jsonValue($0.value))" }.joined(separator: ", ") + "}"
            }.joined(separator: ",\n") + "\n]")
        } else {
            for row in rows {
                print("header \(row[0].value) \(row[1].value)" + row.dropFirst(2).map { " \($0.key) \($0.value)" }.joined())
            }
        }
        return .success
    }

    /// A row: ordered (field, value) pairs, the header index and type first.
    typealias Row = [(key: String, value: String)]

    static func jsonValue(_ text: String) -> String { Int(text).map(String.init) ?? jsonString(text) }

    static func describe(_ file: IGVMFile) -> [Row] {
        func hex(_ value: some BinaryInteger) -> String { Hex.number(value) }
        func range(_ gpa: UInt64, _ size: UInt64) -> String {
            // REQUIRED_MEMORY and ERROR_RANGE are not bounded by the reader; an end past 2^64 is shown as a length.
            let (end, overflow) = gpa.addingReportingOverflow(size)
            return overflow ? "[\(hex(gpa)), +\(hex(size)))" : "[\(hex(gpa)), \(hex(end)))"
        }
        func hash(_ offset: UInt32) -> String { offset == 0 ? "zeros" : SHA384.hash(file.page(at: offset)).hex }
        var rows: [(Int, Row)] = file.platforms.map { platform in
            (platform.header, [("header", "\(platform.header)"), ("type", "SUPPORTED_PLATFORM"), ("platform", "\(platform.type)"),
                               ("mask", hex(platform.compatibilityMask)), ("highest_vtl", "\(platform.highestVTL)"),
                               ("shared_gpa_boundary", hex(platform.sharedGPABoundary))])
        }
        for (index, directive) in file.directives {
            var row: Row = [("header", "\(index)"), ("type", "\(IGVMFile.headerType(of: directive))")]
            switch directive {
            case let .guestPolicy(policy, mask):
                row += [("policy", hex(policy)), ("mask", hex(mask))]
            case let .parameterArea(size, area, fileOffset):
                row += [("area", "\(area)"), ("bytes", hex(size)), ("file_offset", "\(fileOffset)")]
            case let .pageData(gpa, mask, fileOffset, large, unmeasured, shared, type):
                let flags = [large ? "2MB" : nil, unmeasured ? "UNMEASURED" : nil, shared ? "SHARED" : nil].compactMap { $0 }
                row += [("gpa", range(gpa, large ? 1 << 21 : 4096)), ("data_type", "\(type)"),
                        ("flags", flags.isEmpty ? "-" : flags.joined(separator: "|")), ("mask", hex(mask)),
                        ("file_offset", "\(fileOffset)"), ("sha384", hash(fileOffset))]
            case let .parameterInsert(gpa, mask, area):
                row += [("gpa", hex(gpa)), ("area", "\(area)"), ("mask", hex(mask))]
            case let .vpContext(gpa, mask, fileOffset, vp):
                row += [("gpa", hex(gpa)), ("vp", "\(vp)"), ("mask", hex(mask)), ("file_offset", "\(fileOffset)"),
                        ("sha384", hash(fileOffset))]
            case let .requiredMemory(gpa, mask, size, flags):
                row += [("gpa", range(gpa, UInt64(size))), ("flags", hex(flags)), ("mask", hex(mask))]
            case let .parameterUsage(_, area, byteOffset):
                row += [("area", "\(area)"), ("byte_offset", "\(byteOffset)")]
            case let .snpIDBlock(mask, body):
                row += [("mask", hex(mask)), ("launch_digest", Hex.encode(body[8..<56]))]
            case let .errorRange(gpa, mask, size):
                row += [("gpa", range(gpa, UInt64(size))), ("mask", hex(mask))]
            case .skipped:
                row += [("skipped", "optional header of an unknown type")]
            }
            rows.append((index, row))
        }
        return rows.sorted { $0.0 < $1.0 }.map(\.1)
    }
}
