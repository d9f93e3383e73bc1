import Foundation
import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// `snpvmm measure` run as a process: the same stdout and exit status as
    /// sev-snp-measure for every vector, and one clear error line where it fails.
    @Suite struct MeasureCommandTests {
        typealias V = MeasurementVectors

        @Test(arguments: V.snp.cases)
        func measureAgreesWithSevSnpMeasure(vector: MeasurementVectors.SNPCase) throws {
            let result = try SNPVMMExecutable.run(["measure"] + vector.args + ["--ovmf", try V.path(vector.image)])
            #expect(result.status == vector.status)
            #expect(result.stdout == vector.stdout)
            let lines = result.stderr.split(separator: "\n")
            if vector.status == 0 {
                #expect(lines.isEmpty)
            } else {
                // One line: "Error: …" for a failure (status 1), argparse's "error: …" for a usage mistake (status 2).
                #expect(lines.count == 1)
                let line = String(lines.first ?? "")
                if vector.status == 1 {
                    #expect(line.hasPrefix("Error: "))
                } else {
                    #expect(line.hasPrefix("snpvmm measure: error: "))
                    // The same message as argparse's last line, after the program name.
                    #expect(line.dropFirst("snpvmm measure: ".count) == vector.stderrLastLine.dropFirst("sev-snp-measure: ".count))
                }
                // Where sev-snp-measure printed "Error: message", ours starts with that message.
                if vector.stderrLastLine.hasPrefix("Error: ") {
                    #expect(line.hasPrefix(vector.stderrLastLine))
                }
            }
        }

        @Test(arguments: [
            ("unknown-section-type.fd", "Error: unknown OVMF metadata section type 5 in SEV metadata section 2 (type 5, GPA 0x80d000, size 0x1000)"),
            ("damaged-guid-table.fd", "Error: Invalid entry size: OVMF footer table entry 4c2eb361-7d9b-4cc3-8081-127c90d3d294 at image offset 0x1fffa6 gives length 4, less than its 18-byte trailer"),
        ])
        func errorLineNamesWhatIsWrong(image: String, line: String) throws {
            let result = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", try V.path(image)])
            #expect(result.status == 1)
            #expect(result.stderr == line + "\n")
        }

        @Test(arguments: [
            (["--mode", "snp", "--vcpus", "1", "--vcpu", "EPYC"],
             "snpvmm measure: error: ambiguous option: --vcpu could match --vcpus, --vcpu-type, --vcpu-sig, --vcpu-family, --vcpu-model, --vcpu-stepping"),
            (["--mode", "snp:svsm"],
             "snpvmm measure: error: argument --mode: invalid choice: 'snp:svsm' (choose from 'sev', 'seves', 'snp', 'snp:ovmf-hash', 'tdx', 'cca')"),
            (["--vcpus", "x"], "snpvmm measure: error: argument --vcpus: invalid int value: 'x'"),
            (["--mode", "snp", "-v=1"], "snpvmm measure: error: argument -v/--verbose: ignored explicit argument '1'"),
            (["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", "x", "stray"], "snpvmm measure: error: unrecognized arguments: stray"),
            ([], "snpvmm measure: error: the following arguments are required: --mode, --ovmf"),
        ])
        func usageMistakesExitTwoWithArgparsesMessage(arguments: [String], line: String) throws {
            let result = try SNPVMMExecutable.run(["measure"] + arguments)
            #expect(result.status == 2)
            #expect(result.stderr == line + "\n")
            #expect(result.stdout.isEmpty)
        }

        /// TF-RMM's validate_realm_params: 0 (a count of 1) is reserved, the
        /// architecture has at most 16 breakpoints and watchpoints, and 31 PMU counters.
        @Test(arguments: [
            (["--num-bps", "1", "--num-wps", "4"], "1 breakpoints (a realm has 2 to 16)"),
            (["--num-bps", "6", "--num-wps", "17"], "17 watchpoints (a realm has 2 to 16)"),
            (["--num-bps", "6", "--num-wps", "4", "--pmu-num-ctrs", "32"], "32 PMU counters (at most 31)"),
        ])
        func realmParametersTheRMMRefusesAreUsageErrors(counts: [String], problem: String) throws {
            let inputs = V.directory + "/inputs/"
            let result = try SNPVMMExecutable.run(["measure", "--mode", "cca", "--kernel", inputs + "Image", "--dtb", inputs + "virt.dtb",
                                                   "--memory", "512M"] + counts)
            #expect(result.status == 2)
            #expect(result.stderr == "snpvmm measure: error: the RMM refuses a realm with \(problem)\n")
        }

        /// A verifier's allow-list in one run: every vCPU count of a range and
        /// list, for several vCPU types, equal to sev-snp-measure one by one.
        @Test func aMeasurementMatrixGivesSevSnpMeasuresValueForEveryCombination() throws {
            let result = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--ovmf", V.sid, "--vcpus", "1-3,8,16",
                                                   "--vcpu-type", "EPYC-Milan,EPYC-Turin", "--json"])
            #expect(result.status == 0, "\(result.stderr)")
            let records = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
            #expect(records.count == 10)
            let reference = FirmwareLaunchTests.matrix.filter { $0.image == V.sid && $0.value("--kernel") == nil }
            for record in records {
                let vcpus = String(record["vcpus"] as! Int), type = record["vcpu_type"] as! String
                let expected = try #require(reference.first { $0.value("--vcpus") == vcpus && $0.value("--vcpu-type") == type })
                #expect(record["measurement"] as? String == expected.measurement, "\(vcpus) \(type)")
            }
        }

        @Test func abbreviatedOptionsAndEqualsFormAreAccepted() throws {
            let result = try SNPVMMExecutable.run(["measure", "--mode=snp", "--vcpus=1", "--vcpu-t", "EPYC", "--ovmf", V.directory + "/" + V.bookworm])
            #expect(result.status == 0)
            #expect(result.stdout == V.snpCase("bookworm-epyc-1").stdout)
        }

        @Test func dumpVMSAWritesOnePagePerVCPU() throws {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("vmsa-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let result = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC", "--dump-vmsa",
                                                   "--ovmf", V.directory + "/" + V.bookworm], in: directory.path)
            #expect(result.status == 0)
            let bsp = try Data(contentsOf: directory.appendingPathComponent("vmsa0.bin"))
            let ap = try Data(contentsOf: directory.appendingPathComponent("vmsa1.bin"))
            #expect([UInt8](bsp) == SNPInitialVMSA.page(eip: SNPInitialVMSA.bspEIP, sevFeatures: 1, vcpuSignature: 0x800F12, vmmType: .qemu))
            #expect([UInt8](ap) == SNPInitialVMSA.page(eip: 0x80B004, sevFeatures: 1, vcpuSignature: 0x800F12, vmmType: .qemu))
        }

        @Test func tdxModePrintsMRTD() throws {
            for vector in V.tdx {
                let result = try SNPVMMExecutable.run(["measure", "--mode", "tdx", "--tdvf", vector.image, "-v"])
                #expect(result.status == 0)
                #expect(result.stdout == "Calculated TDX MRTD: \(vector.mrtd)\n")
            }
        }

        @Test func tdxModeRejectsAnImageWithoutTDVFMetadata() throws {
            let result = try SNPVMMExecutable.run(["measure", "--mode", "tdx", "--tdvf", "inputs/kernel.bin"])
            #expect(result.status == 1)
            #expect(result.stderr.hasPrefix("Error: Cannot find the TDX metadata offset entry"))
        }
    }
}
