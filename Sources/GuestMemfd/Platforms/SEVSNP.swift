import CKVMHeaders

/// The state of one `KVM_SEV_SNP_LAUNCH_UPDATE`: what to populate, and after
/// a call, what the kernel says is left.
public struct SNPLaunchUpdate: Hashable, Sendable {
    public var gfnStart: UInt64
    /// The source buffer's address; ignored for ZERO pages.
    public var sourceAddress: UInt64
    /// Bytes left to populate.
    public var length: UInt64
    public var type: PageType

    public init(gfnStart: UInt64, sourceAddress: UInt64, length: UInt64, type: PageType) {
        self.gfnStart = gfnStart
        self.sourceAddress = sourceAddress
        self.length = length
        self.type = type
    }

    public var range: GuestRange { GuestRange(start: gfnStart &* pageSize, size: length) }
}

/// The arguments of `KVM_SEV_SNP_LAUNCH_FINISH`.
public struct SNPLaunchFinish: Sendable {
    /// The 96-byte ID block and 4096-byte ID authentication block, if any.
    public var idBlock: [UInt8]?
    public var idAuth: [UInt8]?
    public var authKeyEnabled: Bool
    public var vcekDisabled: Bool
    /// 32 bytes the host binds into every attestation report.
    public var hostData: [UInt8]

    public init(idBlock: [UInt8]? = nil, idAuth: [UInt8]? = nil, authKeyEnabled: Bool = false,
                vcekDisabled: Bool = false, hostData: [UInt8] = [UInt8](repeating: 0, count: 32)) {
        self.idBlock = idBlock
        self.idAuth = idAuth
        self.authKeyEnabled = authKeyEnabled
        self.vcekDisabled = vcekDisabled
        self.hostData = hostData
    }
}

/// The SEV-SNP sub-commands of `KVM_MEMORY_ENCRYPT_OP` on one SNP VM.
///
/// KVM hands the firmware commands to the SEV driver through an open
/// `/dev/sev` descriptor named in every `kvm_sev_cmd`, so this object opens
/// one (through the VM's kernel interface) and closes it when released.
public final class SEVSNP: Sendable {
    public let vm: VM
    /// The `/dev/sev` descriptor passed as `kvm_sev_cmd.sev_fd`.
    public let sevFD: CInt

    /// The SEV firmware device.
    public static let device = "/dev/sev"

    /// Opens the SEV device for `vm`.
    public init(vm: VM, sevDevice: String = SEVSNP.device) throws(KVMError) {
        self.vm = vm
        do {
            sevFD = try vm.kernel.open(sevDevice, flags: O_RDWR | O_CLOEXEC)
        } catch {
            throw KVMError(.syscall(.open), on: .vm, fd: vm.fd, errno: error, detail: sevDevice)
        }
    }

    deinit { try? vm.kernel.close(sevFD) }

    /// Issues `command` with `data` as its sub-command struct; returns the
    /// firmware status the kernel wrote into `kvm_sev_cmd.error`.
    private func issue<T>(
        _ command: EncryptCommand, data: inout T, range: GuestRange? = nil, detail: String? = nil
    ) throws(KVMError) {
        var cmd = ckvm_sev_cmd()
        cmd.id = command.id
        cmd.sev_fd = UInt32(bitPattern: sevFD)
        let result: Result<Void, Errno> = withUnsafeMutablePointer(to: &data) { pointer in
            cmd.data = UInt64(UInt(bitPattern: pointer))
            return withUnsafeMutablePointer(to: &cmd) { cmdPointer in
                Result { () throws(Errno) in try vm.memoryEncryptOp(UnsafeMutableRawPointer(cmdPointer)) }
            }
        }
        if case .failure(let errno) = result {
            throw KVMError(.encryptOp(command), on: .vm, fd: vm.fd, errno: errno, range: range, detail: detail,
                           firmwareError: cmd.error == 0 ? nil : UInt64(cmd.error))
        }
    }

    /// Initialises the VM as SEV-SNP with the given VMSA features.
    ///
    /// The corresponding command is `KVM_SEV_INIT2`.
    /// - Throws: EINVAL on a VM that is not SEV/SEV-ES/SNP, already
    ///   initialised, with vCPUs, or for unsupported features or GHCB version.
    public func init2(vmsaFeatures: UInt64 = 0, ghcbVersion: UInt16 = 0) throws(KVMError) {
        var data = ckvm_sev_init()
        data.vmsa_features = vmsaFeatures
        data.ghcb_version = ghcbVersion
        try issue(.sevInit2, data: &data, detail: "vmsa_features \(hex(vmsaFeatures)), ghcb_version \(ghcbVersion)")
    }

    /// Creates the firmware launch context with a guest policy.
    ///
    /// The corresponding command is `KVM_SEV_SNP_LAUNCH_START`.
    /// - Throws: EINVAL for a policy bit KVM does not accept (bit 17 must be
    ///   set) or a launch already started; ENOTTY on a VM that is not SNP.
    public func launchStart(policy: UInt64, gosvw: [UInt8] = []) throws(KVMError) {
        var data = ckvm_sev_snp_launch_start()
        data.policy = policy
        withUnsafeMutableBytes(of: &data.gosvw) { raw in
            for (index, byte) in gosvw.prefix(16).enumerated() { raw[index] = byte }
        }
        try issue(.snpLaunchStart, data: &data, detail: "policy \(hex(policy))")
    }

    /// Issues one launch update and returns what the kernel wrote back: the
    /// range and source still to do (length 0 when the call finished it).
    ///
    /// The range must already be private. The kernel stops early at the end
    /// of a memslot, at a signal, or at a failure after the first page, so
    /// callers loop on the returned state.
    ///
    /// The corresponding command is `KVM_SEV_SNP_LAUNCH_UPDATE`.
    /// - Throws: EIO when the first page fails (not private, already
    ///   populated, bad source, or a firmware error in `firmwareError`; for a
    ///   CPUID page rejected with INVALID_PARAM the firmware's corrected page
    ///   has been copied over the source); EINVAL for bad arguments.
    public func launchUpdate(_ update: SNPLaunchUpdate) throws(KVMError) -> SNPLaunchUpdate {
        var data = ckvm_sev_snp_launch_update()
        data.gfn_start = update.gfnStart
        data.uaddr = update.sourceAddress
        data.len = update.length
        data.type = update.type.rawValue
        try issue(.snpLaunchUpdate, data: &data, range: update.range, detail: "type \(update.type)")
        return SNPLaunchUpdate(gfnStart: data.gfn_start, sourceAddress: data.uaddr, length: data.len, type: update.type)
    }

    /// Measures every vCPU's VMSA and closes the launch; the guest can run afterwards.
    ///
    /// The corresponding command is `KVM_SEV_SNP_LAUNCH_FINISH`.
    public func launchFinish(_ finish: SNPLaunchFinish = SNPLaunchFinish()) throws(KVMError) {
        var idBlock = finish.idBlock ?? []
        var idAuth = finish.idAuth ?? []
        var data = ckvm_sev_snp_launch_finish()
        data.auth_key_en = finish.authKeyEnabled ? 1 : 0
        data.vcek_disabled = finish.vcekDisabled ? 1 : 0
        withUnsafeMutableBytes(of: &data.host_data) { raw in
            for (index, byte) in finish.hostData.prefix(32).enumerated() { raw[index] = byte }
        }
        let result: Result<Void, KVMError> = idBlock.withUnsafeMutableBytes { block in
            idAuth.withUnsafeMutableBytes { auth in
                if finish.idBlock != nil {
                    data.id_block_en = 1
                    data.id_block_uaddr = UInt64(UInt(bitPattern: block.baseAddress))
                    data.id_auth_uaddr = UInt64(UInt(bitPattern: auth.baseAddress))
                }
                return Result { () throws(KVMError) in try issue(.snpLaunchFinish, data: &data) }
            }
        }
        try result.get()
    }
}

extension SNPLaunchUpdate {
    /// The type of the pages one launch update populates (`KVM_SEV_SNP_PAGE_TYPE_*`).
    public struct PageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        public static let normal = PageType(rawValue: UInt8(CKVM_SEV_SNP_PAGE_TYPE_NORMAL))
        /// Measured by KVM itself at launch finish; never passed to launch update.
        public static let vmsa = PageType(rawValue: UInt8(CKVM_SEV_SNP_PAGE_TYPE_VMSA))
        public static let zero = PageType(rawValue: UInt8(CKVM_SEV_SNP_PAGE_TYPE_ZERO))
        public static let unmeasured = PageType(rawValue: UInt8(CKVM_SEV_SNP_PAGE_TYPE_UNMEASURED))
        public static let secrets = PageType(rawValue: UInt8(CKVM_SEV_SNP_PAGE_TYPE_SECRETS))
        public static let cpuid = PageType(rawValue: UInt8(CKVM_SEV_SNP_PAGE_TYPE_CPUID))

        public var description: String {
            switch self {
            case .normal: "NORMAL"
            case .vmsa: "VMSA"
            case .zero: "ZERO"
            case .unmeasured: "UNMEASURED"
            case .secrets: "SECRETS"
            case .cpuid: "CPUID"
            default: "type \(rawValue)"
            }
        }
    }
}
