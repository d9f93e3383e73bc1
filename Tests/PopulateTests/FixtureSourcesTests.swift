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

    private func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "\(tool) \(arguments.joined(separator: " "))")
    }
}
