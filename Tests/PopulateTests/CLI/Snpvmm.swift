import GuestMemfd
import Foundation
import Synchronization

/// The snpvmm executable built beside this test bundle, run as a user runs it.
enum Snpvmm {
    /// `<build dir>/snpvmm`, next to the test runner (`/proc/self/exe`).
    static let path: String = {
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("snpvmm").path
    }()

    static var isBuilt: Bool { FileManager.default.isExecutableFile(atPath: path) }

    /// What `run --ram auto` says on standard error about guest RAM on this
    /// host: nothing where guest_memfd can be mapped, one line otherwise.
    static var ramNote: String {
        guard let missing = KVMHost.whyMissing(.guestMemfd) ?? KVMHost.whyMissing(.mmap) else { return "" }
        return "snpvmm: guest RAM is a memfd mapped shared, not guest_memfd: \(missing)\n"
    }

    /// What one run printed and how it ended.
    struct Outcome: Equatable, CustomStringConvertible {
        var stdout: String
        var stderr: String
        var status: Int32

        var description: String { "status \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }
    }

    /// Runs snpvmm to completion, with this process's environment plus `environment`.
    static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let stdout = Pipe(), stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read both pipes to the end before waiting, so a chatty child cannot block on a full pipe.
        let errors = Collector()
        let errorReader = Thread { errors.append(stderr.fileHandleForReading.readDataToEndOfFile()) }
        errorReader.start()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errors.isDone { usleep(1000) }
        return Outcome(stdout: String(decoding: output, as: UTF8.self), stderr: String(decoding: errors.data, as: UTF8.self),
                       status: process.terminationStatus)
    }

    /// Starts snpvmm, reads its standard output (or, with `standardError`,
    /// its standard error) until `marker` has appeared `occurrences` times or
    /// `timeout` seconds pass, then stops it. Returns what it read and
    /// whether the marker appeared as often as asked.
    static func runUntil(_ arguments: [String], marker: String, occurrences: Int = 1, standardError: Bool = false,
                         timeout: Double) throws -> (output: String, found: Bool) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let stdout = Pipe()
        if standardError {
            process.standardError = stdout
            process.standardOutput = FileHandle.nullDevice
        } else {
            process.standardOutput = stdout
            process.standardError = FileHandle.nullDevice
        }
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let collector = Collector()
        let reader = Thread {
            while true {
                let data = stdout.fileHandleForReading.availableData
                if data.isEmpty { break }
                collector.append(data, done: false)
            }
            collector.append(Data())
        }
        reader.start()
        let deadline = Date().addingTimeInterval(timeout)
        var found = false
        while Date() < deadline && !collector.isDone {
            if String(decoding: collector.data, as: UTF8.self).components(separatedBy: marker).count > occurrences {
                found = true
                break
            }
            usleep(20_000)
        }
        // SIGKILL: a child spawned from a test thread inherits its blocked signals, SIGTERM among them.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        while !collector.isDone { usleep(1000) }
        let output = String(decoding: collector.data, as: UTF8.self)
        return (output, found || output.components(separatedBy: marker).count > occurrences)
    }

    private final class Collector: Sendable {
        private let state = Mutex((data: Data(), done: false))
        func append(_ data: Data, done: Bool = true) {
            state.withLock { $0.data.append(data); if done { $0.done = true } }
        }
        var data: Data { state.withLock { $0.data } }
        var isDone: Bool { state.withLock { $0.done } }
    }
}

/// Debian's bzImage, which `scripts/setup` extracts from linux-image-amd64
/// into `.build-fixtures/debian-kernel/vmlinuz`.
enum DebianKernel {
    static let path: String? = {
        let file = repositoryRoot.appendingPathComponent(".build-fixtures/debian-kernel/vmlinuz").path
        return FileManager.default.fileExists(atPath: file) ? file : nil
    }()
}
