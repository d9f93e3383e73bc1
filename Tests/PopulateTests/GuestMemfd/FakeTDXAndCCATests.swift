import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import KVMFake
import Populate
import Testing

/// MRTD computed here from the TDX module's block layout (a 128-byte block
/// per PAGE.ADD; per MR.EXTEND a header block and 256 bytes), as an
/// independent check of the fake.
func expectedMRTD(_ pages: [(gpa: UInt64, contents: [UInt8], measured: Bool)]) -> [UInt8] {
    func block(_ name: String, _ gpa: UInt64) -> [UInt8] {
        var block = Array(name.utf8) + [UInt8](repeating: 0, count: 16 - name.utf8.count)
        block += (0..<8).map { UInt8(truncatingIfNeeded: gpa >> (8 * $0)) }
        return block + [UInt8](repeating: 0, count: 104)
    }
    var message: [UInt8] = []
    for page in pages {
        message += block("MEM.PAGE.ADD", page.gpa)
        if page.measured {
            for chunk in 0..<16 {
                message += block("MR.EXTEND", page.gpa + UInt64(chunk * 256))
                message += page.contents[(chunk * 256)..<(chunk * 256 + 256)]
            }
        }
    }
    return SHA384.hash(message).bytes
}

struct FakeTD {
    let fake = FakeKVM(profile: .tdxHost)
    let vm: VM
    let tdx: TDX
    let vcpu: VCPU
    let memfd: GuestMemfd

    init() throws {
        let kvm = try KVM.open(using: fake, experimental: .all)
        vm = try kvm.createVM(type: .tdx)
        tdx = TDX(vm: vm)
        try tdx.initVM(attributes: 0, xfam: 0x3)
        vcpu = try vm.createVCPU(id: 0)
        try tdx.initVCPU(vcpu)
        memfd = try vm.createGuestMemfd(size: 0x100000, flags: [.mmap])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0xFFF0_0000, size: 0x100000, memfd: memfd))
        try vm.setMemoryAttributes(GuestRange(start: 0xFFF0_0000, size: 0x100000), attributes: .private)
    }
}

@Suite struct FakeTDXTests {
    @Test func initMemRegionAddsAndMeasuresEachPageAndFinalizeFixesMRTD() throws {
        let td = try FakeTD()
        let measured = AlignedBuffer(pattern(2, seed: 1)), unmeasured = AlignedBuffer(pattern(1, seed: 2))
        let left = try td.tdx.initMemRegion(TDXMemRegion(sourceAddress: measured.address, gpa: 0xFFF0_0000, pageCount: 2),
                                            on: td.vcpu, measure: true)
        #expect(left == TDXMemRegion(sourceAddress: measured.address + 0x2000, gpa: 0xFFF0_2000, pageCount: 0))
        _ = try td.tdx.initMemRegion(TDXMemRegion(sourceAddress: unmeasured.address, gpa: 0xFFF1_0000, pageCount: 1),
                                     on: td.vcpu, measure: false)
        #expect(td.fake.launchMeasurement(of: td.vm) == nil)
        try td.tdx.finalizeVM()
        let bytes = measured.bytes
        let pages: [(gpa: UInt64, contents: [UInt8], measured: Bool)] = [
            (0xFFF0_0000, Array(bytes[..<4096]), true), (0xFFF0_1000, Array(bytes[4096...]), true),
            (0xFFF1_0000, unmeasured.bytes, false),
        ]
        #expect(td.fake.launchMeasurement(of: td.vm) == expectedMRTD(pages))
    }

    @Test func anInterruptedRegionWritesBackItsProgressWithTheError() throws {
        let td = try FakeTD()
        let source = AlignedBuffer(pattern(4, seed: 3))
        td.fake.interrupt(afterPages: 1, in: .memoryEncryptOp)
        let region = TDXMemRegion(sourceAddress: source.address, gpa: 0xFFF0_0000, pageCount: 4)
        let error = kvmError { _ = try td.tdx.initMemRegion(region, on: td.vcpu, measure: true) }
        #expect(error?.errno == .interrupted)
        #expect(error?.completedBytes == 0x1000)
        #expect(error?.range == GuestRange(start: 0xFFF0_1000, size: 0x3000))
        let rest = TDXMemRegion(sourceAddress: source.address + 0x1000, gpa: 0xFFF0_1000, pageCount: 3)
        #expect(try td.tdx.initMemRegion(rest, on: td.vcpu, measure: true).pageCount == 0)
        try td.tdx.finalizeVM()
        let bytes = source.bytes
        var pages: [(gpa: UInt64, contents: [UInt8], measured: Bool)] = []
        for index in 0..<4 {
            pages.append((0xFFF0_0000 + UInt64(index) * 0x1000, Array(bytes[(index * 4096)..<(index * 4096 + 4096)]), true))
        }
        #expect(td.fake.launchMeasurement(of: td.vm) == expectedMRTD(pages))
    }

    @Test func regionsThatAreSharedUnalignedOrAfterFinalizeAreRefused() throws {
        let td = try FakeTD()
        let source = AlignedBuffer(pattern(1, seed: 4))
        let cases: [TDXMemRegion] = [
            TDXMemRegion(sourceAddress: source.address + 1, gpa: 0xFFF0_0000, pageCount: 1),
            TDXMemRegion(sourceAddress: source.address, gpa: 0xFFF0_0800, pageCount: 1),
            TDXMemRegion(sourceAddress: source.address, gpa: 0xFFF0_0000, pageCount: 0),
            TDXMemRegion(sourceAddress: source.address, gpa: 0xFFF0_0000 | 1 << 47, pageCount: 1),
            TDXMemRegion(sourceAddress: source.address, gpa: 0x1000, pageCount: 1),
        ]
        for region in cases {
            #expect(kvmError { _ = try td.tdx.initMemRegion(region, on: td.vcpu, measure: true) }?.errno == .invalidArgument,
                    "\(region)")
        }
        try td.vm.setMemoryAttributes(GuestRange(start: 0xFFF8_0000, size: 0x1000), attributes: [])
        let shared = TDXMemRegion(sourceAddress: source.address, gpa: 0xFFF8_0000, pageCount: 1)
        #expect(kvmError { _ = try td.tdx.initMemRegion(shared, on: td.vcpu, measure: true) }?.errno == .invalidArgument)
        let twice = TDXMemRegion(sourceAddress: source.address, gpa: 0xFFF0_0000, pageCount: 1)
        _ = try td.tdx.initMemRegion(twice, on: td.vcpu, measure: false)
        #expect(kvmError { _ = try td.tdx.initMemRegion(twice, on: td.vcpu, measure: false) }?.errno == .fileExists)
        try td.tdx.finalizeVM()
        #expect(kvmError { _ = try td.tdx.initMemRegion(twice, on: td.vcpu, measure: false) }?.errno == .invalidArgument)
        #expect(kvmError { try td.tdx.finalizeVM() }?.errno == .invalidArgument)
    }

    @Test func malformedTDCommandsAreRefused() throws {
        let fake = FakeKVM(profile: .tdxHost)
        let vm = try KVM.open(using: fake, experimental: .all).createVM(type: .tdx)
        let tdx = TDX(vm: vm)
        #expect(kvmError { try tdx.initVM(attributes: 0, xfam: 1 << 40) }?.errno == .invalidArgument)
        // KVM_TDX_CAPABILITIES with room for one CPUID entry: E2BIG.
        var storage = [UInt8](repeating: 0, count: 2056 + 40)
        storage.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(1), toByteOffset: 2048, as: UInt32.self) }
        let errno: Errno? = storage.withUnsafeMutableBytes { (raw) -> Errno? in
            var command = ckvm_tdx_cmd(id: UInt32(CKVM_TDX_CAPABILITIES), flags: 0, data: UInt64(UInt(bitPattern: raw.baseAddress)), hw_error: 0)
            do throws(Errno) { _ = try fake.ioctl(vm.fd, Ioctl.memoryEncryptOp.request, pointerTo: &command) } catch { return error }
                return nil
        }
        #expect(errno == .argumentListTooLong)
        // A nonzero hw_error on input, and reserved words in INIT_VM.
        var command = ckvm_tdx_cmd(id: UInt32(CKVM_TDX_FINALIZE_VM), flags: 0, data: 0, hw_error: 1)
        #expect(throws: Errno.invalidArgument) { _ = try fake.ioctl(vm.fd, Ioctl.memoryEncryptOp.request, pointerTo: &command) }
        var initVM = ckvm_tdx_init_vm()
        initVM.reserved.0 = 1
        let reserved: Errno? = withUnsafeMutablePointer(to: &initVM) { (pointer) -> Errno? in
            var command = ckvm_tdx_cmd(id: UInt32(CKVM_TDX_INIT_VM), flags: 0, data: UInt64(UInt(bitPattern: pointer)), hw_error: 0)
            do throws(Errno) { _ = try fake.ioctl(vm.fd, Ioctl.memoryEncryptOp.request, pointerTo: &command) } catch { return error }
                return nil
        }
        #expect(reserved == .invalidArgument)
    }

    @Test func anUnmappedSourceIsEFAULTNotACrash() throws {
        let td = try FakeTD()
        let error = kvmError {
            _ = try td.tdx.initMemRegion(TDXMemRegion(sourceAddress: 0x1000, gpa: 0xFFF0_0000, pageCount: 1), on: td.vcpu, measure: true)
        }
        #expect(error?.errno == .badAddress)
        let guest = try FakeSNPGuest()
        try guest.makePrivate(0, 0x1000)
        let snpError = kvmError {
            _ = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 0, sourceAddress: 0x1000, length: 0x1000, type: .normal))
        }
        #expect(snpError?.errno == .ioError)
    }

    @Test func aTDTakesVCPUsOnlyAfterInitVMAndRunsOnlyAfterFinalize() throws {
        let fake = FakeKVM(profile: .tdxHost)
        let kvm = try KVM.open(using: fake, experimental: .all)
        let vm = try kvm.createVM(type: .tdx)
        #expect(kvmError { _ = try vm.createVCPU(id: 0) }?.errno == .ioError)
        let tdx = TDX(vm: vm)
        #expect(kvmError { try tdx.initVM(attributes: 1 << 63, xfam: 3) }?.errno == .invalidArgument)
        try tdx.initVM(attributes: 0, xfam: 3)
        #expect(kvmError { try tdx.initVM(attributes: 0, xfam: 3) }?.errno == .invalidArgument)
        let vcpu = try vm.createVCPU(id: 0)
        // Without the DEBUG attribute a TD's register state is the TDX module's alone.
        #expect(kvmError { _ = try vcpu.getRegs() }?.errno == .invalidArgument)
        #expect(kvmError { try vcpu.setSregs(kvm_sregs()) }?.errno == .invalidArgument)
        try tdx.initVCPU(vcpu, rcx: 0x1234)
        #expect(kvmError { try tdx.initVCPU(vcpu) }?.errno == .invalidArgument)
        #expect(kvmError { _ = try vcpu.run() }?.errno == .invalidArgument)
        try tdx.finalizeVM()
        guard case .hlt = try vcpu.run() else {
            Issue.record("a finalised TD runs")
            return
        }
        #expect(try tdx.capabilities().supportedXFAM == HostProfile.tdxHost.tdx!.supportedXFAM)
    }
}

/// The realm initial measurement computed here from TF-RMM's descriptor
/// layouts (SHA-256, 64-byte fields), as an independent check of the fake.
func expectedRIM(_ granules: [(ipa: UInt64, contents: [UInt8], measured: Bool)]) -> [UInt8] {
    func pad(_ digest: [UInt8]) -> [UInt8] { digest + [UInt8](repeating: 0, count: 64 - digest.count) }
    var params = [UInt8](repeating: 0, count: 4096)
    params[8] = 40
    params[0x18] = 5  // the cca host's 6 breakpoints, minus one
    params[0x20] = 3  // and 4 watchpoints
    var rim = pad(MessageDigest.sha256.hash(params))
    for granule in granules {
        var descriptor = [UInt8](repeating: 0, count: 0x100)
        descriptor[8] = 0x00
        descriptor[9] = 0x01
        descriptor.replaceSubrange(0x10..<0x50, with: rim)
        descriptor.replaceSubrange(0x50..<0x58, with: (0..<8).map { UInt8(truncatingIfNeeded: granule.ipa >> (8 * $0)) })
        descriptor[0x58] = granule.measured ? 1 : 0
        if granule.measured { descriptor.replaceSubrange(0x60..<0xA0, with: pad(MessageDigest.sha256.hash(granule.contents))) }
        rim = pad(MessageDigest.sha256.hash(descriptor))
    }
    return Array(rim.prefix(32))
}

@Suite struct FakeCCATests {
    struct Realm {
        let fake = FakeKVM(profile: .ccaHost)
        let vm: VM
        let cca: CCA
        let memfd: GuestMemfd

        init() throws {
            let kvm = try KVM.open(using: fake, experimental: .all)
            vm = try kvm.createVM(type: .armRealm)
            cca = CCA(vm: vm)
            memfd = try vm.createGuestMemfd(size: 0x10000, flags: [.mmap])
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0x8000_0000, size: 0x10000, memfd: memfd))
            try vm.setMemoryAttributes(GuestRange(start: 0x8000_0000, size: 0x10000), attributes: .private)
        }
    }

    @Test func populateCopiesFromTheSourceAndExtendsTheRealmMeasurement() throws {
        let realm = try Realm()
        let kernel = AlignedBuffer(pattern(2, seed: 5)), data = AlignedBuffer(pattern(1, seed: 6))
        let left = try realm.cca.populate(CCAPopulate(base: 0x8000_0000, size: 0x2000, sourceAddress: kernel.address), measure: true)
        #expect(left == CCAPopulate(base: 0x8000_2000, size: 0, sourceAddress: kernel.address + 0x2000))
        _ = try realm.cca.populate(CCAPopulate(base: 0x8000_4000, size: 0x1000, sourceAddress: data.address), measure: false)
        let bytes = kernel.bytes
        let granules: [(ipa: UInt64, contents: [UInt8], measured: Bool)] = [
            (0x8000_0000, Array(bytes[..<4096]), true), (0x8000_1000, Array(bytes[4096...]), true),
            (0x8000_4000, data.bytes, false),
        ]
        #expect(realm.fake.launchMeasurement(of: realm.vm) == expectedRIM(granules))
        #expect(realm.fake.ripas(of: realm.vm, ipa: 0x8000_1000) == UInt8(CKVM_RMI_RIPAS_RAM))
        #expect(realm.fake.ripas(of: realm.vm, ipa: 0x8000_3000) == UInt8(CKVM_RMI_RIPAS_EMPTY))
    }

    @Test func populatingInPlaceOrWithBadArgumentsIsRefused() throws {
        let realm = try Realm()
        let source = AlignedBuffer(pattern(1, seed: 1))
        #expect(kvmError { _ = try realm.cca.populate(CCAPopulate(base: 0x8000_0000, size: 0x1000, sourceAddress: 0), measure: true) }?
            .errno == .notSupported)
        for request in [CCAPopulate(base: 0x8000_0800, size: 0x1000, sourceAddress: source.address),
                        CCAPopulate(base: 0x8000_0000, size: 0x800, sourceAddress: source.address),
                        CCAPopulate(base: 0x8000_0000, size: 0x1000, sourceAddress: source.address + 8)] {
            #expect(kvmError { _ = try realm.cca.populate(request, measure: true) }?.errno == .invalidArgument, "\(request)")
        }
        let plain = try KVM.open(using: realm.fake, experimental: .all).createVM()
        #expect(kvmError { _ = try CCA(vm: plain).populate(CCAPopulate(base: 0, size: 0x1000, sourceAddress: source.address), measure: true) }?
            .errno == .noSuchDeviceOrAddress)
        try realm.vm.setMemoryAttributes(GuestRange(start: 0x8000_F000, size: 0x1000), attributes: [])
        #expect(kvmError { _ = try realm.cca.populate(CCAPopulate(base: 0x8000_F000, size: 0x1000, sourceAddress: source.address), measure: true) }?
            .errno == .invalidArgument)
    }

    @Test func theFirstRunActivatesTheRealmMeasuringTheBootRECAndPopulateIsThenBusy() throws {
        let realm = try Realm()
        let source = AlignedBuffer(pattern(1, seed: 3))
        _ = try realm.cca.populate(CCAPopulate(base: 0x8000_0000, size: 0x1000, sourceAddress: source.address), measure: true)
        let vcpu = try realm.vm.createVCPU(id: 0)
        var regs = try vcpu.getRegs()
        regs.rip = 0x8000_0000
        regs.rax = 0x8800_0000
        try vcpu.setRegs(regs)
        _ = try vcpu.run()
        var expected = CCARealmMeasurement(parameters: CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4))
        expected.dataCreate(loading: source.bytes, at: 0x8000_0000)
        expected.recCreate(pc: 0x8000_0000, gprs: [0x8800_0000, 0, 0, 0, 0, 0, 0, 0], runnable: true)
        #expect(realm.fake.launchMeasurement(of: realm.vm) == expected.rim)
        let error = kvmError {
            _ = try realm.cca.populate(CCAPopulate(base: 0x8000_1000, size: 0x1000, sourceAddress: source.address), measure: true)
        }
        #expect(error?.errno == .resourceBusy)
    }

    @Test func delegationScrubsWhatTheHostHadWritten() throws {
        var profile = HostProfile.ccaHost
        profile.inPlaceConversion = true
        let fake = FakeKVM(profile: profile)
        let vm = try KVM.open(using: fake, experimental: .all).createVM(type: .armRealm)
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap, .initShared])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x2000, memfd: memfd))
        try memfd.map().fill(0xEE, at: 0, count: 0x2000)
        try memfd.setMemoryAttributes2(offset: 0, size: 0x2000, attributes: .private)
        let zeros = AlignedBuffer([UInt8](repeating: 0, count: 0x1000))
        _ = try CCA(vm: vm).populate(CCAPopulate(base: 0, size: 0x1000, sourceAddress: zeros.address), measure: true)
        #expect(fake.launchMeasurement(of: vm) == expectedRIM([(0, [UInt8](repeating: 0, count: 4096), true)]))
    }
}
