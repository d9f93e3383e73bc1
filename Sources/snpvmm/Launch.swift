#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import Populate

/// `snpvmm run --platform snp|tdx|cca --emulate`: the confidential launch of
/// the same plan, performed by the fake platform firmware (FakeKVM) through
/// the Populate engine, before the guest runs on this host's default VM.
/// It prints the launch measurement and report on standard error, and
/// writes the ledger where asked.
enum EmulatedLaunch {
    static func perform(_ setup: BootSetup, platform: Platform, memorySize: UInt64, cpus: Int, slots: [MemorySlot],
                        ledgerPath: String?) throws(PopulateFailure) {
        let result: PopulateResult
        do {
            result = try launch(setup, platform: platform, memorySize: memorySize, cpus: cpus, slots: slots)
        } catch let error as PopulateError {
            throw PopulateFailure(error)
        } catch let error as KVMError {
            throw .engine("setting up the emulated \(platform.rawValue) launch: \(error)")
        } catch {
            throw .engine("\(error)")
        }
        var standardError = StandardError()
        let measurement = result.expectedMeasurement.map { hexString($0) } ?? "none"
        print("snpvmm: emulated \(platform.rawValue) launch measurement \(measurement)", to: &standardError)
        for line in result.report.description.split(separator: "\n") { print("snpvmm:   \(line)", to: &standardError) }
        if let ledgerPath {
            let text = Array(result.ledger.jsonLines.utf8)
            let fd = open(ledgerPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw .file(path: ledgerPath, reason: String(cString: strerror(errno))) }
            defer { close(fd) }
            var done = 0
            while done < text.count {
                let written = text.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
                if written < 0 {
                    if errno == EINTR { continue }
                    throw .file(path: ledgerPath, reason: String(cString: strerror(errno)))
                }
                done += written
            }
        }
    }

    /// Builds the platform's guest on the fake (VM type, platform init,
    /// vCPUs in their boot state, guest_memfd slots like the real machine's)
    /// and populates the plan through the engine, finishing the launch.
    static func launch(_ setup: BootSetup, platform: Platform, memorySize: UInt64, cpus: Int,
                       slots: [MemorySlot]) throws -> PopulateResult {
        let (profile, type): (HostProfile, VMType) = switch platform {
        case .snp: (.snpHost, .snp)
        case .tdx: (.tdxHost, .tdx)
        case .cca, .plain: (.ccaHost, .armRealm)
        }
        let kvm = try KVM.open(using: FakeKVM(profile: profile))
        let vm = try kvm.createVM(type: type)
        var snp: SEVSNP?
        if type == .snp {
            snp = try SEVSNP(vm: vm)
            try snp!.init2()
        }
        if type == .tdx { try TDX(vm: vm).initVM(attributes: 0, xfam: 0x3) }
        var vcpus: [VCPU] = []
        for id in 0..<cpus {
            let vcpu = try vm.createVCPU(id: UInt32(id))
            if type == .tdx { try TDX(vm: vm).initVCPU(vcpu) }
            vcpus.append(vcpu)
        }
        // A TD's vCPUs start in the state the TDX module gives them; the host cannot set it.
        if type != .tdx { try Machine.apply(setup.cpu, to: vcpus[0]) }
        let memfd = try vm.createGuestMemfd(size: memorySize, flags: [.mmap])
        let mapping = try memfd.map()
        var layout: [GuestMemoryLayout.Slot] = []
        for slot in slots {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: slot.slot, guestPhysicalAddress: slot.range.start.rawValue,
                                                          mapping: mapping, offset: slot.offset, size: slot.range.size))
            layout.append(.init(range: slot.range, mapping: mapping, fileOffset: slot.offset))
        }
        let memory = GuestMemoryLayout(slots: layout)
        let backend: any PopulationBackend
        switch type {
        case .snp:
            // SMT allowed, the reserved bit set, ABI 0.0.
            try snp!.launchStart(policy: 0x30000)
            backend = try SNPBackend(vm: vm, snp: snp!, memory: memory, vcpus: vcpus)
        case .tdx: backend = try TDXBackend(vm: vm, tdx: TDX(vm: vm), vcpu: vcpus[0], memory: memory)
        default: backend = CCABackend(vm: vm)
        }
        return try Populator(backend: backend, memory: memory).populate(setup.plan)
    }

    static func hexString(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
