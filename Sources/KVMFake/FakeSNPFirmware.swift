import GuestMemfd
import CKVMHeaders

/// One CPUID function as the SNP firmware checks it in a CPUID page.
public struct SNPCPUIDLeaf: Hashable, Sendable {
    public var function: UInt32
    public var index: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function
        self.index = index
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }

    /// The functions and bits a fake EPYC host supports.
    public static let defaultTable: [SNPCPUIDLeaf] = [
        SNPCPUIDLeaf(function: 0x0, eax: 0x10, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
        SNPCPUIDLeaf(function: 0x1, eax: 0x00A0_0F11, ebx: 0x0000_0800, ecx: 0x7EF8_320B, edx: 0x178B_FBFF),
        SNPCPUIDLeaf(function: 0x7, eax: 0, ebx: 0x219C_97A9, ecx: 0x0040_069C, edx: 0x0000_0010),
        SNPCPUIDLeaf(function: 0xD, eax: 0x0000_0007, ebx: 0x0000_0340, ecx: 0x0000_0340, edx: 0),
        SNPCPUIDLeaf(function: 0xD, index: 1, eax: 0x0000_000F, ebx: 0x0000_0340, ecx: 0, edx: 0),
        SNPCPUIDLeaf(function: 0x8000_0000, eax: 0x8000_0021, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
        SNPCPUIDLeaf(function: 0x8000_0001, eax: 0x00A0_0F11, ebx: 0, ecx: 0x7584_35FF, edx: 0x2FD3_FBFF),
        SNPCPUIDLeaf(function: 0x8000_0008, eax: 0x0000_3030, ebx: 0x791E_F257, ecx: 0x0000_707F, edx: 0),
        SNPCPUIDLeaf(function: 0x8000_001F, eax: 0x0001_FFFF, ebx: 0x0000_5133, ecx: 0x0000_01FD, edx: 0x0000_0001),
    ]
}

/// The SNP CPUID page (SNP firmware ABI, "CPUID page"; `struct snp_cpuid_table`
/// in arch/x86/include/asm/sev.h): a u32 count, 12 reserved bytes, then up to
/// 64 entries of 48 bytes (eax_in, ecx_in, xcr0_in, xss_in, eax, ebx, ecx, edx, reserved).
enum SNPCPUIDPage {
    static let maxEntries = 64
    static let entryOffset = 16
    static let entrySize = 48

    /// Checks a CPUID page against `table`: every entry must name a function
    /// the host supports and claim no bits the host lacks. Returns the page
    /// with every entry corrected, and whether anything had to change.
    static func validate(_ page: UnsafeMutableRawBufferPointer, against table: [SNPCPUIDLeaf]) -> Bool {
        let count = Int(page.load(as: UInt32.self))
        guard count <= maxEntries else {
            page.storeBytes(of: UInt32(maxEntries), as: UInt32.self)
            return false
        }
        var valid = true
        for entry in 0..<count {
            let base = entryOffset + entry * entrySize
            let function = page.load(fromByteOffset: base, as: UInt32.self)
            let index = page.load(fromByteOffset: base + 4, as: UInt32.self)
            let leaf = table.first { $0.function == function && ($0.index == index || $0.function != 0xD && $0.function != 0x7) }
            let allowed = [leaf?.eax ?? 0, leaf?.ebx ?? 0, leaf?.ecx ?? 0, leaf?.edx ?? 0]
            for register in 0..<4 {
                let offset = base + 24 + 4 * register
                let claimed = page.load(fromByteOffset: offset, as: UInt32.self)
                let corrected = claimed & allowed[register]
                if corrected != claimed {
                    valid = false
                    page.storeBytes(of: corrected, toByteOffset: offset, as: UInt32.self)
                }
            }
        }
        return valid
    }
}

extension FakeKVM {
    /// KVM_MEMORY_ENCRYPT_OP on a VM or vCPU descriptor: SEV (`sev_mem_enc_ioctl`)
    /// where the host has SNP firmware, TDX (`vt_mem_enc_ioctl`) where it has a
    /// TDX module, ENOTTY otherwise (`kvm_arch_vm_ioctl`).
    func memoryEncryptOp(_ vm: FakeVM, vcpu: FakeVCPU?, _ argument: UInt) throws(Errno) -> Int {
        if profile.snp != nil {
            // SVM has no vCPU-scope encrypt op.
            guard vcpu == nil else { throw .notTTY }
            return try sevCommand(vm, argument)
        }
        if profile.tdx != nil {
            guard vm.type == .tdx else { throw .notTTY }
            return try tdxCommand(vm, vcpu: vcpu, argument)
        }
        throw .notTTY
    }

    /// sev_mem_enc_ioctl: decodes `kvm_sev_cmd`, runs the sub-command and
    /// copies the command back (with the firmware status) whatever happened.
    private func sevCommand(_ vm: FakeVM, _ argument: UInt) throws(Errno) -> Int {
        // A null argument asks whether SEV is enabled.
        guard argument != 0 else { return 0 }
        var command: ckvm_sev_cmd = try load(argument)
        command.error = 0
        return try runCopyingBack(&command, to: argument) { (command) throws(Errno) in
            // Once an SNP guest is initialised, only SNP commands are accepted.
            if vm.snp?.initialised == true, vm.type == .snp, command.id < UInt32(CKVM_SEV_SNP_LAUNCH_START) {
                throw .notPermitted
            }
            switch Int32(command.id) {
            case CKVM_SEV_INIT2: try sevInit2(vm, &command)
            case CKVM_SEV_SNP_LAUNCH_START: try snpLaunchStart(vm, &command)
            case CKVM_SEV_SNP_LAUNCH_UPDATE: try snpLaunchUpdate(vm, &command)
            case CKVM_SEV_SNP_LAUNCH_FINISH: try snpLaunchFinish(vm, &command)
            default: throw .invalidArgument
            }
        }
    }

    /// Runs a VM-scope encrypt-op sub-command on its framing struct and
    /// copies the struct back to userspace whatever happened, as
    /// `sev_mem_enc_ioctl` and `tdx_vm_ioctl` do, before reporting the error.
    func runCopyingBack<Command>(_ command: inout Command, to argument: UInt,
                                 _ body: (inout Command) throws(Errno) -> Void) throws(Errno) -> Int {
        var failure: Errno?
        do throws(Errno) {
            try body(&command)
        } catch {
            failure = error
        }
        try store(command, at: argument)
        if let failure { throw failure }
        return 0
    }

    /// The VM types KVM_SEV_INIT2 takes here: SNP only, as no profile offers SEV or SEV-ES.
    private var snpGuestTypes: [VMType] { [.snp] }

    /// KVM_SEV_INIT2 (sev_guest_init2, __sev_guest_init).
    private func sevInit2(_ vm: FakeVM, _ command: inout ckvm_sev_cmd) throws(Errno) {
        guard snpGuestTypes.contains(vm.type), let firmware = profile.snp else { throw .invalidArgument }
        let data: ckvm_sev_init = try load(UInt(command.data))
        let encryptedState = true
        guard vm.vcpus.isEmpty, data.flags == 0 else { throw .invalidArgument }
        let supported = encryptedState ? firmware.vmsaFeatures : 0
        guard data.vmsa_features & ~supported == 0 else { throw .invalidArgument }
        guard data.ghcb_version <= 2, encryptedState || data.ghcb_version == 0 else { throw .invalidArgument }
        if vm.type == .snp, data.ghcb_version != 0, data.ghcb_version < 2 { throw .invalidArgument }
        guard vm.snp?.initialised != true else { throw .invalidArgument }
        var context = SNPGuestContext()
        context.initialised = true
        // __sev_guest_init: an SNP VM's vCPUs also get SVM_SEV_FEAT_SNP_ACTIVE (bit 0),
        // and sev_es_sync_vmsa writes the whole word into every VMSA.
        context.vmsaFeatures = data.vmsa_features | (vm.type == .snp ? 1 : 0)
        context.ghcbVersion = data.ghcb_version == 0 ? 2 : data.ghcb_version
        // sev_asid_new: the ASID is allocated when the guest is initialised.
        context.asid = nextASID
        nextASID += 1
        vm.snp = context
    }

    /// Checks that the command names an open /dev/sev descriptor
    /// (sev_issue_cmd_external_user: EBADF otherwise).
    private func requireSEVDevice(_ command: ckvm_sev_cmd) throws(Errno) {
        guard case .sevDevice? = file(CInt(bitPattern: command.sev_fd)) else { throw .badFileDescriptor }
    }

    /// KVM_SEV_SNP_LAUNCH_START (snp_launch_start), then the firmware's
    /// SNP_LAUNCH_START policy checks (SNP firmware ABI, guest policy).
    private func snpLaunchStart(_ vm: FakeVM, _ command: inout ckvm_sev_cmd) throws(Errno) {
        guard vm.type == .snp, vm.snp?.initialised == true, let firmware = profile.snp else { throw .notTTY }
        let data: ckvm_sev_snp_launch_start = try load(UInt(command.data))
        guard vm.snp?.launchStarted != true, data.flags == 0 else { throw .invalidArgument }
        let valid = CKVM_SNP_POLICY_SMT | CKVM_SNP_POLICY_RSVD_MBO | CKVM_SNP_POLICY_DEBUG
            | CKVM_SNP_POLICY_SINGLE_SOCKET | 0xFFFF
        guard data.policy & ~valid == 0, data.policy & CKVM_SNP_POLICY_RSVD_MBO != 0 else { throw .invalidArgument }
        try requireSEVDevice(command)
        // Firmware: the guest may not ask for a newer ABI than the firmware
        // has, nor forbid SMT on a host that has it enabled.
        let minor = UInt8(data.policy & 0xFF), major = UInt8((data.policy >> 8) & 0xFF)
        let abiTooNew = (major, minor) > (firmware.abiMajor, firmware.abiMinor)
        if abiTooNew || (firmware.smtActive && data.policy & CKVM_SNP_POLICY_SMT == 0) {
            command.error = SEVFirmwareStatus.policyFailure.rawValue
            throw .ioError
        }
        vm.snp?.launchStarted = true
        vm.snp?.policy = data.policy
    }

    /// KVM_SEV_SNP_LAUNCH_UPDATE (snp_launch_update, kvm_gmem_populate,
    /// sev_gmem_post_populate) and the firmware's SNP_LAUNCH_UPDATE.
    private func snpLaunchUpdate(_ vm: FakeVM, _ command: inout ckvm_sev_cmd) throws(Errno) {
        guard vm.type == .snp, vm.snp?.launchStarted == true, let firmware = profile.snp else { throw .invalidArgument }
        var params: ckvm_sev_snp_launch_update = try load(UInt(command.data))
        let type = SNPLaunchUpdate.PageType(rawValue: params.type)
        let validTypes: [SNPLaunchUpdate.PageType] = [.normal, .zero, .unmeasured, .secrets, .cpuid]
        guard params.len % pageSize == 0, params.flags == 0, validTypes.contains(type) else { throw .invalidArgument }
        let reworked = profile.reworkedPopulation
        // No source: before the rework a null pointer simply copies nothing;
        // after it, populating from the page itself needs in-place conversion.
        let inPlace = type != .zero && params.uaddr == 0
        if reworked {
            guard params.len > 0 else { throw .invalidArgument }
            guard type == .zero || params.uaddr % pageSize == 0 else { throw .invalidArgument }
            if inPlace && !profile.inPlaceConversion { throw .invalidArgument }
        }
        // kvm_slot_can_be_private: the first GFN's memslot needs a guest_memfd.
        guard let slot = vm.slot(containing: params.gfn_start), let gmem = slot.gmem else { throw .invalidArgument }

        var firmwareError: UInt32 = 0
        let result = populatePages(vm, slot: slot, gmem: gmem, startGFN: params.gfn_start,
                                   pageCount: params.len / pageSize, ioctl: .memoryEncryptOp,
                                   largeUnits: firmware.largeRMPEntries) { (gfn, index, page, unit) throws(Errno) in
            var source: UnsafeMutableRawPointer?
            if !(type == .zero || inPlace) {
                // copy_from_user of the source page: EFAULT where it is not mapped.
                guard let pointer = userPointer(params.uaddr + index * pageSize, count: Int(pageSize) * unit) else {
                    throw .badAddress
                }
                source = pointer
            }
            try snpPopulate(vm, gmem: gmem, firstPage: page, pages: unit, gfn: gfn, type: type, source: source,
                            command: command, firmware: firmware, firmwareError: &firmwareError)
        }
        switch result {
        case .failure:
            // A failure on the first page surfaces as EIO, whatever it was.
            command.error = firmwareError
            throw .ioError
        case .success(let count):
            params.gfn_start += count
            params.len -= count * pageSize
            // The source advances except for ZERO pages and, after the rework, in-place population.
            if !(type == .zero || (reworked && inPlace)) { params.uaddr += count * pageSize }
            try store(params, at: UInt(command.data))
        }
    }

    /// sev_gmem_post_populate for one unit: RMP check, copy, RMPUPDATE (one
    /// 2 MiB entry for a large unit), then the firmware's SNP_LAUNCH_UPDATE.
    /// The fake firmware measures a 2 MiB update as its 512 pages in order.
    private func snpPopulate(_ vm: FakeVM, gmem: FakeGuestMemfd, firstPage: Int, pages: Int, gfn: UInt64,
                             type: SNPLaunchUpdate.PageType, source: UnsafeMutableRawPointer?, command: ckvm_sev_cmd,
                             firmware: SNPFirmwareProfile, firmwareError: inout UInt32) throws(Errno) {
        let unitPages = firstPage..<(firstPage + pages)
        var framed: UInt64 = 0
        gmem.forEachFrameRun(unitPages, host) { _, count in framed += count }
        guard framed == UInt64(pages) else { throw .noMemory }
        // snp_lookup_rmpentry: a page already assigned cannot be launched again.
        if !gmem.stretches(unitPages, where: { $0.rmp != nil }).isEmpty { throw .fileExists }
        try requireSEVDevice(command)
        // Only the fields needed: a copy of the whole context held across the
        // loop would make every page-log append copy the log.
        guard let asid = vm.snp?.asid, vm.snp?.finished == false else {
            firmwareError = SEVFirmwareStatus.invalidGuestState.rawValue  // the launch is over
            throw .ioError
        }
        // RMPUPDATE: the unit becomes the guest's, as one 2 MiB entry or one 4 KiB entry.
        gmem.assignRMP(unitPages, gpa: gfn * pageSize, asid: asid, immutable: true, validated: true, isLarge: pages > 1,
                       host, rmp: &rmp)
        if type == .zero {
            // The firmware zeroes the pages. The fake punches them out of its
            // memfd, which reads back as zeros, so that zeroing a large guest
            // does not allocate its memory in this process.
            _ = ckvm_fallocate(gmem.backing, CKVM_FALLOC_FL_KEEP_SIZE | CKVM_FALLOC_FL_PUNCH_HOLE,
                               firstPage * Int(pageSize), pages * Int(pageSize))
        }
        for offset in 0..<pages {
            let page = firstPage + offset, bytes = gmem.pageBytes(page), gpa = (gfn + UInt64(offset)) * pageSize
            if let source {
                bytes.copyMemory(from: UnsafeRawBufferPointer(start: source + offset * Int(pageSize), count: Int(pageSize)))
            }
            switch type {
            case .secrets:
                // The firmware fills the secrets page (VMPCKs and the like); the host learns nothing of it.
                let secret = FirmwareHash.sha384.digest(Array("fake secrets page, asid \(asid)".utf8))
                for index in 0..<Int(pageSize) { bytes[index] = secret[index % secret.count] }
            case .cpuid:
                if !SNPCPUIDPage.validate(bytes, against: firmware.cpuid) {
                    // The firmware rejects the page with INVALID_PARAM after
                    // writing the values it would accept into it; KVM reclaims
                    // the page and copies it back over the caller's source
                    // (sev_gmem_post_populate). In place there is no source.
                    firmwareError = SEVFirmwareStatus.invalidParam.rawValue
                    if let source { source.copyMemory(from: bytes.baseAddress!, byteCount: Int(pageSize)) }
                    gmem.reclaimRMP(page..<(page + 1), host, rmp: &rmp)
                    throw .ioError
                }
            default:
                break
            }
            let contents = type == .normal ? FirmwareHash.sha384.digest(UnsafeRawBufferPointer(bytes)) : nil
            extendSNPDigest(vm, gpa: gpa, type: type, contentsHash: contents)
        }
    }

    /// Extends the guest's launch digest by one page, in place (copying the
    /// context out would copy its page log on every page).
    func extendSNPDigest(_ vm: FakeVM, gpa: UInt64, type: SNPLaunchUpdate.PageType, contentsHash: [UInt8]?) {
        guard let current = vm.snp?.digest else { return }
        let digest = FirmwarePageInfo.extend(current, contents: contentsHash, pageType: type.rawValue, gpa: gpa)
        vm.snp!.digest = digest
        vm.snp!.pageLog.append(FakePlatformPage(gpa: gpa, kind: type.description, measurement: digest))
    }

    /// KVM_SEV_SNP_LAUNCH_FINISH (snp_launch_finish, snp_launch_update_vmsa),
    /// then the firmware's SNP_LAUNCH_FINISH with its ID-block check.
    private func snpLaunchFinish(_ vm: FakeVM, _ command: inout ckvm_sev_cmd) throws(Errno) {
        guard vm.type == .snp, vm.snp?.initialised == true else { throw .notTTY }
        guard vm.snp?.launchStarted == true else { throw .invalidArgument }
        let params: ckvm_sev_snp_launch_finish = try load(UInt(command.data))
        guard params.flags == 0 else { throw .invalidArgument }
        try requireSEVDevice(command)
        guard let snp = vm.snp, !snp.finished else {
            command.error = SEVFirmwareStatus.invalidGuestState.rawValue
            throw .ioError
        }
        // Every vCPU's VMSA, in vCPU order, is made private at INITIAL_VMSA_GPA and measured.
        for id in vm.vcpus.keys.sorted() {
            let vcpu = vm.vcpus[id]!
            let vmsa = FirmwareVMSA.page(regs: vcpu.regs, sregs: vcpu.sregs, sevFeatures: snp.vmsaFeatures)
            // The VMSA is a page KVM allocates for the vCPU, not guest_memfd memory.
            if let frame = host.allocateKernelPage() {
                rmp.assignKernelPage(frame, gpa: CKVM_SNP_INITIAL_VMSA_GPA, asid: snp.asid)
                vm.snp?.vmsaFrames.append(frame)
            }
            extendSNPDigest(vm, gpa: CKVM_SNP_INITIAL_VMSA_GPA, type: .vmsa, contentsHash: FirmwareHash.sha384.digest(vmsa))
        }
        if params.id_block_en != 0 {
            // snp_launch_finish copies ID_BLOCK and ID_AUTH from the host; the
            // firmware checks the signatures, then the digest, then the policy
            // (SEV-SNP ABI, SNP_LAUNCH_FINISH).
            guard let block = userPointer(params.id_block_uaddr, count: Int(CKVM_SEV_SNP_ID_BLOCK_SIZE)),
                  let auth = userPointer(params.id_auth_uaddr, count: Int(CKVM_SEV_SNP_ID_AUTH_SIZE))
            else { throw .badAddress }
            let check = FirmwareIDBlockCheck(
                block: [UInt8](UnsafeRawBufferPointer(start: block, count: Int(CKVM_SEV_SNP_ID_BLOCK_SIZE))),
                auth: [UInt8](UnsafeRawBufferPointer(start: auth, count: Int(CKVM_SEV_SNP_ID_AUTH_SIZE))),
                authorKeyEnabled: params.auth_key_en != 0)
            if let status = check.status(launchDigest: vm.snp!.digest, policy: snp.policy) {
                command.error = status.rawValue
                throw .ioError
            }
            vm.snp?.idBlockEnabled = true
            vm.snp?.idKeyDigest = check.keyDigests.idKey
            vm.snp?.authorKeyDigest = check.keyDigests.authorKey
        }
        vm.snp?.hostData = withUnsafeBytes(of: params.host_data) { Array($0) }
        vm.snp?.finished = true
        vm.runnable = true
        vm.preFaultAllowed = true
    }
}
