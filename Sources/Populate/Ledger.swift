import LaunchMeasurement
import GuestMemfd
/// One launch operation as data: enough, with the others, for a verifier to
/// recompute the launch measurement without trusting this process.
public struct LedgerRecord: Sendable, Equatable {
    /// The platform call ("SNP_LAUNCH_UPDATE", "TDX_INIT_MEM_REGION",
    /// "RMI_POPULATE", "SNP_LAUNCH_FINISH", "host write") or
    /// "LAUNCH_MEASUREMENT" for the final record.
    public var call: String
    public var gpa: UInt64
    public var pages: UInt64
    /// The page type: an SNP type name, "PAGE.ADD"/"PAGE.ADD+MR.EXTEND", "DATA", or a kind.
    public var type: String
    /// SHA-384 of each page whose contents the platform measures, in order,
    /// whatever hash the platform's own measurement uses.
    public var pageHashes: [[UInt8]]
    /// The running measurement after this operation, where the platform keeps
    /// one (the SNP launch digest, the CCA RIM); MRTD is one hash and has none.
    public var digest: [UInt8]?

    public init(call: String, gpa: UInt64, pages: UInt64, type: String, pageHashes: [[UInt8]], digest: [UInt8]?) {
        self.call = call
        self.gpa = gpa
        self.pages = pages
        self.type = type
        self.pageHashes = pageHashes
        self.digest = digest
    }

    /// The record as one JSON object.
    public var json: String {
        var fields = [
            "\"call\":\"\(call)\"", "\"gpa\":\"0x\(String(gpa, radix: 16))\"", "\"pages\":\(pages)",
            "\"type\":\"\(type)\"", "\"page_hashes\":[\(pageHashes.map { "\"\(Hex.encode($0))\"" }.joined(separator: ","))]",
        ]
        fields.append("\"digest\":" + (digest.map { "\"\(Hex.encode($0))\"" } ?? "null"))
        return "{" + fields.joined(separator: ",") + "}"
    }
}

/// Every launch operation of one population, in order, and the measurement.
public struct Ledger: Sendable, Equatable {
    public var platform: Platform
    public var algorithm: MeasurementAlgorithm
    public var records: [LedgerRecord] = []
    /// The launch measurement computed from the plan.
    public var measurement: [UInt8]?

    /// JSON lines: one object per operation, then one with the measurement.
    public var jsonLines: String {
        var lines = records.map(\.json)
        let measured = measurement.map { "\"\(Hex.encode($0))\"" } ?? "null"
        lines.append("{\"call\":\"LAUNCH_MEASUREMENT\",\"platform\":\"\(platform.rawValue)\",\"algorithm\":\"\(algorithm.rawValue)\",\"measurement\":\(measured)}")
        return lines.joined(separator: "\n") + "\n"
    }
}
