import GuestMemfd
/// Simulated host physical memory: which 4 KiB frame backs each
/// guest_memfd page, handed out under a `PlacementPolicy`.
///
/// Placement decides how many 1 GiB regions hold guest-private memory, which
/// is what RMPOPT cares about; the frames are bookkeeping only (the bytes
/// live in each file's memfd). A contiguous run (a HugeTLB page) is one
/// record however many pages use it, so 2 MiB and 1 GiB placement cost a
/// record per run; scattered 4 KiB pages cost four bytes each, and the
/// frames in use one bit each, kept only for the gigabytes that hold any.
///
/// The first gigabyte holds the host kernel: pages the kernel allocates for
/// itself (an SNP vCPU's VMSA) come from there, lowest first, and
/// contiguous runs are carved from the regions above it, as the kernel's
/// own allocations and reserved huge pages do not mix.
struct HostMemory {
    let frames: UInt64

    /// Frames handed out one by one (scattered pages and kernel pages).
    private var single: FrameBitmap
    private var singleCount: UInt64 = 0
    /// Per 2 MiB slot, how many single frames lie in it; a run needs a slot with none.
    private var singlesPerSlot: [UInt16]
    /// Per 2 MiB slot, whether a run holds it.
    private var runSlots: [Bool]
    private var runSlotCount: UInt64 = 0
    /// Per 1 GiB region, its slots held by a run or holding a single frame;
    /// a 1 GiB run needs a region with none.
    private var busySlotsPerRegion: [UInt16]
    /// (file, run index) → the run backing those pages.
    private var runs: [RunKey: Run] = [:]
    /// A run's first frame → the run, for finding a frame's owner.
    private var runBases: [UInt64: RunKey] = [:]
    /// (file, 512-page block) → the frames of a scattered file's pages, `none` where unallocated.
    private var scattered: [RunKey: [UInt32]] = [:]
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

    private static let none = UInt32.max

    init(bytes: UInt64) {
        frames = bytes / pageSize
        single = FrameBitmap(frames: frames)
        singlesPerSlot = [UInt16](repeating: 0, count: Int((frames + Self.framesPer2M - 1) / Self.framesPer2M))
        runSlots = [Bool](repeating: false, count: singlesPerSlot.count)
        busySlotsPerRegion = [UInt16](repeating: 0, count: Int((frames + Self.framesPer1G - 1) / Self.framesPer1G))
    }

    static let framesPer2M: UInt64 = 512
    static let framesPer1G: UInt64 = 262_144
    private static let slotsPer1G = framesPer1G / framesPer2M

    /// Frames in use, by any owner.
    var usedFrames: UInt64 { singleCount + runSlotCount * Self.framesPer2M }

    private static func runFrames(_ policy: PlacementPolicy) -> UInt64 {
        policy == .contiguous1G ? framesPer1G : framesPer2M
    }

    /// `pages` cut where a contiguous policy's runs begin, each part with its run's key.
    private static func runParts(file: Int, pages: Range<UInt64>, policy: PlacementPolicy) -> [(RunKey, Range<UInt64>)] {
        let runFrames = runFrames(policy)
        var parts: [(RunKey, Range<UInt64>)] = []
        var page = pages.lowerBound
        while page < pages.upperBound {
            let runEnd = min(pages.upperBound, (page / runFrames + 1) * runFrames)
            parts.append((RunKey(file: file, run: page / runFrames), page..<runEnd))
            page = runEnd
        }
        return parts
    }

    /// Gives pages `pages` of `file`, none of them allocated yet, host
    /// frames; a page gets none when the host has no frame (or no free run) left.
    mutating func allocate(file: Int, pages: Range<UInt64>, policy: PlacementPolicy) {
        guard !pages.isEmpty else { return }
        switch policy {
        case .scattered4K:
            for page in pages {
                guard let frame = randomFreeFrame() else { return }
                takeSingle(frame)
                let key = RunKey(file: file, run: page / Self.framesPer2M)
                if scattered[key] == nil { scattered[key] = [UInt32](repeating: Self.none, count: Int(Self.framesPer2M)) }
                scattered[key]![Int(page % Self.framesPer2M)] = UInt32(frame)
            }
        case .contiguous2M, .contiguous1G:
            for (key, part) in Self.runParts(file: file, pages: pages, policy: policy) {
                if runs[key] == nil, let base = policy == .contiguous2M ? freeSlot() : freeRegion() {
                    takeRun(base: base, frames: Self.runFrames(policy), key: key)
                }
                runs[key]?.used += UInt64(part.count)
            }
        }
    }

    /// Returns pages `pages` of `file`, all allocated, to the host; a run goes
    /// back whole when its last page is freed.
    mutating func free(file: Int, pages: Range<UInt64>, policy: PlacementPolicy) {
        switch policy {
        case .scattered4K:
            for page in pages {
                let key = RunKey(file: file, run: page / Self.framesPer2M), slot = Int(page % Self.framesPer2M)
                guard let frame = scattered[key]?[slot], frame != Self.none else { continue }
                scattered[key]![slot] = Self.none
                if scattered[key]!.allSatisfy({ $0 == Self.none }) { scattered[key] = nil }
                freeSingle(UInt64(frame))
            }
        case .contiguous2M, .contiguous1G:
            for (key, part) in Self.runParts(file: file, pages: pages, policy: policy) {
                guard let run = runs[key] else { continue }
                if run.used > UInt64(part.count) { runs[key]!.used -= UInt64(part.count) } else { releaseRun(key) }
            }
        }
    }

    /// The frame backing `page` of `file`, if it has one.
    func frame(file: Int, page: UInt64, policy: PlacementPolicy) -> UInt64? {
        switch policy {
        case .scattered4K:
            guard let frame = scattered[RunKey(file: file, run: page / Self.framesPer2M)]?[Int(page % Self.framesPer2M)],
                  frame != Self.none else { return nil }
            return UInt64(frame)
        case .contiguous2M, .contiguous1G:
            let runFrames = Self.runFrames(policy)
            return runs[RunKey(file: file, run: page / runFrames)].map { $0.base + page % runFrames }
        }
    }

    /// Calls `body` for each stretch of `pages` whose frames are consecutive
    /// (or absent), in page order: a run's worth at a time for contiguous
    /// placement, a page at a time for scattered.
    func forEachFrameRun(file: Int, pages: Range<UInt64>, policy: PlacementPolicy,
                         _ body: (_ page: UInt64, _ frame: UInt64?, _ count: UInt64) -> Void) {
        switch policy {
        case .scattered4K:
            for page in pages { body(page, frame(file: file, page: page, policy: policy), 1) }
        case .contiguous2M, .contiguous1G:
            for (_, part) in Self.runParts(file: file, pages: pages, policy: policy) {
                body(part.lowerBound, frame(file: file, page: part.lowerBound, policy: policy), UInt64(part.count))
            }
        }
    }

    /// The file and page a run's frame backs; nil for frames outside runs.
    func runOwner(of frame: UInt64) -> (file: Int, page: UInt64)? {
        for runFrames in [Self.framesPer2M, Self.framesPer1G] {
            let base = frame / runFrames * runFrames
            if let key = runBases[base], let run = runs[key], run.frames == runFrames {
                return (key.file, key.run * runFrames + (frame - base))
            }
        }
        return nil
    }

    /// The file and page a scattered frame backs, found by a scan of every
    /// scattered page: for inspecting test-sized hosts.
    func scatteredOwner(of frame: UInt64) -> (file: Int, page: UInt64)? {
        guard single.contains(frame) else { return nil }
        for (key, frames) in scattered {
            if let slot = frames.firstIndex(of: UInt32(frame)) { return (key.file, key.run * Self.framesPer2M + UInt64(slot)) }
        }
        return nil
    }

    /// A page the host kernel allocates for itself (`alloc_page`): the
    /// lowest free frame outside the runs.
    mutating func allocateKernelPage() -> UInt64? {
        var frame = lowestKernelFrame
        while frame < frames {
            if runSlots[Int(frame / Self.framesPer2M)] {
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

    /// A free frame outside the runs, from a fixed xorshift64* sequence, so
    /// that placement is repeatable run to run.
    private mutating func randomFreeFrame() -> UInt64? {
        guard usedFrames < frames else { return nil }
        for _ in 0..<1_000_000 {
            random ^= random >> 12
            random ^= random << 25
            random ^= random >> 27
            let frame = (random &* 0x2545_F491_4F6C_DD1D) % frames
            if runSlots[Int(frame / Self.framesPer2M)] || single.contains(frame) { continue }
            return frame
        }
        return nil
    }

    private mutating func takeSingle(_ frame: UInt64) {
        single.insert(frame)
        singleCount += 1
        let slot = Int(frame / Self.framesPer2M)
        if singlesPerSlot[slot] == 0, !runSlots[slot] { busySlotsPerRegion[slot / Int(Self.slotsPer1G)] += 1 }
        singlesPerSlot[slot] += 1
    }

    private mutating func freeSingle(_ frame: UInt64) {
        guard single.remove(frame) else { return }
        singleCount -= 1
        let slot = Int(frame / Self.framesPer2M)
        singlesPerSlot[slot] -= 1
        if singlesPerSlot[slot] == 0, !runSlots[slot] { busySlotsPerRegion[slot / Int(Self.slotsPer1G)] -= 1 }
        if UInt64(slot) >= Self.slotsPer1G { lowestFreeSlot = min(lowestFreeSlot, UInt64(slot)) }
    }

    private mutating func takeRun(base: UInt64, frames count: UInt64, key: RunKey) {
        let firstSlot = Int(base / Self.framesPer2M)
        for slot in firstSlot..<(firstSlot + Int(count / Self.framesPer2M)) {
            runSlots[slot] = true
            busySlotsPerRegion[slot / Int(Self.slotsPer1G)] += 1
        }
        runSlotCount += count / Self.framesPer2M
        runs[key] = Run(base: base, frames: count, used: 0)
        runBases[base] = key
    }

    private mutating func releaseRun(_ key: RunKey) {
        guard let run = runs.removeValue(forKey: key) else { return }
        runBases[run.base] = nil
        let firstSlot = Int(run.base / Self.framesPer2M)
        for slot in firstSlot..<(firstSlot + Int(run.frames / Self.framesPer2M)) {
            runSlots[slot] = false
            busySlotsPerRegion[slot / Int(Self.slotsPer1G)] -= 1
        }
        runSlotCount -= run.frames / Self.framesPer2M
        lowestFreeSlot = min(lowestFreeSlot, UInt64(firstSlot))
    }

    private func slotIsFree(_ slot: UInt64) -> Bool { !runSlots[Int(slot)] && singlesPerSlot[Int(slot)] == 0 }

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
            if busySlotsPerRegion[Int(region)] == 0 { return region * Self.framesPer1G }
            region += 1
        }
        return nil
    }
}

/// One bit per host frame, stored per 1 GiB region only once a bit in it is set.
struct FrameBitmap {
    private var regions: [[UInt64]?]
    private static let wordsPerRegion = Int(HostMemory.framesPer1G / 64)

    init(frames: UInt64) {
        regions = Array(repeating: nil, count: Int((frames + HostMemory.framesPer1G - 1) / HostMemory.framesPer1G))
    }

    func contains(_ frame: UInt64) -> Bool {
        guard let words = regions[Int(frame / HostMemory.framesPer1G)] else { return false }
        let bit = frame % HostMemory.framesPer1G
        return words[Int(bit / 64)] & (1 << (bit % 64)) != 0
    }

    mutating func insert(_ frame: UInt64) {
        let region = Int(frame / HostMemory.framesPer1G), bit = frame % HostMemory.framesPer1G
        if regions[region] == nil { regions[region] = [UInt64](repeating: 0, count: Self.wordsPerRegion) }
        regions[region]![Int(bit / 64)] |= 1 << (bit % 64)
    }

    /// Clears the frame's bit; returns whether it was set.
    mutating func remove(_ frame: UInt64) -> Bool {
        guard contains(frame) else { return false }
        let region = Int(frame / HostMemory.framesPer1G), bit = frame % HostMemory.framesPer1G
        regions[region]![Int(bit / 64)] &= ~(1 << (bit % 64))
        return true
    }
}
