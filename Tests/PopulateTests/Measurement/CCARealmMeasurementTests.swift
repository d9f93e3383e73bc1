import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// The realm initial measurement: descriptor layouts, the direct-boot plan, and the model's vectors.
    @Suite struct CCARealmMeasurementTests {
        typealias V = MeasurementVectors

        @Test func realmCreateHashesTheMeasuredParameterFieldsOnly() {
            let parameters = CCARealmParameters(hashAlgorithm: .sha512, ipaBits: 48, lpa2: true, sveVL: 3, breakpoints: 6,
                                                watchpoints: 4, pmuCounters: 6)
            let bytes = parameters.measuredBytes
            #expect(bytes.count == 4096)
            #expect(Array(bytes[0..<8]) == [0x07, 0, 0, 0, 0, 0, 0, 0])   // flags0: LPA2 | SVE | PMU
            // 6 breakpoints and 4 watchpoints go in as 5 and 3 (counts minus one, TF-RMM).
            #expect(bytes[0x08] == 48 && bytes[0x10] == 3 && bytes[0x18] == 5 && bytes[0x20] == 3 && bytes[0x28] == 6)
            #expect(bytes[0x30] == 1)                                       // RMI_HASH_SHA_512
            #expect(bytes.enumerated().allSatisfy { [0, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30].contains($0.offset) || $0.element == 0 })
            #expect(CCARealmMeasurement(parameters: parameters).rim == MessageDigest.sha512.hash(bytes))
        }

        @Test func dataCreateHashesTheDataDescriptor() throws {
            let parameters = CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4)
            var measurement = CCARealmMeasurement(parameters: parameters)
            let start = measurement.rim
            let granule = [UInt8](repeating: 0x5A, count: 4096)
            try granule.withUnsafeBytes { try measurement.dataCreate(ipa: 0x4000_0000, contents: $0, measure: true) }
            var descriptor = [UInt8](repeating: 0, count: 256)
            descriptor[0x08] = 0x00; descriptor[0x09] = 0x01                 // len 0x100
            descriptor.replaceSubrange(0x10..<0x30, with: start)             // RIM (SHA-256, zero-padded to 64)
            descriptor.replaceSubrange(0x50..<0x58, with: [0, 0, 0, 0x40, 0, 0, 0, 0]) // IPA
            descriptor[0x58] = 1                                             // RMI_MEASURE_CONTENT
            descriptor.replaceSubrange(0x60..<0x80, with: MessageDigest.sha256.hash(granule))
            #expect(measurement.rim == MessageDigest.sha256.hash(descriptor))
        }

        @Test func onlyRunnableRECsExtendTheRIM() {
            var measurement = CCARealmMeasurement(parameters: CCARealmParameters(ipaBits: 40, breakpoints: 2, watchpoints: 2))
            let before = measurement
            measurement.recCreate(pc: 0x4000_0000, gprs: [0x4800_0000], runnable: false)
            #expect(measurement == before)
            measurement.recCreate(pc: 0x4000_0000, gprs: [0x4800_0000], runnable: true)
            #expect(measurement != before)
        }

        @Test func unmeasuredGranulesStillExtendWithTheirAddress() throws {
            var a = CCARealmMeasurement(parameters: CCARealmParameters(ipaBits: 40, breakpoints: 2, watchpoints: 2)), b = a
            try a.dataCreate(ipa: 0x1000, contents: nil, measure: false)
            try b.dataCreate(ipa: 0x2000, contents: nil, measure: false)
            #expect(a != b)
            #expect(throws: CCAMeasurementError.unalignedGranule(ipa: 0x1001)) { try a.dataCreate(ipa: 0x1001, contents: nil, measure: false) }
        }

        @Test func directBootLayoutPlacesInitrdAndDTBAfterTheKernel() throws {
            let boot = CCALinuxBoot(parameters: CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4), ramSize: 512 << 20,
                                    kernel: V.bytes("inputs/Image"), initrd: V.bytes("inputs/initrd.bin"), dtb: V.bytes("inputs/virt.dtb"))
            let layout = try boot.layout()
            #expect(layout.kernel == 0x4000_0000)
            #expect(layout.initrd == 0x4000_0000 + (128 << 20))
            #expect(layout.dtb == 0x4820_0000)
        }

        @Test(arguments: V.cca)
        func realmInitialMeasurementMatchesTheReferenceModel(vector: MeasurementVectors.CCACase) throws {
            let result = try SNPVMMExecutable.run(["measure"] + vector.args)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == vector.rim + "\n")
        }

        @Test func kernelThatIsNotAnImageIsRejected() {
            let boot = CCALinuxBoot(parameters: CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4), ramSize: 1 << 30,
                                    kernel: V.bytes("inputs/kernel.bin"), initrd: nil, dtb: [1])
            #expect(throws: CCABootError.notAnImage) { try boot.realmInitialMeasurement() }
        }

        @Test func blobsThatOverflowRAMAreRejected() {
            let boot = CCALinuxBoot(parameters: CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4), ramSize: 0x20_0000,
                                    kernel: V.bytes("inputs/Image"), initrd: nil, dtb: [1])
            #expect(throws: CCABootError.doesNotFit(blob: "DTB", start: 0x4020_0000, size: 1, ramEnd: 0x4020_0000)) {
                try boot.realmInitialMeasurement()
            }
        }
    }
}
