import CKVMHeaders
import GuestMemfd
import LaunchMeasurement

/// A platform's launch measurement as the engine computes it, fed one page
/// at a time in the order the platform measures them. Each backend makes
/// its own (`PopulationBackend.makeMeasurement()`); the engine only feeds it.
public protocol LaunchMeasurer: AnyObject {
    var algorithm: MeasurementAlgorithm { get }

    /// The ledger's name for pages of `kind` ("NORMAL", "PAGE.ADD+MR.EXTEND").
    func ledgerType(of kind: PageKind) -> String

    /// Adds one page the platform has just populated. `contents` are its
    /// bytes where the host made them (none for a page the firmware fills),
    /// `sha384` their SHA-384 for a `.normal` page.
    func add(gpa: UInt64, kind: PageKind, contents: UnsafeRawBufferPointer?, sha384: [UInt8]?) throws(MeasurementInputError)

    /// The measurement after the last page, where the platform keeps one page by page.
    var current: [UInt8]? { get }

    /// Adds what the platform measures when the launch finishes (the SNP
    /// VMSAs; TDX closes MRTD) and returns its ledger records.
    func finishLaunch() throws(KVMError) -> [LedgerRecord]

    /// Adds what the platform measures when the guest first runs (the CCA
    /// boot REC) and returns its ledger records.
    func firstRun() throws(KVMError) -> [LedgerRecord]

    /// The measurement after each page so far, as the platform would log it.
    var pageLog: [MeasuredPage] { get }
}

/// A page the measurement cannot take: the platform would refuse it.
public struct MeasurementInputError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A default VM's: nothing is measured.
public final class NoMeasurement: LaunchMeasurer {
    public init() {}
    public var algorithm: MeasurementAlgorithm { .none }
    public func ledgerType(of kind: PageKind) -> String { kind.rawValue }
    public func add(gpa: UInt64, kind: PageKind, contents: UnsafeRawBufferPointer?, sha384: [UInt8]?) throws(MeasurementInputError) {}
    public var current: [UInt8]? { nil }
    public func finishLaunch() throws(KVMError) -> [LedgerRecord] { [] }
    public func firstRun() throws(KVMError) -> [LedgerRecord] { [] }
    public var pageLog: [MeasuredPage] { [] }
}

/// The SEV-SNP launch digest: PAGE_INFO chained page by page, then one VMSA
/// per vCPU at launch finish, built from the vCPU's registers as KVM builds it.
public final class SNPMeasurement: LaunchMeasurer {
    private var digest = SNPLaunchDigest()
    private let vmsas: () throws(KVMError) -> [[UInt8]]
    public private(set) var pageLog: [MeasuredPage] = []

    /// - Parameter vmsas: the VMSA pages KVM will measure at launch finish, in vCPU order.
    public init(vmsas: @escaping () throws(KVMError) -> [[UInt8]]) {
        self.vmsas = vmsas
    }

    public var algorithm: MeasurementAlgorithm { .snpLaunchDigest }
    public func ledgerType(of kind: PageKind) -> String { kind.snpPageType.description }
    public var current: [UInt8]? { digest.value.bytes }

    public func add(gpa: UInt64, kind: PageKind, contents: UnsafeRawBufferPointer?, sha384: [UInt8]?) throws(MeasurementInputError) {
        let type = kind.snpPageType
        var hash: SHA384Digest?
        if type == .normal {
            if let sha384 {
                hash = SHA384Digest(bytes: sha384)
            } else if let contents, contents.count == Int(pageSize) {
                hash = SHA384.hash(contents)
            } else {
                throw MeasurementInputError("the NORMAL page at \(GuestPhysicalAddress(gpa)) has no contents to measure")
            }
        }
        digest.addPage(gpa: gpa, type: type, contentsDigest: hash)
        pageLog.append(MeasuredPage(gpa: gpa, kind: type.description, measurement: digest.value.bytes))
    }

    public func finishLaunch() throws(KVMError) -> [LedgerRecord] {
        let pages = try vmsas()
        var hashes: [[UInt8]] = []
        for page in pages {
            let hash = SHA384.hash(page)
            hashes.append(hash.bytes)
            digest.addPage(gpa: SNPLaunchDigest.vmsaGPA, type: .vmsa, contentsDigest: hash)
            pageLog.append(MeasuredPage(gpa: SNPLaunchDigest.vmsaGPA, kind: "VMSA", measurement: digest.value.bytes))
        }
        return [LedgerRecord(call: "SNP_LAUNCH_FINISH", gpa: SNPLaunchDigest.vmsaGPA, pages: UInt64(pages.count),
                             type: "VMSA", pageHashes: hashes, digest: digest.value.bytes)]
    }

    public func firstRun() throws(KVMError) -> [LedgerRecord] { [] }
}

/// TDX MRTD: TDH.MEM.PAGE.ADD for every page, TDH.MR.EXTEND for measured
/// ones, closed by TDH.MR.FINALIZE at KVM_TDX_FINALIZE_VM.
public final class TDXMeasurementAccumulator: LaunchMeasurer {
    private var mrtd: TDXMeasurement? = TDXMeasurement()
    private var final: [UInt8]?

    public init() {}
    public var algorithm: MeasurementAlgorithm { .tdxMRTD }
    public func ledgerType(of kind: PageKind) -> String { kind == .normal ? "PAGE.ADD+MR.EXTEND" : "PAGE.ADD" }
    /// MRTD is one hash; it has a value only once finalised.
    public var current: [UInt8]? { final }
    public var pageLog: [MeasuredPage] { [] }

    public func add(gpa: UInt64, kind: PageKind, contents: UnsafeRawBufferPointer?, sha384: [UInt8]?) throws(MeasurementInputError) {
        guard mrtd != nil else { throw MeasurementInputError("MRTD is already finalised") }
        do {
            try mrtd!.addPage(gpa: gpa, contents: contents, measure: kind == .normal)
        } catch {
            throw MeasurementInputError(error.description)
        }
    }

    public func finishLaunch() throws(KVMError) -> [LedgerRecord] {
        if let mrtd = mrtd.take() { final = mrtd.finalize().bytes }
        return []
    }

    public func firstRun() throws(KVMError) -> [LedgerRecord] { [] }
}

/// The Arm CCA realm initial measurement: RMI_REALM_CREATE's parameters,
/// RMI_DATA_CREATE for every populated granule, and, when the realm first
/// runs, the boot REC (vCPU 0, the only runnable one).
public final class CCAMeasurementAccumulator: LaunchMeasurer {
    private var rim: CCARealmMeasurement
    private let bootREC: () throws(KVMError) -> CCARecEntry
    public private(set) var pageLog: [MeasuredPage] = []

    public init(parameters: CCARealmParameters, bootREC: @escaping () throws(KVMError) -> CCARecEntry) {
        rim = CCARealmMeasurement(parameters: parameters)
        self.bootREC = bootREC
    }

    public var algorithm: MeasurementAlgorithm { .ccaRealmInitialMeasurement }
    public func ledgerType(of kind: PageKind) -> String { kind == .normal ? "DATA_MEASURED" : "DATA_UNMEASURED" }
    public var current: [UInt8]? { rim.rim }

    public func add(gpa: UInt64, kind: PageKind, contents: UnsafeRawBufferPointer?, sha384: [UInt8]?) throws(MeasurementInputError) {
        do {
            try rim.dataCreate(ipa: gpa, contents: contents, measure: kind == .normal)
        } catch {
            throw MeasurementInputError(error.description)
        }
        pageLog.append(MeasuredPage(gpa: gpa, kind: "DATA_CREATE", measurement: rim.rim))
    }

    public func finishLaunch() throws(KVMError) -> [LedgerRecord] { [] }

    public func firstRun() throws(KVMError) -> [LedgerRecord] {
        let entry = try bootREC()
        rim.recCreate(pc: entry.pc, gprs: entry.gprs, runnable: true)
        pageLog.append(MeasuredPage(gpa: 0, kind: "REC", measurement: rim.rim))
        return [LedgerRecord(call: "RMI_REC_CREATE", gpa: 0, pages: 0, type: "REC", pageHashes: [], digest: rim.rim)]
    }
}

/// The state a realm's boot REC starts in: the PC and X0 to X7, which the
/// RMM measures (RmiRecParams).
///
/// GuestMemfd's vCPUs carry the x86 register file only; until they have
/// arm64's KVM_SET_ONE_REG, a realm vCPU's entry state travels in it: PC in
/// RIP, and X0 to X7 in RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP.
public struct CCARecEntry: Sendable, Equatable {
    public var pc: UInt64
    public var gprs: [UInt64]

    public init(pc: UInt64, gprs: [UInt64] = []) {
        self.pc = pc
        self.gprs = Array((gprs + [UInt64](repeating: 0, count: 8)).prefix(8))
    }

    public init(regs: kvm_regs) {
        self.init(pc: regs.rip, gprs: [regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp, regs.rbp])
    }

    /// `regs` with this entry state written into it.
    public func applied(to regs: kvm_regs) -> kvm_regs {
        var regs = regs
        regs.rip = pc
        (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (gprs[0], gprs[1], gprs[2], gprs[3])
        (regs.rsi, regs.rdi, regs.rsp, regs.rbp) = (gprs[4], gprs[5], gprs[6], gprs[7])
        return regs
    }
}
