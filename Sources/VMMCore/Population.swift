import GuestMemfd
import Populate

/// One memslot of the guest: a guest-physical range and where it starts in
/// the guest_memfd (and so in the guest_memfd's mapping).
public struct MemorySlot: Equatable, Sendable {
    public var slot: UInt32
    public var range: GuestRange
    public var offset: UInt64

    /// The mapping offset of `address`, which the caller knows lies in `range`.
    func offset(of address: GuestPhysicalAddress) -> UInt64 { offset + (address.rawValue - range.start.rawValue) }
}

/// Why filling guest memory stopped before the guest could run.
public enum PopulateFailure: Error, CustomStringConvertible {
    /// The plan breaks a rule; nothing was written.
    case plan(PlanError)
    /// The population engine stopped; the error lists what was populated.
    case populate(PopulateError)
    /// A file the run writes (the ledger) could not be written.
    case file(path: String, reason: String)
    /// The emulated platform's launch failed.
    case engine(String)

    /// Wraps a population error, keeping an invalid plan apart.
    init(_ error: PopulateError) {
        if case .plan(let planError) = error.reason { self = .plan(planError) } else { self = .populate(error) }
    }

    /// Wraps a launch error; `context` says which launch, for errors before population.
    public init(_ error: LaunchError, context: String) {
        if case .population(let populateError) = error { self.init(populateError) } else { self = .engine("\(context): \(error)") }
    }

    public var description: String {
        switch self {
        case .plan(let error): error.description
        case .populate(let error): "populating guest memory: \(error)"
        case .file(let path, let reason): "writing '\(path)': \(reason)"
        case .engine(let reason): reason
        }
    }
}

extension Machine {
    /// Fills guest memory from `plan` for a guest with no confidential
    /// platform, through the population engine's plain backend: every
    /// region is written in place through the guest_memfd's shared mapping,
    /// its contents first and zeros after them, and nothing is measured.
    /// Memory outside the regions keeps the zeros guest_memfd starts with.
    ///
    /// - Throws: `.plan` before anything is written when the plan is
    ///   invalid, otherwise the engine's error naming the region and what
    ///   was written before it.
    @discardableResult
    public func populatePlain(_ plan: LaunchPlan) throws(PopulateFailure) -> PopulateResult {
        do {
            return try session.populate(plan)
        } catch {
            throw PopulateFailure(error, context: "populating guest memory")
        }
    }
}
