import GuestMemfd
/// The SEV-SNP reverse map table: one entry per 4 KiB host frame saying
/// who owns it (AMD SEV-SNP ABI, "Reverse Map Table"; APM vol. 2, 15.36.3).
///
/// Only frames that are not plain hypervisor pages have an entry. A
/// 2 MiB entry is recorded on each of its 512 frames with `isLarge`.
public struct RMPEntry: Hashable, Sendable {
    /// Owned by a guest (set by RMPUPDATE when KVM makes the page private).
    public var assigned: Bool
    public var asid: UInt32
    /// Validated by the firmware during launch (PVALIDATE state).
    public var validated: Bool
    /// Launch pages are immutable until the guest runs.
    public var immutable: Bool
    /// Part of a 2 MiB RMP entry.
    public var isLarge: Bool
    /// The guest-physical address the frame is assigned at.
    public var gpa: UInt64
}

/// The RMP's state for one run of frames that a guest owns. A guest_memfd
/// file keeps it per page range (the frames are its pages'); the kernel's
/// own pages (VMSAs) keep it per frame in `RMPTable`.
struct RMPState: Equatable {
    var asid: UInt32
    var validated: Bool
    var immutable: Bool
    var isLarge: Bool
    /// The GPA less the page's offset in its file, so that consecutive
    /// pages at consecutive GPAs share one value.
    var gpaBase: UInt64

    func entry(gpaOffset: UInt64) -> RMPEntry {
        RMPEntry(assigned: true, asid: asid, validated: validated, immutable: immutable, isLarge: isLarge,
                 gpa: gpaBase &+ gpaOffset)
    }
}

/// What the RMP as a whole keeps: the instructions issued, the assigned
/// frames per 1 GiB region (what RMPOPT verifies), the kernel pages'
/// entries, and the CPUs' RMPOPT tables. Entries of guest_memfd pages live
/// with the pages (`FakeGuestMemfd`), as runs.
struct RMPTable {
    /// Entries of frames the kernel allocated for itself (VMSAs).
    private(set) var kernelEntries: [UInt64: RMPEntry] = [:]
    /// RMPUPDATE instructions issued (each 4 KiB or 2 MiB entry counts once).
    var updates = 0
    /// Assigned frames per 1 GiB region, by ASID: what RMPOPT's verification
    /// reads, kept per region so that a pass costs one look-up per region.
    private(set) var assignedByRegion: [UInt64: [UInt32: Int]] = [:]
    /// The CPUs' RMPOPT tables, where the host has RMPOPT.
    var rmpopt: RMPOPTTable?

    static let regionFrames: UInt64 = 262_144

    /// Counts `count` frames from `frame` as assigned to `asid`, or, with
    /// `assigned` false, as no longer assigned. Assigning clears each
    /// region's RMPOPT bit on every CPU (the hardware does this on RMPUPDATE).
    mutating func count(frame: UInt64, frames count: UInt64, asid: UInt32, assigned: Bool) {
        var first = frame
        let end = frame + count
        while first < end {
            let region = first / Self.regionFrames
            let stop = min(end, (region + 1) * Self.regionFrames)
            let delta = Int(stop - first)
            if assigned {
                assignedByRegion[region, default: [:]][asid, default: 0] += delta
                rmpopt?.clear(region: region)
            } else if var owners = assignedByRegion[region], let held = owners[asid] {
                owners[asid] = held > delta ? held - delta : nil
                assignedByRegion[region] = owners.isEmpty ? nil : owners
            }
            first = stop
        }
    }

    /// RMPUPDATE of a kernel page to guest-owned (an SNP vCPU's VMSA).
    mutating func assignKernelPage(_ frame: UInt64, gpa: UInt64, asid: UInt32) {
        if let old = kernelEntries[frame] { count(frame: frame, frames: 1, asid: old.asid, assigned: false) }
        kernelEntries[frame] = RMPEntry(assigned: true, asid: asid, validated: true, immutable: true, isLarge: false, gpa: gpa)
        count(frame: frame, frames: 1, asid: asid, assigned: true)
        updates += 1
    }

    /// RMPUPDATE of a kernel page back to the hypervisor.
    mutating func reclaimKernelPage(_ frame: UInt64) {
        guard let entry = kernelEntries.removeValue(forKey: frame) else { return }
        count(frame: frame, frames: 1, asid: entry.asid, assigned: false)
        updates += 1
    }

    /// RMPOPT function 0 on every CPU for every region it covers
    /// (`snp_rmpopt_all_physmem`'s work, `rmpopt_all_physmem`).
    mutating func optimizeAll() {
        guard var table = rmpopt else { return }
        for cpu in 0..<table.cpus {
            for region in 0..<table.regions {
                table.optimize(cpu: cpu, region: region, hasAssignedPages: assignedByRegion[UInt64(region)] != nil)
            }
        }
        table.passes += 1
        table.pending = false
        rmpopt = table
    }
}

/// The RMPOPT tables (AMD RMPOPT, an unmerged series): per
/// CPU, one bit per 1 GiB region from MSR_AMD64_RMPOPT_BASE, covering up to
/// 2 TB. A set bit lets that CPU skip RMP checks on host writes to the
/// region. Software sets bits with RMPOPT function 0, which verifies that
/// the region holds no assigned page; any RMPUPDATE that assigns a page
/// clears the region's bit on all CPUs.
struct RMPOPTTable {
    /// Regions one table covers (2 TB from the base).
    static let coverage = 2048

    let cpus: Int
    /// Regions covered: host memory up to `coverage`.
    let regions: Int
    /// Bit `region` of CPU `cpu`'s table is bit `region % 64` of word `cpu * words + region / 64`.
    private var bits: [UInt64]
    private let words: Int
    /// RMPOPT instructions executed.
    private(set) var instructions = 0
    /// Passes over all memory run so far.
    var passes = 0
    /// A re-optimisation is scheduled (the delayed work after `sev_vm_destroy`).
    var pending = false

    init(cpus: Int, hostRegions: Int) {
        self.cpus = cpus
        regions = min(hostRegions, Self.coverage)
        words = (regions + 63) / 64
        bits = [UInt64](repeating: 0, count: cpus * words)
    }

    func isOptimized(cpu: Int, region: Int) -> Bool {
        guard region < regions else { return false }
        return bits[cpu * words + region / 64] & (1 << UInt64(region % 64)) != 0
    }

    /// RMPOPT function 0 on `cpu`: sets the bit when the region holds no
    /// assigned page and reports the result (the carry flag).
    @discardableResult
    mutating func optimize(cpu: Int, region: Int, hasAssignedPages: Bool) -> Bool {
        guard region < regions else { return false }
        instructions += 1
        let word = cpu * words + region / 64, bit: UInt64 = 1 << UInt64(region % 64)
        if hasAssignedPages { bits[word] &= ~bit } else { bits[word] |= bit }
        return !hasAssignedPages
    }

    /// The hardware clearing on RMPUPDATE: every CPU's bit for `region`.
    mutating func clear(region: UInt64) {
        guard region < UInt64(regions) else { return }
        let bit: UInt64 = 1 << (region % 64)
        for cpu in 0..<cpus { bits[cpu * words + Int(region / 64)] &= ~bit }
    }
}
