#if canImport(Glibc)
import Glibc
#endif

/// snpvmm: a minimal VMM for confidential-guest memory population.
let usage = """
    usage: snpvmm <command> [options]

    commands:
      probe [--no-boot]   show what this host's KVM offers for guest_memfd and
                          confidential guests, then boot a tiny guest from
                          guest_memfd memory to prove the path works
      help                show this text

    Exit status: 0 on success, 1 when the host cannot do what was asked,
    2 for a usage error.
    """

enum ExitCode: Int32 {
    case success = 0
    case failure = 1
    case usage = 2
}

func fail(_ message: String, status: ExitCode = .failure) -> Never {
    var standardError = StandardError()
    print("snpvmm: \(message)", to: &standardError)
    exit(status.rawValue)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else {
    fail("no command given\n\(usage)", status: .usage)
}
arguments.removeFirst()
switch command {
case "probe":
    exit(ProbeCommand.run(arguments).rawValue)
case "help", "--help", "-h":
    print(usage)
default:
    fail("unknown command '\(command)'\n\(usage)", status: .usage)
}
