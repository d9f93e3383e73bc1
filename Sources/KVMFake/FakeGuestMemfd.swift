import GuestMemfd
import CKVMHeaders
#if canImport(Glibc)
import Glibc
#endif

/// One guest_memfd file of the fake: a real memfd holds its bytes, so
/// mappings, punched holes and accesses past the end behave as on the kernel
/// (the memfd raises SIGBUS past its size, like guest_memfd).
final class FakeGuestMemfd {
    struct Page {
        /// A backing page exists (`kvm_gmem_allocate`, a fault or population).
        var allocated = false
        /// Marked uptodate/prepared: populated, or faulted in by the guest.
        var prepared = false
        /// The host may touch the page through a mapping.
        var shared: Bool
        /// The host frame backing it, once allocated.
        var frame: UInt64?
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
    var pages: PageTable
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
        pages = PageTable(count: Int(size / pageSize), initial: Page(shared: flags.contains(.initShared)))
    }

    var pageCount: UInt64 { UInt64(pages.count) }

    /// Drops the file: bindings are nullified, so population fails with
    /// EFAULT and guest accesses exit with a memory fault (`kvm_gmem_release`).
    func release(_ host: inout HostMemory, rmp: inout RMPTable) {
        guard !released else { return }
        released = true
        for slot in bindings { slot.gmemClosed = true }
        let touched = pages.touched
        // Whole 2 MiB RMP entries go back with one RMPUPDATE each, as their folios are freed whole.
        for index in touched {
            if let frame = pages[index].frame, frame % 512 == 0, rmp.entry(frame: frame)?.isLarge == true {
                rmp.reclaimLarge(base: frame)
            }
        }
        for index in touched { freePage(index, &host, rmp: &rmp) }
        munmap(view, Int(size))
        Glibc.close(backing)
    }

    /// Gives a page a host frame if it has none.
    func allocatePage(_ index: Int, _ host: inout HostMemory) {
        guard !pages[index].allocated else { return }
        pages[index].allocated = true
        pages[index].frame = host.allocate(file: id, page: UInt64(index), policy: placement)
    }

    /// Frees a page: its contents read back as zeros, and the RMP entry of
    /// its frame returns to the hypervisor (`kvm_gmem_punch_hole`, SNP's
    /// `sev_gmem_invalidate`).
    func freePage(_ index: Int, _ host: inout HostMemory, rmp: inout RMPTable) {
        guard pages[index].allocated else { return }
        if let frame = pages[index].frame {
            rmp.reclaim(frame: frame)
            host.free(file: id, page: UInt64(index), frame: frame, policy: placement)
        }
        pages[index].allocated = false
        pages[index].prepared = false
        pages[index].frame = nil
    }

    /// Whether page `index` is a hole of the memfd, which reads as zeros:
    /// SEEK_DATA from its offset lands past it (or finds no data at all).
    /// Pages in memory or in swap both count as data.
    func isHole(_ index: Int) -> Bool {
        let offset = off_t(index) * off_t(pageSize)
        let data = lseek(backing, offset, CKVM_SEEK_DATA)
        if data < 0 { return errno == ENXIO }
        return data >= offset + off_t(pageSize)
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

/// Per-page state of a file, stored only for pages that differ from their
/// initial state, so a terabyte file costs nothing until it is touched.
struct PageTable {
    let count: Int
    let initial: FakeGuestMemfd.Page
    private var changed: [Int: FakeGuestMemfd.Page] = [:]

    init(count: Int, initial: FakeGuestMemfd.Page) {
        self.count = count
        self.initial = initial
    }

    subscript(index: Int) -> FakeGuestMemfd.Page {
        get { changed[index] ?? initial }
        set { changed[index] = newValue }
    }

    /// Pages whose state has been written, in no particular order.
    var touched: [Int] { Array(changed.keys) }
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
