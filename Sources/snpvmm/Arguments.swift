/// A command-line mistake, in one line; the command exits with status 2.
struct UsageError: Error, Equatable, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An option a command accepts.
struct OptionSpec: Sendable {
    /// Its spellings, the long one last (`["-h", "--help"]`).
    let names: [String]
    let takesValue: Bool
    /// A check of the value as it is read (argparse's `type=` and `choices=`); returns what is wrong.
    var check: (@Sendable (String) -> String?)? = nil

    /// The name values are kept under: the long one.
    var key: String { names.last! }
}

/// What a command line held.
struct ParsedArguments {
    /// Each option's values in the order given; a flag's is "".
    var values: [String: [String]] = [:]
    /// The options in the order they were given.
    var order: [String] = []
    /// Arguments that are no option (argparse's "unrecognized arguments").
    var unrecognized: [String] = []

    func has(_ key: String) -> Bool { values[key] != nil }
    /// The last value given for `key`.
    subscript(key: String) -> String? { values[key]?.last }
}

/// The one parser of every snpvmm command line, in one of two dialects.
struct ArgumentParser {
    enum Dialect {
        /// snpvmm's own: exact names, `--name value` or `--name=value`, each
        /// given at most once unless repeatable, no other arguments; `-h` or
        /// `--help`, where the command has it, stops the parse and is named in errors.
        case snpvmm(command: String)
        /// Python 3.11 argparse's, for `measure`, which answers as
        /// sev-snp-measure does: long options by unique prefix, a value may
        /// not look like an option unless it is a negative number or holds a
        /// space, the last repeat wins, checks run as values are read, `-h`
        /// and `--version` act at once, and other arguments are returned as
        /// unrecognized for the command to report after its own checks.
        case argparse
    }

    let options: [OptionSpec]
    let dialect: Dialect
    /// Options that may be given more than once, each value kept (snpvmm dialect).
    var repeatable: Set<String> = []
    /// Pairs argparse's mutually exclusive groups refuse together.
    var exclusive: [(String, String)] = []

    static let help = OptionSpec(names: ["-h", "--help"], takesValue: false)

    func parse(_ arguments: [String]) throws(UsageError) -> ParsedArguments {
        var parsed = ParsedArguments()
        var index = 0, onlyPositionals = false
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if case .argparse = dialect {
                if argument == "--", !onlyPositionals {
                    onlyPositionals = true
                    continue
                }
                guard !onlyPositionals, looksLikeOption(argument) else {
                    parsed.unrecognized.append(argument)
                    continue
                }
            }
            var name = argument, inlineValue: String?
            if argument.hasPrefix("-"), let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                inlineValue = String(argument[argument.index(after: equals)...])
            }
            guard let option = try resolve(name) else {
                if case .snpvmm(let command) = dialect {
                    let what = argument.hasPrefix("-") ? "unknown option" : "unexpected argument"
                    let hint = options.contains { $0.key == "--help" } ? " (see snpvmm \(command) --help)" : ""
                    throw UsageError("\(what) '\(argument)'\(hint)")
                }
                parsed.unrecognized.append(argument)
                continue
            }
            let key = option.key
            if case .snpvmm = dialect, parsed.has(key), !repeatable.contains(key) {
                throw UsageError("\(key) is given twice")
            }
            var value = ""
            if option.takesValue {
                if let inlineValue {
                    value = inlineValue
                } else if index < arguments.count, !valueLooksLikeOption(arguments[index]) {
                    value = arguments[index]
                    index += 1
                } else {
                    throw UsageError(dialect.isArgparse ? "argument \(display(option)): expected one argument" : "\(key) needs a value")
                }
                if let problem = option.check?(value) {
                    throw UsageError(dialect.isArgparse ? "argument \(display(option)): \(problem)" : problem)
                }
            } else if let inlineValue {
                throw UsageError(dialect.isArgparse ? "argument \(display(option)): ignored explicit argument '\(inlineValue)'"
                                                    : "\(key) takes no value")
            }
            if key == "--help" || (dialect.isArgparse && key == "--version") {
                return ParsedArguments(values: [key: [""]], order: [key])
            }
            if dialect.isArgparse {
                parsed.values[key] = [value]
            } else {
                parsed.values[key, default: []].append(value)
            }
            parsed.order.append(key)
            for (first, second) in exclusive where key == first || key == second {
                let other = key == first ? second : first
                if parsed.has(other) { throw UsageError("argument \(key): not allowed with argument \(other)") }
            }
        }
        return parsed
    }

    /// `--name` as argparse prints it: every spelling, slash-separated.
    private func display(_ option: OptionSpec) -> String { option.names.joined(separator: "/") }

    /// An option by exact name or, in argparse's dialect, by a unique prefix of a long name.
    private func resolve(_ name: String) throws(UsageError) -> OptionSpec? {
        if let exact = options.first(where: { $0.names.contains(name) }) { return exact }
        guard dialect.isArgparse, name.hasPrefix("--") else { return nil }
        let matches = options.filter { $0.names.contains { $0.hasPrefix("--") && $0.hasPrefix(name) } }
        if matches.count > 1 {
            throw UsageError("ambiguous option: \(name) could match \(matches.map(\.key).joined(separator: ", "))")
        }
        return matches.first
    }

    /// Whether the next argument is an option rather than the value of the one before it.
    private func valueLooksLikeOption(_ text: String) -> Bool {
        dialect.isArgparse ? looksLikeOption(text) : false
    }

    /// argparse's `_parse_optional`: a known option, with or without
    /// `=value`, or a prefix of a long one; otherwise a dash-led string is a
    /// value when it is a negative number or contains a space.
    func looksLikeOption(_ text: String) -> Bool {
        guard text.hasPrefix("-"), text != "-" else { return false }
        let name = text.split(separator: "=", maxSplits: 1).first.map(String.init) ?? text
        if options.contains(where: { $0.names.contains(name) }) { return true }
        if name.hasPrefix("--"), options.contains(where: { $0.names.contains { $0.hasPrefix(name) } }) { return true }
        if Self.isNegativeNumber(text) { return false }
        return !text.contains(" ")
    }

    /// argparse's test for a string that looks like a negative number.
    static func isNegativeNumber(_ text: String) -> Bool {
        guard text.hasPrefix("-") else { return false }
        let isDigit: (Character) -> Bool = { $0.isASCII && $0.isNumber }
        let rest = text.dropFirst()
        if !rest.isEmpty, rest.allSatisfy(isDigit) { return true }
        let parts = rest.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 2 && parts[0].allSatisfy(isDigit) && !parts[1].isEmpty && parts[1].allSatisfy(isDigit)
    }
}

extension ArgumentParser.Dialect {
    var isArgparse: Bool {
        if case .argparse = self { return true }
        return false
    }
}
