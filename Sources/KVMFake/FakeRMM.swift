import GuestMemfd
import CKVMHeaders

extension FakeKVM {
    /// KVM_ARM_RMI_POPULATE as the Arm CCA series v14 defines it: checks the
    /// request, creates the realm on first use, then delegates each granule
    /// and copies the source into it (RMI_DATA_CREATE), measured or not.
    /// Returns 0 and writes back base, size and source_uaddr.
    func realmPopulate(_ vm: FakeVM, _ argument: UInt) throws(Errno) -> Int {
        var request: ckvm_arm_rmi_populate = try load(argument)
        guard vm.type == .armRealm, let rmm = profile.cca else { throw .noSuchDeviceOrAddress }
        let measure = UInt32(CKVM_ARM_RMI_POPULATE_FLAGS_MEASURE)
        guard request.reserved == 0, request.flags & ~measure == 0, request.base % pageSize == 0,
              request.size % pageSize == 0, request.source_uaddr % pageSize == 0, request.size > 0
        else { throw .invalidArgument }
        var realm = vm.realm ?? RealmContext()
        switch realm.state {
        case .dead: throw .noSuchDeviceOrAddress
        case .active: throw .resourceBusy
        case .new: break
        }
        guard request.source_uaddr != 0 else { throw .notSupported }
        if !realm.created {
            realm.created = true
            realm.measurement = initialRealmMeasurement(rmm)
        }
        vm.realm = realm
        let gfn = request.base / pageSize
        guard let slot = vm.slot(containing: gfn), let gmem = slot.gmem else { throw .invalidArgument }
        let flags = request.flags, source = request.source_uaddr
        let result = populatePages(vm, slot: slot, gmem: gmem, startGFN: gfn, pageCount: request.size / pageSize,
                                   ioctl: .armRMIPopulate) { (gfn, index, page, _) throws(Errno) in
            guard let pointer = userPointer(source + index * pageSize, count: Int(pageSize)) else { throw .badAddress }
            // RMI_GRANULE_DELEGATE scrubs the granule; RMI_DATA_CREATE then copies the source in.
            let bytes = gmem.pageBytes(page)
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            bytes.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: Int(pageSize)))
            let ipa = gfn * pageSize
            guard vm.realm!.populated.insert(ipa).inserted else { throw .fileExists }
            vm.realm!.ripas[ipa] = UInt8(CKVM_RMI_RIPAS_RAM)
            extendRealmMeasurement(vm, rmm, ipa: ipa, flags: UInt64(flags), granule: UnsafeRawBufferPointer(bytes))
        }
        switch result {
        case .failure(let error):
            throw error
        case .success(let count):
            request.base += count * pageSize
            request.size -= count * pageSize
            request.source_uaddr += count * pageSize
            try store(request, at: argument)
            return 0
        }
    }

    /// The first KVM_RUN activates the realm (series v14): one REC per vCPU
    /// is created, the runnable first one extending the RIM with its
    /// registers (TF-RMM `measurement_rec_params_measure`: RmiRecParams
    /// with flags at 0x0, pc at 0x200, gprs at 0x300, hashed as a 4 KiB page,
    /// in a descriptor of type 1 holding the current RIM), then
    /// RMI_REALM_ACTIVATE. Populate answers EBUSY from then on. The fake's
    /// vCPUs carry x86 registers; it takes rip as pc and rax, rbx, rcx, rdx,
    /// rsi, rdi, rsp, rbp as x0 to x7.
    func activateRealm(_ vm: FakeVM) {
        guard let rmm = profile.cca, vm.realm?.state != .active else { return }
        if vm.realm == nil { vm.realm = RealmContext() }
        if !vm.realm!.created {
            vm.realm!.created = true
            vm.realm!.measurement = initialRealmMeasurement(rmm)
        }
        for id in vm.vcpus.keys.sorted() where id == 0 {
            let regs = vm.vcpus[id]!.regs
            var params = [UInt8](repeating: 0, count: Int(pageSize))
            params[0] = 1  // RMI_RUNNABLE
            withUnsafeBytes(of: regs.rip.littleEndian) { params.replaceSubrange(0x200..<0x208, with: $0) }
            let gprs = [regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp, regs.rbp]
            for (index, value) in gprs.enumerated() {
                withUnsafeBytes(of: value.littleEndian) { params.replaceSubrange((0x300 + 8 * index)..<(0x308 + 8 * index), with: $0) }
            }
            var descriptor = [UInt8](repeating: 0, count: 0x100)
            descriptor[0] = 1
            withUnsafeBytes(of: UInt64(0x100).littleEndian) { descriptor.replaceSubrange(0x8..<0x10, with: $0) }
            descriptor.replaceSubrange(0x10..<0x50, with: vm.realm!.measurement)
            descriptor.replaceSubrange(0x50..<0x90, with: padded(realmDigest(rmm).digest(params)))
            vm.realm!.measurement = padded(realmDigest(rmm).digest(descriptor))
            vm.realm!.pageLog.append(FakePlatformPage(gpa: 0, kind: "REC", measurement: vm.realm!.measurement))
        }
        vm.realm!.state = .active
    }

    private func realmDigest(_ rmm: RMMProfile) -> FirmwareHash { rmm.hashAlgorithm == 1 ? .sha512 : .sha256 }

    /// The initial RIM: the hash of the 4 KiB realm parameters holding only
    /// the measured fields (TF-RMM `measurement_realm_params_measure`): flags
    /// at 0x0, s2sz at 0x8, sve_vl 0x10, num_bps 0x18, num_wps 0x20,
    /// pmu_num_ctrs 0x28, hash algorithm at 0x30. The fake realm uses a
    /// 40-bit IPA space and no SVE or PMU; num_bps and num_wps hold the
    /// host's counts minus one, as `realm_create_rd` copies them from
    /// ID_AA64DFR0_EL1.
    private func initialRealmMeasurement(_ rmm: RMMProfile) -> [UInt8] {
        var params = [UInt8](repeating: 0, count: Int(pageSize))
        params[0x8] = 40
        params[0x18] = UInt8(truncatingIfNeeded: rmm.breakpoints - 1)
        params[0x20] = UInt8(truncatingIfNeeded: rmm.watchpoints - 1)
        params[0x30] = rmm.hashAlgorithm
        return padded(realmDigest(rmm).digest(params))
    }

    /// RIM' = H(RmmMeasurementDescriptorData), a 0x100-byte descriptor that
    /// holds the current RIM (TF-RMM `measurement_data_granule_measure`):
    /// desc_type 0 at 0x0, len 0x100 at 0x8, rim[64] at 0x10, ipa at 0x50,
    /// flags at 0x58, content[64] at 0x60 = H(granule) when measured.
    private func extendRealmMeasurement(_ vm: FakeVM, _ rmm: RMMProfile, ipa: UInt64, flags: UInt64,
                                        granule: UnsafeRawBufferPointer) {
        var descriptor = [UInt8](repeating: 0, count: 0x100)
        withUnsafeBytes(of: UInt64(0x100).littleEndian) { descriptor.replaceSubrange(0x8..<0x10, with: $0) }
        descriptor.replaceSubrange(0x10..<0x50, with: vm.realm!.measurement)
        withUnsafeBytes(of: ipa.littleEndian) { descriptor.replaceSubrange(0x50..<0x58, with: $0) }
        withUnsafeBytes(of: flags.littleEndian) { descriptor.replaceSubrange(0x58..<0x60, with: $0) }
        if flags & UInt64(CKVM_ARM_RMI_POPULATE_FLAGS_MEASURE) != 0 {
            descriptor.replaceSubrange(0x60..<0xA0, with: padded(realmDigest(rmm).digest(granule)))
        }
        vm.realm!.measurement = padded(realmDigest(rmm).digest(descriptor))
        vm.realm!.pageLog.append(FakePlatformPage(gpa: ipa, kind: flags & 1 != 0 ? "DATA_CREATE" : "DATA_CREATE_UNKNOWN",
                                                  measurement: vm.realm!.measurement))
    }

    /// A measurement field is 64 bytes; a shorter digest fills its start.
    private func padded(_ digest: [UInt8]) -> [UInt8] { digest + [UInt8](repeating: 0, count: 64 - digest.count) }
}
