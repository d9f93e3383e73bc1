import GuestMemfd
/// What a test or an embedding VMM can ask of, and tell, a `FakeKVM`
/// beyond the kernel seam: guest behaviour, platform measurements, the RMP,
/// placement, and interruptions.
extension FakeKVM {
    /// The fake behind `kernel`, looking through fault-injecting decorators.
    public static func behind(_ kernel: any KernelInterface) -> FakeKVM? {
        if let fake = kernel as? FakeKVM { return fake }
        if let decorator = kernel as? FaultInjectingKernel { return behind(decorator.base) }
        return nil
    }

    private func fakeVM(_ vm: VM) -> FakeVM? {
        if case .vm(let fake)? = file(vm.fd) { return fake }
        return nil
    }

    private func fakeVCPU(_ vcpu: VCPU) -> FakeVCPU? {
        if case .vcpu(let fake)? = file(vcpu.fd) { return fake }
        return nil
    }

    /// Gives `vcpu` the guest actions its next runs perform, replacing any left.
    public func program(_ vcpu: VCPU, _ steps: [FakeGuestStep]) {
        withLock {
            guard let fake = fakeVCPU(vcpu) else { return }
            fake.script = steps
            fake.nextStep = 0
            fake.reads = []
        }
    }

    /// The bytes each completed `.read` step returned, in order.
    public func guestReads(_ vcpu: VCPU) -> [[UInt8]] {
        withLock { fakeVCPU(vcpu)?.reads ?? [] }
    }

    /// The launch measurement the platform holds for `vm`: the SNP launch
    /// digest (after the last page measured so far), MRTD once the TD is
    /// finalised, or the realm initial measurement (as long as the realm's
    /// hash: 32 bytes for SHA-256, as an attestation token carries it). Nil where the
    /// VM has none yet. Real hosts do not hand this to the VMM; the guest's
    /// attestation report carries it.
    public func launchMeasurement(of vm: VM) -> [UInt8]? {
        withLock {
            guard let fake = fakeVM(vm) else { return nil }
            if let snp = fake.snp, snp.launchStarted { return snp.digest }
            if let mrtd = fake.td?.finalMRTD { return mrtd }
            if let realm = fake.realm, realm.created { return Array(realm.measurement.prefix(realmDigestLength)) }
            return nil
        }
    }

    /// Every page the platform measured for `vm`, in order, with the
    /// measurement after it (for SNP and CCA; TDX records operations only).
    public func platformLog(of vm: VM) -> [FakePlatformPage] {
        withLock {
            guard let fake = fakeVM(vm) else { return [] }
            if let realm = fake.realm {
                return realm.pageLog.map {
                    var page = $0
                    page.measurement = Array(page.measurement.prefix(realmDigestLength))
                    return page
                }
            }
            return fake.snp?.pageLog ?? fake.td?.pageLog ?? []
        }
    }

    /// An observer for `PopulateOptions.observer` that reads `vm`'s
    /// measurement from this fake's firmware, so a population whose
    /// expected measurement differs from the firmware's fails.
    public func observer(of vm: VM) -> any LaunchMeasurementObserver {
        FakeMeasurementObserver(fake: self, vm: vm)
    }

    private var realmDigestLength: Int { profile.cca?.hashAlgorithm == 1 ? 64 : 32 }

    /// The SNP guest's launch fields as an attestation report would show them.
    public func snpReportFields(of vm: VM) -> FakeSNPReportFields? {
        withLock {
            guard let snp = fakeVM(vm)?.snp, snp.finished else { return nil }
            return FakeSNPReportFields(policy: snp.policy, hostData: snp.hostData, idBlock: snp.idBlockEnabled,
                                       idKeyDigest: snp.idKeyDigest, authorKeyDigest: snp.authorKeyDigest)
        }
    }

    /// The realm IPA state of the granule at `ipa`: EMPTY (0) or RAM (1).
    public func ripas(of vm: VM, ipa: UInt64) -> UInt8? {
        withLock { fakeVM(vm)?.realm.map { $0.ripas[ipa] ?? 0 } }
    }

    /// The host frame backing the page at `offset` of `memfd`, if allocated.
    public func hostFrame(of memfd: GuestMemfd, offset: UInt64) -> UInt64? {
        withLock {
            guard case .guestMemfd(let fake)? = file(memfd.fd), offset < fake.size else { return nil }
            return fake.frame(Int(offset / pageSize), host)
        }
    }

    /// The RMP entry of a host frame; nil for a frame the hypervisor owns.
    /// A scattered frame's owner is found by a scan: for test-sized hosts.
    public func rmpEntry(frame: UInt64) -> RMPEntry? {
        withLock {
            if let entry = rmp.kernelEntries[frame] { return entry }
            guard let owner = host.runOwner(of: frame) ?? host.scatteredOwner(of: frame),
                  let gmem = guestMemfds[owner.file] else { return nil }
            return gmem.rmpEntry(Int(owner.page))
        }
    }

    /// All frames assigned to guests, with their entries; one entry per
    /// assigned page, so meant for test-sized guests.
    public var assignedFrames: [UInt64: RMPEntry] {
        withLock {
            var frames = rmp.kernelEntries
            for gmem in guestMemfds.values {
                for stretch in gmem.stretches(0..<gmem.pageCount, where: { $0.rmp != nil }) {
                    for page in stretch {
                        if let frame = gmem.frame(page, host) { frames[frame] = gmem.rmpEntry(page) }
                    }
                }
            }
            return frames
        }
    }

    /// RMPUPDATE instructions issued so far.
    public var rmpUpdates: Int { withLock { rmp.updates } }

    /// Makes the page-by-page work of the next calls stop with `errno` after
    /// `pages` more pages, as a signal arriving mid-call does (EINTR), or as
    /// a failure of that page would. Limited to one ioctl when given
    /// (`.preFaultMemory`, `.memoryEncryptOp` for SNP and TDX population,
    /// `.armRMIPopulate`).
    public func interrupt(afterPages pages: Int, with errno: Errno = .interrupted, in ioctl: Ioctl? = nil) {
        withLock { armSignal(PendingSignal(errno: errno, pagesLeft: pages, ioctl: ioctl)) }
    }

    /// Makes the page-by-page work of the next calls fail with `errno` from
    /// `pages` more pages on, and at every page after that: a fault that
    /// persists (memory the kernel cannot get, a source page it cannot read,
    /// firmware that keeps failing), where `interrupt` fails one page once.
    public func failPages(after pages: Int, with errno: Errno, in ioctl: Ioctl? = nil) {
        withLock { armSignal(PendingSignal(errno: errno, pagesLeft: pages, ioctl: ioctl, persistent: true)) }
    }

    /// The guest-physical ranges of `vm`'s memslots that are private now,
    /// coalesced and in address order: by the VM's attributes, or by
    /// guest_memfd where it converts in place. One check per page of every
    /// memslot, so meant for test-sized guests.
    public func privateRanges(of vm: VM) -> [GuestRange] {
        withLock {
            guard let fake = fakeVM(vm) else { return [] }
            var ranges: [GuestRange] = []
            for slot in fake.memslots.values.filter({ $0.asID == 0 }).sorted(by: { $0.baseGFN < $1.baseGFN }) {
                for gfn in slot.baseGFN..<slot.endGFN where isPrivate(fake, gfn: gfn) {
                    let gpa = gfn * pageSize
                    if let last = ranges.last, last.start.rawValue + last.size == gpa {
                        ranges[ranges.count - 1] = GuestRange(start: last.start, size: last.size + pageSize)
                    } else {
                        ranges.append(GuestRange(start: gpa, size: pageSize))
                    }
                }
            }
            return ranges
        }
    }

    /// Every byte of `memfd` as the platform holds it, private pages
    /// included: what the guest would find, which the host cannot read.
    public func contents(of memfd: GuestMemfd) -> [UInt8]? {
        withLock {
            guard case .guestMemfd(let fake)? = file(memfd.fd) else { return nil }
            return [UInt8](UnsafeRawBufferPointer(start: fake.view, count: Int(fake.size)))
        }
    }

    /// Descriptors the fake holds open (system, VM, vCPU, guest_memfd, /dev/sev).
    public var openDescriptors: Int { withLock { openFileCount } }

    /// Mappings of fake descriptors not yet unmapped.
    public var liveMappings: Int { withLock { liveMappingCount } }
}

/// Reads one VM's measurement from a `FakeKVM`'s firmware.
private final class FakeMeasurementObserver: LaunchMeasurementObserver, @unchecked Sendable {
    let fake: FakeKVM
    let vm: VM

    init(fake: FakeKVM, vm: VM) {
        self.fake = fake
        self.vm = vm
    }

    func launchMeasurement() -> [UInt8]? { fake.launchMeasurement(of: vm) }

    func measuredPages() -> [MeasuredPage] {
        fake.platformLog(of: vm).map { MeasuredPage(gpa: $0.gpa, kind: $0.kind, measurement: $0.measurement) }
    }
}

/// Fields of an SNP attestation report the launch decides (SEV-SNP ABI, ATTESTATION_REPORT).
public struct FakeSNPReportFields: Sendable {
    public var policy: UInt64
    public var hostData: [UInt8]
    /// ID_BLOCK_EN was set and the firmware accepted the block.
    public var idBlock: Bool
    /// ID_KEY_DIGEST and AUTHOR_KEY_DIGEST (the latter with AUTH_KEY_EN only).
    public var idKeyDigest: [UInt8]?
    public var authorKeyDigest: [UInt8]?
}
