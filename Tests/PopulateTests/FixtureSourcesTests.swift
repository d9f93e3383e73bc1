import GuestMemfd
import Fixtures
import Foundation
import Testing

/// The guest bytes embedded in `Fixtures.swift` are what their sources assemble to.
@Suite struct FixtureSourcesTests {
    static let assemblerPath = ["/usr/bin/as", "/usr/local/bin/as"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: assemblerPath != nil, "binutils (as) is not installed"))
    func checksum16BytesMatchItsSource() throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("fixture-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let object = work.appendingPathComponent("g.o").path, binary = work.appendingPathComponent("g.bin").path
        try run(Self.assemblerPath!, ["--32", "-o", object, Fixtures.guestSources + "/checksum16.S"])
        try run("/usr/bin/objcopy", ["-O", "binary", "-j", ".text", object, binary])
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: binary))) == Fixtures.checksum16)
    }

    @Test(.enabled(if: assemblerPath != nil, "binutils (as) is not installed"))
    func pvhCheckELFMatchesItsSource() throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("fixture-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let script = URL(fileURLWithPath: Fixtures.guestSources).deletingLastPathComponent().appendingPathComponent("build-guests.sh")
        // The script also prints the real-mode guests' arrays; only the ELF matters here.
        try run("/bin/bash", ["-c", "\"$0\" \"$1\" >/dev/null 2>&1", script.path, work.path])
        let rebuilt = try Data(contentsOf: work.appendingPathComponent("pvh-check.elf"))
        #expect(rebuilt == (try Data(contentsOf: URL(fileURLWithPath: Fixtures.pvhCheckPath))),
                "Guests/pvh-check.elf differs from what build-guests.sh makes of pvh-check.S; run it and commit the result")
    }

    private func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "\(tool) \(arguments.joined(separator: " "))")
    }
}
