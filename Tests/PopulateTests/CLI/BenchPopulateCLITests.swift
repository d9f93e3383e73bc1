import Foundation
import Testing

private func object(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
}

/// `snpvmm bench populate --platform`: one launch through the engine, on
/// the emulated platform on any host.
@Suite(.enabled(if: Snpvmm.isBuilt, "the snpvmm executable is not built beside the tests"))
struct BenchPopulateCLITests {
    @Test(arguments: [("plain", "in-place"), ("snp", "separate-source"), ("snp", "in-place"), ("tdx", "separate-source"),
                      ("cca", "separate-source")])
    func anEmulatedLaunchReportsItsRateUnitsAndPeakRSS(platform: String, policy: String) throws {
        // 16 MiB: eight 2 MiB units from GPA 0, no 4 KiB page outside them.
        let run = try Snpvmm.run(["bench", "populate", "--platform", platform, "--emulate", "--policy", policy,
                                  "--size", "16M", "--json"])
        #expect(run.status == 0, "\(run)")
        let figures = try object(run.stdout)
        #expect(figures["platform"] as? String == platform)
        #expect(figures["policy"] as? String == policy)
        #expect(figures["emulated"] as? Bool == true)
        #expect(figures["size"] as? Int == 16 << 20)
        #expect(figures["units_2m"] as? Int == 8)
        #expect(figures["pages_4k"] as? Int == 0)
        #expect((figures["gib_per_s"] as? Double ?? 0) > 0)
        #expect((figures["ratio_vs_memcpy"] as? Double ?? 0) > 0)
        let peak = try #require(figures["peak_rss_bytes"] as? Int)
        #expect(peak > 16 << 20, "the emulated platform's copy of guest memory is resident")
        #expect(figures["peak_rss_bound_bytes"] as? Int == (16 << 20) + (16 << 20) * 15 / 100 + (256 << 20))
        #expect(figures["within_rss_bound"] as? Bool == true)
        let phases = try #require(figures["phases"] as? [String: [String: Any]])
        // A plain launch writes straight into the mapping: nothing to measure, convert or populate.
        let expected: Set = platform == "plain" ? ["fill", "finish"] : ["read", "measure", "fill", "convert", "populate", "finish"]
        #expect(Set(phases.keys).isSuperset(of: expected))
        let digestHex = ["plain": 0, "cca": 64][platform] ?? 96
        #expect((figures["measurement"] as? String)?.count == digestHex, "none for plain, SHA-256 for the default realm, SHA-384 otherwise")
    }

    @Test func aConfidentialPlatformThisHostLacksIsNamedWithTheWayToEmulateIt() throws {
        let run = try Snpvmm.run(["bench", "populate", "--platform", "tdx", "--size", "2M"])
        // No TDX here: a one-line failure saying what is missing and how to emulate.
        #expect(run.status == 1, "\(run)")
        #expect(run.stderr.hasPrefix("snpvmm: bench populate: TDX on this host's KVM: "))
        #expect(run.stderr.hasSuffix("; give --emulate to run over the emulated platform\n"))
        #expect(run.stderr.filter { $0 == "\n" }.count == 1)
    }

    /// A plain launch on this host's own guest_memfd where it has one (T3);
    /// elsewhere a one-line failure naming the missing capability.
    @Test func aPlainLaunchUsesThisHostsGuestMemfdOrSaysItHasNone() throws {
        let run = try Snpvmm.run(["bench", "populate", "--platform", "plain", "--size", "16M", "--json"])
        if run.status == 0 {
            let figures = try object(run.stdout)
            #expect(figures["emulated"] as? Bool == false)
            #expect(figures["units_2m"] as? Int == 8)
        } else {
            #expect(run.status == 1, "\(run)")
            #expect(run.stderr.contains("KVM_CAP_GUEST_MEMFD = 0"), "\(run)")
            #expect(run.stderr.hasSuffix("; give --emulate to run over the emulated platform\n"))
            #expect(run.stderr.filter { $0 == "\n" }.count == 1)
        }
    }

    @Test(arguments: [
        (["--platform", "sev"], "snpvmm: bench populate: --platform 'sev' must be plain, snp, tdx or cca"),
        (["--platform", "snp", "--policy", "copy"], "snpvmm: bench populate: --policy 'copy' must be in-place or separate-source"),
        (["--emulate"], "snpvmm: bench populate: --emulate describes a --platform launch; give --platform snp, tdx or cca"),
        (["--platform", "snp", "--runs", "2"], "snpvmm: bench populate: --runs times the plain fill; a --platform launch runs once"),
    ])
    func badFlagsAreOneLineUsageErrors(_ arguments: [String], _ message: String) throws {
        let run = try Snpvmm.run(["bench", "populate"] + arguments)
        #expect(run.status == 2, "\(run)")
        #expect(run.stderr == message + "\n")
    }
}
