import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// MRTD: TDVF metadata, the PAGE.ADD / MR.EXTEND blocks, and td-shim's values for Debian's images.
    @Suite struct TDXMeasurementTests {
        typealias V = MeasurementVectors

        @Test(arguments: V.tdx.map(\.image))
        func mrtdMatchesTdShimForDebianOVMF(image: String) throws {
            let expected = V.tdx.first { $0.image == image }!.mrtd
            #expect(try TDVFImage(bytes: V.bytes(image)).mrtd.hex == expected)
        }

        @Test func bookwormTDVFMetadataListsSixSectionsWithOnlyTheBFVExtended() throws {
            let image = try TDVFImage(bytes: V.bytes(V.bookworm))
            #expect(image.sections.map(\.type) == [.bfv, .cfv, .tempMem, .tempMem, .tdHOB, .tempMem])
            #expect(image.sections.map(\.isExtended) == [true, false, false, false, false, false])
        }

        @Test func mrtdIsOneHashOverPageAddThenExtendBlocksPerPage() throws {
            let page = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7) }
            var measurement = TDXMeasurement()
            try page.withUnsafeBytes { try measurement.addPage(gpa: 0x20_0000, contents: $0, measure: true) }
            measurement.pageAdd(gpa: 0x20_1000)
            // The same stream written out by hand: PAGE.ADD, 16 × (MR.EXTEND header, 256 bytes), PAGE.ADD.
            func header(_ tag: String, _ gpa: UInt64) -> [UInt8] {
                var block = Array(tag.utf8) + [UInt8](repeating: 0, count: 128 - tag.utf8.count)
                for byte in 0..<8 { block[16 + byte] = UInt8(truncatingIfNeeded: gpa >> (8 * UInt64(byte))) }
                return block
            }
            var stream = header("MEM.PAGE.ADD", 0x20_0000)
            for chunk in 0..<16 {
                stream += header("MR.EXTEND", 0x20_0000 + UInt64(chunk) * 256) + page[(chunk * 256)..<((chunk + 1) * 256)]
            }
            stream += header("MEM.PAGE.ADD", 0x20_1000)
            #expect(stream.count == 128 + 16 * 384 + 128)
            let mrtd = measurement.finalize()
            #expect(mrtd == SHA384.hash(stream))
        }

        @Test func addingEveryPageBeforeExtendingGivesADifferentMRTD() throws {
            let pages = [[UInt8](repeating: 1, count: 4096), [UInt8](repeating: 2, count: 4096)]
            var interleaved = TDXMeasurement(), twoPass = TDXMeasurement()
            for (index, page) in pages.enumerated() {
                try page.withUnsafeBytes { try interleaved.addPage(gpa: UInt64(index) * 4096, contents: $0, measure: true) }
            }
            for index in pages.indices { twoPass.pageAdd(gpa: UInt64(index) * 4096) }
            for (index, page) in pages.enumerated() {
                for chunk in 0..<16 {
                    try page[(chunk * 256)..<((chunk + 1) * 256)].withUnsafeBytes {
                        try twoPass.mrExtend(gpa: UInt64(index) * 4096 + UInt64(chunk) * 256, chunk: $0)
                    }
                }
            }
            let (first, second) = (interleaved.finalize(), twoPass.finalize())
            #expect(first != second)
        }

        @Test func misalignedOperationsAreRejected() {
            var measurement = TDXMeasurement()
            #expect(throws: TDXMeasurementError.unalignedPage(gpa: 0x1800)) { try measurement.addPage(gpa: 0x1800, contents: nil, measure: false) }
            #expect(throws: TDXMeasurementError.unalignedExtend(gpa: 0x80)) {
                try [UInt8](repeating: 0, count: 256).withUnsafeBytes { try measurement.mrExtend(gpa: 0x80, chunk: $0) }
            }
            #expect(throws: TDXMeasurementError.wrongChunkLength(gpa: 0x100, length: 128)) {
                try [UInt8](repeating: 0, count: 128).withUnsafeBytes { try measurement.mrExtend(gpa: 0x100, chunk: $0) }
            }
            let mrtd = measurement.finalize()
            #expect(mrtd == SHA384.hash([]))
        }

        /// Patches bookworm's TDVF section 2 (TempMem at 0x810000, 16 pages).
        func patchedSection2(attributes: UInt32? = nil, type: UInt32? = nil) -> [UInt8] {
            var bytes = V.bytes(V.bookworm)
            let section = 0x1FF7C0 + 16 + 2 * 32
            if let attributes { for byte in 0..<4 { bytes[section + 28 + byte] = UInt8(truncatingIfNeeded: attributes >> (8 * UInt32(byte))) } }
            if let type { for byte in 0..<4 { bytes[section + 24 + byte] = UInt8(truncatingIfNeeded: type >> (8 * UInt32(byte))) } }
            return bytes
        }

        @Test func pageAugSectionsStayOutOfMRTD() throws {
            let plain = try TDVFImage(bytes: V.bytes(V.bookworm))
            let aug = try TDVFImage(bytes: patchedSection2(attributes: TDVFSection.pageAug))
            #expect(aug.mrtd != plain.mrtd)
            // Dropping the section by hand gives the same value as PAGE.AUG.
            // The firmware volume covers the metadata, so its bytes are the patched image's.
            var measurement = TDXMeasurement()
            let bytes = aug.bytes
            try bytes.withUnsafeBytes { raw in
                for (index, section) in plain.sections.enumerated() where index != 2 {
                    for page in 0..<(section.memoryDataSize / 4096) {
                        let offset = Int(section.dataOffset) + Int(page) * 4096
                        let contents = section.type == .bfv || section.type == .cfv
                            ? UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 4096)]) : nil
                        try measurement.addPage(gpa: section.memoryAddress + page * 4096, contents: contents, measure: section.isExtended)
                    }
                }
            }
            let mrtd = measurement.finalize()
            #expect(mrtd == aug.mrtd)
        }

        @Test func extendedTempMemIsMeasuredAsZeros() throws {
            let extended = try TDVFImage(bytes: patchedSection2(attributes: TDVFSection.mrExtend))
            #expect(try extended.mrtd != TDVFImage(bytes: V.bytes(V.bookworm)).mrtd)
        }

        @Test func invalidSectionsAreRejectedNamingTheSection() {
            #expect(throws: TDVFError.invalidSection(index: 2, reason: "unsupported section type 9")) { try TDVFImage(bytes: patchedSection2(type: 9)) }
            #expect(throws: TDVFError.invalidSection(index: 2,
                                                     reason: "attributes 0x3 ask for MR.EXTEND of pages that PAGE.AUG adds after build time")) {
                try TDVFImage(bytes: patchedSection2(attributes: 3))
            }
        }

        @Test func imageWithoutTDXMetadataIsRejected() {
            #expect(throws: TDVFError.noMetadataOffset) { try TDVFImage(bytes: V.bytes(V.bookworm).replacing(at: 0x1FFF5C + 2, with: [0])) }
        }
    }
}

extension Array where Element == UInt8 {
    func replacing(at offset: Int, with bytes: [UInt8]) -> [UInt8] {
        var copy = self
        copy.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        return copy
    }
}
