import GuestMemfd
import KVMFake
import Testing

/// The fake keeps guest_memfd pages, host frames and RMP entries as runs.
/// These tests drive it with random sequences of population, punched holes
/// and allocation, and after every step compare what it answers per page
/// with a reference written here one page at a time from the rules the
/// fake follows: `kvm_gmem_populate` (a prepared folio is refused on 6.18;
/// a 2 MiB-aligned HugeTLB folio is one unit and one 2 MiB RMP entry),
/// `kvm_gmem_punch_hole` with `sev_gmem_invalidate` (one RMPUPDATE per page,
/// PSMASH splitting the rest of a 2 MiB entry), and `kvm_gmem_allocate`.
@Suite struct ExtentModelTests {
    /// SplitMix64, so that each seed replays the same sequence.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    }

    /// What one page should be, per the rules above.
    struct ReferencePage: Equatable {
        var allocated = false
        var prepared = false
        var assigned = false
        var isLarge = false
    }

    struct Reference {
        var pages: [ReferencePage]
        var updates = 0
        let hugeFolios: Bool

        /// SNP_LAUNCH_UPDATE of ZERO pages from `first`: the pages done
        /// before the first unit that is refused, or nil when the very first is.
        mutating func populate(_ first: Int, _ count: Int) -> Int? {
            var done = 0
            while done < count {
                let page = first + done
                let large = hugeFolios && page % 512 == 0 && count - done >= 512
                let unit = large ? 512 : 1
                // The unit's folio is allocated before its pages are checked.
                for index in page..<(page + unit) { pages[index].allocated = true }
                if pages[page..<(page + unit)].contains(where: \.prepared) { break }
                for index in page..<(page + unit) {
                    pages[index] = ReferencePage(allocated: true, prepared: true, assigned: true, isLarge: large)
                }
                updates += 1
                done += unit
            }
            return done == 0 ? nil : done
        }

        mutating func punchHole(_ first: Int, _ count: Int) {
            for page in first..<(first + count) where pages[page].allocated {
                if pages[page].assigned {
                    updates += 1
                    if pages[page].isLarge {
                        let block = page / 512 * 512
                        for other in block..<(block + 512) { pages[other].isLarge = false }
                    }
                }
                pages[page] = ReferencePage()
            }
        }

        mutating func allocate(_ first: Int, _ count: Int) {
            for page in first..<(first + count) { pages[page].allocated = true }
        }
    }

    static let size: UInt64 = 8 << 20
    static let pages = Int(size / pageSize)

    @Test(arguments: [(UInt64(1), false), (2, false), (3, true), (4, true), (5, true)])
    func theExtentModelAnswersAsThePerPageReferenceOnRandomOperations(seed: UInt64, hugetlb: Bool) throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 8 << 30, cpus: 2))
        try run(fake, seed: seed, hugetlb: hugetlb)
        // The file is released whole once its descriptor closes: every frame back, nothing assigned anywhere.
        let assigned = fake.assignedFrames.count
        #expect(assigned == 0)
        #expect(fake.rmpoptRegions.allSatisfy { $0.assignedPages == 0 })
    }

    func run(_ fake: FakeKVM, seed: UInt64, hugetlb: Bool) throws {
        let kvm = try KVM.open(using: fake, experimental: .all)
        let vm = try kvm.createVM(type: .snp)
        let snp = try SEVSNP(vm: vm)
        try snp.init2()
        _ = try vm.createVCPU(id: 0)
        let memfd = try vm.createGuestMemfd(size: Self.size, flags: hugetlb ? [.mmap, .hugetlb(pageSize: hugePageSize)] : [.mmap])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: Self.size, memfd: memfd))
        try snp.launchStart(policy: 0x30000)
        try vm.setMemoryAttributes(GuestRange(start: 0, size: Self.size), attributes: .private)
        let asid = try #require(fake.snpASID(of: vm))
        let baseUpdates = fake.rmpUpdates

        var reference = Reference(pages: Array(repeating: ReferencePage(), count: Self.pages), hugeFolios: hugetlb)
        var random = Random(state: seed)
        for step in 0..<40 {
            // Ranges of 1 to 1100 pages, half of them starting on a 2 MiB boundary.
            let length = 1 + random.below(1100)
            let aligned = random.below(2) == 0
            var first = aligned ? random.below(Self.pages / 512) * 512 : random.below(Self.pages)
            first = min(first, Self.pages - length)
            let operation = random.below(3)
            let what = "seed \(seed) step \(step): \(["populate", "punch hole", "allocate"][operation]) pages [\(first), \(first + length))"
            switch operation {
            case 0:
                let expected = reference.populate(first, length)
                let update = SNPLaunchUpdate(gfnStart: UInt64(first), sourceAddress: 0, length: UInt64(length) * pageSize, type: .zero)
                do {
                    let left = try snp.launchUpdate(update)
                    #expect(expected.map { UInt64(first + $0) } == left.gfnStart, "\(what)")
                } catch {
                    #expect(expected == nil, "\(what): \(error)")
                }
            case 1:
                reference.punchHole(first, length)
                try memfd.punchHole(offset: UInt64(first) * pageSize, length: UInt64(length) * pageSize)
            default:
                reference.allocate(first, length)
                try memfd.allocate(offset: UInt64(first) * pageSize, length: UInt64(length) * pageSize)
            }
            try compare(fake, memfd, reference, asid: asid, baseUpdates: baseUpdates, hugetlb: hugetlb, what)
        }
    }

    /// Every page: a frame exactly where the reference allocated one, no
    /// frame twice, HugeTLB pages on whole aligned 2 MiB frames, each
    /// frame's RMP entry as the reference says, and the RMPUPDATE count and
    /// the per-region counts RMPOPT reads in agreement.
    func compare(_ fake: FakeKVM, _ memfd: GuestMemfd, _ reference: Reference, asid: UInt32, baseUpdates: Int, hugetlb: Bool,
                 _ what: String) throws {
        var seen = Set<UInt64>()
        var byRegion: [Int: Int] = [:]
        var mismatches: [String] = []
        for (page, expected) in reference.pages.enumerated() {
            let frame = fake.hostFrame(of: memfd, offset: UInt64(page) * pageSize)
            if (frame != nil) != expected.allocated { mismatches.append("page \(page) allocated \(frame != nil)") }
            guard let frame else { continue }
            if !seen.insert(frame).inserted { mismatches.append("frame \(frame) given twice") }
            if hugetlb, frame % 512 != UInt64(page % 512) { mismatches.append("page \(page) on frame \(frame), not 2 MiB-aligned") }
            let entry = fake.rmpEntry(frame: frame)
            if (entry != nil) != expected.assigned { mismatches.append("page \(page) assigned \(entry != nil)") }
            guard let entry else { continue }
            byRegion[Int(frame / 262_144), default: 0] += 1
            if !(entry.assigned && entry.asid == asid && entry.validated && entry.immutable && entry.isLarge == expected.isLarge
                && entry.gpa == UInt64(page) * pageSize) {
                mismatches.append("page \(page): \(entry), not a launch page at its GPA with isLarge \(expected.isLarge)")
            }
        }
        let wrong = mismatches.count
        #expect(wrong == 0, "\(what): \(mismatches.prefix(5))")
        #expect(fake.rmpUpdates - baseUpdates == reference.updates, "\(what)")
        let regions = Dictionary(uniqueKeysWithValues: fake.rmpoptRegions.filter { $0.assignedPages > 0 }.map { ($0.index, $0.assignedPages) })
        #expect(regions == byRegion, "\(what)")
        let assigned = fake.assignedFrames.count
        #expect(assigned == reference.pages.filter(\.assigned).count, "\(what)")
    }
}
