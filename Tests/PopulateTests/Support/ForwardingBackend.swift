import GuestMemfd
import Populate

/// A backend that forwards every operation to another one; subclasses look
/// at each population call, or change its source, before it goes on.
class ForwardingBackend: PopulationBackend {
    let base: any PopulationBackend

    init(_ base: any PopulationBackend) { self.base = base }

    /// Called before each population call reaches `base`.
    func willPopulate(_ call: PopulateCall) {}

    var capabilities: PlatformCapabilities { base.capabilities }
    var callName: String { base.callName }
    func makePrivate(_ range: GuestRange) throws(KVMError) { try base.makePrivate(range) }
    func classify(_ error: KVMError, in call: PopulateCall) -> CallFailure { base.classify(error, in: call) }
    func makeMeasurement() -> any LaunchMeasurer { base.makeMeasurement() }
    func describeCorrection(of call: PopulateCall, original: [UInt8], corrected: [UInt8]) -> String {
        base.describeCorrection(of: call, original: original, corrected: corrected)
    }
    func finish() throws(KVMError) { try base.finish() }

    func populate(_ call: PopulateCall) -> PopulateStep {
        willPopulate(call)
        return base.populate(call)
    }
}
