import GuestMemfd
/// One 1 GiB region of host memory as the RMPOPT tables and the RMP see it.
public struct RMPOPTRegion: Hashable, Sendable {
    /// The region's index: it starts at `index` GiB.
    public var index: Int
    /// Whether the region lies in the 2 TB the RMPOPT tables cover.
    public var covered: Bool
    /// CPUs whose RMPOPT table has the region optimised (RMP checks skipped).
    public var optimizedCPUs: [Int]
    /// Frames in the region assigned to guests, by ASID.
    public var assignedByASID: [UInt32: Int]

    public var assignedPages: Int { assignedByASID.values.reduce(0, +) }
}

/// RMPOPT on the fake (Ashish Kalra's RMPOPT series, unmerged): the tables, the kernel's passes
/// over them, and the instruction itself.
extension FakeKVM {
    /// CPUs with an RMPOPT table; 0 where the host has no RMPOPT.
    public var rmpoptCPUs: Int { withLock { rmp.rmpopt?.cpus ?? 0 } }

    /// Every 1 GiB region of host memory, in order; empty without RMPOPT.
    public var rmpoptRegions: [RMPOPTRegion] {
        withLock {
            guard let table = rmp.rmpopt else { return [] }
            let regions = Int((profile.hostMemory + (1 << 30) - 1) >> 30)
            return (0..<regions).map { region in
                RMPOPTRegion(index: region, covered: region < table.regions,
                             optimizedCPUs: (0..<table.cpus).filter { table.isOptimized(cpu: $0, region: region) },
                             assignedByASID: rmp.assignedByRegion[UInt64(region)] ?? [:])
            }
        }
    }

    /// The ASID the firmware gave an SNP guest at KVM_SEV_INIT2, which its RMP entries carry.
    public func snpASID(of vm: VM) -> UInt32? {
        withLock {
            guard case .vm(let fake)? = file(vm.fd), let snp = fake.snp, snp.initialised else { return nil }
            return snp.asid
        }
    }

    /// Whether a re-optimisation is scheduled (an SNP VM was destroyed since the last pass).
    public var rmpoptPending: Bool { withLock { rmp.rmpopt?.pending ?? false } }

    /// Passes over all memory run so far, the one at SNP initialisation included.
    public var rmpoptPasses: Int { withLock { rmp.rmpopt?.passes ?? 0 } }

    /// RMPOPT instructions executed so far.
    public var rmpoptInstructions: Int { withLock { rmp.rmpopt?.instructions ?? 0 } }

    /// Runs the scheduled re-optimisation now, as its delayed work would
    /// about 10 s after the last SNP VM was destroyed; returns whether one
    /// was scheduled.
    @discardableResult
    public func runPendingRMPOptimization() -> Bool {
        withLock {
            guard rmp.rmpopt?.pending == true else { return false }
            rmp.optimizeAll()
            return true
        }
    }

    /// Re-optimises all memory at once, as a write to the v1 series'
    /// configfs knob did (`snp_perform_rmp_optimization`).
    public func optimizeAllRMPRegions() {
        withLock { rmp.optimizeAll() }
    }

    /// The RMPOPT instruction on one CPU: function 0 verifies the region
    /// holds no assigned page and, if so, optimises it; function 1 only
    /// reports. Returns the carry flag (the region is optimised), or nil
    /// without RMPOPT or outside the tables' coverage.
    public func rmpopt(cpu: Int, region: Int, function: Int = 0) -> Bool? {
        withLock {
            guard var table = rmp.rmpopt, cpu >= 0, cpu < table.cpus, region >= 0, region < table.regions else {
                return nil
            }
            guard function == 0 else { return table.isOptimized(cpu: cpu, region: region) }
            let result = table.optimize(cpu: cpu, region: region,
                                        hasAssignedPages: rmp.assignedByRegion[UInt64(region)] != nil)
            rmp.rmpopt = table
            return result
        }
    }
}
