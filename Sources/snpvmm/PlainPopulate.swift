#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import Populate

/// One memslot of the guest: a guest-physical range and where it starts in
/// the guest_memfd (and so in the guest_memfd's mapping).
struct MemorySlot: Equatable, Sendable {
    var slot: UInt32
    var range: GuestRange
    var offset: UInt64

    /// The mapping offset of `address`, which the caller knows lies in `range`.
    func offset(of address: GuestPhysicalAddress) -> UInt64 { offset + (address.rawValue - range.start.rawValue) }
}

/// Why the plain population of a launch plan stopped.
enum PopulateFailure: Error, CustomStringConvertible {
    /// The plan breaks a rule; nothing was written.
    case plan(PlanError)
    /// A region's guest memory could not be written.
    case memory(region: String, KVMError)
    /// A region's file could not be read (or the ledger written).
    case file(region: String, path: String, reason: String)
    /// The emulated platform's launch failed.
    case engine(String)

    var description: String {
        switch self {
        case .plan(let error): error.description
        case .memory(let region, let error): "populating \(region): \(error)"
        case .file(let region, let path, let reason): "populating \(region) from '\(path)': \(reason)"
        case .engine(let reason): reason
        }
    }
}

/// Fills guest memory from `plan` for a guest with no confidential
/// platform: every region is written in place through the guest_memfd's
/// shared mapping, its contents first and zeros after them, and nothing is
/// measured. Regions are written in plan order; memory outside them keeps
/// the zeros guest_memfd starts with.
///
/// This is the one call through which `snpvmm run` fills guest memory, so
/// a platform's population engine (SNP, TDX, CCA) takes its place here.
///
/// - Parameters:
///   - memory: the mapping of the guest_memfd behind `slots`.
///   - slots: the memslots; every region must lie inside one of them.
/// - Throws: `.plan` before anything is written when the plan is invalid,
///   otherwise the first region that could not be written.
func populate(plan: LaunchPlan, into memory: GuestMemoryMapping, slots: [MemorySlot]) throws(PopulateFailure) {
    do {
        try plan.validate(memory: slots.map(\.range))
    } catch {
        throw .plan(error)
    }
    for region in plan.regions {
        // validate() guarantees each region lies inside one slot.
        guard let slot = slots.first(where: { $0.range.contains(region.range.start) }) else { continue }
        let offset = Int(slot.offset(of: region.range.start))
        let size = Int(region.range.size)
        let filled = Int(region.contents.count)
        func memoryStep(_ body: () throws(KVMError) -> Void) throws(PopulateFailure) {
            do { try body() } catch { throw .memory(region: region.name, error) }
        }
        switch region.contents {
        case .bytes(let bytes):
            try memoryStep { () throws(KVMError) in try memory.write(bytes, at: offset) }
        case .file(let path, let fileOffset, let length):
            try memoryStep { () throws(KVMError) in try memory.populateWrite(offset: offset, count: Int(length)) }
            try readFile(path, offset: fileOffset, length: length, into: memory.base + offset, region: region.name)
        case .zeros:
            break
        }
        if size > filled {
            try memoryStep { () throws(KVMError) in try memory.fill(0, at: offset + filled, count: size - filled) }
        }
    }
}

/// Reads `length` bytes of `path` at `offset` straight into guest memory
/// with `pread(2)`, so a kernel is copied once, from the page cache.
private func readFile(_ path: String, offset: UInt64, length: UInt64, into destination: UnsafeMutableRawPointer,
                      region: String) throws(PopulateFailure) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .file(region: region, path: path, reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    var done: UInt64 = 0
    while done < length {
        let chunk = Int(min(length - done, 1 << 30))
        let got = pread(fd, destination + Int(done), chunk, off_t(offset + done))
        if got < 0 && errno == EINTR { continue }
        guard got > 0 else {
            throw .file(region: region, path: path,
                        reason: got < 0 ? String(cString: strerror(errno))
                            : "the file ended \(length - done) bytes early; did it change since it was loaded?")
        }
        done += UInt64(got)
    }
}
