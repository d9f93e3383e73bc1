import GuestMemfd

/// A default VM: memory stays shared, the host writes it through the
/// guest_memfd mapping, and nothing is measured or converted.
public final class PlainBackend: PopulationBackend {
    public let capabilities = PlatformCapabilities(
        platform: .plain, privateMemory: false, populatesInPlace: true, populatesFromSource: false,
        kinds: [.normal, .zero, .unmeasured], finishCalls: 0)
    public var callName: String { "host write" }

    public init() {}

    public func makePrivate(_ range: GuestRange) throws(KVMError) {}

    /// The contents are already in place: the host wrote them through the mapping.
    public func populate(_ call: PopulateCall) -> PopulateStep { PopulateStep(pagesDone: call.pages) }

    public func finish() throws(KVMError) {}

    public func makeMeasurement() -> any LaunchMeasurer { NoMeasurement() }
}
