/// A page the platform measured, and the measurement after it.
public struct MeasuredPage: Hashable, Sendable {
    public var gpa: UInt64
    /// The platform's page type or operation ("NORMAL", "VMSA", "PAGE.ADD", "DATA_CREATE").
    public var kind: String
    public var measurement: [UInt8]

    public init(gpa: UInt64, kind: String, measurement: [UInt8]) {
        self.gpa = gpa
        self.kind = kind
        self.measurement = measurement
    }
}

/// Something that can tell what the platform itself measured for one VM.
///
/// Real hardware tells the host nothing: the measurement reaches a verifier
/// in the guest's attestation report. A test double of the platform can
/// (KVMFake's `FakeKVM.observer(of:)`); a test installs one in Populate's
/// options so that a population whose expected measurement differs from
/// the platform's fails, naming the first page where the two diverge.
public protocol LaunchMeasurementObserver: AnyObject, Sendable {
    /// The launch measurement so far, or nil where the VM has none.
    func launchMeasurement() -> [UInt8]?
    /// The measurement after each page, in the order the platform measured them.
    func measuredPages() -> [MeasuredPage]
}
