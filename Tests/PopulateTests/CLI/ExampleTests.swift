import Foundation
import Testing

/// `Examples/LaunchOnFake`, built with the package from the public products only.
@Suite struct ExampleTests {
    @Test func theExampleLaunchesEveryPlatformAndItsMeasurementMatchesTheFirmwares() throws {
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let path = URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("populate-example").path
        try #require(FileManager.default.isExecutableFile(atPath: path), "populate-example is built with the tests")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        let names = text.split(separator: "\n").map { String($0.prefix { $0 != ":" }) }
        #expect(names == ["SEV-SNP, separate source", "SEV-SNP, in place", "TDX", "CCA"])
        #expect(text.contains("SEV-SNP, in place: in-place"))
    }
}
