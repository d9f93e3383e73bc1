import GuestMemfd
/// The host pages guest memory is asked to come in.
///
/// Where guest-private memory sits in host memory decides how much of the
/// host keeps RMPOPT's fast path on SEV-SNP: a 1 GiB region holding one
/// assigned page has RMP checks on every host write. HugeTLB pages keep a
/// guest's memory in whole 2 MiB or 1 GiB blocks, so its private memory
/// touches as few 1 GiB regions as its size allows.
public enum GuestMemoryBacking: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Ordinary guest_memfd pages, from wherever the page allocator has them.
    case pages4K = "4k"
    /// 2 MiB HugeTLB pages (the guest_memfd HugeTLB series).
    case huge2M = "2m"
    /// 1 GiB HugeTLB pages (the guest_memfd HugeTLB series).
    case huge1G = "1g"

    /// The page size.
    public var pageSize: UInt64 {
        switch self {
        case .pages4K: 4096
        case .huge2M: 2 << 20
        case .huge1G: 1 << 30
        }
    }

    public var description: String {
        switch self {
        case .pages4K: "4 KiB pages"
        case .huge2M: "2 MiB HugeTLB pages"
        case .huge1G: "1 GiB HugeTLB pages"
        }
    }
}

/// The backing a guest_memfd got, against the one asked for, and why they differ.
public struct BackingOutcome: Sendable, Equatable, CustomStringConvertible {
    public var asked: GuestMemoryBacking
    public var got: GuestMemoryBacking
    /// Why the backing asked for could not be had.
    public var fallbackReason: String?

    public init(asked: GuestMemoryBacking, got: GuestMemoryBacking, fallbackReason: String? = nil) {
        self.asked = asked
        self.got = got
        self.fallbackReason = fallbackReason
    }

    public var description: String {
        guard let fallbackReason else { return got.description }
        return "\(got) (asked for \(asked): \(fallbackReason))"
    }
}

extension Populator {
    /// Creates a guest_memfd of at least `size` bytes with the backing
    /// `options.backing` asks for.
    ///
    /// HugeTLB backing needs the guest_memfd HugeTLB series: the kernel must
    /// list `GUEST_MEMFD_FLAG_HUGETLB` in `KVM_CAP_GUEST_MEMFD_FLAGS`, and
    /// have free huge pages of that size. Where either is missing the file
    /// is created with 4 KiB pages and the outcome says why. With huge
    /// pages the size is rounded up to whole pages, as the kernel requires.
    public static func createGuestMemfd(vm: VM, size: UInt64, flags: GuestMemfdFlags,
                                        options: PopulateOptions) throws(PopulateError)
        -> (memfd: GuestMemfd, backing: BackingOutcome)
    {
        let asked = options.backing
        var reason: String?
        if asked != .pages4K {
            let offered: GuestMemfdFlags
            do {
                offered = GuestMemfdFlags(rawValue: UInt64(try vm.checkExtension(.guestMemfdFlags)))
            } catch {
                throw PopulateError(.kernel(error))
            }
            if offered.contains(.hugetlb) {
                let rounded = (size + asked.pageSize - 1) / asked.pageSize * asked.pageSize
                do {
                    let memfd = try vm.createGuestMemfd(size: rounded, flags: flags.union(.hugetlb(pageSize: asked.pageSize)))
                    return (memfd, BackingOutcome(asked: asked, got: asked))
                } catch {
                    reason = "\(error)"
                }
            } else {
                reason = "this kernel's guest_memfd has no HugeTLB flag (KVM_CAP_GUEST_MEMFD_FLAGS is \(offered));"
                    + " it needs the guest_memfd HugeTLB series"
            }
        }
        do {
            let memfd = try vm.createGuestMemfd(size: size, flags: flags)
            return (memfd, BackingOutcome(asked: asked, got: .pages4K, fallbackReason: reason))
        } catch {
            throw PopulateError(.kernel(error))
        }
    }
}
