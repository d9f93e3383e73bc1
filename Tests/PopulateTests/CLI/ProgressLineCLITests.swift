import Foundation
import Testing

/// The progress line `snpvmm run` draws on a terminal for a launch of a
/// GiB or more, and leaves out everywhere else.
@Suite(.enabled(if: Snpvmm.isBuilt, "the snpvmm executable is not built beside the tests"))
struct ProgressLineCLITests {
    /// A 1 GiB plan of ZERO pages: no contents to read, so the launch is quick.
    static func withPlan<T>(_ body: (String) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("zero-\(UUID().uuidString).plan").path
        try "ram zero 0x0 0x40000000 zeros\n".write(toFile: path, atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }

    static func arguments(_ plan: String) -> [String] {
        ["run", "--platform", "snp", "--emulate", "--launch-only", "--plan", plan, "--memory", "1G", "--vcpu-type", "EPYC-v4"]
    }

    static let script = ["/usr/bin/script", "/bin/script"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: script != nil, "util-linux's script, which gives the command a terminal, is not installed"))
    func onATerminalTheLineIsRedrawnThenClearedBeforeTheReport() throws {
        let output = try Self.withPlan { plan -> String in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.script!)
            let command = ([Snpvmm.path] + Self.arguments(plan)).joined(separator: " ")
            process.arguments = ["-qec", command, "/dev/null"]
            let out = Pipe()
            process.standardOutput = out
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            return String(decoding: data, as: UTF8.self)
        }
        #expect(output.contains("\rpopulating 1.00 of 1.00 GiB (100%), "), "\(output.prefix(400))")
        let cleared = try #require(output.range(of: "\r\u{1B}[K"), "\(output.prefix(400))")
        let report = try #require(output.range(of: "snpvmm: emulated snp plan launch measurement"))
        #expect(cleared.upperBound <= report.lowerBound)
        #expect(!output[report.lowerBound...].contains("populating"))
    }

    @Test func withoutATerminalNothingButTheReportIsWritten() throws {
        let run = try Self.withPlan { plan in try Snpvmm.run(Self.arguments(plan)) }
        #expect(run.status == 0, "\(run)")
        #expect(!run.stderr.contains("populating") && !run.stderr.contains("\r"))
        #expect(run.stderr.hasPrefix("snpvmm: emulated snp plan launch measurement"))
    }
}
