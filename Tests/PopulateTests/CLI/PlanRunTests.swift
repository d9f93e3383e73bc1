import Foundation
import LaunchMeasurement
import Testing

/// `snpvmm run --plan FILE --launch-only` on the emulated platforms: the
/// plan's pages, and nothing else but the platform's own VMSA, measured to
/// what this file computes from the same pages with its own PAGE_INFO and
/// MRTD code.
@Suite struct PlanRunTests {
    static let image: [UInt8] = (0..<0x2000).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) }
    static let config: [UInt8] = [0xFF, 0x01]

    static func planFile() throws -> String {
        let text = """
            # name   kind        gpa       size    contents
            image    normal      0x100000  0x2000  hex \(Hex.encode(image))
            heap     zero        0x200000  0x1000  zeros
            config   unmeasured  0x300000  0x1000  hex \(Hex.encode(config))
            """
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("plan-\(UUID().uuidString).txt").path
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    static func page(_ bytes: [UInt8], _ index: Int) -> [UInt8] {
        let padded = bytes + [UInt8](repeating: 0, count: max(0, (index + 1) * 4096 - bytes.count))
        return Array(padded[(index * 4096)..<((index + 1) * 4096)])
    }

    @Test func anSNPPlanMeasuresItsPagesThenOneVMSAInTheResetState() throws {
        let plan = try Self.planFile()
        defer { try? FileManager.default.removeItem(atPath: plan) }
        let result = try Snpvmm.run(["run", "--plan", plan, "--platform", "snp", "--emulate", "--launch-only",
                                     "--vcpu-type", "EPYC-Milan"])
        #expect(result.status == 0, "\(result.stderr)")
        // The VMSA of a vCPU at reset, as sev-snp-measure lays it out (SNPActive, EPYC-Milan's signature).
        let vmsa = SNPInitialVMSA.page(eip: SNPInitialVMSA.bspEIP, sevFeatures: 1,
                                       vcpuSignature: SNPVCPUSignature.signature(named: "EPYC-Milan")!, vmmType: .qemu)
        let expected = expectedSNPDigest([
            (0x100000, 1, Self.page(Self.image, 0)), (0x101000, 1, Self.page(Self.image, 1)),
            (0x200000, 3, nil), (0x300000, 4, nil), (0xFFFF_FFFF_F000, 2, vmsa),
        ])
        #expect(result.stdout == Hex.encode(expected) + "\n")
    }

    @Test func aTDXPlanMeasuresItsPagesIntoMRTD() throws {
        let plan = try Self.planFile()
        defer { try? FileManager.default.removeItem(atPath: plan) }
        let result = try Snpvmm.run(["run", "--plan", plan, "--platform", "tdx", "--emulate", "--launch-only"])
        #expect(result.status == 0, "\(result.stderr)")
        let expected = expectedMRTD([
            (0x100000, Self.page(Self.image, 0), true), (0x101000, Self.page(Self.image, 1), true),
            (0x200000, Self.page([], 0), false), (0x300000, Self.page(Self.config, 0), false),
        ])
        #expect(result.stdout == Hex.encode(expected) + "\n")
    }
}
