import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// A launch plan's in-process expected measurements use the same digest code as `snpvmm measure`.
    @Suite struct ExpectedMeasurementTests {
        typealias V = MeasurementVectors

        /// Bookworm's OVMF launch written as a plan: firmware, then the metadata sections as QEMU populates them.
        @Test func planOfTheOVMFLaunchGivesSevSnpMeasuresDigest() throws {
            let image = try OVMFImage(bytes: V.bytes(V.bookworm))
            let measurement = SNPGuestMeasurement(vcpus: 1, vcpuSignature: 0x800F12)
            var regions = [PlanRegion(name: "OVMF", range: GuestRange(start: image.loadAddress, size: UInt64(image.bytes.count)),
                                      contents: .bytes(image.bytes))]
            for step in try measurement.launchSteps(for: image).dropFirst() {
                let kind: PageKind = step.type == .zero ? .zero : step.type == .secrets ? .secrets : .cpuid
                regions.append(PlanRegion(name: "section", range: GuestRange(start: step.gpa, size: step.pageCount * 4096),
                                          contents: .zeros, kind: kind))
            }
            let digest = try LaunchPlan(regions: regions).expectedSNPLaunchDigest(vmsas: measurement.vmsaPages(for: image))
            #expect(digest.hex == V.snpCase("bookworm-epyc-1").stdout.dropLast())
        }

        @Test func planMRTDEqualsTheTDVFMRTDForTheSameSections() throws {
            let tdvf = try TDVFImage(bytes: V.bytes(V.bookworm))
            let regions = tdvf.sections.map { section in
                let bytes = section.type == .bfv || section.type == .cfv
                    ? Array(tdvf.bytes[Int(section.dataOffset)..<(Int(section.dataOffset) + Int(section.memoryDataSize))]) : []
                return PlanRegion(name: "\(section.type)", range: GuestRange(start: section.memoryAddress, size: section.memoryDataSize),
                                  contents: bytes.isEmpty ? .zeros : .bytes(bytes), kind: section.isExtended ? .normal : .unmeasured)
            }
            #expect(try LaunchPlan(regions: regions).expectedMRTD() == tdvf.mrtd)
        }

        @Test func planRIMEqualsTheDirectBootRIM() throws {
            let parameters = CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4)
            let kernel = V.bytes("inputs/Image"), dtb = V.bytes("inputs/virt.dtb")
            let boot = CCALinuxBoot(parameters: parameters, ramSize: 256 << 20, kernel: kernel, initrd: nil, dtb: dtb)
            let layout = try boot.layout()
            let plan = LaunchPlan(regions: [
                PlanRegion(name: "kernel", range: GuestRange(start: layout.kernel, size: 0xA000), contents: .bytes(kernel)),
                PlanRegion(name: "dtb", range: GuestRange(start: layout.dtb, size: 0x2000), contents: .bytes(dtb)),
            ])
            #expect(try plan.expectedRealmInitialMeasurement(parameters: parameters, pc: layout.kernel, gprs: [layout.dtb])
                == boot.realmInitialMeasurement())
        }

        /// The fake SNP firmware and the plan's expected digest agree, page type by page type.
        @Test func fakeFirmwareMeasuresAPopulatedPlanAsExpected() throws {
            let guest = try FakeSNPGuest()
            try guest.makePrivate(0, 0x40000)
            let plan = LaunchPlan(regions: [
                PlanRegion(name: "code", range: GuestRange(start: 0x10000, size: 0x3000), contents: .bytes(pattern(3, seed: 9))),
                PlanRegion(name: "zeros", range: GuestRange(start: 0x20000, size: 0x2000), contents: .zeros, kind: .zero),
                PlanRegion(name: "log", range: GuestRange(start: 0x30000, size: 0x1000), contents: .bytes(pattern(1, seed: 4)),
                           kind: .unmeasured),
            ])
            for region in plan.regions {
                var bytes = [UInt8](repeating: 0, count: Int(region.range.size))
                if case .bytes(let contents) = region.contents { bytes.replaceSubrange(0..<contents.count, with: contents) }
                let type: SNPLaunchUpdate.PageType = region.kind == .normal ? .normal : region.kind == .zero ? .zero : .unmeasured
                try guest.populate(bytes, at: region.range.start.rawValue, type: type)
            }
            #expect(guest.fake.launchMeasurement(of: guest.vm) == (try plan.expectedSNPLaunchDigest(vmsas: [])).bytes)
        }

        @Test func snpOnlyKindsAreRejectedOnTDX() {
            let plan = LaunchPlan(regions: [PlanRegion(name: "secrets", range: GuestRange(start: 0x1000, size: 0x1000), contents: .zeros, kind: .secrets)])
            #expect(throws: ExpectedMeasurementError.kindNotOnPlatform(index: 0, region: "secrets", kind: .secrets, platform: "TDX")) {
                try plan.expectedMRTD()
            }
        }
    }
}
