import GuestMemfd
import CKVMHeaders
#if canImport(Glibc)
import Glibc
#endif

/// One guest_memfd file of the fake: a real memfd holds its bytes, so
/// mappings, punched holes and accesses past the end behave as on the kernel
/// (the memfd raises SIGBUS past its size, like guest_memfd).
///
/// The state of its pages (allocated, prepared, shared, and the RMP entry
/// of the frame behind each) is kept as runs over page indices that split
/// and merge, so a terabyte file costs a few entries until its pages differ.
final class FakeGuestMemfd {
    struct PageState: Equatable {
        /// A backing page exists (`kvm_gmem_allocate`, a fault or population).
        var allocated = false
        /// Marked uptodate/prepared: populated, or faulted in by the guest.
        var prepared = false
        /// The host may touch the page through a mapping.
        var shared: Bool
        /// The RMP entry of the page's frame, where a guest owns it.
        var rmp: RMPState?
    }

    let id: Int
    let vm: FakeVM
    let size: UInt64
    let flags: GuestMemfdFlags
    /// How the file's pages get host frames: its HugeTLB page size, or the profile's placement.
    let placement: PlacementPolicy
    let backing: CInt
    /// The fake's own mapping of the whole file, through which firmware copies.
    let view: UnsafeMutableRawPointer
    private(set) var pages: RangeMap<PageState>
    /// Memslots bound to ranges of this file.
    var bindings: [FakeMemslot] = []
    /// Open descriptors plus live mappings; the file is released at zero (`kvm_gmem_release`).
    var references = 1
    private(set) var released = false

    init(id: Int, vm: FakeVM, size: UInt64, flags: GuestMemfdFlags, placement: PlacementPolicy) throws(Errno) {
        self.id = id
        self.vm = vm
        self.size = size
        self.flags = flags
        self.placement = placement
        let (fd, base) = try makeSharedMemory(name: "fake-guest-memfd", size: Int(size))
        backing = fd
        view = base
        // A file made with INIT_SHARED starts shared; otherwise its memory is private.
        pages = RangeMap(defaultValue: PageState(shared: flags.contains(.initShared)))
    }

    var pageCount: Int { Int(size / pageSize) }
    /// Whether the file's folios are HugeTLB pages rather than single pages.
    var hugeFolios: Bool { flags.hugetlbPageSize != nil }
    var initiallyShared: Bool { pages.defaultValue.shared }

    func state(_ page: Int) -> PageState { pages.value(at: UInt64(page)) }

    /// The host frame behind `page`, once allocated.
    func frame(_ page: Int, _ host: HostMemory) -> UInt64? {
        state(page).allocated ? host.frame(file: id, page: UInt64(page), policy: placement) : nil
    }

    /// The RMP entry of `page`'s frame, where a guest owns it.
    func rmpEntry(_ page: Int) -> RMPEntry? { state(page).rmp?.entry(gpaOffset: UInt64(page) * pageSize) }

    /// The stretches of `range` where `predicate` holds of the pages' state.
    func stretches(_ range: Range<Int>, where predicate: (PageState) -> Bool) -> [Range<Int>] {
        var found: [Range<Int>] = []
        pages.forEachSegment(UInt64(range.lowerBound), UInt64(range.upperBound)) { start, end, state in
            guard predicate(state) else { return }
            if let last = found.last, last.upperBound == Int(start) { found[found.count - 1] = last.lowerBound..<Int(end) } else { found.append(Int(start)..<Int(end)) }
        }
        return found
    }

    /// Changes the state of every page in `range`.
    func update(_ range: Range<Int>, _ change: (inout PageState) -> Void) {
        pages.update(UInt64(range.lowerBound), UInt64(range.upperBound), change)
    }

    /// Gives the pages of `range` that have none a host frame.
    func allocate(_ range: Range<Int>, _ host: inout HostMemory) {
        for missing in stretches(range, where: { !$0.allocated }) {
            host.allocate(file: id, pages: UInt64(missing.lowerBound)..<UInt64(missing.upperBound), policy: placement)
            update(missing) { $0.allocated = true }
        }
    }

    /// RMPUPDATE of the pages of `range` to guest-owned at `gpa` onwards
    /// (`rmp_make_private`): one update per page, or one for the whole
    /// range where it is one 2 MiB entry (`isLarge`). Every page has a frame.
    func assignRMP(_ range: Range<Int>, gpa: UInt64, asid: UInt32, immutable: Bool, validated: Bool, isLarge: Bool,
                   _ host: HostMemory, rmp: inout RMPTable) {
        uncountRMP(range, host, rmp: &rmp)
        forEachFrameRun(range, host) { frame, count in rmp.count(frame: frame, frames: count, asid: asid, assigned: true) }
        let state = RMPState(asid: asid, validated: validated, immutable: immutable, isLarge: isLarge,
                             gpaBase: gpa &- UInt64(range.lowerBound) * pageSize)
        update(range) { $0.rmp = state }
        rmp.updates += isLarge ? 1 : range.count
    }

    /// RMPUPDATE of every assigned page of `range` back to the hypervisor,
    /// one per page (`rmp_make_shared`, page reclaim). A page inside a 2 MiB
    /// entry is split out first (PSMASH, which is not an RMPUPDATE): the
    /// entry's other pages become 4 KiB entries, as `snp_reclaim_pages`
    /// leaves them for a partial range.
    func reclaimRMP(_ range: Range<Int>, _ host: HostMemory, rmp: inout RMPTable) {
        let assigned = stretches(range) { $0.rmp != nil }
        guard !assigned.isEmpty else { return }
        for stretch in assigned {
            rmp.updates += stretch.count
            // PSMASH: the rest of each 2 MiB entry the stretch cuts into.
            let blockStart = stretch.lowerBound / 512 * 512, blockEnd = (stretch.upperBound + 511) / 512 * 512
            for other in [blockStart..<stretch.lowerBound, stretch.upperBound..<blockEnd] where !other.isEmpty {
                update(other) { if $0.rmp?.isLarge == true { $0.rmp!.isLarge = false } }
            }
        }
        uncountRMP(range, host, rmp: &rmp)
        update(range) { $0.rmp = nil }
    }

    /// Takes the assigned pages of `range` out of the RMP's per-region counts.
    private func uncountRMP(_ range: Range<Int>, _ host: HostMemory, rmp: inout RMPTable) {
        pages.forEachSegment(UInt64(range.lowerBound), UInt64(range.upperBound)) { start, end, state in
            guard let entry = state.rmp else { return }
            forEachFrameRun(Int(start)..<Int(end), host) { frame, count in
                rmp.count(frame: frame, frames: count, asid: entry.asid, assigned: false)
            }
        }
    }

    /// Calls `body` for each stretch of consecutive frames behind `range`'s allocated pages.
    func forEachFrameRun(_ range: Range<Int>, _ host: HostMemory, _ body: (_ frame: UInt64, _ count: UInt64) -> Void) {
        for stretch in stretches(range, where: { $0.allocated }) {
            host.forEachFrameRun(file: id, pages: UInt64(stretch.lowerBound)..<UInt64(stretch.upperBound), policy: placement) { _, frame, count in
                if let frame { body(frame, count) }
            }
        }
    }

    /// Frees the pages of `range`: their contents read back as zeros, and
    /// the RMP entries of their frames return to the hypervisor
    /// (`kvm_gmem_punch_hole`, SNP's `sev_gmem_invalidate`).
    func free(_ range: Range<Int>, _ host: inout HostMemory, rmp: inout RMPTable) {
        reclaimRMP(range, host, rmp: &rmp)
        for stretch in stretches(range, where: { $0.allocated }) {
            host.free(file: id, pages: UInt64(stretch.lowerBound)..<UInt64(stretch.upperBound), policy: placement)
            update(stretch) {
                $0.allocated = false
                $0.prepared = false
            }
        }
    }

    /// Drops the file: bindings are nullified, so population fails with
    /// EFAULT and guest accesses exit with a memory fault (`kvm_gmem_release`).
    func release(_ host: inout HostMemory, rmp: inout RMPTable) {
        guard !released else { return }
        released = true
        for slot in bindings { slot.gmemClosed = true }
        // Whole 2 MiB RMP entries go back with one RMPUPDATE each, as their folios are freed whole.
        for stretch in stretches(0..<pageCount, where: { $0.rmp?.isLarge == true }) {
            var block = (stretch.lowerBound + 511) / 512 * 512
            while block + 512 <= stretch.upperBound {
                uncountRMP(block..<(block + 512), host, rmp: &rmp)
                update(block..<(block + 512)) { $0.rmp = nil }
                rmp.updates += 1
                block += 512
            }
        }
        free(0..<pageCount, &host, rmp: &rmp)
        munmap(view, Int(size))
        Glibc.close(backing)
    }

    /// Bytes of page `index` in the fake's view.
    func pageBytes(_ index: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: view + index * Int(pageSize), count: Int(pageSize))
    }
}

/// A memfd of `size` bytes and a shared mapping of all of it: the real
/// memory behind a fake guest_memfd or a fake vCPU's kvm_run area.
func makeSharedMemory(name: String, size: Int) throws(Errno) -> (fd: CInt, view: UnsafeMutableRawPointer) {
    let fd = ckvm_memfd_create(name, 1 /* MFD_CLOEXEC */)
    guard fd >= 0 else { throw Errno(rawValue: -fd) }
    guard ftruncate(fd, off_t(size)) == 0,
          let view = Glibc.mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), view != MAP_FAILED
    else {
        let error = Errno(rawValue: errno)
        Glibc.close(fd)
        throw error
    }
    return (fd, view)
}

/// A memslot of a fake VM.
final class FakeMemslot {
    /// Address space id (bits 31:16 of the uAPI slot) and slot id (bits 15:0).
    let asID: UInt32
    let id: UInt32
    var flags: UInt32
    var baseGFN: UInt64
    let pageCount: UInt64
    let userspaceAddress: UInt64
    let gmem: FakeGuestMemfd?
    let gmemFirstPage: UInt64
    /// The bound guest_memfd was released; the binding is void.
    var gmemClosed = false

    init(asID: UInt32, id: UInt32, flags: UInt32, baseGFN: UInt64, pageCount: UInt64, userspaceAddress: UInt64,
         gmem: FakeGuestMemfd?, gmemFirstPage: UInt64) {
        self.asID = asID
        self.id = id
        self.flags = flags
        self.baseGFN = baseGFN
        self.pageCount = pageCount
        self.userspaceAddress = userspaceAddress
        self.gmem = gmem
        self.gmemFirstPage = gmemFirstPage
    }

    var endGFN: UInt64 { baseGFN + pageCount }
    func contains(_ gfn: UInt64) -> Bool { gfn >= baseGFN && gfn < endGFN }
    /// The guest_memfd page backing `gfn`.
    func gmemPage(_ gfn: UInt64) -> Int { Int(gmemFirstPage + gfn - baseGFN) }
    /// Shared and private accesses both come from the guest_memfd (`KVM_MEMSLOT_GMEM_ONLY`).
    var gmemOnly: Bool { gmem?.flags.contains(.mmap) ?? false }
}
