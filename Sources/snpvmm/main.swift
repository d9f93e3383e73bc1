import VMMCore
import GuestMemfd
#if canImport(Glibc)
import Glibc
#endif

/// snpvmm: a minimal VMM for confidential-guest memory population.
///
/// Each command lives in `Commands/` and is listed once in `commands`.
struct Command {
    let name: String
    /// One or more lines for the usage text, starting with the synopsis.
    let summary: String
    let run: ([String]) -> ExitCode
}

let commands: [Command] = [
    Command(name: "probe", summary: ProbeCommand.summary, run: ProbeCommand.run),
    Command(name: "run", summary: RunCommand.summary, run: RunCommand.run),
    Command(name: "measure", summary: MeasureCommand.summary, run: MeasureCommand.run),
    Command(name: "id-block", summary: IDBlockCommand.summary, run: IDBlockCommand.run),
    Command(name: "igvm", summary: IGVMCommand.summary, run: IGVMCommand.run),
    Command(name: "rmp", summary: RMPCommand.summary, run: RMPCommand.run),
    Command(name: "bench", summary: BenchCommand.summary, run: BenchCommand.run),
]

let usage = """
    usage: snpvmm <command> [options]

    commands:
    \(commands.map { $0.summary.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n") }.joined(separator: "\n"))
      help                show this text

    Exit status: 0 on success, 1 when the host cannot do what was asked,
    2 for a usage error.
    """

var arguments = Array(CommandLine.arguments.dropFirst())
guard let name = arguments.first else {
    fail("no command given\n\(usage)", status: .usage)
}
arguments.removeFirst()
if let command = commands.first(where: { $0.name == name }) {
    exit(command.run(arguments).rawValue)
} else if ["help", "--help", "-h"].contains(name) {
    print(usage)
} else {
    fail("unknown command '\(name)'\n\(usage)", status: .usage)
}
