import GuestMemfd
/// Simulated host physical memory: which 4 KiB frame backs each
/// guest_memfd page, handed out under a `PlacementPolicy`.
///
/// Placement decides how many 1 GiB regions hold guest-private memory, which
/// is what RMPOPT cares about; the frames are bookkeeping only (the bytes
/// live in each file's memfd). Only frames in use are recorded, so a
/// terabyte host costs nothing until it is used.
///
/// The first gigabyte holds the host kernel: pages the kernel allocates for
/// itself (an SNP vCPU's VMSA) come from there, lowest first, and
/// contiguous runs (HugeTLB pages) are carved from the regions above it,
/// as the kernel's own allocations and reserved huge pages do not mix.
struct HostMemory {
    let frames: UInt64

    /// Frames handed out one by one (scattered pages and kernel pages).
    private var single = Set<UInt64>()
    /// 2 MiB slot → how many single frames lie in it; a run needs a slot with none.
    private var singlesPerSlot: [UInt64: Int] = [:]
    /// 2 MiB slots held by runs.
    private var runSlots = Set<UInt64>()
    /// (file, run index) → the run backing those pages.
    private var runs: [RunKey: Run] = [:]
    /// No 2 MiB slot below this one is free for a run.
    private var lowestFreeSlot = HostMemory.framesPer1G / HostMemory.framesPer2M
    /// No kernel frame below this one is free.
    private var lowestKernelFrame: UInt64 = 0
    private var random: UInt64 = 0x9E37_79B9_7F4A_7C15

    private struct RunKey: Hashable {
        let file: Int
        let run: UInt64
    }

    private struct Run {
        let base: UInt64
        let frames: UInt64
        var used: UInt64
    }

    init(bytes: UInt64) {
        frames = bytes / pageSize
    }

    static let framesPer2M: UInt64 = 512
    static let framesPer1G: UInt64 = 262_144
    private static let slotsPer1G = framesPer1G / framesPer2M

    /// Frames in use, by any owner.
    var usedFrames: UInt64 { UInt64(single.count) + UInt64(runSlots.count) * Self.framesPer2M }

    /// The frame for `page` of `file`, allocating one if needed; nil when
    /// the host has no frame (or no free run) left.
    mutating func allocate(file: Int, page: UInt64, policy: PlacementPolicy) -> UInt64? {
        switch policy {
        case .scattered4K:
            // xorshift64*: a fixed sequence, so placement is repeatable run to run.
            guard usedFrames < frames else { return nil }
            for _ in 0..<1_000_000 {
                random ^= random >> 12
                random ^= random << 25
                random ^= random >> 27
                let frame = (random &* 0x2545_F491_4F6C_DD1D) % frames
                if runSlots.contains(frame / Self.framesPer2M) || single.contains(frame) { continue }
                takeSingle(frame)
                return frame
            }
            return nil
        case .contiguous2M, .contiguous1G:
            let runFrames = policy == .contiguous2M ? Self.framesPer2M : Self.framesPer1G
            let key = RunKey(file: file, run: page / runFrames)
            if runs[key] == nil {
                guard let base = policy == .contiguous2M ? freeSlot() : freeRegion() else { return nil }
                let firstSlot = base / Self.framesPer2M
                for slot in firstSlot..<(firstSlot + runFrames / Self.framesPer2M) { runSlots.insert(slot) }
                runs[key] = Run(base: base, frames: runFrames, used: 0)
            }
            runs[key]!.used += 1
            return runs[key]!.base + page % runFrames
        }
    }

    /// Returns a guest_memfd frame to the host; a run goes back whole when
    /// its last page is freed.
    mutating func free(file: Int, page: UInt64, frame: UInt64, policy: PlacementPolicy) {
        guard policy != .scattered4K else { return freeSingle(frame) }
        let runFrames = policy == .contiguous2M ? Self.framesPer2M : Self.framesPer1G
        let key = RunKey(file: file, run: page / runFrames)
        guard let run = runs[key] else { return }
        if run.used > 1 {
            runs[key]!.used -= 1
            return
        }
        runs[key] = nil
        let firstSlot = run.base / Self.framesPer2M
        for slot in firstSlot..<(firstSlot + run.frames / Self.framesPer2M) { runSlots.remove(slot) }
        lowestFreeSlot = min(lowestFreeSlot, firstSlot)
    }

    /// A page the host kernel allocates for itself (`alloc_page`): the
    /// lowest free frame outside the runs.
    mutating func allocateKernelPage() -> UInt64? {
        var frame = lowestKernelFrame
        while frame < frames {
            if runSlots.contains(frame / Self.framesPer2M) {
                frame = (frame / Self.framesPer2M + 1) * Self.framesPer2M
                continue
            }
            if !single.contains(frame) {
                takeSingle(frame)
                lowestKernelFrame = frame + 1
                return frame
            }
            frame += 1
        }
        return nil
    }

    /// Returns a kernel page.
    mutating func freeKernelPage(_ frame: UInt64) {
        freeSingle(frame)
        lowestKernelFrame = min(lowestKernelFrame, frame)
    }

    private mutating func takeSingle(_ frame: UInt64) {
        single.insert(frame)
        singlesPerSlot[frame / Self.framesPer2M, default: 0] += 1
    }

    private mutating func freeSingle(_ frame: UInt64) {
        guard single.remove(frame) != nil else { return }
        let slot = frame / Self.framesPer2M
        if singlesPerSlot[slot, default: 0] <= 1 { singlesPerSlot[slot] = nil } else { singlesPerSlot[slot]! -= 1 }
        if slot >= Self.slotsPer1G { lowestFreeSlot = min(lowestFreeSlot, slot) }
    }

    private func slotIsFree(_ slot: UInt64) -> Bool { !runSlots.contains(slot) && singlesPerSlot[slot] == nil }

    /// The lowest free 2 MiB slot above the kernel's gigabyte, so that runs
    /// pack into as few 1 GiB regions as possible and guests share them.
    private mutating func freeSlot() -> UInt64? {
        var slot = lowestFreeSlot
        while (slot + 1) * Self.framesPer2M <= frames {
            if slotIsFree(slot) {
                lowestFreeSlot = slot + 1
                return slot * Self.framesPer2M
            }
            slot += 1
        }
        return nil
    }

    /// The lowest wholly free 1 GiB region above the kernel's.
    private func freeRegion() -> UInt64? {
        var region: UInt64 = 1
        while (region + 1) * Self.framesPer1G <= frames {
            let first = region * Self.slotsPer1G
            if (first..<(first + Self.slotsPer1G)).allSatisfy(slotIsFree) { return region * Self.framesPer1G }
            region += 1
        }
        return nil
    }
}
