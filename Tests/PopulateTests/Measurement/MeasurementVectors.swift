import Fixtures
import Foundation
import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

/// The measurement suites, grouped so that `swift test --filter Measurement` runs them all.
@Suite enum MeasurementTests {}

/// The reference vectors in `Tests/Fixtures/Measurement`, written by
/// `regenerate.py` with sev-snp-measure, td-shim's MRTD script and the CCA model.
enum MeasurementVectors {
    struct SNPCase: Decodable, CustomTestStringConvertible, Sendable {
        let name: String
        let image: String
        let args: [String]
        let status: Int32
        let stdout: String
        let stderrLastLine: String
        var testDescription: String { name }
    }

    struct DerivedImage: Decodable, Sendable {
        let base: String
        let patches: [Patch]
    }

    /// `[offset, "hex bytes"]`.
    struct Patch: Decodable, Sendable {
        let offset: Int
        let bytes: [UInt8]
        init(from decoder: Decoder) throws {
            var container = try decoder.unkeyedContainer()
            offset = try container.decode(Int.self)
            bytes = Hex.decode(try container.decode(String.self)) ?? []
        }
    }

    struct SNPFile: Decodable {
        let generator: String
        let derivedImages: [String: DerivedImage]
        let cases: [SNPCase]
    }

    struct TDXCase: Decodable, Sendable { let image: String; let mrtd: String }
    struct TDXFile: Decodable { let cases: [TDXCase] }
    struct CCACase: Decodable, CustomTestStringConvertible, Sendable {
        let name: String
        let args: [String]
        let rim: String
        var testDescription: String { name }
    }
    struct CCAFile: Decodable { let cases: [CCACase] }

    static let directory = Fixtures.measurementDirectory

    static func load<T: Decodable>(_ name: String, as type: T.Type) -> T {
        let data = FileManager.default.contents(atPath: directory + "/" + name) ?? Data()
        do { return try JSONDecoder().decode(type, from: data) } catch {
            fatalError("cannot read \(name): \(error)")
        }
    }

    static let snp = load("snp-vectors.json", as: SNPFile.self)
    static let tdx = load("tdx-vectors.json", as: TDXFile.self).cases
    static let cca = load("cca-vectors.json", as: CCAFile.self).cases

    static func snpCase(_ name: String) -> SNPCase { snp.cases.first { $0.name == name }! }

    /// The bytes of a committed fixture or of an image derived by patching one.
    static func bytes(_ name: String) -> [UInt8] {
        if let derived = snp.derivedImages[name] {
            var bytes = Self.bytes(derived.base)
            for patch in derived.patches { bytes.replaceSubrange(patch.offset..<(patch.offset + patch.bytes.count), with: patch.bytes) }
            return bytes
        }
        return [UInt8](FileManager.default.contents(atPath: directory + "/" + name) ?? Data())
    }

    /// A path holding the image: the fixture itself, or a derived image in
    /// the temporary directory under a name of its own, written (atomically)
    /// only when it is missing or differs, so runs reuse one file per image.
    static func path(_ name: String) throws -> String {
        guard snp.derivedImages[name] != nil else { return directory + "/" + name }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("snpvmm-derived-\(name)").path
        let wanted = Data(bytes(name))
        if FileManager.default.contents(atPath: path) != wanted {
            // Written beside it, then renamed over it, so a concurrent reader sees one image or the other.
            let partial = path + ".\(getpid())"
            try wanted.write(to: URL(fileURLWithPath: partial))
            guard rename(partial, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
        }
        return path
    }

    static let bookworm = "OVMF/bookworm-OVMF.fd"
    static let sid = "OVMF/sid-OVMF.amdsev.fd"
}

/// Runs the built `snpvmm` beside the test bundle.
enum SNPVMMExecutable {
    static let path: String? = {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let candidate = URL(fileURLWithPath: executable).deletingLastPathComponent().appendingPathComponent("snpvmm").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }()

    struct Result { let status: Int32; let stdout: String; let stderr: String }

    static func run(_ arguments: [String], in directory: String = MeasurementVectors.directory) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(path, "snpvmm is not built beside the tests"))
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                      stderr: String(decoding: stderr, as: UTF8.self))
    }
}

extension MeasurementVectors {
    /// Decodes lower-case hex.
    static func hexDecoded(_ text: String) -> [UInt8] {
        Hex.decode(text)!
    }
}
