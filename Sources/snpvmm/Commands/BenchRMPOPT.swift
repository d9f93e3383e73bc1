import GuestMemfd
import Populate
import VMMCore

/// `snpvmm bench rmpopt`: how much of a simulated SEV-SNP host keeps
/// RMPOPT's fast path while the same guests run with 4 KiB, 2 MiB or 1 GiB
/// backing, and after they are torn down. Each policy is a fresh emulated
/// host (FakeKVM) whose guests are launched through the Populate engine;
/// the 4 KiB policy is the baseline the others are compared with.
enum BenchRMPOPT {
    static let benchmark = BenchCommand.Benchmark(
        name: "rmpopt",
        synopsis: "rmpopt --host-memory SIZE --guests N --guest-size SIZE [--policy 4k|2m|1g|all] [--cpus N] [--json]",
        run: { run($0) })

    /// One policy's figures.
    struct Result {
        var policy: GuestMemoryBacking
        var backing: BackingOutcome?
        var regionsTotal: Int
        var optimizedDuring: Int
        var optimizedAfter: Int
        var privateRegionsDuring: Int
        var launchUpdates: Int
        var rmpUpdates: Int
        var seconds: Double
    }

    static func run(_ arguments: [String]) -> ExitCode {
        var setup = RMPOPTEmulation.Setup()
        var policies = GuestMemoryBacking.allCases
        let parser = ArgumentParser(options: RMPOPTEmulation.sharedOptions + [
            OptionSpec(names: ["--policy"], takesValue: true), OptionSpec(names: ["--json"], takesValue: false),
        ], dialect: .snpvmm(command: "bench rmpopt"))
        var json = false
        do throws(UsageError) {
            let given = try parser.parse(arguments)
            json = given.has("--json")
            try RMPOPTEmulation.readSharedOptions(given, into: &setup)
            if let text = given["--policy"] {
                if text == "all" {
                    policies = GuestMemoryBacking.allCases
                } else if let policy = GuestMemoryBacking(rawValue: text) {
                    policies = [policy]
                } else {
                    throw UsageError("--policy '\(text)' must be 4k, 2m, 1g or all")
                }
            }
            for policy in policies { try RMPOPTEmulation.checkFits(setup, backing: policy) }
        } catch {
            fail("bench rmpopt: \(error)", status: .usage)
        }

        var results: [Result] = []
        for policy in policies {
            do {
                results.append(try measure(setup, policy))
            } catch {
                fail("bench rmpopt: policy \(policy.rawValue): \(error)")
            }
        }
        if json {
            print(jsonText(setup, results))
        } else {
            print(table(setup, results))
        }
        return .success
    }

    /// Launches the guests on a fresh emulated host, takes the figures while
    /// they run, tears them down and runs the scheduled re-optimisation.
    static func measure(_ base: RMPOPTEmulation.Setup, _ policy: GuestMemoryBacking) throws -> Result {
        var setup = base
        setup.backing = policy
        let start = BenchPopulate.now()
        let emulation = RMPOPTEmulation(setup)
        try emulation.launch()
        let during = emulation.snapshot()
        emulation.teardown()
        let after = emulation.snapshot()
        return Result(policy: policy, backing: emulation.backing, regionsTotal: during.regions.count,
                      optimizedDuring: during.optimized, optimizedAfter: after.optimized,
                      privateRegionsDuring: during.withPrivatePages, launchUpdates: emulation.launchUpdates,
                      rmpUpdates: after.rmpUpdates, seconds: BenchPopulate.now() - start)
    }

    static func table(_ setup: RMPOPTEmulation.Setup, _ results: [Result]) -> String {
        let baseline = results.first { $0.policy == .pages4K }
        var lines = [
            "rmpopt: \(setup.guests) guests x \(RMPOPTEmulation.sizeText(setup.guestSize)) on a simulated "
                + "\(RMPOPTEmulation.sizeText(setup.hostMemory)) SEV-SNP host with \(setup.cpus) CPUs "
                + "(FakeKVM: RMPOPT v8 + guest_memfd HugeTLB series), guests launched through Populate",
        ]
        func row(_ label: String, _ values: [String]) {
            lines.append("  " + label.padding(40) + values.map { $0.padding(12, left: true) }.joined())
        }
        row("policy", results.map(\.policy.rawValue))
        row("backing got", results.map { result in
            result.backing?.fallbackReason == nil ? RMPOPTEmulation.sizeText(result.backing?.got.pageSize ?? 4096) : "4 KiB*"
        })
        row("1 GiB regions in total", results.map { "\($0.regionsTotal)" })
        row("regions with guest-private pages", results.map { "\($0.privateRegionsDuring)" })
        row("optimised while the guests run", results.map { "\($0.optimizedDuring)" })
        row("optimised after teardown + re-optimise", results.map { "\($0.optimizedAfter)" })
        row("RMP updates, launch", results.map { "\($0.launchUpdates)" })
        row("RMP updates, launch + teardown", results.map { "\($0.rmpUpdates)" })
        row("share of the host optimised (running)", results.map {
            BenchPopulate.fixed3(Double($0.optimizedDuring) / Double(max($0.regionsTotal, 1)))
        })
        if let baseline {
            row("RMP updates / 4k's", results.map {
                BenchPopulate.fixed3(Double($0.rmpUpdates) / Double(max(baseline.rmpUpdates, 1)))
            })
        }
        row("emulation time, s", results.map { BenchPopulate.fixed3($0.seconds) })
        for result in results where result.backing?.fallbackReason != nil {
            lines.append("  * \(result.policy.rawValue): \(result.backing!)")
        }
        return lines.joined(separator: "\n")
    }

    static func jsonText(_ setup: RMPOPTEmulation.Setup, _ results: [Result]) -> String {
        let policies = results.map { result in
            "\"\(result.policy.rawValue)\":{\"backing\":\(jsonString(result.backing?.description ?? "")),"
                + "\"regions_total\":\(result.regionsTotal),\"regions_optimized_during\":\(result.optimizedDuring),"
                + "\"regions_optimized_after\":\(result.optimizedAfter),"
                + "\"regions_with_private_pages\":\(result.privateRegionsDuring),"
                + "\"rmp_updates\":\(result.rmpUpdates),\"rmp_updates_launch\":\(result.launchUpdates),"
                + "\"seconds\":\(result.seconds)}"
        }
        return "{\"host_memory\":\(setup.hostMemory),\"guests\":\(setup.guests),\"guest_size\":\(setup.guestSize),"
            + "\"cpus\":\(setup.cpus),\"policies\":{\(policies.joined(separator: ","))}}"
    }
}
