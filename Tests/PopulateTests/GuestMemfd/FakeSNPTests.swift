import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import KVMFake
import Testing

/// An SNP guest on a fake SNP host, set up as QEMU and the kernel selftests
/// do: SNP VM, INIT2, vCPUs, guest_memfd slot, LAUNCH_START.
struct FakeSNPGuest {
    let fake: FakeKVM
    let kvm: KVM
    let vm: VM
    let snp: SEVSNP
    let memfd: GuestMemfd
    let vcpu: VCPU

    init(profile: HostProfile = .snpHost, size: UInt64 = 0x40000, policy: UInt64 = 0x30000, vmsaFeatures: UInt64 = 0,
         start: Bool = true) throws {
        fake = FakeKVM(profile: profile)
        kvm = try KVM.open(using: fake, experimental: .all)
        vm = try kvm.createVM(type: .snp)
        snp = try SEVSNP(vm: vm)
        try snp.init2(vmsaFeatures: vmsaFeatures)
        vcpu = try vm.createVCPU(id: 0)
        memfd = try vm.createGuestMemfd(size: size, flags: profile.inPlaceConversion ? [.mmap, .initShared] : [.mmap])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: size, memfd: memfd))
        if start { try snp.launchStart(policy: policy) }
    }

    func makePrivate(_ start: UInt64, _ size: UInt64) throws {
        try vm.setMemoryAttributes(GuestRange(start: start, size: size), attributes: .private)
    }

    /// Populates `bytes` at `gpa` from a separate, page-aligned source,
    /// looping on the kernel's write-back.
    func populate(_ bytes: [UInt8], at gpa: UInt64, type: SNPLaunchUpdate.PageType = .normal) throws {
        let source = AlignedBuffer(bytes)
        var update = SNPLaunchUpdate(gfnStart: gpa / pageSize, sourceAddress: source.address,
                                     length: UInt64(bytes.count), type: type)
        while update.length > 0 { update = try snp.launchUpdate(update) }
    }
}

/// The SNP launch digest, computed here from the SNP ABI's PAGE_INFO layout
/// without the package's helper, as an independent check of the fake.
func expectedSNPDigest(_ pages: [(gpa: UInt64, type: UInt8, contents: [UInt8]?)]) -> [UInt8] {
    var digest = [UInt8](repeating: 0, count: 48)
    for page in pages {
        var info = digest
        info += page.contents.map { SHA384.hash($0).bytes } ?? [UInt8](repeating: 0, count: 48)
        info += [0x70, 0x00, page.type, 0, 0, 0, 0, 0]
        info += (0..<8).map { UInt8(truncatingIfNeeded: page.gpa >> (8 * $0)) }
        digest = SHA384.hash(info).bytes
    }
    return digest
}

func pattern(_ pages: Int, seed: UInt8) -> [UInt8] {
    (0..<(pages * Int(pageSize))).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
}

@Suite struct FakeSNPTests {
    @Test func launchUpdateOfSharedPagesFailsWithEIOAndNoFirmwareError() throws {
        let guest = try FakeSNPGuest()
        let error = kvmError { try guest.populate(pattern(1, seed: 1), at: 0) }
        #expect(error?.errno == .ioError)
        #expect(error?.operation == .encryptOp(.snpLaunchUpdate))
        #expect(error?.firmwareError == nil)
        #expect(guest.fake.platformLog(of: guest.vm).isEmpty)
    }

    @Test func launchUpdateWritesBackProgressAndExtendsTheDigestPerPage() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0x10000, 0x4000)
        var source = pattern(4, seed: 3)
        let base = source.withUnsafeMutableBytes { UInt64(UInt(bitPattern: $0.baseAddress)) }
        let after = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0x10, sourceAddress: base, length: 0x4000, type: .normal))
        #expect(after == SNPLaunchUpdate(gfnStart: 0x14, sourceAddress: base + 0x4000, length: 0, type: .normal))
        var pages: [(gpa: UInt64, type: UInt8, contents: [UInt8]?)] = []
        for index in 0..<4 {
            let contents = Array(source[(index * 4096)..<(index * 4096 + 4096)])
            pages.append((gpa: 0x10000 + UInt64(index) * pageSize, type: 1, contents: contents))
        }
        #expect(guest.fake.launchMeasurement(of: guest.vm) == expectedSNPDigest(pages))
        #expect(guest.fake.platformLog(of: guest.vm).map(\.gpa) == [0x10000, 0x11000, 0x12000, 0x13000])
    }

    @Test func aSignalAfterTwoPagesReturnsSuccessWithTheProgressMade() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x8000)
        var source = pattern(8, seed: 5)
        let base = source.withUnsafeMutableBytes { UInt64(UInt(bitPattern: $0.baseAddress)) }
        guest.fake.interrupt(afterPages: 2, in: .memoryEncryptOp)
        let first = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0, sourceAddress: base, length: 0x8000, type: .normal))
        #expect(first == SNPLaunchUpdate(gfnStart: 2, sourceAddress: base + 0x2000, length: 0x6000, type: .normal))
        let rest = try guest.snp.launchUpdate(first)
        #expect(rest.length == 0)

        let clean = try FakeSNPGuest()
        try clean.makePrivate(0, 0x8000)
        try clean.populate(source, at: 0)
        #expect(guest.fake.launchMeasurement(of: guest.vm) == clean.fake.launchMeasurement(of: clean.vm))
    }

    @Test func aSignalBeforeTheFirstPageSurfacesAsEIO() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x2000)
        guest.fake.interrupt(afterPages: 0, in: .memoryEncryptOp)
        #expect(kvmError { try guest.populate(pattern(2, seed: 1), at: 0) }?.errno == .ioError)
        try guest.populate(pattern(2, seed: 1), at: 0)
        #expect(guest.fake.platformLog(of: guest.vm).count == 2)
    }

    @Test func populatingAPageTwiceFailsWithEIO() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x2000)
        try guest.populate(pattern(1, seed: 1), at: 0)
        #expect(kvmError { try guest.populate(pattern(1, seed: 2), at: 0) }?.errno == .ioError)
        // On a kernel without prepared-page tracking the RMP refuses it instead, with the same result.
        let reworked = try FakeSNPGuest(profile: .snpInPlaceHost)
        try reworked.memfd.setMemoryAttributes2(offset: 0, size: 0x1000, attributes: .private)
        try reworked.populate(pattern(1, seed: 1), at: 0)
        #expect(kvmError { try reworked.populate(pattern(1, seed: 2), at: 0) }?.errno == .ioError)
    }

    @Test func zeroSecretsAndUnmeasuredPagesLinkTheDigestWithoutContents() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x4000)
        _ = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0, sourceAddress: 0, length: 0x1000, type: .zero))
        _ = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 1, sourceAddress: 0, length: 0x1000, type: .secrets))
        try guest.populate(pattern(1, seed: 9), at: 0x2000, type: .unmeasured)
        #expect(guest.fake.launchMeasurement(of: guest.vm) == expectedSNPDigest([
            (0, 3, nil), (0x1000, 5, nil), (0x2000, 4, nil),
        ]))
    }

    @Test func zeroPagesDoNotAdvanceTheSource() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x2000)
        let after = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0, sourceAddress: 0x5000, length: 0x2000, type: .zero))
        #expect(after == SNPLaunchUpdate(gfnStart: 2, sourceAddress: 0x5000, length: 0, type: .zero))
    }

    @Test func aRejectedCPUIDPageIsCorrectedInTheSourceAndRetriesCleanly() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x1000)
        var page = [UInt8](repeating: 0, count: 4096)
        func put(_ value: UInt32, _ offset: Int) { withUnsafeBytes(of: value) { page.replaceSubrange(offset..<(offset + 4), with: $0) } }
        put(1, 0)  // one entry
        put(0x1, 16)  // function 1, index 0
        put(0xFFFF_FFFF, 16 + 32)  // ecx claims every feature
        let error = kvmError { try guest.populate(page, at: 0, type: .cpuid) }
        #expect(error?.errno == .ioError)
        #expect(error?.firmwareError == UInt64(CKVM_SEV_RET_INVALID_PARAM))

        var source = page
        let corrected: [UInt8] = source.withUnsafeMutableBytes { raw in
            let update = SNPLaunchUpdate(gfnStart: 0, sourceAddress: UInt64(UInt(bitPattern: raw.baseAddress)), length: 0x1000,
                                         type: .cpuid)
            #expect(kvmError { _ = try guest.snp.launchUpdate(update) }?.firmwareError == 0x16)
            return Array(raw)
        }
        let ecx = corrected.withUnsafeBytes { $0.load(fromByteOffset: 48, as: UInt32.self) }
        #expect(ecx == 0x7EF8_320B)
        try guest.populate(corrected, at: 0, type: .cpuid)
        #expect(guest.fake.launchMeasurement(of: guest.vm) == expectedSNPDigest([(0, 6, nil)]))
    }

    @Test(arguments: [
        PolicyCase(UInt64(0x10000), "reserved bit 17 clear"), PolicyCase(0x70000, "MIGRATE_MA"),
        PolicyCase(0x30000 | 1 << 21, "bit 21"),
    ])
    func launchStartWithAPolicyKVMDoesNotAcceptFailsWithEINVAL(_ policy: PolicyCase) throws {
        let guest = try FakeSNPGuest(start: false)
        let error = kvmError { try guest.snp.launchStart(policy: policy.value) }
        #expect(error?.errno == .invalidArgument)
    }

    @Test(arguments: [PolicyCase(0x20000, "SMT forbidden on an SMT host"), PolicyCase(0x33800, "ABI 56.0 above the firmware's 1.55")])
    func launchStartWithAPolicyTheFirmwareRefusesFailsWithPolicyFailure(_ policy: PolicyCase) throws {
        let guest = try FakeSNPGuest(start: false)
        let error = kvmError { try guest.snp.launchStart(policy: policy.value) }
        #expect(error?.errno == .ioError)
        #expect(error?.firmwareError == 0x07)
    }

    struct PolicyCase: Sendable, CustomTestStringConvertible {
        let value: UInt64
        let testDescription: String
        init(_ value: UInt64, _ label: String) {
            self.value = value
            testDescription = label
        }
    }

    @Test func theSNPHostOffersNoLegacySEVOrSEVESVMType() throws {
        let kvm = try KVM.open(using: FakeKVM(profile: .snpHost))
        #expect(try kvm.capabilities().vmTypes == [.default, .snp])
        for type in [VMType.sev, .sevES] {
            #expect(kvmError { _ = try kvm.createVM(type: type) }?.errno == .invalidArgument, "\(type)")
        }
    }

    @Test func init2ChecksFlagsFeaturesAndGHCBVersion() throws {
        for (features, ghcb, flags) in [(UInt64(1) << 6, UInt16(0), UInt32(0)), (0, 3, 0), (0, 1, 0), (0, 0, 1)] {
            let fake = FakeKVM(profile: .snpHost)
            let vm = try KVM.open(using: fake, experimental: .all).createVM(type: .snp)
            let snp = try SEVSNP(vm: vm)
            var data = ckvm_sev_init()
            data.vmsa_features = features
            data.ghcb_version = ghcb
            data.flags = flags
            let errno: Errno? = withUnsafeMutablePointer(to: &data) { (pointer) -> Errno? in
                var command = ckvm_sev_cmd(id: UInt32(CKVM_SEV_INIT2), pad0: 0, data: UInt64(UInt(bitPattern: pointer)), error: 0,
                                           sev_fd: UInt32(bitPattern: snp.sevFD))
                do throws(Errno) { _ = try fake.ioctl(vm.fd, Ioctl.memoryEncryptOp.request, pointerTo: &command) } catch { return error }
                return nil
            }
            #expect(errno == .invalidArgument, "features \(features) ghcb \(ghcb) flags \(flags)")
        }
        let supported = try FakeSNPGuest(start: false)
        #expect(try supported.kvm.getDeviceAttr(group: UInt32(CKVM_X86_GRP_SEV), attribute: UInt64(CKVM_X86_SEV_VMSA_FEATURES)) == 1 << 5)
    }

    @Test func memoryAttributesFollowTheKernelsArgumentRules() throws {
        let guest = try FakeSNPGuest()
        #expect(kvmError { try guest.vm.setMemoryAttributes(GuestRange(start: 0, size: 0x1000), attributes: MemoryAttributes(rawValue: 1)) }?
            .errno == .invalidArgument)
        #expect(kvmError { try guest.vm.setMemoryAttributes(GuestRange(start: 0x10, size: 0x1000), attributes: .private) }?.errno
                == .invalidArgument)
        #expect(kvmError { try guest.vm.setMemoryAttributes(GuestRange(start: 0, size: 0), attributes: .private) }?.errno
                == .invalidArgument)
        #expect(kvmError { try guest.vm.setMemoryAttributes(GuestRange(start: UInt64.max - 0xFFF, size: 0x2000), attributes: .private) }?
            .errno == .invalidArgument)
        // All or nothing: a range beyond every memslot is fine, attributes are per GFN.
        try guest.vm.setMemoryAttributes(GuestRange(start: 1 << 40, size: 0x1000), attributes: .private)
        let plain = try guest.kvm.createVM()
        #expect(kvmError { try plain.setMemoryAttributes(GuestRange(start: 0, size: 0x1000), attributes: .private) }?.errno
                == .invalidArgument)
    }

    @Test func launchCommandsOutOfOrderAreRefused() throws {
        let fake = FakeKVM(profile: .snpHost)
        let kvm = try KVM.open(using: fake, experimental: .all)
        let plain = try kvm.createVM()
        #expect(kvmError { try SEVSNP(vm: plain).init2() }?.errno == .invalidArgument)
        #expect(kvmError { try SEVSNP(vm: plain).launchStart(policy: 0x30000) }?.errno == .notTTY)
        let vm = try kvm.createVM(type: .snp)
        let snp = try SEVSNP(vm: vm)
        #expect(kvmError { try snp.launchStart(policy: 0x30000) }?.errno == .notTTY)
        _ = try vm.createVCPU(id: 0)
        #expect(kvmError { try snp.init2() }?.errno == .invalidArgument)

        let guest = try FakeSNPGuest()
        #expect(kvmError { try guest.snp.init2() }?.errno == .notPermitted)
        #expect(kvmError { try guest.snp.launchStart(policy: 0x30000) }?.errno == .invalidArgument)
    }

    @Test func launchFinishMeasuresOneVMSAPerVCPUInOrderAndOpensTheGuest() throws {
        let guest = try FakeSNPGuest()
        let second = try guest.vm.createVCPU(id: 1)
        var regs = try second.getRegs()
        regs.rip = 0xFFF0
        regs.rdx = 0x1234
        try second.setRegs(regs)
        try guest.makePrivate(0, 0x1000)
        try guest.populate(pattern(1, seed: 2), at: 0)
        #expect(kvmError { _ = try guest.vcpu.run() }?.errno == .invalidArgument)
        #expect(kvmError { _ = try guest.vcpu.preFaultMemory(GuestRange(start: 0, size: 0x1000)) }?.errno == .notSupported)

        let vmsas = try [guest.vcpu, second].map { vcpu in
            SNPVMSA(regs: try vcpu.getRegs(), sregs: try vcpu.getSregs(), sevFeatures: snpActive).page
        }
        try guest.snp.launchFinish()
        // The registers now live in the encrypted VMSAs.
        #expect(kvmError { _ = try second.getRegs() }?.errno == .invalidArgument)
        #expect(kvmError { try second.setRegs(regs) }?.errno == .invalidArgument)
        #expect(guest.fake.launchMeasurement(of: guest.vm) == expectedSNPDigest([
            (0, 1, pattern(1, seed: 2)), (0xFFFF_FFFF_F000, 2, vmsas[0]), (0xFFFF_FFFF_F000, 2, vmsas[1]),
        ]))
        guard case .hlt = try guest.vcpu.run() else {
            Issue.record("the guest should run after launch finish")
            return
        }
        #expect(kvmError { try guest.populate(pattern(1, seed: 3), at: 0) }?.errno == .ioError)
        #expect(kvmError { try guest.snp.launchFinish() }?.firmwareError == 0x02)
    }

    @Test func anIDBlockWithTheWrongDigestIsRefusedAndTheRightOneAccepted() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x1000)
        try guest.populate(pattern(1, seed: 4), at: 0)
        let vmsa = SNPVMSA(regs: try guest.vcpu.getRegs(), sregs: try guest.vcpu.getSregs(), sevFeatures: snpActive).page
        let digest = expectedSNPDigest([(0, 1, pattern(1, seed: 4)), (0xFFFF_FFFF_F000, 2, vmsa)])
        let key = try SNPSigningKey(pemFile: MeasurementVectors.path("inputs/id-key.pem"))
        func signed(_ digest: [UInt8]) throws -> SNPLaunchFinish {
            let block = SNPIDBlock(launchDigest: SHA384Digest(bytes: digest))
            let auth = try SNPIDAuth(signing: block, idKey: key, authorKey: key)
            return SNPLaunchFinish(idBlock: block.bytes, idAuth: auth.bytes, hostData: Array(repeating: 7, count: 32))
        }
        let wrong = try signed([UInt8](repeating: 1, count: 48))
        #expect(kvmError { try guest.snp.launchFinish(wrong) }?.firmwareError == 0x0B)
        let fresh = try FakeSNPGuest()
        try fresh.makePrivate(0, 0x1000)
        try fresh.populate(pattern(1, seed: 4), at: 0)
        try fresh.snp.launchFinish(try signed(digest))
        #expect(fresh.fake.snpReportFields(of: fresh.vm)?.idBlock == true)
        #expect(fresh.fake.snpReportFields(of: fresh.vm)?.hostData == Array(repeating: 7, count: 32))
    }

    @Test func populatedPagesAreAssignedImmutableAndValidatedInTheRMPUntilPunched() throws {
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x2000)
        try guest.populate(pattern(2, seed: 1), at: 0)
        let frame = try #require(guest.fake.hostFrame(of: guest.memfd, offset: 0x1000))
        let entry = try #require(guest.fake.rmpEntry(frame: frame))
        #expect(entry.assigned && entry.immutable && entry.validated && !entry.isLarge)
        #expect(entry.gpa == 0x1000)
        #expect(entry.asid == 1)
        try guest.memfd.punchHole(offset: 0x1000, length: 0x1000)
        #expect(guest.fake.rmpEntry(frame: frame) == nil)
        #expect(guest.fake.hostFrame(of: guest.memfd, offset: 0x1000) == nil)
    }

    @Test func aWhole2MiBRunOn2MiBFramesBecomesOneLargeRMPEntry() throws {
        var profile = HostProfile.snpHost
        profile.snp?.largeRMPEntries = true
        profile.placement = .contiguous2M
        let guest = try FakeSNPGuest(profile: profile, size: 0x400000)
        try guest.makePrivate(0, 0x400000)
        let before = guest.fake.rmpUpdates
        try guest.populate(pattern(512, seed: 1), at: 0x200000)
        #expect(guest.fake.rmpUpdates - before == 1)
        let frame = try #require(guest.fake.hostFrame(of: guest.memfd, offset: 0x200000 + 0x5000))
        #expect(guest.fake.rmpEntry(frame: frame)?.isLarge == true)
        // Scattered 4 KiB frames keep 4 KiB entries: one update per page.
        var scattered = profile
        scattered.placement = .scattered4K
        let small = try FakeSNPGuest(profile: scattered, size: 0x400000)
        try small.makePrivate(0, 0x400000)
        try small.populate(pattern(512, seed: 1), at: 0x200000)
        #expect(small.fake.rmpUpdates == 512)
        #expect(small.fake.launchMeasurement(of: small.vm) == guest.fake.launchMeasurement(of: guest.vm))
    }

    @Test func inPlacePopulationMeasuresWhatTheHostWroteWhileShared() throws {
        let guest = try FakeSNPGuest(profile: .snpInPlaceHost)
        let memory = try guest.memfd.map()
        let contents = pattern(2, seed: 8)
        try memory.write(contents, at: 0x4000)
        try guest.memfd.setMemoryAttributes2(offset: 0x4000, size: 0x2000, attributes: .private)
        #expect(kvmError { _ = try memory.read(at: 0x4000, count: 1) }?.errno == .badAddress)
        let after = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 4, sourceAddress: 0, length: 0x2000, type: .normal))
        #expect(after == SNPLaunchUpdate(gfnStart: 6, sourceAddress: 0, length: 0, type: .normal))
        #expect(guest.fake.launchMeasurement(of: guest.vm) == expectedSNPDigest([
            (0x4000, 1, Array(contents[..<4096])), (0x5000, 1, Array(contents[4096...])),
        ]))
    }

    @Test func aNullSourceCopiesNothingOn618AndNeedsInPlaceConversionAfterTheRework() throws {
        // 6.18: uaddr 0 is a null source; the page keeps what guest_memfd
        // holds (zeros) and that is measured, and uaddr still advances.
        let old = try FakeSNPGuest()
        try old.makePrivate(0, 0x1000)
        let after = try old.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0, sourceAddress: 0, length: 0x1000, type: .normal))
        #expect(after.sourceAddress == 0x1000)
        #expect(old.fake.launchMeasurement(of: old.vm) == expectedSNPDigest([(0, 1, [UInt8](repeating: 0, count: 4096))]))
        #expect(kvmError { _ = try old.memfd.setMemoryAttributes2(offset: 0, size: 0x1000, attributes: .private) }?.errno == .notTTY)

        var profile = HostProfile.snpHost
        profile.reworkedPopulation = true
        let reworked = try FakeSNPGuest(profile: profile)
        try reworked.makePrivate(0, 0x1000)
        let error = kvmError { _ = try reworked.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0, sourceAddress: 0, length: 0x1000, type: .normal)) }
        #expect(error?.errno == .invalidArgument)
    }

    @Test func inPlaceHostsKeepAttributesInGuestMemfd() throws {
        let guest = try FakeSNPGuest(profile: .snpInPlaceHost)
        #expect(try guest.vm.checkExtension(.memoryAttributes) == 0)
        #expect(try guest.vm.checkExtension(.guestMemfdMemoryAttributes) == 8)
        #expect(kvmError { try guest.makePrivate(0, 0x1000) }?.errno == .invalidArgument)
        for (offset, size) in [(UInt64(0x800), UInt64(0x1000)), (0, 0), (0x3F000, 0x2000)] {
            #expect(kvmError { try guest.memfd.setMemoryAttributes2(offset: offset, size: size, attributes: .private) }?.errno
                    == .invalidArgument)
        }
    }
}

/// SVM_SEV_FEAT_SNP_ACTIVE: KVM adds it to every SNP vCPU's sev_features (__sev_guest_init).
let snpActive: UInt64 = 1
