import GuestMemfd
import Foundation
import Testing

/// `snpvmm bench cycles` in its own process, so that no other test's
/// descriptors or mappings come and go while it counts.
@Suite(.enabled(if: Snpvmm.isBuilt, "the snpvmm executable is not built beside the tests"))
struct CyclesCLITests {
    /// The before and after columns of one line of the table.
    func figures(_ name: String, in output: String) -> (before: Int, after: Int)? {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("  \(name)") }) else { return nil }
        let numbers = line.dropFirst(2 + name.count).split(separator: " ").prefix(2).compactMap { Int($0) }
        return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
    }

    @Test(.requiresKVM(.kvm))
    func twentyCyclesLeaveTheDescriptorsAndMappingsAsTheyWere() throws {
        let outcome = try Snpvmm.run(["bench", "cycles", "--count", "20"])
        if ProcessInfo.processInfo.environment["SNPVMM_SANITIZER"] == "address", outcome.status == 1 {
            // AddressSanitizer holds freed memory in quarantine, so resident
            // memory grows by design under scripts/sanitize; that complaint,
            // and no other, is expected there.
            #expect(outcome.stderr.hasPrefix("snpvmm: bench cycles: resident memory grew by "), "\(outcome)")
            #expect(outcome.stderr.filter { $0 == "\n" }.count == 1, "\(outcome)")
        } else {
            #expect(outcome.status == 0, "\(outcome)")
        }
        let descriptors = try #require(figures("descriptors", in: outcome.stdout), "\(outcome)")
        #expect(descriptors.after == descriptors.before)
        let mappings = try #require(figures("mappings", in: outcome.stdout), "\(outcome)")
        #expect(mappings.after == mappings.before)
        #expect(outcome.stdout.contains("20 cycles after 5 warm-up cycles"))
    }

    @Test func aCountThatIsNotAPositiveNumberIsAUsageError() throws {
        let outcome = try Snpvmm.run(["bench", "cycles", "--count", "0"])
        #expect(outcome.status == 2)
        #expect(outcome.stderr.hasPrefix("snpvmm: bench cycles: --count needs a positive number\n"))
        #expect(outcome.stdout.isEmpty)
    }
}
