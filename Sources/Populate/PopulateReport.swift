import GuestMemfd
/// What a population did, for the host: pages per kind, calls, bytes, units, retries and time.
public struct PopulateReport: Sendable, Equatable, CustomStringConvertible {
    public var platform: Platform
    public var policy: PopulationPolicy
    public var pagesByKind: [PageKind: UInt64] = [:]
    /// ioctls issued: conversions, population calls and the finish.
    public var ioctls = 0
    /// Bytes written through mappings or copied into source buffers.
    public var bytesCopied: UInt64 = 0
    /// Whole 2 MiB-aligned runs the plan populates as units (the firmware
    /// can keep them as 2 MiB entries), and the 4 KiB pages outside them.
    public var hugeUnits: UInt64 = 0
    public var smallPages: UInt64 = 0
    /// Calls sent again for what an interrupted or short call left (EINTR,
    /// EAGAIN, a signal part-way), and CPUID corrections.
    public var retries = 0
    /// Seconds per phase, in the order they run for a region: validate the
    /// plan; read the region's contents; measure (hash the pages the
    /// platform measures by content); fill (write in place, or copy into a
    /// source buffer); convert to private; populate (the platform's calls);
    /// finish; and pre-fault, where `Populator.prePopulate(vcpu:report:)` ran.
    public var phaseSeconds: [String: Double] = [:]
    /// Bytes each phase handled; with `phaseSeconds`, its rate.
    public var phaseBytes: [String: UInt64] = [:]

    /// The phases, in the order they run.
    public static let phases = ["validate", "read", "measure", "fill", "convert", "populate", "finish", "pre-fault"]

    /// GiB per second through `phase`, where it handled bytes and took measurable time.
    public func gibPerSecond(_ phase: String) -> Double? {
        guard let bytes = phaseBytes[phase], bytes > 0, let seconds = phaseSeconds[phase], seconds > 0 else { return nil }
        return Double(bytes) / Double(1 << 30) / seconds
    }
    /// How guest memory was faulted in ahead of the guest, if it was.
    public var prePopulation: String?
    /// The host pages backing guest memory, and why not those asked for.
    public var backing: String?

    mutating func countUnits(_ range: GuestRange) {
        let start = range.start.rawValue, end = start + range.size
        let firstHuge = (start + hugePageSize - 1) / hugePageSize * hugePageSize
        let lastHuge = end / hugePageSize * hugePageSize
        if lastHuge > firstHuge {
            hugeUnits += (lastHuge - firstHuge) / hugePageSize
            smallPages += ((firstHuge - start) + (end - lastHuge)) / pageSize
        } else {
            smallPages += range.size / pageSize
        }
    }

    public var totalPages: UInt64 { pagesByKind.values.reduce(0, +) }

    public var description: String {
        let kinds = PageKind.allCases.compactMap { kind in pagesByKind[kind].map { "\(kind.rawValue) \($0)" } }
        let phases = Self.phases.compactMap { phase in
            phaseSeconds[phase].map { seconds in
                "\(phase) \(String(seconds * 1000, decimals: 3)) ms" + (gibPerSecond(phase).map { " (\(String($0, decimals: 3)) GiB/s)" } ?? "")
            }
        }
        var lines = [
            "platform \(platform), policy \(policy)",
            "pages: \(kinds.joined(separator: ", ")) (\(totalPages) in all)",
            "units: \(hugeUnits) x 2 MiB, \(smallPages) x 4 KiB",
            "ioctls: \(ioctls), bytes copied: \(bytesCopied), retries: \(retries)",
            "time: \(phases.joined(separator: ", "))",
        ]
        if let backing { lines.append("backing: \(backing)") }
        if let prePopulation { lines.append("pre-population: \(prePopulation)") }
        return lines.joined(separator: "\n")
    }
}

extension String {
    /// `value` rounded to `decimals` decimal places, without Foundation: `String(1.5, decimals: 3)` is "1.500".
    public init(_ value: Double, decimals: Int) {
        let scale = (0..<decimals).reduce(1) { product, _ in product * 10 }
        let scaled = Int((value * Double(scale)).rounded())
        let sign = scaled < 0 ? "-" : ""
        let magnitude = abs(scaled)
        guard decimals > 0 else {
            self = "\(sign)\(magnitude)"
            return
        }
        let fraction = String(magnitude % scale)
        self = "\(sign)\(magnitude / scale).\(String(repeating: "0", count: decimals - fraction.count))\(fraction)"
    }
}

/// The differences between a CPUID page the VMM offered and the one the
/// SNP firmware corrected it to, one line per changed register.
enum CPUIDPageDiff {
    static func describe(original: [UInt8], corrected: [UInt8]) -> String {
        func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
        }
        let count = min(Int(u32(corrected, 0)), 64)
        var lines = ["SNP firmware corrected the CPUID page:"]
        for entry in 0..<count {
            let base = 16 + entry * 48
            for (index, name) in ["eax", "ebx", "ecx", "edx"].enumerated() {
                let before = u32(original, base + 24 + 4 * index), after = u32(corrected, base + 24 + 4 * index)
                if before != after {
                    lines.append("  leaf 0x\(String(u32(corrected, base), radix: 16)) subleaf \(u32(corrected, base + 4)) \(name): "
                                 + "0x\(String(before, radix: 16)) -> 0x\(String(after, radix: 16))")
                }
            }
        }
        return lines.joined(separator: "\n")
    }
}
