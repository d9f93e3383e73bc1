/// A status code the AMD SEV firmware returns, as KVM passes it back in
/// `kvm_sev_cmd.error` (`enum sev_ret_code`, include/uapi/linux/psp-sev.h;
/// SEV-SNP firmware ABI, "Status Codes").
public struct SEVFirmwareStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let success = SEVFirmwareStatus(rawValue: 0x00)
    public static let invalidPlatformState = SEVFirmwareStatus(rawValue: 0x01)
    public static let invalidGuestState = SEVFirmwareStatus(rawValue: 0x02)
    public static let invalidConfig = SEVFirmwareStatus(rawValue: 0x03)
    public static let invalidLength = SEVFirmwareStatus(rawValue: 0x04)
    public static let policyFailure = SEVFirmwareStatus(rawValue: 0x07)
    public static let inactive = SEVFirmwareStatus(rawValue: 0x08)
    public static let invalidAddress = SEVFirmwareStatus(rawValue: 0x09)
    public static let badSignature = SEVFirmwareStatus(rawValue: 0x0A)
    public static let badMeasurement = SEVFirmwareStatus(rawValue: 0x0B)
    public static let invalidCommand = SEVFirmwareStatus(rawValue: 0x11)
    public static let unsupported = SEVFirmwareStatus(rawValue: 0x15)
    /// Among others, a CPUID page whose values the firmware does not accept;
    /// it then writes the values it would accept back into the page.
    public static let invalidParam = SEVFirmwareStatus(rawValue: 0x16)
    public static let resourceLimit = SEVFirmwareStatus(rawValue: 0x17)
    public static let invalidPageSize = SEVFirmwareStatus(rawValue: 0x19)
    public static let invalidPageState = SEVFirmwareStatus(rawValue: 0x1A)
    public static let invalidPageOwner = SEVFirmwareStatus(rawValue: 0x1C)

    private static let names: [UInt32: String] = [
        0x00: "SUCCESS", 0x01: "INVALID_PLATFORM_STATE", 0x02: "INVALID_GUEST_STATE", 0x03: "INVALID_CONFIG",
        0x04: "INVALID_LENGTH", 0x05: "ALREADY_OWNED", 0x06: "INVALID_CERTIFICATE", 0x07: "POLICY_FAILURE",
        0x08: "INACTIVE", 0x09: "INVALID_ADDRESS", 0x0A: "BAD_SIGNATURE", 0x0B: "BAD_MEASUREMENT",
        0x0C: "ASID_OWNED", 0x0D: "INVALID_ASID", 0x0E: "WBINVD_REQUIRED", 0x0F: "DFFLUSH_REQUIRED",
        0x10: "INVALID_GUEST", 0x11: "INVALID_COMMAND", 0x12: "ACTIVE", 0x13: "HWERROR_PLATFORM",
        0x14: "HWERROR_UNSAFE", 0x15: "UNSUPPORTED", 0x16: "INVALID_PARAM", 0x17: "RESOURCE_LIMIT",
        0x18: "SECURE_DATA_INVALID", 0x19: "INVALID_PAGE_SIZE", 0x1A: "INVALID_PAGE_STATE",
        0x1B: "INVALID_MDATA_ENTRY", 0x1C: "INVALID_PAGE_OWNER", 0x1D: "AEAD_OFLOW", 0x20: "RMP_INIT_REQUIRED",
        0x21: "BAD_SVN", 0x22: "BAD_VERSION", 0x23: "SHUTDOWN_REQUIRED", 0x24: "UPDATE_FAILED",
        0x25: "RESTORE_REQUIRED",
    ]

    /// The code's name with its number, "INVALID_PARAM (0x16)".
    public var description: String {
        "\(Self.names[rawValue] ?? "status") (0x\(String(rawValue, radix: 16)))"
    }
}

extension KVMError {
    /// The SEV firmware's status, for a failed SEV command that reached the firmware.
    public var sevStatus: SEVFirmwareStatus? {
        guard case .encryptOp(let command) = operation, command.isSEV, let firmwareError else { return nil }
        return SEVFirmwareStatus(rawValue: UInt32(truncatingIfNeeded: firmwareError))
    }
}

extension EncryptCommand {
    /// The command belongs to KVM's SEV interface (as opposed to TDX's).
    public var isSEV: Bool {
        switch self {
        case .sevInit2, .snpLaunchStart, .snpLaunchUpdate, .snpLaunchFinish: true
        default: false
        }
    }
}
