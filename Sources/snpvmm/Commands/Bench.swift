import VMMCore
import GuestMemfd
/// `snpvmm bench <name>`: benchmarks that report ratios against a baseline
/// measured in the same run. Each benchmark lives in its own file and is
/// listed once in `benchmarks`.
enum BenchCommand {
    struct Benchmark: Sendable {
        let name: String
        /// The synopsis line, e.g. "populate --size SIZE [--json]".
        let synopsis: String
        let run: @Sendable ([String]) -> ExitCode
    }

    static let benchmarks: [Benchmark] = [
        BenchPopulate.benchmark,
        BenchMeasure.benchmark,
        BenchBoot.benchmark,
        BenchCycles.benchmark,
        BenchRMPOPT.benchmark,
    ]

    static var summary: String {
        (["bench <name> ...     run a benchmark; ratios against a baseline from the same run"]
            + benchmarks.map { "  bench \($0.synopsis)" }).joined(separator: "\n")
    }

    static func run(_ arguments: [String]) -> ExitCode {
        guard let name = arguments.first, let benchmark = benchmarks.first(where: { $0.name == name }) else {
            fail("bench: name one of: \(benchmarks.map(\.name).joined(separator: ", "))", status: .usage)
        }
        return benchmark.run(Array(arguments.dropFirst()))
    }
}
