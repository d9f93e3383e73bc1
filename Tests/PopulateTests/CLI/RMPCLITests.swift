import GuestMemfd
import KVMFake
import Foundation
import Testing
import VMMCore

/// The JSON object a run printed.
private func object(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

@Suite struct RMPOPTTableParsingTests {
    @Test func debugfsRowsGiveTheRegionAndItsCPUs() throws {
        let row = try #require(RMPOPTHostStatus.parseRow("Memory @12GB: CPU(s): 0-3,8, 10-11"))
        #expect(row.gigabyte == 12)
        #expect(row.cpus == [0, 1, 2, 3, 8, 10, 11])
        #expect(RMPOPTHostStatus.parseRow("Memory @0GB: CPU(s): none")?.cpus == [])
        #expect(RMPOPTHostStatus.parseRow("Memory @3GB: CPU(s):")?.cpus == [])
        #expect(RMPOPTHostStatus.parseRow("Memory @x GB: CPU(s): 1") == nil)
        #expect(RMPOPTHostStatus.parseRow("Memory @4GB: CPU(s): 3-1") == nil)
        #expect(RMPOPTHostStatus.parseRow("RMPOPT table") == nil)
    }
}

@Suite(.enabled(if: Snpvmm.isBuilt, "snpvmm is not built beside the tests"))
struct RMPCLITests {
    @Test func statusOnThisHostSaysWhatIsAbsentAndWhy() throws {
        let text = try Snpvmm.run(["rmp", "status"])
        #expect(text.status == 0, "\(text)")
        let json = try Snpvmm.run(["rmp", "status", "--json"])
        #expect(json.status == 0, "\(json)")
        let status = try object(json.stdout)
        #expect(status["source"] as? String == "host")
        let debugfs = try #require(status["debugfs"] as? [String: Any])
        let configfs = try #require(status["configfs"] as? [String: Any])
        let tablePresent = try #require(debugfs["present"] as? Bool)
        #expect(status["available"] as? Bool == (tablePresent || configfs["present"] as? Bool == true))
        #expect((debugfs["path"] as? String)?.hasSuffix("/rmpopt/rmpopt-table") == true)
        if !tablePresent {
            let reasons = try #require(status["reasons"] as? [String])
            #expect(!reasons.isEmpty)
            #expect(text.stdout.contains("debugfs table         absent: "))
            #expect(text.stdout.contains("RMPOPT status is not available here: \(reasons[0])"))
        }
    }

    @Test func emulatedStatusShowsEveryRegionWithItsGuests() throws {
        let run = try Snpvmm.run(["rmp", "status", "--emulate", "--host-memory", "8G", "--guests", "3",
                                  "--guest-size", "64M", "--policy", "1g", "--cpus", "4", "--json"])
        #expect(run.status == 0, "\(run)")
        let status = try object(run.stdout)
        let regions = try #require(status["regions"] as? [[String: Any]])
        #expect(regions.count == 8)
        #expect(status["regions_total"] as? Int == 8)
        // The VMSAs in the kernel's first GiB, and one whole region per guest above it.
        let owned = regions.filter { ($0["assigned_pages"] as? Int ?? 0) > 0 }
        #expect(owned.map { $0["index"] as? Int } == [0, 1, 2, 3])
        #expect(owned.dropFirst().map { $0["guests"] as? [Int] } == [[1], [2], [3]])
        #expect(owned.dropFirst().allSatisfy { $0["assigned_pages"] as? Int == 16384 })
        #expect(owned.allSatisfy { $0["optimized"] as? Bool == false && ($0["optimized_cpus"] as? [Int])?.isEmpty == true })
        #expect(status["regions_optimized"] as? Int == 4)
        #expect(status["backing"] as? String == "1 GiB HugeTLB pages")

        let after = try Snpvmm.run(["rmp", "status", "--emulate", "--host-memory", "8G", "--guests", "3",
                                    "--guest-size", "64M", "--policy", "1g", "--teardown"])
        #expect(after.status == 0, "\(after)")
        #expect(after.stdout.contains("after teardown and the scheduled re-optimisation"))
        #expect(after.stdout.contains("  @0GB-@7GB       yes (8/8)     0               -"))
        #expect(after.stdout.contains("regions: 8 in all, 8 optimised on every CPU, 0 holding guest-private pages"))
    }

    @Test func benchComparesThePoliciesSideBySide() throws {
        let run = try Snpvmm.run(["bench", "rmpopt", "--host-memory", "16G", "--guests", "3", "--guest-size", "32M",
                                  "--cpus", "2", "--json"])
        #expect(run.status == 0, "\(run)")
        let policies = try #require(try object(run.stdout)["policies"] as? [String: [String: Any]])
        #expect(Set(policies.keys) == ["4k", "2m", "1g"])
        for (_, figures) in policies {
            #expect(figures["regions_total"] as? Int == 16)
            // Teardown and the scheduled pass give every region back.
            #expect(figures["regions_optimized_after"] as? Int == 16)
        }
        let during = policies.mapValues { $0["regions_optimized_during"] as? Int ?? -1 }
        // 3 x 32 MiB: 1 GiB pages take a region per guest, 2 MiB pages share one, 4 KiB pages touch nearly all.
        #expect(during["1g"] == 16 - 1 - 3)
        #expect(during["2m"] == 16 - 1 - 1)
        #expect(during["4k"]! < during["1g"]!)
        let updates = policies.mapValues { $0["rmp_updates"] as? Int ?? -1 }
        #expect(updates["2m"]! < updates["4k"]!)
        #expect(updates["2m"] == updates["1g"])

        let text = try Snpvmm.run(["bench", "rmpopt", "--host-memory", "4G", "--guests", "1", "--guest-size", "8M",
                                   "--policy", "2m"])
        #expect(text.status == 0, "\(text)")
        let lines = text.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("  policy ") && $0.hasSuffix(" 2m") })
        #expect(lines.contains { $0.hasPrefix("  1 GiB regions in total ") && $0.hasSuffix(" 4") })
        #expect(lines.contains { $0.hasPrefix("  optimised while the guests run ") && $0.hasSuffix(" 2") })
        #expect(lines.contains { $0.hasPrefix("  optimised after teardown + re-optimise ") && $0.hasSuffix(" 4") })
    }

    @Test(arguments: [
        (["rmp"], "snpvmm: rmp: name a subcommand: status"),
        (["rmp", "status", "--bogus"], "snpvmm: rmp status: unknown option '--bogus'"),
        (["rmp", "status", "--guests", "2"], "snpvmm: rmp status: --guests describes emulated guests; give --emulate"),
        (["rmp", "status", "--emulate", "--policy", "3g"], "snpvmm: rmp status: --policy '3g' must be 4k, 2m or 1g"),
        (["rmp", "status", "--emulate", "--guest-size", "3M"],
         "snpvmm: rmp status: --guest-size '3M' must be a multiple of 2 MiB, at least 2M, such as 256M"),
        (["bench", "rmpopt", "--host-memory", "1G"],
         "snpvmm: bench rmpopt: --host-memory '1G' must be a whole number of GiB from 2G to 4T, such as 64G"),
        (["bench", "rmpopt", "--guests", "0"], "snpvmm: bench rmpopt: --guests '0' must be a count from 1 to 1024"),
        (["bench", "rmpopt", "--policy", "all", "--cpus"], "snpvmm: bench rmpopt: --cpus needs a value"),
        (["bench", "rmpopt", "--policy", "huge"], "snpvmm: bench rmpopt: --policy 'huge' must be 4k, 2m, 1g or all"),
        (["bench", "rmpopt", "--host-memory", "4G", "--guests", "4", "--guest-size", "2M", "--policy", "1g"],
         "snpvmm: bench rmpopt: 4 guests of 2 MiB with 1 GiB HugeTLB pages need 4 GiB, more than the 3 GiB a 4 GiB host has above its kernel's first GiB"),
    ])
    func badFlagsExitWithStatus2AndOneLine(_ arguments: [String], _ message: String) throws {
        let run = try Snpvmm.run(arguments)
        #expect(run.status == 2, "\(run)")
        #expect(run.stderr == message + "\n")
        #expect(run.stdout.isEmpty)
    }
}
