import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// The OVMF footer table and SEV metadata parser, on Debian's images and on damaged ones.
    @Suite struct OVMFImageTests {
        typealias V = MeasurementVectors

        @Test func bookwormImageHasFiveSectionsAndTheAPResetAddress() throws {
            let image = try OVMFImage(bytes: V.bytes(V.bookworm))
            #expect(image.loadAddress == 0xFFE0_0000)
            #expect(image.sevESResetEIP == 0x80B004)
            #expect(image.sevHashTableGPA == 0)
            #expect(image.sevMetadata?.map(\.type) == [.snpSecMem, .snpSecMem, .snpSecrets, .cpuid, .snpSecMem])
            #expect(image.tableEntries.count == 5)
        }

        @Test func sidAmdSevImageCarriesAKernelHashesSection() throws {
            let image = try OVMFImage(bytes: V.bytes(V.sid))
            #expect(image.sevHashTableGPA == 0x810C00)
            #expect(image.sevMetadata?.last == SEVMetadataSection(gpa: 0x810000, size: 0x1000, type: .snpKernelHashes))
            #expect(image.sevMetadata?.count == 7)
        }

        @Test func guidTextRoundTripsThroughMixedEndianBytes() {
            let guid = EFIGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
            #expect(guid.bytes == [0xDE, 0x82, 0xB5, 0x96, 0xB2, 0x1F, 0xF7, 0x45, 0xBA, 0xEA, 0xA3, 0x66, 0xC5, 0x5A, 0x08, 0x2D])
            #expect(guid.description == "96b582de-1fb2-45f7-baea-a366c55a082d")
        }

        @Test func damagedGUIDTableEntryIsRejectedWithItsLength() throws {
            #expect(throws: OVMFError.entryTooShort(guid: EFIGUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294"), offset: 0x1FFFA6, length: 4)) {
                try OVMFImage(bytes: V.bytes("damaged-guid-table.fd"))
            }
        }

        @Test func wrongMetadataSignatureIsRejected() {
            #expect(throws: OVMFError.wrongMetadataSignature(found: Array("XSEV".utf8), offset: 0x1FFAD4)) {
                try OVMFImage(bytes: V.bytes("wrong-metadata-signature.fd"))
            }
        }

        @Test func missingFooterGUIDMeansAnEmptyTable() throws {
            let image = try OVMFImage(bytes: [UInt8](repeating: 0xFF, count: 8192))
            #expect(image.tableEntries.isEmpty && image.sevMetadata == nil && image.sevESResetEIP == nil)
        }

        /// Damaged structures built on bookworm's image, each with the error it must give.
        static let damages: [(String, [(Int, [UInt8])], OVMFError)] = [
            ("entry longer than the table", [(0x1FFFBC, [0x80, 0x00])],
             .entryOverrunsTable(guid: EFIGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e"), offset: 0x1FFFBC, length: 0x80, remaining: 118)),
            ("metadata offset past the start", [(0x1FFF72 - 4, [0xFF, 0xFF, 0xFF, 0x7F])],
             .metadataOutsideImage(offsetFromEnd: 0x7FFF_FFFF, imageSize: 0x200000)),
            ("metadata version 2", [(0x1FFAD4 + 8, [2])], .wrongMetadataVersion(2)),
            ("too many metadata items", [(0x1FFAD4 + 12, [0xFF, 0xFF, 0xFF, 0xFF])],
             .metadataItemsOutside(count: 0xFFFF_FFFF, headerSize: 0x4C, available: 0x52C - 16)),
        ]

        @Test(arguments: damages.indices)
        func damagedStructuresGiveTypedErrors(index: Int) {
            let (_, patches, error) = Self.damages[index]
            var bytes = V.bytes(V.bookworm)
            for (offset, patch) in patches { bytes.replaceSubrange(offset..<(offset + patch.count), with: patch) }
            #expect(throws: error) { try OVMFImage(bytes: bytes) }
        }

        @Test func footerTableLargerThanTheImageIsRejected() {
            var bytes = [UInt8](repeating: 0, count: 4096)
            let footer = 4096 - 50
            bytes.replaceSubrange(footer..<(footer + 2), with: [0x00, 0x20])
            bytes.replaceSubrange((footer + 2)..<(footer + 18), with: OVMFTableGUID.footer.bytes)
            #expect(throws: OVMFError.footerTableTooLarge(tableSize: 0x2000 - 18, available: footer)) { try OVMFImage(bytes: bytes) }
        }

        @Test func tooSmallImageIsRejected() {
            #expect(throws: OVMFError.imageTooSmall(size: 49)) { try OVMFImage(bytes: [UInt8](repeating: 0, count: 49)) }
        }

        /// Mutations of the last 4 KiB (footer table, metadata pointers) and
        /// truncations never trap: each gives an image or a typed error.
        @Test func parsersSurviveMutatedAndTruncatedImages() {
            let original = V.bytes(V.bookworm)
            let tail = Array(original.suffix(0x1000))
            var state: UInt64 = 0x9E37_79B9_7F4A_7C15
            func next() -> UInt64 {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                return state
            }
            var outcomes = (images: 0, errors: 0)
            for round in 0..<3000 {
                var bytes = tail
                for _ in 0..<(1 + Int(next() % 4)) { bytes[Int(next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: next()) }
                if round % 7 == 0 { bytes = Array(bytes.suffix(Int(next() % UInt64(bytes.count)))) }
                if let image = try? OVMFImage(bytes: bytes) {
                    outcomes.images += 1
                    do {
                        _ = try SNPGuestMeasurement(vcpus: 2, vcpuSignature: 1).launchSteps(for: image)
                    } catch {
                        #expect(!error.description.contains("\n"))
                    }
                } else {
                    outcomes.errors += 1
                }
                if let tdvf = try? TDVFImage(bytes: bytes), tdvf.sections.reduce(0, { $0 + $1.memoryDataSize }) <= 64 << 20 {
                _ = tdvf.mrtd
            }
            }
            #expect(outcomes.images > 0 && outcomes.errors > 0)
        }
    }
}
