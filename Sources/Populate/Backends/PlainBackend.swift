import GuestMemfd
/// A default VM: memory stays shared, the host writes it through the
/// guest_memfd mapping, and nothing is measured or converted.
public final class PlainBackend: PopulationBackend {
    public let capabilities = PlatformCapabilities(
        platform: .plain, populatesInPlace: true, populatesFromSource: false, granularity: pageSize,
        measurement: .none, kinds: [.normal, .zero, .unmeasured])
    public var callName: String { "host write" }

    public init() {}

    public func makePrivate(_ range: GuestRange, inPlace: Bool) throws(KVMError) {}

    /// The contents are already in place: the host wrote them through the mapping.
    public func populate(_ call: PopulateCall) -> PopulateStep { PopulateStep(pagesDone: call.pages, error: nil) }

    public func finish() throws(KVMError) {}
}
