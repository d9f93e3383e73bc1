#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

/// `snpvmm bench measure`: how `snpvmm measure` compares with sev-snp-measure
/// on the same inputs, and how fast the SNP launch digest runs against
/// single-core SHA-384 over the same bytes, all measured in this run.
enum BenchMeasure {
    static let synopsis = "measure [--ovmf FILE]... [--size MIB] [--runs N]"

    static let benchmark = BenchCommand.Benchmark(name: "measure", synopsis: synopsis, run: run)

    /// The images used when no --ovmf is given, relative to the package root.
    static let defaultImages = ["Tests/Fixtures/Measurement/OVMF/bookworm-OVMF.fd",
                                "Tests/Fixtures/Measurement/OVMF/sid-OVMF.amdsev.fd"]

    @Sendable static func run(_ arguments: [String]) -> ExitCode {
        var sizeMiB = 1024, runs = 5
        var parser = ArgumentParser(options: ["--ovmf", "--size", "--runs"].map { OptionSpec(names: [$0], takesValue: true) },
                                    dialect: .snpvmm(command: "bench measure"))
        parser.repeatable = ["--ovmf"]
        let given: ParsedArguments
        do { given = try parser.parse(arguments) } catch { fail("bench measure: \(error)", status: .usage) }
        var images = given.values["--ovmf"] ?? []
        if let text = given["--size"] {
            guard let value = Int(text), value > 0 else { fail("bench measure: --size takes MiB > 0", status: .usage) }
            sizeMiB = value
        }
        if let text = given["--runs"] {
            guard let value = Int(text), value > 0 else { fail("bench measure: --runs takes a count > 0", status: .usage) }
            runs = value
        }
        if images.isEmpty { images = defaultImages.filter { access($0, R_OK) == 0 } }
        if images.isEmpty { fail("bench measure: no OVMF image; pass --ovmf FILE or run from the package root", status: .usage) }

        print("whole process, median of \(runs) runs: snpvmm measure vs sev-snp-measure")
        let reference = executableInPath("sev-snp-measure")
        if reference == nil {
            print("  sev-snp-measure is not installed (pip install sev-snp-measure): timing snpvmm alone")
        }
        let ours = selfExecutable()
        for image in images {
            let arguments = ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--ovmf", image]
            let mine = timeProcess(ours, ["measure"] + arguments, runs: runs)
            var line = "  \(image): snpvmm \(milliseconds(mine.seconds))"
            if let reference {
                let theirs = timeProcess(reference, arguments, runs: runs)
                line += ", sev-snp-measure \(milliseconds(theirs.seconds)), ratio \(ratio(theirs.seconds / mine.seconds)) faster"
                if theirs.output != mine.output || mine.status != 0 {
                    line += "; OUTPUTS DIFFER (snpvmm status \(mine.status): \(mine.output.debugDescription), sev-snp-measure \(theirs.output.debugDescription))"
                } else {
                    line += ", same digest"
                }
            }
            print(line)
        }

        print("SNP launch digest over \(sizeMiB) MiB of NORMAL pages, \(activeProcessorCount()) cores")
        var bytes = [UInt8](repeating: 0, count: sizeMiB << 20)
        bytes.withUnsafeMutableBytes { raw in
            var state: UInt64 = 0x2545_F491_4F6C_DD1D
            for word in 0..<(raw.count / 8) {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                raw.storeBytes(of: state, toByteOffset: word * 8, as: UInt64.self)
            }
        }
        let single = time { _ = bytes.withUnsafeBytes { SHA384.hash($0) } }
        var digest = SNPLaunchDigest()
        let chain = time {
            do { try digest.addNormalPages(gpa: 0, contents: bytes) } catch { fail("bench measure: \(error)") }
        }
        let gib = Double(bytes.count) / Double(1 << 30)
        print("  single-core SHA-384 of the bytes: \(rate(gib / single))")
        print("  SNP launch digest (pages hashed in parallel, chained in order): \(rate(gib / chain)), "
              + "ratio \(ratio(single / chain)) against single-core SHA-384")
        return .success
    }

    static func milliseconds(_ seconds: Double) -> String {
        let tenths = Int((seconds * 10_000).rounded())
        return "\(tenths / 10).\(tenths % 10) ms"
    }

    static func ratio(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)x"
    }

    static func rate(_ gibPerSecond: Double) -> String {
        let hundredths = Int((gibPerSecond * 100).rounded())
        return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100) GiB/s"
    }

    static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }

    static func time(_ body: () -> Void) -> Double {
        let start = now()
        body()
        return now() - start
    }

    static func activeProcessorCount() -> Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    static func selfExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func executableInPath(_ name: String) -> String? {
        guard let path = getenv("PATH") else { return nil }
        return String(cString: path).split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    /// Runs `path` `runs` times; returns the median wall time, the last
    /// standard output and exit status.
    static func timeProcess(_ path: String, _ arguments: [String], runs: Int) -> (seconds: Double, output: String, status: Int32) {
        var times = [Double](), output = "", status: Int32 = 0
        for _ in 0..<runs {
            let start = now()
            (output, status) = spawn(path, arguments)
            times.append(now() - start)
        }
        return (times.sorted()[times.count / 2], output, status)
    }

    /// posix_spawn with standard output captured and standard error discarded.
    static func spawn(_ path: String, _ arguments: [String]) -> (String, Int32) {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { fail("bench measure: pipe failed: \(String(cString: strerror(errno)))") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, &actions, nil, argv, environ)
        close(pipeFDs[1])
        guard result == 0 else {
            close(pipeFDs[0])
            fail("bench measure: cannot run \(path): \(String(cString: strerror(result)))")
        }
        var output = [UInt8](), chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            output += chunk[0..<count]
        }
        close(pipeFDs[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        return (String(decoding: output, as: UTF8.self), (status >> 8) & 0xFF)
    }
}
