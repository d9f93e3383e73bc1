#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import KVMFake
import Populate
import VMMCore

/// `snpvmm rmp status`: which 1 GiB regions of host memory have RMPOPT's
/// fast path, from the kernel's RMPOPT debugfs table on a host whose kernel
/// has the RMPOPT series, or from an emulated host with `--emulate`.
///
/// The exit status is 0 whenever the status could be looked for, also when
/// the host has no RMPOPT interface: the output then says it is absent and
/// why ("available": false in JSON). 2 is a usage error.
enum RMPCommand {
    static let summary = """
        rmp status [--json] [--emulate ...]
                            RMPOPT state of this host's 1 GiB regions (kernel debugfs,
                            v1 configfs), or with --emulate [--host-memory SIZE]
                            [--guests N] [--guest-size SIZE] [--policy 4k|2m|1g]
                            [--cpus N] [--teardown] of guests on an emulated host;
                            exit status 0 also where the host has no RMPOPT
        """

    static func run(_ arguments: [String]) -> ExitCode {
        guard arguments.first == "status" else {
            fail("rmp: name a subcommand: status", status: .usage)
        }
        var setup = RMPOPTEmulation.Setup()
        let parser = ArgumentParser(options: RMPOPTEmulation.sharedOptions + [
            OptionSpec(names: ["--json"], takesValue: false), OptionSpec(names: ["--emulate"], takesValue: false),
            OptionSpec(names: ["--teardown"], takesValue: false), OptionSpec(names: ["--policy"], takesValue: true),
        ], dialect: .snpvmm(command: "rmp status"))
        let json: Bool, emulate: Bool, teardown: Bool
        do throws(UsageError) {
            let given = try parser.parse(Array(arguments.dropFirst()))
            (json, emulate, teardown) = (given.has("--json"), given.has("--emulate"), given.has("--teardown"))
            try RMPOPTEmulation.readSharedOptions(given, into: &setup)
            if let text = given["--policy"] {
                guard let policy = GuestMemoryBacking(rawValue: text) else {
                    throw UsageError("--policy '\(text)' must be 4k, 2m or 1g")
                }
                setup.backing = policy
            }
            let emulationOptions = given.order.filter { $0 != "--json" && $0 != "--emulate" }
            if !emulate, let first = emulationOptions.first {
                throw UsageError("\(first) describes emulated guests; give --emulate")
            }
            if emulate { try RMPOPTEmulation.checkFits(setup, backing: setup.backing) }
        } catch {
            fail("rmp status: \(error)", status: .usage)
        }
        if emulate { return emulatedStatus(setup, teardown: teardown, json: json) }
        let status = RMPOPTHostStatus.probe()
        print(json ? status.json : status.text)
        return .success
    }

    // MARK: Emulated host

    static func emulatedStatus(_ setup: RMPOPTEmulation.Setup, teardown: Bool, json: Bool) -> ExitCode {
        let emulation = RMPOPTEmulation(setup)
        do {
            try emulation.launch()
        } catch {
            fail("rmp status: launching the emulated guests: \(error)")
        }
        let numbers = emulation.guestNumbers
        if teardown { emulation.teardown() }
        let snapshot = emulation.snapshot()
        let phase = teardown ? "after teardown and the scheduled re-optimisation" : "while the guests run"
        let profile = emulation.fake.profile
        if json {
            let rows = snapshot.regions.map { region in
                "{\"index\":\(region.index),\"address\":\(UInt64(region.index) << 30),\"covered\":\(region.covered),"
                    + "\"optimized\":\(region.optimizedCPUs.count == snapshot.cpus),"
                    + "\"optimized_cpus\":[\(region.optimizedCPUs.map(String.init).joined(separator: ","))],"
                    + "\"assigned_pages\":\(region.assignedPages),\"guests\":[\(guests(region, numbers).map(String.init).joined(separator: ","))]}"
            }
            print("{\"source\":\"emulated\",\"available\":true,\"profile\":\(jsonString(profile.name)),"
                  + "\"kernel\":\(jsonString(profile.kernel)),\"host_memory\":\(setup.hostMemory),\"cpus\":\(snapshot.cpus),"
                  + "\"guests\":\(setup.guests),\"guest_size\":\(setup.guestSize),\"policy\":\"\(setup.backing.rawValue)\","
                  + "\"backing\":\(jsonString(emulation.backing?.description ?? "")),"
                  + "\"phase\":\"\(teardown ? "after-teardown" : "running")\",\"regions_total\":\(snapshot.regions.count),"
                  + "\"regions_optimized\":\(snapshot.optimized),\"rmp_updates\":\(snapshot.rmpUpdates),"
                  + "\"regions\":[\(rows.joined(separator: ","))]}")
            return .success
        }
        var lines = [
            "RMPOPT on an emulated SEV-SNP host (\(profile.name): \(profile.kernel)), "
                + "\(RMPOPTEmulation.sizeText(setup.hostMemory)), \(snapshot.cpus) CPUs",
            "guests: \(setup.guests) x \(RMPOPTEmulation.sizeText(setup.guestSize)), backing \(emulation.backing?.description ?? "none"); \(phase)",
            "  " + "region".padding(16) + "optimised".padding(14) + "assigned pages".padding(16) + "guests",
        ]
        // Runs of identical rows without guests are folded into one.
        var start = 0
        while start < snapshot.regions.count {
            let region = snapshot.regions[start]
            var end = start + 1
            if region.assignedPages == 0 {
                while end < snapshot.regions.count, snapshot.regions[end].assignedPages == 0,
                      snapshot.regions[end].optimizedCPUs == region.optimizedCPUs,
                      snapshot.regions[end].covered == region.covered
                { end += 1 }
            }
            let name = end - start > 1 ? "@\(start)GB-@\(end - 1)GB" : "@\(start)GB"
            let optimised = !region.covered ? "not covered"
                : region.optimizedCPUs.count == snapshot.cpus ? "yes (\(snapshot.cpus)/\(snapshot.cpus))"
                : "no (\(region.optimizedCPUs.count)/\(snapshot.cpus))"
            let owners = guests(region, numbers)
            lines.append("  " + name.padding(16) + optimised.padding(14) + "\(region.assignedPages)".padding(16)
                         + (owners.isEmpty ? "-" : owners.map(String.init).joined(separator: ",")))
            start = end
        }
        lines.append("regions: \(snapshot.regions.count) in all, \(snapshot.optimized) optimised on every CPU, "
                     + "\(snapshot.withPrivatePages) holding guest-private pages; RMP updates \(snapshot.rmpUpdates)")
        print(lines.joined(separator: "\n"))
        return .success
    }

    /// The guests (numbered from 1) with pages in `region`.
    static func guests(_ region: RMPOPTRegion, _ numbers: [UInt32: Int]) -> [Int] {
        region.assignedByASID.keys.compactMap { numbers[$0] }.sorted()
    }
}

