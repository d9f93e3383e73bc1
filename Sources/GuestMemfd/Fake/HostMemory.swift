/// Simulated host physical memory: which 4 KiB frame backs each
/// guest_memfd page, handed out under a `PlacementPolicy`.
///
/// Placement decides how many 1 GiB regions hold guest-private memory, which
/// is what RMPOPT cares about; the frames are bookkeeping only (the bytes
/// live in each file's memfd).
struct HostMemory {
    let frames: UInt64
    let policy: PlacementPolicy
    private var used = Set<UInt64>()
    /// For run policies: (file, run index) → first frame of the run.
    private var runs: [RunKey: UInt64] = [:]
    private var usedRuns = Set<UInt64>()
    private var random: UInt64 = 0x9E37_79B9_7F4A_7C15

    private struct RunKey: Hashable {
        let file: Int
        let run: UInt64
    }

    init(bytes: UInt64, policy: PlacementPolicy) {
        frames = bytes / pageSize
        self.policy = policy
    }

    static let framesPer2M: UInt64 = 512
    static let framesPer1G: UInt64 = 262_144

    private var runFrames: UInt64 { policy == .contiguous2M ? Self.framesPer2M : Self.framesPer1G }

    /// The frame for `page` of `file`, allocating one if needed; nil when the host is out of memory.
    mutating func allocate(file: Int, page: UInt64) -> UInt64? {
        switch policy {
        case .scattered4K:
            guard UInt64(used.count) < frames else { return nil }
            while true {
                // xorshift64*: a fixed sequence, so placement is repeatable run to run.
                random ^= random >> 12
                random ^= random << 25
                random ^= random >> 27
                let frame = (random &* 0x2545_F491_4F6C_DD1D) % frames
                if used.insert(frame).inserted { return frame }
            }
        case .contiguous2M, .contiguous1G:
            let key = RunKey(file: file, run: page / runFrames)
            let base: UInt64
            if let existing = runs[key] {
                base = existing
            } else {
                // The lowest free run, so that a file's runs pack into as few regions as possible.
                var candidate: UInt64 = 0
                while usedRuns.contains(candidate) { candidate += runFrames }
                guard candidate + runFrames <= frames else { return nil }
                usedRuns.insert(candidate)
                runs[key] = candidate
                base = candidate
            }
            let frame = base + page % runFrames
            used.insert(frame)
            return frame
        }
    }

    /// Returns a frame to the host.
    mutating func free(file: Int, page: UInt64, frame: UInt64) {
        used.remove(frame)
        guard policy != .scattered4K else { return }
        let key = RunKey(file: file, run: page / runFrames)
        guard let base = runs[key] else { return }
        let stillUsed = (base..<(base + runFrames)).contains { used.contains($0) }
        if !stillUsed {
            runs[key] = nil
            usedRuns.remove(base)
        }
    }
}
