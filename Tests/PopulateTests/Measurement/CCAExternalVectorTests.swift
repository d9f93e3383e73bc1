import Fixtures
import Foundation
import LaunchMeasurement
import Testing

extension MeasurementTests {
    /// Realm initial measurements from outside this project: two published by
    /// veraison/cca-realm-measurements for kvmtool realms, and two derived by
    /// hand from TF-RMM with openssl (`Measurement/cca-external/README.md`).
    @Suite struct CCAExternalVectorTests {
        struct Case: Decodable, CustomTestStringConvertible, Sendable {
            struct Params: Decodable, Sendable {
                let flags0: UInt64, s2sz: UInt32, sve_vl: UInt32, num_bps: UInt32, num_wps: UInt32, pmu_num_ctrs: UInt32
                let algorithm: UInt8
            }

            struct Step: Decodable, Sendable {
                let op: String
                let rim: String
                let base: String?, top: String?, entry_size: String?
                let ipa: String?, length: Int?, flags: UInt64?
                let contents_hex: String?, contents_pattern: String?
                let pc: String?, gprs: [String]?
            }

            let name: String
            let hash_algorithm: String
            let realm_params: Params
            let steps: [Step]
            let rim: String
            var testDescription: String { name }
        }

        static let cases: [Case] = {
            struct File: Decodable { let cases: [Case] }
            let path = Fixtures.measurementDirectory + "/cca-external/vectors.json"
            guard let data = FileManager.default.contents(atPath: path),
                  let file = try? JSONDecoder().decode(File.self, from: data) else { return [] }
            return file.cases
        }()

        static func number(_ text: String?) -> UInt64 {
            guard let text else { return 0 }
            return text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16)! : UInt64(text)!
        }

        static func bytes(_ hex: String) -> [UInt8] { Hex.decode(hex)! }

        @Test func theVectorFileHoldsThePublishedKvmtoolRealms() {
            #expect(Self.cases.map(\.name).contains("kvmtool-firmware-sha256"))
        }

        @Test(arguments: cases)
        func theRIMMatchesTheExternalValueAfterEveryStep(_ vector: Case) throws {
            let p = vector.realm_params
            let algorithm = try #require(CCAHashAlgorithm(rawValue: p.algorithm))
            #expect(algorithm.digestLength * 2 == vector.rim.count, "\(vector.hash_algorithm)")
            let parameters = CCARealmParameters(
                hashAlgorithm: algorithm, ipaBits: p.s2sz, lpa2: p.flags0 & 1 != 0,
                // The vectors give the raw fields: counts minus one.
                sveVL: p.flags0 & 2 != 0 ? p.sve_vl : nil, breakpoints: p.num_bps + 1, watchpoints: p.num_wps + 1,
                pmuCounters: p.flags0 & 4 != 0 ? p.pmu_num_ctrs : nil)
            var measurement = CCARealmMeasurement(parameters: parameters)
            for (index, step) in vector.steps.enumerated() {
                switch step.op {
                case "realm_create":
                    break
                case "init_ripas":
                    let size = Self.number(step.entry_size)
                    for base in stride(from: Self.number(step.base), to: Self.number(step.top), by: Int(size)) {
                        measurement.initRIPAS(base: base, top: base + size)
                    }
                case "data_create":
                    let length = try #require(step.length)
                    var contents = [UInt8](repeating: 0, count: length)
                    if let hex = step.contents_hex {
                        let leading = Self.bytes(hex)
                        contents.replaceSubrange(0..<leading.count, with: leading)
                    } else if step.contents_pattern != nil {
                        contents = (0..<length).map { UInt8($0 % 256) }
                    }
                    let measured = step.flags == 1
                    for granule in 0..<(length / 4096) {
                        let ipa = Self.number(step.ipa) + UInt64(granule * 4096)
                        try contents[(granule * 4096)..<((granule + 1) * 4096)].withUnsafeBytes {
                            try measurement.dataCreate(ipa: ipa, contents: measured ? $0 : nil, measure: measured)
                        }
                    }
                case "rec_create":
                    measurement.recCreate(pc: Self.number(step.pc), gprs: (step.gprs ?? []).map { Self.number($0) }, runnable: true)
                default:
                    Issue.record("unknown step \(step.op)")
                }
                #expect(measurement.rim == Self.bytes(step.rim), "after step \(index), \(step.op)")
            }
            #expect(measurement.rim == Self.bytes(vector.rim))
        }
    }
}
