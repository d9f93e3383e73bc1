import GuestMemfd
extension FakeKVM {
    /// Whether `gfn` is private for population and faults: per VM attribute
    /// on 6.18, per guest_memfd page where guest_memfd converts in place.
    func isPrivate(_ vm: FakeVM, gfn: UInt64) -> Bool {
        guard vm.type.hasPrivateMemory else { return false }
        if profile.inPlaceConversion, let slot = vm.slot(containing: gfn), let gmem = slot.gmem {
            return !gmem.state(slot.gmemPage(gfn)).shared
        }
        return vm.isPrivate(gfn)
    }

    /// `kvm_gmem_populate`: walks `pageCount` pages from `startGFN` inside
    /// one memslot and hands each unit to the platform's `postPopulate`.
    ///
    /// A unit is one page, or, with `largeUnits`, a 2 MiB-aligned run of 512
    /// pages on one 2 MiB host frame (a huge folio). Before each unit a
    /// pending signal stops the walk (EINTR). Returns the pages done, or the
    /// error when the very first unit failed, as the kernel does.
    func populatePages(
        _ vm: FakeVM, slot: FakeMemslot, gmem: FakeGuestMemfd, startGFN: UInt64, pageCount: UInt64, ioctl: Ioctl,
        largeUnits: Bool = false,
        postPopulate: (_ gfn: UInt64, _ index: UInt64, _ page: Int, _ unit: Int) throws(Errno) -> Void
    ) -> Result<UInt64, Errno> {
        // The slot's file was released: kvm_gmem_get_file finds nothing.
        guard !slot.gmemClosed else { return .failure(.badAddress) }
        // npages <= 0 (a WARN in the kernel).
        guard pageCount > 0 else { return .failure(.invalidArgument) }
        // One call never crosses the end of the memslot.
        let pages = min(pageCount, slot.endGFN - startGFN)
        var done: UInt64 = 0
        var failure: Errno?
        while done < pages {
            if let signal = takeSignal(for: ioctl) {
                failure = signal
                break
            }
            let gfn = startGFN + done, page = slot.gmemPage(gfn)
            let runPages = Int(hugePageSize / pageSize)
            var unit = 1
            if largeUnits, page % runPages == 0, pages - done >= UInt64(runPages), page + runPages <= gmem.pageCount {
                gmem.allocate(page..<(page + runPages), &host)
                // One 2 MiB-aligned run of consecutive frames: a huge folio.
                var frames: [(UInt64, UInt64)] = []
                gmem.forEachFrameRun(page..<(page + runPages), host) { frames.append(($0, $1)) }
                if frames.count == 1, frames[0].0 % UInt64(runPages) == 0, frames[0].1 == UInt64(runPages) { unit = runPages }
            }
            gmem.allocate(page..<(page + unit), &host)
            // 6.11-6.18: a folio already prepared (populated, or faulted in) is refused.
            if !profile.reworkedPopulation, !gmem.stretches(page..<(page + unit), where: { $0.prepared }).isEmpty {
                failure = .fileExists
                break
            }
            // Every GFN of the unit must be private; a huge unit shrinks to one page first.
            if unit > 1, !(0..<UInt64(unit)).allSatisfy({ isPrivate(vm, gfn: gfn + $0) }) { unit = 1 }
            guard isPrivate(vm, gfn: gfn) else {
                failure = .invalidArgument
                break
            }
            do throws(Errno) {
                try postPopulate(gfn, done, page, unit)
            } catch {
                failure = error
                break
            }
            gmem.update(page..<(page + unit)) { $0.prepared = true }
            done += UInt64(unit)
            pagesDone(unit, for: ioctl)
        }
        if let failure, done == 0 { return .failure(failure) }
        return .success(done)
    }
}
