import GuestMemfd
import KVMFake
import Populate
import VMMCore

/// Guests launched on an emulated SEV-SNP host with RMPOPT (FakeKVM's
/// `snpRMPOPTHost` profile) through the Populate engine, so that
/// `snpvmm rmp status --emulate` and `snpvmm bench rmpopt` show what
/// placement does to the host's RMPOPT tables.
///
/// Each guest is an SNP VM with one vCPU and one guest_memfd of
/// `guestSize` bytes created with the backing asked for. As QEMU does, all
/// of its memory is made private when the memslot is added; the launch
/// measures a 64 KiB image at the top; then, as a guest that has accepted
/// all of its memory would have it, the rest is faulted in
/// (KVM_PRE_FAULT_MEMORY), which assigns it in the RMP (`sev_gmem_prepare`:
/// a 2 MiB entry per huge page, a 4 KiB entry per page otherwise).
final class RMPOPTEmulation {
    /// What the command line asked for.
    struct Setup: Equatable {
        var hostMemory: UInt64 = 64 << 30
        var guests = 4
        var guestSize: UInt64 = 128 << 20
        var cpus = 8
        var backing: GuestMemoryBacking = .huge1G
    }

    /// The state of the host's regions at one moment.
    struct Snapshot {
        var regions: [RMPOPTRegion]
        var cpus: Int
        var rmpUpdates: Int

        var optimized: Int { regions.filter { $0.optimizedCPUs.count == cpus }.count }
        var withPrivatePages: Int { regions.filter { $0.assignedPages > 0 }.count }
    }

    private struct Guest {
        let vm: VM
        let snp: SEVSNP
        let vcpu: VCPU
        let memfd: GuestMemfd
        let mapping: GuestMemoryMapping
        let asid: UInt32
    }

    let setup: Setup
    let fake: FakeKVM
    private var guests: [Guest] = []
    /// What the guest_memfds got (the same for every guest).
    private(set) var backing: BackingOutcome?
    /// RMP updates issued by the launches alone.
    private(set) var launchUpdates = 0

    static let imageSize: UInt64 = 64 << 10

    init(_ setup: Setup) {
        self.setup = setup
        fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: setup.hostMemory, cpus: setup.cpus))
    }

    /// Launches every guest, populating and finishing each.
    func launch() throws {
        let kvm = try KVM.open(using: fake, experimental: .hugeTLBGuestMemfd)
        var options = PopulateOptions()
        options.backing = setup.backing
        for _ in 0..<setup.guests {
            let session = try LaunchSession(kvm: kvm, platform: .snp(SNPLaunchParameters()))
            let vm = session.vm
            let vcpu = try session.createVCPUs(1)[0]
            let (memfd, outcome) = try Populator.createGuestMemfd(vm: vm, size: setup.guestSize, flags: [.mmap],
                                                                  options: options)
            backing = outcome
            let mapping = try memfd.map()
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: mapping,
                                                          size: setup.guestSize))
            let layout = GuestMemoryLayout.Slot(range: GuestRange(start: 0, size: setup.guestSize), mapping: mapping)
            try session.addMemory(layout, backing: outcome)
            try vm.setMemoryAttributes(GuestRange(start: 0, size: setup.guestSize), attributes: .private)
            var observed = options
            observed.observer = fake.observer(of: vm)
            _ = try session.populate(plan(), options: observed)
            try vcpu.preFaultMemory(covering: GuestRange(start: 0, size: setup.guestSize))
            guests.append(Guest(vm: vm, snp: session.snp!, vcpu: vcpu, memfd: memfd, mapping: mapping,
                                asid: fake.snpASID(of: vm) ?? 0))
        }
        launchUpdates = fake.rmpUpdates
    }

    /// The plan: a 64 KiB image at the top of guest memory.
    private func plan() -> LaunchPlan {
        let imageStart = setup.guestSize - Self.imageSize
        let image = (0..<Int(Self.imageSize)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ ($0 >> 12)) }
        return LaunchPlan(regions: [
            PlanRegion(name: "image", range: GuestRange(start: imageStart, size: Self.imageSize), contents: .bytes(image)),
        ])
    }

    /// Destroys every guest (unmapping and closing its descriptors), then
    /// runs the re-optimisation the kernel schedules after the last one.
    func teardown() {
        guests.removeAll()
        fake.runPendingRMPOptimization()
    }

    func snapshot() -> Snapshot {
        Snapshot(regions: fake.rmpoptRegions, cpus: fake.rmpoptCPUs, rmpUpdates: fake.rmpUpdates)
    }

    /// Guest numbers (from 1, in launch order) by ASID.
    var guestNumbers: [UInt32: Int] {
        Dictionary(uniqueKeysWithValues: guests.enumerated().map { ($1.asid, $0 + 1) })
    }

    /// A size: a number with the suffix K, M, G or T (optionally followed by
    /// "iB" or "B"), or a number of bytes.
    static func parseSize(_ text: String) -> UInt64? { SizeArgument(text).value }

    /// A size in the largest unit that divides it: "64 GiB", "192 MiB".
    static func sizeText(_ bytes: UInt64) -> String {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return "\(bytes >> UInt64(shift)) \(unit)"
        }
        return "\(bytes) bytes"
    }

    /// The options `rmp status --emulate` and `bench rmpopt` share.
    static let sharedOptions = ["--host-memory", "--guests", "--guest-size", "--cpus"].map { OptionSpec(names: [$0], takesValue: true) }

    /// Reads the shared options from `given` into `setup`; a bad value is a one-line usage error.
    static func readSharedOptions(_ given: ParsedArguments, into setup: inout Setup) throws(UsageError) {
        if let text = given["--host-memory"] {
            guard let size = parseSize(text), size >= 2 << 30, size % (1 << 30) == 0, size <= 4 << 40 else {
                throw UsageError("--host-memory '\(text)' must be a whole number of GiB from 2G to 4T, such as 64G")
            }
            setup.hostMemory = size
        }
        if let text = given["--guests"] {
            guard let count = Int(text), count >= 1, count <= 1024 else {
                throw UsageError("--guests '\(text)' must be a count from 1 to 1024")
            }
            setup.guests = count
        }
        if let text = given["--guest-size"] {
            guard let size = parseSize(text), size >= 2 << 20, size % (2 << 20) == 0 else {
                throw UsageError("--guest-size '\(text)' must be a multiple of 2 MiB, at least 2M, such as 256M")
            }
            setup.guestSize = size
        }
        if let text = given["--cpus"] {
            guard let count = Int(text), count >= 1, count <= 512 else {
                throw UsageError("--cpus '\(text)' must be a count from 1 to 512")
            }
            setup.cpus = count
        }
    }

    /// Checks that the guests fit the host under `backing`: each guest's
    /// memory rounds up to whole huge pages, the first GiB is the host
    /// kernel's, and 1 GiB pages take whole regions.
    static func checkFits(_ setup: Setup, backing: GuestMemoryBacking) throws(UsageError) {
        let page = backing.pageSize
        let perGuest = (setup.guestSize + page - 1) / page * page
        let (total, overflow) = perGuest.multipliedReportingOverflow(by: UInt64(setup.guests))
        guard !overflow, total <= setup.hostMemory - (1 << 30) else {
            throw UsageError("\(setup.guests) guests of \(sizeText(setup.guestSize)) with \(backing) need "
                + "\(overflow ? "more than the host has" : sizeText(total)), more than the \(sizeText(setup.hostMemory - (1 << 30))) "
                + "a \(sizeText(setup.hostMemory)) host has above its kernel's first GiB")
        }
    }
}
