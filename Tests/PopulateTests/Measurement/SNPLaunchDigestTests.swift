import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

extension MeasurementTests {
    /// The PAGE_INFO chain: golden bytes, and the batch form against page-by-page links.
    @Suite struct SNPLaunchDigestTests {
        /// PAGE_INFO written out by hand, field by field.
        static func pageInfo(current: SHA384Digest, contents: SHA384Digest?, type: UInt8, gpa: UInt64) -> [UInt8] {
            var info = current.bytes                                     // 0x00 DIGEST_CUR
            info += contents?.bytes ?? [UInt8](repeating: 0, count: 48)  // 0x30 CONTENTS
            info += [0x70, 0x00]                                         // 0x60 LENGTH
            info += [type, 0]                                            // 0x62 PAGE_TYPE, 0x63 IMI_PAGE
            info += [0, 0, 0, 0]                                         // 0x64 VMPL3..VMPL1 perms, reserved
            info += (0..<8).map { UInt8(truncatingIfNeeded: gpa >> (8 * UInt64($0))) } // 0x68 GPA
            return info
        }

        @Test func linkHashesPageInfoWithDigestContentsLengthTypeAndGPA() {
            let current = SHA384Digest(bytes: (0..<48).map { UInt8($0) })
            let contents = SHA384Digest(bytes: (0..<48).map { UInt8(0x80 + $0) })
            var digest = SNPLaunchDigest(start: current)
            digest.addPage(gpa: 0x1122_3344_5566_7000, type: .normal, contentsDigest: contents)
            let info = Self.pageInfo(current: current, contents: contents, type: 1, gpa: 0x1122_3344_5566_7000)
            #expect(info.count == 0x70)
            #expect(digest.value == SHA384.hash(info))
        }

        @Test func zeroPageLinkHashesPageInfoWithZeroContents() throws {
            var digest = SNPLaunchDigest()
            try digest.addPage(gpa: 0x800000, type: .zero, contents: nil)
            var expected = [UInt8](repeating: 0, count: 0x70)
            expected[0x60] = 0x70
            expected[0x62] = 0x03
            expected[0x6A] = 0x80
            #expect(digest.value == SHA384.hash(expected))
        }

        @Test func normalPageContentsAreHashedIntoTheLink() throws {
            let page = [UInt8](repeating: 0xA5, count: 4096)
            var digest = SNPLaunchDigest()
            try page.withUnsafeBytes { try digest.addPage(gpa: 0x1000, type: .normal, contents: $0) }
            #expect(digest.value == SHA384.hash(Self.pageInfo(current: .zero, contents: SHA384.hash(page), type: 1, gpa: 0x1000)))
        }

        @Test func batchOfNormalPagesEqualsOneLinkPerPageInOrder() throws {
            // 300 pages: more than one parallel task, and a partial last task.
            let bytes = (0..<(300 * 4096)).map { UInt8(truncatingIfNeeded: ($0 &* 2654435761) >> 13) }
            var batch = SNPLaunchDigest(), single = SNPLaunchDigest()
            try batch.addNormalPages(gpa: 0xFFE0_0000, contents: bytes)
            try bytes.withUnsafeBytes { raw in
                for page in 0..<300 {
                    try single.addPage(gpa: 0xFFE0_0000 + UInt64(page) * 4096, type: .normal,
                                       contents: UnsafeRawBufferPointer(rebasing: raw[(page * 4096)..<((page + 1) * 4096)]))
                }
            }
            #expect(batch == single)
            var reordered = SNPLaunchDigest()
            try reordered.addNormalPages(gpa: 0xFFE0_0000, contents: Array(bytes[4096...] + bytes[..<4096]))
            #expect(reordered != batch)
        }

        @Test func startValueSeedsTheChain() {
            var fromZero = SNPLaunchDigest(), seeded = SNPLaunchDigest(start: SHA384.hash([1]))
            fromZero.addPages(gpa: 0, count: 1, type: .secrets)
            seeded.addPages(gpa: 0, count: 1, type: .secrets)
            #expect(fromZero != seeded)
        }

        @Test(arguments: [SNPPageType.zero, .unmeasured, .secrets, .cpuid])
        func contentlessTypesDifferOnlyByTypeCode(type: SNPPageType) {
            var digest = SNPLaunchDigest()
            digest.addPages(gpa: 0x5000, count: 1, type: type)
            #expect(digest.value == SHA384.hash(Self.pageInfo(current: .zero, contents: nil, type: type.rawValue, gpa: 0x5000)))
        }

        @Test func normalPageWithoutFullContentsIsRejected() {
            var digest = SNPLaunchDigest()
            #expect(throws: SNPLaunchDigestError.missingContents(gpa: 0x1000, type: .normal)) {
                try digest.addPage(gpa: 0x1000, type: .normal, contents: nil)
            }
            #expect(throws: SNPLaunchDigestError.wrongPageLength(gpa: 0x2000, type: .vmsa, length: 100)) {
                try [UInt8](repeating: 0, count: 100).withUnsafeBytes { try digest.addPage(gpa: 0x2000, type: .vmsa, contents: $0) }
            }
            #expect(throws: SNPLaunchDigestError.notWholePages(gpa: 0, length: 4097)) {
                try digest.addNormalPages(gpa: 0, contents: [UInt8](repeating: 0, count: 4097))
            }
            #expect(digest == SNPLaunchDigest())
        }

        @Test func vmsaPagesUseTheRMPsVMSAAddress() throws {
            let page = [UInt8](repeating: 7, count: 4096)
            var digest = SNPLaunchDigest()
            try digest.addVMSA(page)
            #expect(digest.value == SHA384.hash(Self.pageInfo(current: .zero, contents: SHA384.hash(page), type: 2, gpa: 0xFFFF_FFFF_F000)))
        }
    }
}
