#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd

/// What this host's kernel offers for RMPOPT, and why not where it offers nothing.
///
/// The RMPOPT series (unmerged) shows the per-CPU tables in
/// the debugfs file `rmpopt/rmpopt-table`, one line per 1 GiB region,
/// "Memory @NGB: CPU(s): ..." listing the CPUs that have it optimised. Its
/// v1 also had a configfs knob to trigger a re-optimisation; v2 dropped it.
/// Both are looked for.
public struct RMPOPTHostStatus {
    /// One region of the debugfs table.
    public struct Row {
        public var gigabyte: Int
        public var cpus: [Int]
    }

    var snpHost: Bool
    var snpEvidence: String
    var rmpoptFlag: Bool
    var debugfsMount: String?
    var tablePath: String
    var tableState: String
    var rows: [Row] = []
    var unparsed: [String] = []
    var configfsMount: String?
    var knobPath: String
    var knobState: String
    var knobEntries: [String] = []

    var available: Bool { !rows.isEmpty || !unparsed.isEmpty || !knobEntries.isEmpty }

    /// Why the table is absent, most fundamental cause first.
    var reasons: [String] {
        guard rows.isEmpty && unparsed.isEmpty else { return [] }
        var reasons: [String] = []
        if !snpHost { reasons.append("this is not an SEV-SNP host (\(snpEvidence))") }
        if !rmpoptFlag {
            reasons.append("the kernel reports no rmpopt CPU flag: the CPU lacks RMPOPT or the kernel lacks the RMPOPT series")
        }
        reasons.append("debugfs table: \(tableState)")
        if knobEntries.isEmpty { reasons.append("configfs knob (v1 of the series): \(knobState)") }
        return reasons
    }

    static let tableRelativePath = "rmpopt/rmpopt-table"
    static let knobRelativePath = "rmpopt"

    public static func probe() -> RMPOPTHostStatus {
        let mounts = readText("/proc/mounts") ?? ""
        func mountPoint(_ type: String) -> String? {
            mounts.split(separator: "\n").map { $0.split(separator: " ") }.first { $0.count > 2 && $0[2] == type }
                .map { String($0[1]) }
        }
        let cpuFlags = Set((readText("/proc/cpuinfo") ?? "").split(separator: "\n")
            .first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
        let kvmAMD = readText("/sys/module/kvm_amd/parameters/sev_snp")?.trimmingWhitespace
        let snpHost = cpuFlags.contains("sev_snp") && kvmAMD == "Y"
        let evidence = !cpuFlags.contains("sev_snp") ? "no sev_snp flag in /proc/cpuinfo"
            : kvmAMD == nil ? "kvm_amd is not loaded" : "kvm_amd's sev_snp parameter is \(kvmAMD!)"

        let debugfs = mountPoint("debugfs")
        let tablePath = (debugfs ?? "/sys/kernel/debug") + "/" + tableRelativePath
        var status = RMPOPTHostStatus(snpHost: snpHost, snpEvidence: evidence, rmpoptFlag: cpuFlags.contains("rmpopt"),
                                      debugfsMount: debugfs, tablePath: tablePath, tableState: "",
                                      knobPath: "", knobState: "")
        if debugfs == nil {
            status.tableState = "debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)"
        } else {
            switch readFile(tablePath) {
            case .success(let text):
                status.tableState = "read"
                for line in text.split(separator: "\n") {
                    if let row = parseRow(String(line)) { status.rows.append(row) } else { status.unparsed.append(String(line)) }
                }
            case .failure(let errno) where errno == .noSuchFileOrDirectory:
                status.tableState = "\(tablePath) does not exist: the kernel lacks the RMPOPT series, or RMPOPT is not enabled"
            case .failure(let errno) where errno == .permissionDenied:
                status.tableState = "\(tablePath) is not readable by this user (EACCES); debugfs needs root"
            case .failure(let errno):
                status.tableState = "\(tablePath) could not be read: \(errno)"
            }
        }
        let configfs = mountPoint("configfs")
        status.configfsMount = configfs
        status.knobPath = (configfs ?? "/sys/kernel/config") + "/" + knobRelativePath
        if configfs == nil {
            status.knobState = "configfs is not mounted"
        } else if let entries = listDirectory(status.knobPath) {
            status.knobEntries = entries
            status.knobState = "present"
        } else {
            status.knobState = "\(status.knobPath) does not exist (later revisions of the series have no configfs knob)"
        }
        return status
    }

    /// "Memory @12GB: CPU(s): 0-3,8" → region 12, CPUs [0, 1, 2, 3, 8]; "none" or nothing → no CPU.
    public static func parseRow(_ line: String) -> Row? {
        let parts = line.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let at = parts[0].firstIndex(of: "@") else { return nil }
        let label = parts[0][parts[0].index(after: at)...].trimmingWhitespace
        let rest = parts[1].trimmingWhitespace
        guard label.hasSuffix("GB"), let gigabyte = Int(label.dropLast(2)), rest.hasPrefix("CPU(s):") else { return nil }
        let list = rest.dropFirst("CPU(s):".count).trimmingWhitespace
        if list.isEmpty || list == "none" { return Row(gigabyte: gigabyte, cpus: []) }
        var cpus: [Int] = []
        for part in list.split(separator: ",") {
            let bounds = part.split(separator: "-").map { Int($0.trimmingWhitespace) }
            if bounds.count == 1, let cpu = bounds[0] {
                cpus.append(cpu)
            } else if bounds.count == 2, let low = bounds[0], let high = bounds[1], low <= high {
                cpus.append(contentsOf: low...high)
            } else {
                return nil
            }
        }
        return Row(gigabyte: gigabyte, cpus: cpus)
    }

    public var text: String {
        var lines = ["RMPOPT on this host",
                     "  SEV-SNP host          " + (snpHost ? "yes" : "no (\(snpEvidence))"),
                     "  rmpopt CPU flag       " + (rmpoptFlag ? "yes" : "no"),
                     "  debugfs table         " + (rows.isEmpty && unparsed.isEmpty ? "absent: \(tableState)" : tablePath),
                     "  configfs knob (v1)    " + (knobEntries.isEmpty ? "absent: \(knobState)"
                                                  : "\(knobPath): \(knobEntries.joined(separator: ", "))")]
        if !rows.isEmpty {
            let cpus = rows.map(\.cpus.count).max() ?? 0
            lines.append("  " + "region".padding(12) + "CPUs with the region optimised")
            for row in rows {
                lines.append("  " + "@\(row.gigabyte)GB".padding(12) + "\(row.cpus.count)/\(cpus) "
                             + (row.cpus.isEmpty ? "(none)" : "(\(cpuList(row.cpus)))"))
            }
        }
        for line in unparsed { lines.append("  table: \(line)") }
        if rows.isEmpty && unparsed.isEmpty {
            lines.append("RMPOPT status is not available here: \(reasons.first ?? "no table")")
        }
        return lines.joined(separator: "\n")
    }

    public var json: String {
        let rowText = rows.map { "{\"index\":\($0.gigabyte),\"address\":\(UInt64($0.gigabyte) << 30),"
            + "\"optimized_cpus\":[\($0.cpus.map(String.init).joined(separator: ","))]}" }
        return "{\"source\":\"host\",\"available\":\(available),\"snp_host\":\(snpHost),\"rmpopt_cpu_flag\":\(rmpoptFlag),"
            + "\"debugfs\":{\"mounted\":\(debugfsMount != nil),\"path\":\(jsonString(tablePath)),"
            + "\"present\":\(!rows.isEmpty || !unparsed.isEmpty),\"state\":\(jsonString(tableState))},"
            + "\"configfs\":{\"mounted\":\(configfsMount != nil),\"path\":\(jsonString(knobPath)),"
            + "\"present\":\(!knobEntries.isEmpty),\"entries\":[\(knobEntries.map(jsonString).joined(separator: ","))],"
            + "\"state\":\(jsonString(knobState))},"
            + "\"reasons\":[\(reasons.map(jsonString).joined(separator: ","))],"
            + "\"regions\":[\(rowText.joined(separator: ","))],\"unparsed\":[\(unparsed.map(jsonString).joined(separator: ","))]}"
    }

    /// [0, 1, 2, 3, 8] → "0-3,8".
    func cpuList(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var index = 0
        while index < cpus.count {
            var end = index
            while end + 1 < cpus.count, cpus[end + 1] == cpus[end] + 1 { end += 1 }
            parts.append(end > index ? "\(cpus[index])-\(cpus[end])" : "\(cpus[index])")
            index = end + 1
        }
        return parts.joined(separator: ",")
    }

    static func readText(_ path: String) -> String? {
        if case .success(let text) = readFile(path) { return text }
        return nil
    }

    /// A whole file as text, or the errno that stopped it.
    static func readFile(_ path: String) -> Result<String, Errno> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(Errno(rawValue: errno)) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return .failure(Errno(rawValue: errno))
            }
            if count == 0 { break }
            bytes += buffer[0..<count]
        }
        return .success(String(decoding: bytes, as: UTF8.self))
    }

    static func listDirectory(_ path: String) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
