import LaunchMeasurement
import GuestMemfd
/// Why a population stopped, and exactly how far it got.
public struct PopulateError: Error, Sendable, CustomStringConvertible {
    public enum Reason: Sendable {
        /// The plan was rejected before any ioctl.
        case plan(PlanError)
        /// The requested policy is one the platform cannot follow.
        case policy(String)
        /// A region's contents could not be read or placed.
        case contents(String)
        /// A kernel call failed.
        case kernel(KVMError)
        /// A call returned success without doing anything.
        case noProgress(call: String, gpa: UInt64)
        /// The firmware refused a page's contents and said what it would accept
        /// (an SNP CPUID page), and the caller did not opt in to its values.
        case firmwareCorrected(KVMError, corrections: String)
        /// The platform's measurement differs from the one computed from the plan.
        case measurementMismatch(expected: [UInt8], reported: [UInt8], firstDivergingPage: UInt64?)
    }

    public var reason: Reason
    /// The plan region being populated when it stopped.
    public var region: String?
    /// Ranges made private so far (their previous contents are gone from the host's view).
    public var madePrivate: [GuestRange] = []
    /// Ranges populated so far, including the part of the failing region the kernel reported done.
    public var populated: [GuestRange] = []
    /// The first guest-physical address not populated, where the failure was inside a region.
    public var nextGPA: UInt64?

    public init(_ reason: Reason) { self.reason = reason }

    /// The KVM error behind the failure, if a kernel call failed.
    public var kernelError: KVMError? {
        switch reason {
        case .kernel(let error), .firmwareCorrected(let error, _): error
        default: nil
        }
    }

    public var description: String {
        var text: String
        switch reason {
        case .plan(let error): return error.description
        case .policy(let why): return why
        case .contents(let why): text = why
        case .kernel(let error): text = error.description
        case .firmwareCorrected(let error, let corrections):
            text = "\(error); \(corrections.replacingNewlines); set PopulateOptions.acceptCorrectedPages to populate with the firmware's values"
        case .noProgress(let call, let gpa):
            text = "\(call) at \(GuestPhysicalAddress(gpa)) returned success without populating anything"
        case .measurementMismatch(let expected, let reported, let page):
            text = "the platform's launch measurement \(Hex.encode(reported)) differs from the plan's \(Hex.encode(expected))"
            if let page { text += "; the first diverging page is at \(GuestPhysicalAddress(page))" }
        }
        if let region { text = "region '\(region)': " + text }
        text += "; populated: " + (populated.isEmpty ? "nothing" : populated.map(\.description).joined(separator: ", "))
        if let nextGPA { text += "; next page \(GuestPhysicalAddress(nextGPA))" }
        if !madePrivate.isEmpty { text += "; made private: " + madePrivate.map(\.description).joined(separator: ", ") }
        return text
    }
}

extension String {
    /// The text on one line, its lines joined with "; ".
    var replacingNewlines: String { split(separator: "\n").joined(separator: "; ") }
}
