import Foundation
import Populate
#if canImport(Glibc)
import Glibc
#endif

/// The line redrawn on standard error while a large launch populates:
/// bytes done of the total, the rate so far and the time left. It is shown
/// only on a terminal and only for launches of at least a GiB; elsewhere
/// nothing is written, so logs and pipes see the report alone.
final class ProgressLine: @unchecked Sendable {
    static let threshold: UInt64 = 1 << 30
    /// At most this many redraws a second.
    static let interval = 0.25

    private let lock = NSLock()
    private var lastDraw = -Double.infinity
    private var drawn = false

    /// A progress line for a launch of `totalBytes`, or nil where none is shown.
    static func make(totalBytes: UInt64, isTerminal: Bool = isatty(STDERR_FILENO) == 1) -> ProgressLine? {
        isTerminal && totalBytes >= threshold ? ProgressLine() : nil
    }

    /// Sets `options.progress` to draw this line.
    func install(in options: inout PopulateOptions) {
        options.progress = { [self] progress in update(progress) }
    }

    func update(_ progress: PopulateProgress) {
        lock.withLock {
            guard progress.seconds - lastDraw >= Self.interval || progress.bytesDone >= progress.bytesTotal else { return }
            lastDraw = progress.seconds
            drawn = true
            var standardError = StandardError()
            standardError.write("\r" + Self.text(progress) + "\u{1B}[K")
        }
    }

    /// Clears the line, so that what follows starts on a clean one.
    func finish() {
        lock.withLock {
            guard drawn else { return }
            drawn = false
            var standardError = StandardError()
            standardError.write("\r\u{1B}[K")
        }
    }

    /// "populating 1.25 of 4.00 GiB (31%), 0.850 GiB/s, 3.5 s left"
    static func text(_ progress: PopulateProgress) -> String {
        let gib = Double(1 << 30)
        let percent = progress.bytesTotal == 0 ? 100 : Int(Double(progress.bytesDone) * 100 / Double(progress.bytesTotal))
        var line = "populating \(String(Double(progress.bytesDone) / gib, decimals: 2)) of \(String(Double(progress.bytesTotal) / gib, decimals: 2)) GiB (\(percent)%)"
        if let rate = progress.gibPerSecond { line += ", \(String(rate, decimals: 3)) GiB/s" }
        if let left = progress.secondsLeft { line += ", \(String(left, decimals: 1)) s left" }
        return line
    }
}
