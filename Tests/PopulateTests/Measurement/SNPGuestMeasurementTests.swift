import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// The whole sev-snp-measure computation, in-process, against the vectors
    /// sev-snp-measure 0.0.13 wrote for Debian's OVMF images.
    @Suite struct SNPGuestMeasurementTests {
        typealias V = MeasurementVectors

        func digest(_ image: String, vcpus: Int, signature: UInt64, vmm: SNPVMMType = .qemu, features: UInt64 = 1,
                    hashes: SEVKernelHashes? = nil, seed: SHA384Digest? = nil) throws -> String {
            let ovmf = try OVMFImage(bytes: V.bytes(image))
            let measurement = SNPGuestMeasurement(vcpus: vcpus, vcpuSignature: signature, vmmType: vmm, guestFeatures: features,
                                                  kernelHashes: hashes, firmwareDigest: seed)
            return try measurement.launchDigest(for: ovmf).hex
        }

        func expected(_ name: String) -> String { V.snpCase(name).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }

        @Test func snpDigestMatchesSevSnpMeasureForBookwormOVMF() throws {
            #expect(try digest(V.bookworm, vcpus: 1, signature: SNPVCPUSignature.signature(named: "EPYC")!) == expected("bookworm-epyc-1"))
        }

        @Test func snpDigestMatchesSevSnpMeasureForEC2WithGuestFeatures() throws {
            #expect(try digest(V.bookworm, vcpus: 2, signature: 0xA10F10, vmm: .ec2, features: 0x21) == expected("bookworm-sig-ec2-features"))
        }

        @Test func snpDigestMatchesSevSnpMeasureForGCE() throws {
            let rome = SNPVCPUSignature.signature(named: "EPYC-Rome")!
            #expect(try digest(V.bookworm, vcpus: 3, signature: rome, vmm: .gce) == expected("bookworm-rome-gce-3"))
            #expect(try digest(V.sid, vcpus: 4, signature: SNPVCPUSignature.signature(named: "EPYC-Milan")!, vmm: .gce) == expected("sid-gce-4"))
        }

        @Test func snpDigestMatchesSevSnpMeasureForSidAmdSevOVMF() throws {
            #expect(try digest(V.sid, vcpus: 1, signature: SNPVCPUSignature.signature(named: "EPYC-Genoa")!) == expected("sid-genoa-1"))
        }

        @Test func kernelHashesPageMatchesSevSnpMeasureWithInitrdAndAppend() throws {
            let hashes = SEVKernelHashes(kernel: V.bytes("inputs/kernel.bin"), initrd: V.bytes("inputs/initrd.bin"),
                                         cmdline: "console=ttyS0 root=/dev/vda1")
            #expect(try digest(V.sid, vcpus: 8, signature: SNPVCPUSignature.signature(named: "EPYC-Turin")!, hashes: hashes)
                == expected("sid-turin-8-kernel-initrd-append"))
        }

        @Test func kernelHashesPageMatchesSevSnpMeasureWithKernelOnly() throws {
            let hashes = SEVKernelHashes(kernel: V.bytes("inputs/kernel.bin"), initrd: nil, cmdline: nil)
            #expect(try digest(V.sid, vcpus: 2, signature: SNPVCPUSignature.signature(named: "EPYC-Milan")!, hashes: hashes)
                == expected("sid-milan-2-kernel-only"))
        }

        @Test func ec2MeasuresCPUIDPagesAfterTheOtherSectionsWithKernelHashes() throws {
            let hashes = SEVKernelHashes(kernel: V.bytes("inputs/kernel.bin"), initrd: nil, cmdline: "quiet")
            #expect(try digest(V.sid, vcpus: 2, signature: 0, vmm: .ec2, hashes: hashes) == expected("sid-ec2-kernel"))
            let steps = try SNPGuestMeasurement(vcpus: 2, vcpuSignature: 0, vmmType: .ec2, kernelHashes: hashes)
                .launchSteps(for: OVMFImage(bytes: V.bytes(V.sid)))
            #expect(steps.last?.type == .cpuid)
        }

        @Test func firmwareDigestMatchesSnpOvmfHashMode() throws {
            for (image, name) in [(V.bookworm, "bookworm-ovmf-hash"), (V.sid, "sid-ovmf-hash")] {
                #expect(try SNPGuestMeasurement.firmwareDigest(of: OVMFImage(bytes: V.bytes(image))).hex == expected(name))
            }
        }

        @Test func seedingWithTheFirmwareDigestGivesTheSameMeasurement() throws {
            let image = try OVMFImage(bytes: V.bytes(V.bookworm))
            let seed = try SNPGuestMeasurement.firmwareDigest(of: image)
            #expect(try digest(V.bookworm, vcpus: 1, signature: SNPVCPUSignature.signature(named: "EPYC")!, seed: seed)
                == expected("bookworm-epyc-1"))
        }

        @Test func sectionsAreMeasuredInTableOrderNotSortedByAddress() throws {
            let image = try OVMFImage(bytes: V.bytes(V.sid))
            let steps = try SNPGuestMeasurement(vcpus: 1, vcpuSignature: 0).launchSteps(for: image)
            // Firmware, then the seven sections as listed: SNP_KERNEL_HASHES at 0x810000 comes after 0x811000.
            #expect(steps.map(\.gpa) == [image.loadAddress, 0x800000, 0x80A000, 0x80D000, 0x80E000, 0x80F000, 0x811000, 0x810000])
            #expect(steps.map(\.type) == [.normal, .zero, .zero, .secrets, .cpuid, .zero, .zero, .zero])
            var sorted = steps
            sorted[1...].sort { $0.gpa < $1.gpa }
            var chained = SNPLaunchDigest(), sortedChain = SNPLaunchDigest()
            for step in steps { try step.measure(into: &chained, image: image) }
            for step in sorted { try step.measure(into: &sortedChain, image: image) }
            #expect(chained != sortedChain)
        }

        @Test func kernelWithoutKernelHashesSectionIsRejected() throws {
            let hashes = SEVKernelHashes(kernel: [1, 2, 3], initrd: nil, cmdline: nil)
            #expect(throws: SNPMeasurementError.noKernelHashesSection) {
                try digest(V.bookworm, vcpus: 1, signature: 0x800F12, hashes: hashes)
            }
            #expect("\(SNPMeasurementError.noKernelHashesSection)" == String(V.snpCase("bookworm-kernel-without-hashes-section").stderrLastLine.dropFirst("Error: ".count)))
        }

        @Test func unknownSectionTypeIsRejectedNamingTheSection() throws {
            #expect(throws: SNPMeasurementError.unknownSectionType(index: 2, section: SEVMetadataSection(gpa: 0x80D000, size: 0x1000,
                                                                                                       type: SEVMetadataSectionType(rawValue: 5)))) {
                try digest("unknown-section-type.fd", vcpus: 1, signature: 0x800F12)
            }
        }

        @Test func imageWithoutSEVMetadataIsMeasuredAsFirmwareAndVMSAsOnly() throws {
            #expect(try digest("no-sev-metadata.fd", vcpus: 1, signature: 0x800F12) == expected("no-sev-metadata"))
        }

        @Test func missingResetBlockIsRejected() throws {
            var bytes = [UInt8](repeating: 0, count: 0x10000)
            bytes[0] = 1
            let image = try OVMFImage(bytes: bytes)
            #expect(image.tableEntries.isEmpty)
            #expect(throws: SNPMeasurementError.missingResetBlock) {
                try SNPGuestMeasurement(vcpus: 1, vcpuSignature: 0).launchDigest(for: image)
            }
        }

        @Test(arguments: [("EPYC", 0x800F12), ("EPYC-Rome", 0x830F10), ("EPYC-Milan", 0xA00F11), ("EPYC-Genoa", 0xA10F10),
                          ("EPYC-Turin", 0xB00F00)] as [(String, UInt64)])
        func vcpuTypeSignaturesAreCPUIDLeafOneEAX(name: String, signature: UInt64) {
            #expect(SNPVCPUSignature.signature(named: name) == signature)
        }

        @Test func vmsaFieldsSitAtTheirSaveAreaOffsets() {
            let page = SNPInitialVMSA.page(eip: 0x80B004, sevFeatures: 0x21, vcpuSignature: 0xA00F11, vmmType: .qemu)
            func load(_ offset: Int, _ size: Int) -> UInt64 {
                (0..<size).reduce(0) { $0 | UInt64(page[offset + $1]) << (8 * UInt64($1)) }
            }
            #expect(load(0x10, 2) == 0xF000 && load(0x12, 2) == 0x9B && load(0x18, 8) == 0x800000) // CS selector, attrib, base
            #expect(load(0x178, 8) == 0xB004)                       // RIP
            #expect(load(0xD0, 8) == 0x1000)                        // EFER.SVME
            #expect(load(0x268, 8) == 0x0007_0406_0007_0406)        // G_PAT
            #expect(load(0x310, 8) == 0xA00F11)                     // RDX
            #expect(load(0x3B0, 8) == 0x21)                         // SEV_FEATURES
            #expect(load(0x408, 4) == 0x1F80 && load(0x410, 2) == 0x37F)
            let ec2 = SNPInitialVMSA.page(eip: SNPInitialVMSA.bspEIP, sevFeatures: 1, vcpuSignature: 0xA00F11, vmmType: .ec2)
            #expect(ec2[0x12] == 0x9A && ec2[0x22] == 0x92 && ec2[0x92] == 0x83 && ec2[0x310] == 0x00 && ec2[0x311] == 0x06)
        }

        @Test func kernelHashesTableHasItsGUIDsLengthsAndPadding() {
            let hashes = SEVKernelHashes(kernel: [], initrd: nil, cmdline: nil)
            let table = hashes.table
            #expect(table.count == 176)
            #expect(Array(table[0..<16]) == EFIGUID("9438d606-4f22-4cc9-b479-a793d411fd21").bytes)
            #expect(table[16] == 168 && table[17] == 0)
            #expect(table[18 + 16] == 50 && table[68 + 16] == 50 && table[118 + 16] == 50)
            // SHA-256 of a single NUL byte, the empty command line.
            #expect(Array(table[36..<68]) == V.hexDecoded("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"))
            #expect(Array(table[168...]) == [UInt8](repeating: 0, count: 8))
            #expect(hashes.page(tableOffset: 0xC00)?[0xC00..<0xCB0].elementsEqual(table) == true)
            #expect(hashes.page(tableOffset: 4000) == nil)
        }
    }
}
