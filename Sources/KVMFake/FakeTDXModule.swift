import GuestMemfd
import CKVMHeaders

extension FakeKVM {
    /// The TDX sub-commands of KVM_MEMORY_ENCRYPT_OP on a TD (`tdx_vm_ioctl`,
    /// `tdx_vcpu_ioctl`, arch/x86/kvm/vmx/tdx.c, 6.16+) and the TDX module
    /// functions behind them.
    func tdxCommand(_ vm: FakeVM, vcpu: FakeVCPU?, _ argument: UInt) throws(Errno) -> Int {
        var command: ckvm_tdx_cmd = try load(argument)
        if let vcpu {
            // A vCPU command needs an initialised TD that is not yet runnable.
            guard let td = vm.td, td.state == .initialised else { throw .invalidArgument }
            guard command.hw_error == 0 else { throw .invalidArgument }
            switch Int32(command.id) {
            case CKVM_TDX_INIT_VCPU:
                guard command.flags == 0, !vcpu.tdInitialised else { throw .invalidArgument }
                vcpu.tdInitialised = true
                vcpu.regs.rcx = command.data
                return 0
            case CKVM_TDX_INIT_MEM_REGION:
                return try tdxInitMemRegion(vm, vcpu, command)
            default:
                throw .invalidArgument
            }
        }
        // Userspace must never set hw_error; the kernel fills it.
        guard command.hw_error == 0 else { throw .invalidArgument }
        return try runCopyingBack(&command, to: argument) { (command) throws(Errno) in
            switch Int32(command.id) {
            case CKVM_TDX_CAPABILITIES: try tdxCapabilities(command)
            case CKVM_TDX_INIT_VM: try tdxInitVM(vm, command)
            case CKVM_TDX_FINALIZE_VM: try tdxFinalize(vm, &command)
            default: throw .invalidArgument
            }
        }
    }

    /// KVM_TDX_CAPABILITIES (tdx_get_capabilities).
    private func tdxCapabilities(_ command: ckvm_tdx_cmd) throws(Errno) {
        guard command.flags == 0, let module = profile.tdx else { throw .invalidArgument }
        let address = UInt(command.data)
        let header: ckvm_cpuid2_header = try load(address + 2048)
        guard header.nent >= UInt32(FakeKVM.supportedCPUID.count) else { throw .argumentListTooLong }
        try store(module.supportedAttributes, at: address)
        try store(module.supportedXFAM, at: address + 8)
        try store(UInt32(FakeKVM.supportedCPUID.count), at: address + 2048)
        for (index, entry) in FakeKVM.supportedCPUID.enumerated() {
            try store(entry, at: address + 2056 + UInt(index * MemoryLayout<kvm_cpuid_entry2>.stride))
        }
    }

    /// KVM_TDX_INIT_VM (tdx_td_init): TDH.MNG.CREATE/INIT open MRTD's SHA-384 context.
    private func tdxInitVM(_ vm: FakeVM, _ command: ckvm_tdx_cmd) throws(Errno) {
        guard vm.td == nil, command.flags == 0, let module = profile.tdx else { throw .invalidArgument }
        guard vm.vcpus.isEmpty else { throw .resourceBusy }
        let address = UInt(command.data)
        let params: ckvm_tdx_init_vm = try load(address)
        guard params.cpuid.nent <= 256 else { throw .argumentListTooLong }
        let reservedClear = withUnsafeBytes(of: params.reserved) { $0.allSatisfy { $0 == 0 } }
        guard reservedClear, params.cpuid.padding == 0 else { throw .invalidArgument }
        guard params.attributes & ~module.supportedAttributes == 0, params.xfam & ~module.supportedXFAM == 0 else {
            throw .invalidArgument
        }
        var td = TDContext()
        td.state = .initialised
        td.attributes = params.attributes
        td.xfam = params.xfam
        // The shared-GPA bit sits just below the top of the guest physical-address width.
        td.sharedBit = 1 << UInt64(module.guestPhysicalAddressBits - 1)
        vm.td = td
    }

    /// KVM_TDX_INIT_MEM_REGION (tdx_vcpu_init_mem_region): one page at a
    /// time through kvm_gmem_populate, TDH.MEM.PAGE.ADD and, with MEASURE,
    /// sixteen TDH.MR.EXTEND of 256 bytes. The region is written back on
    /// success and on every error.
    private func tdxInitMemRegion(_ vm: FakeVM, _ vcpu: FakeVCPU, _ command: ckvm_tdx_cmd) throws(Errno) -> Int {
        guard command.flags & ~UInt32(CKVM_TDX_MEASURE_MEMORY_REGION) == 0 else { throw .invalidArgument }
        let address = UInt(command.data)
        var region: ckvm_tdx_init_mem_region = try load(address)
        let sharedBit = vm.td!.sharedBit
        let (end, wraps) = region.gpa.addingReportingOverflow(region.nr_pages &* pageSize)
        guard region.source_addr % pageSize == 0, region.gpa % pageSize == 0, region.nr_pages > 0,
              region.nr_pages < (1 << 52), !wraps, end > region.gpa,
              region.gpa & sharedBit == 0, (end - 1) & sharedBit == 0
        else { throw .invalidArgument }
        let measure = command.flags & UInt32(CKVM_TDX_MEASURE_MEMORY_REGION) != 0
        var failure: Errno?
        while region.nr_pages > 0 {
            if let signal = takeSignal(for: .memoryEncryptOp) {
                failure = signal
                break
            }
            let gfn = region.gpa / pageSize
            guard let slot = vm.slot(containing: gfn), let gmem = slot.gmem else {
                failure = .invalidArgument
                break
            }
            let source = region.source_addr
            let result = populatePages(vm, slot: slot, gmem: gmem, startGFN: gfn, pageCount: 1,
                                       ioctl: .memoryEncryptOp) { (gfn, _, page, _) throws(Errno) in
                try tdxAddPage(vm, gmem: gmem, page: page, gpa: gfn * pageSize, source: source, measure: measure)
            }
            switch result {
            case .failure(let error):
                failure = error
            case .success(let count) where count != 1:
                failure = .ioError
            case .success:
                // A null (in-place) source stays null.
                if region.source_addr != 0 { region.source_addr += pageSize }
                region.gpa += pageSize
                region.nr_pages -= 1
            }
            if failure != nil { break }
        }
        try store(region, at: address)
        if let failure { throw failure }
        return 0
    }

    /// tdx_gmem_post_populate: TDH.MEM.PAGE.ADD copies the source page into
    /// the TD and hashes one 128-byte block naming the GPA; with MEASURE,
    /// TDH.MR.EXTEND hashes a header block and 256 bytes, sixteen times.
    private func tdxAddPage(_ vm: FakeVM, gmem: FakeGuestMemfd, page: Int, gpa: UInt64, source: UInt64,
                            measure: Bool) throws(Errno) {
        let bytes = gmem.pageBytes(page)
        if source == 0 {
            // No source: in place where guest_memfd converts in place, else the
            // pin of address 0 fails (get_user_pages_fast), reported as ENOMEM.
            guard profile.inPlaceConversion else { throw .noMemory }
        } else {
            guard let pointer = userPointer(source, count: Int(pageSize)) else { throw .badAddress }
            bytes.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: Int(pageSize)))
        }
        // PAGE.ADD on a GPA already mapped fails in the TDX module; KVM reports EIO.
        guard vm.td!.added.insert(gpa).inserted else { throw .ioError }
        vm.td!.mrtd.update(tdxBlock("MEM.PAGE.ADD", gpa: gpa))
        vm.td!.pageLog.append(FakePlatformPage(gpa: gpa, kind: "PAGE.ADD", measurement: []))
        if measure {
            for chunk in 0..<16 {
                let chunkGPA = gpa + UInt64(chunk * 256)
                vm.td!.mrtd.update(tdxBlock("MR.EXTEND", gpa: chunkGPA))
                vm.td!.mrtd.update(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[(chunk * 256)..<(chunk * 256 + 256)]))
            }
            vm.td!.pageLog.append(FakePlatformPage(gpa: gpa, kind: "MR.EXTEND", measurement: []))
        }
    }

    /// A 128-byte MRTD block: the ASCII operation name, zero padding to 16
    /// bytes, the GPA little-endian at 16, zeros to the end (TDX module,
    /// tdh_mem_page_add.c / tdh_mr_extend.c).
    private func tdxBlock(_ operation: String, gpa: UInt64) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 128)
        block.replaceSubrange(0..<operation.utf8.count, with: operation.utf8)
        withUnsafeBytes(of: gpa.littleEndian) { block.replaceSubrange(16..<24, with: $0) }
        return block
    }

    /// KVM_TDX_FINALIZE_VM (tdx_td_finalize): TDH.MR.FINALIZE closes MRTD.
    private func tdxFinalize(_ vm: FakeVM, _ command: inout ckvm_tdx_cmd) throws(Errno) {
        guard var td = vm.td, td.state == .initialised, command.flags == 0, command.data == 0 else {
            throw .invalidArgument
        }
        td.finalMRTD = td.mrtd.finish()
        td.state = .finalised
        vm.td = td
        vm.runnable = true
        vm.preFaultAllowed = true
    }
}
