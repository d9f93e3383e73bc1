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

struct RMPTable {
    private(set) var entries: [UInt64: RMPEntry] = [:]
    /// RMPUPDATE instructions issued (each 4 KiB or 2 MiB entry counts once).
    private(set) var updates = 0

    func entry(frame: UInt64) -> RMPEntry? { entries[frame] }

    /// RMPUPDATE to guest-owned (`rmp_make_private`).
    mutating func assign(frame: UInt64, gpa: UInt64, asid: UInt32, immutable: Bool, validated: Bool, isLarge: Bool,
                         countsAsUpdate: Bool = true) {
        entries[frame] = RMPEntry(assigned: true, asid: asid, validated: validated, immutable: immutable,
                                  isLarge: isLarge, gpa: gpa)
        if countsAsUpdate { updates += 1 }
    }

    /// RMPUPDATE back to hypervisor-owned (`rmp_make_shared`, page reclaim).
    mutating func reclaim(frame: UInt64) {
        if entries.removeValue(forKey: frame) != nil { updates += 1 }
    }

    /// Frames currently assigned to a guest.
    var assignedFrames: Dictionary<UInt64, RMPEntry>.Keys { entries.keys }
}
