import CKVMHeaders

/// The state of one `KVM_TDX_INIT_MEM_REGION`: what to add, and after a
/// call, what the kernel says is left.
public struct TDXMemRegion: Hashable, Sendable {
    public var sourceAddress: UInt64
    public var gpa: UInt64
    public var pageCount: UInt64

    public init(sourceAddress: UInt64, gpa: UInt64, pageCount: UInt64) {
        self.sourceAddress = sourceAddress
        self.gpa = gpa
        self.pageCount = pageCount
    }

    public var range: GuestRange { GuestRange(start: gpa, size: pageCount &* pageSize) }
}

/// What the TDX module supports, from `KVM_TDX_CAPABILITIES`.
public struct TDXCapabilities: Sendable {
    public var supportedAttributes: UInt64
    public var supportedXFAM: UInt64
}

/// The Intel TDX sub-commands of `KVM_MEMORY_ENCRYPT_OP` on one TD.
///
/// VM-scope commands go to the VM descriptor and vCPU-scope ones
/// (`INIT_VCPU`, `INIT_MEM_REGION`) to the vCPU's, as the kernel documents.
public struct TDX: Sendable {
    public let vm: VM

    public init(vm: VM) { self.vm = vm }

    private func issue(
        _ command: EncryptCommand, on vcpu: VCPU? = nil, flags: UInt32 = 0, data: UInt64,
        range: GuestRange? = nil, detail: String? = nil
    ) throws(KVMError) {
        var cmd = ckvm_tdx_cmd(id: command.id, flags: flags, data: data, hw_error: 0)
        let result: Result<Void, Errno> = withUnsafeMutablePointer(to: &cmd) { pointer in
            Result { () throws(Errno) in
                if let vcpu {
                    try vcpu.memoryEncryptOp(UnsafeMutableRawPointer(pointer))
                } else {
                    try vm.memoryEncryptOp(UnsafeMutableRawPointer(pointer))
                }
            }
        }
        if case .failure(let errno) = result {
            throw KVMError(.encryptOp(command), on: vcpu == nil ? .vm : .vcpu, fd: vcpu?.fd ?? vm.fd, errno: errno,
                           range: range, detail: detail, firmwareError: cmd.hw_error == 0 ? nil : cmd.hw_error)
        }
    }

    /// Reads the attributes and XFAM bits the TDX module supports.
    ///
    /// The corresponding command is `KVM_TDX_CAPABILITIES` (VM).
    public func capabilities() throws(KVMError) -> TDXCapabilities {
        let capacity = 256
        var storage = [UInt8](repeating: 0, count: MemoryLayout<ckvm_tdx_capabilities>.size
                                  + capacity * MemoryLayout<kvm_cpuid_entry2>.stride)
        try storage.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(capacity), toByteOffset: 2048, as: UInt32.self)
            return Result { () throws(KVMError) in
                try issue(.tdxCapabilities, data: UInt64(UInt(bitPattern: raw.baseAddress)))
            }
        }.get()
        return storage.withUnsafeBytes {
            TDXCapabilities(supportedAttributes: $0.load(as: UInt64.self), supportedXFAM: $0.load(fromByteOffset: 8, as: UInt64.self))
        }
    }

    /// Initialises the TD: attributes, XFAM, the measurement registers the
    /// host provides, and the CPUID configuration. Must precede every vCPU.
    ///
    /// EAGAIN is sent again, up to `entropyRetries` times: `__tdx_td_init`
    /// answers it when TDH.MNG.CREATE or TDH.MNG.ADDCX finds no entropy
    /// (TDX_RND_NO_ENTROPY), after freeing everything it made.
    ///
    /// The corresponding command is `KVM_TDX_INIT_VM` (VM).
    public func initVM(attributes: UInt64, xfam: UInt64, mrConfigID: [UInt8] = [], mrOwner: [UInt8] = [],
                       mrOwnerConfig: [UInt8] = [], cpuid: [kvm_cpuid_entry2] = [], entropyRetries: Int = 16) throws(KVMError) {
        var retries = 0
        while true {
            do {
                try initVMOnce(attributes: attributes, xfam: xfam, mrConfigID: mrConfigID, mrOwner: mrOwner,
                               mrOwnerConfig: mrOwnerConfig, cpuid: cpuid)
                return
            } catch where error.errno == .resourceTemporarilyUnavailable && retries < entropyRetries {
                retries += 1
            }
        }
    }

    private func initVMOnce(attributes: UInt64, xfam: UInt64, mrConfigID: [UInt8], mrOwner: [UInt8],
                            mrOwnerConfig: [UInt8], cpuid: [kvm_cpuid_entry2]) throws(KVMError) {
        let header = MemoryLayout<ckvm_tdx_init_vm>.size
        var storage = [UInt8](repeating: 0, count: header + cpuid.count * MemoryLayout<kvm_cpuid_entry2>.stride)
        try storage.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: attributes, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: xfam, toByteOffset: 8, as: UInt64.self)
            for (offset, bytes) in [(16, mrConfigID), (64, mrOwner), (112, mrOwnerConfig)] {
                for (index, byte) in bytes.prefix(48).enumerated() { raw[offset + index] = byte }
            }
            raw.storeBytes(of: UInt32(cpuid.count), toByteOffset: 256, as: UInt32.self)
            for (index, entry) in cpuid.enumerated() {
                raw.storeBytes(of: entry, toByteOffset: header + index * MemoryLayout<kvm_cpuid_entry2>.stride,
                               as: kvm_cpuid_entry2.self)
            }
            return Result { () throws(KVMError) in
                try issue(.tdxInitVM, data: UInt64(UInt(bitPattern: raw.baseAddress)),
                          detail: "attributes \(hex(attributes)), xfam \(hex(xfam))")
            }
        }.get()
    }

    /// Initialises a vCPU of the TD with its initial RCX.
    ///
    /// The corresponding command is `KVM_TDX_INIT_VCPU` (vCPU).
    public func initVCPU(_ vcpu: VCPU, rcx: UInt64 = 0) throws(KVMError) {
        try issue(.tdxInitVCPU, on: vcpu, data: rcx, detail: "vCPU \(vcpu.id)")
    }

    /// Adds pages from a source buffer to the TD (TDH.MEM.PAGE.ADD), and with
    /// `measure` extends MRTD with their contents (sixteen TDH.MR.EXTEND per
    /// page). Returns what the kernel wrote back: 0 pages left on success.
    ///
    /// The kernel writes its progress back on success and on every error, so
    /// a thrown error carries `completedBytes` and, in `range`, what is left.
    ///
    /// The corresponding command is `KVM_TDX_INIT_MEM_REGION` (vCPU).
    /// - Throws: EINTR (resume from the error's range); EINVAL for a range
    ///   that is not private, unaligned, or after finalisation; EIO or EBUSY
    ///   from the TDX module.
    public func initMemRegion(_ region: TDXMemRegion, on vcpu: VCPU, measure: Bool) throws(KVMError) -> TDXMemRegion {
        var value = ckvm_tdx_init_mem_region(source_addr: region.sourceAddress, gpa: region.gpa,
                                             nr_pages: region.pageCount)
        let flags = measure ? UInt32(CKVM_TDX_MEASURE_MEMORY_REGION) : 0
        let result: Result<Void, KVMError> = withUnsafeMutablePointer(to: &value) { pointer in
            Result { () throws(KVMError) in
                try issue(.tdxInitMemRegion, on: vcpu, flags: flags, data: UInt64(UInt(bitPattern: pointer)),
                          range: region.range, detail: measure ? "MEASURE" : nil)
            }
        }
        let left = TDXMemRegion(sourceAddress: value.source_addr, gpa: value.gpa, pageCount: value.nr_pages)
        if case .failure(var error) = result {
            error.range = left.range
            error.completedBytes = (region.pageCount &- left.pageCount) &* pageSize
            throw error
        }
        return left
    }

    /// Closes MRTD and makes the TD runnable.
    ///
    /// The corresponding command is `KVM_TDX_FINALIZE_VM` (VM).
    /// - Throws: EBUSY when the TDX module asks for a retry.
    public func finalizeVM() throws(KVMError) {
        try issue(.tdxFinalizeVM, data: 0)
    }
}
