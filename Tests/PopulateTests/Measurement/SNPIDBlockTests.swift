import Foundation
import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate
import Testing

/// SEV-SNP ID blocks: the bytes sev-snp-measure's snp-create-id-block makes
/// for the committed test keys (snp-id-blocks.json), and the fake firmware's
/// own check at LAUNCH_FINISH, which verifies signatures with code apart from
/// LaunchMeasurement's.
@Suite struct SNPIDBlockTests {
    typealias V = MeasurementVectors

    struct Case: Decodable, CustomTestStringConvertible, Sendable {
        let name: String
        let args: [String]
        let stdout: String
        var testDescription: String { name }
        func value(_ flag: String) -> String { args[args.firstIndex(of: flag)! + 1] }

        /// The id-block and id-auth values of the first line, decoded.
        var block: [UInt8] { Base64.decode(field("id-block"))! }
        var auth: [UInt8] { Base64.decode(field("id-auth"))! }
        var measurement: [UInt8] { Base64.decode(value("--measurement"))! }
        private func field(_ name: String) -> String {
            let first = stdout.split(separator: "\n")[0]
            let part = first.split(separator: ",").first { $0.hasPrefix(name + "=") }!
            return String(part.dropFirst(name.count + 1))
        }
    }

    struct File: Decodable {
        struct WrongCurve: Decodable { let args: [String]; let status: Int32; let stderrLastLine: String }
        let cases: [Case]
        let wrongCurve: WrongCurve
    }

    static let file = V.load("snp-id-blocks.json", as: File.self)
    static let cases = file.cases
    /// The firmware-launch matrix's first case (bookworm OVMF, 1 vCPU, EPYC): the measurement cases[0] signs.
    static let signedLaunch = (image: V.bookworm, vcpus: 1, vcpuType: "EPYC")

    /// The ID_AUTH bytes outside the two signatures, which ECDSA's fresh nonce makes differ between runs.
    static func withoutSignatures(_ auth: [UInt8]) -> [UInt8] {
        Array(auth[0..<0x40]) + Array(auth[0x240..<0x680]) + Array(auth[0x880...])
    }

    static func launchSignedMeasurement(_ finish: SNPLaunchFinish, fake: FakeKVM = FakeKVM(profile: .snpHost)) throws -> VM {
        try FirmwareLaunchTests.launch(image: signedLaunch.image, vcpus: signedLaunch.vcpus, vcpuType: signedLaunch.vcpuType,
                                       kernel: false, initrd: false, append: nil, finish: finish, fake: fake).vm
    }

    /// The firmware status a launch of the signed measurement ended with; nil when it finished.
    static func launchStatus(block: [UInt8], auth: [UInt8], authorKey: Bool) -> SEVFirmwareStatus? {
        do {
            _ = try launchSignedMeasurement(SNPLaunchFinish(idBlock: block, idAuth: auth, authKeyEnabled: authorKey))
            return nil
        } catch let error as LaunchError {
            return error.kvmError?.sevStatus
        } catch {
            Issue.record("unexpected \(error)")
            return nil
        }
    }

    @Test(arguments: cases)
    func theBlockAndKeyDigestsAreSnpCreateIDBlocksBytes(_ testCase: Case) throws {
        let idKey = try SNPSigningKey(pemFile: V.path(testCase.value("--idkey")))
        let authorKey = try SNPSigningKey(pemFile: V.path(testCase.value("--authorkey")))
        let block = SNPIDBlock(launchDigest: SHA384Digest(bytes: testCase.measurement))
        #expect(block.bytes == testCase.block)
        #expect(try SNPIDBlock(bytes: testCase.block) == block)
        let lines = testCase.stdout.split(separator: "\n")
        #expect(lines[1] == "id_key_hash: " + Base64.encode(idKey.publicKeyDigest.bytes))
        #expect(lines[2] == "author_key: " + Base64.encode(authorKey.publicKeyDigest.bytes))
        let auth = try SNPIDAuth(signing: block, idKey: idKey, authorKey: authorKey)
        #expect(Self.withoutSignatures(auth.bytes) == Self.withoutSignatures(testCase.auth))
    }

    @Test(arguments: cases)
    func theIDBlockCommandPrintsSnpCreateIDBlocksLines(_ testCase: Case) throws {
        let result = try SNPVMMExecutable.run(["id-block"] + testCase.args)
        #expect(result.status == 0, "\(result.stderr)")
        let ours = result.stdout.split(separator: "\n"), theirs = testCase.stdout.split(separator: "\n")
        try #require(ours.count == 3)
        #expect(ours[1...] == theirs[1...])
        let printed = Case(name: "", args: testCase.args, stdout: result.stdout)
        #expect(printed.block == testCase.block)
        #expect(Self.withoutSignatures(printed.auth) == Self.withoutSignatures(testCase.auth))
        #expect(printed.auth != testCase.auth, "ECDSA signatures draw a fresh nonce; equal ones mean no signing happened")
    }

    @Test func theFakeFirmwareAcceptsSnpCreateIDBlocksSignaturesAndReportsTheKeyDigests() throws {
        let signed = Self.cases[0]
        let fake = FakeKVM(profile: .snpHost)
        let vm = try Self.launchSignedMeasurement(
            SNPLaunchFinish(idBlock: signed.block, idAuth: signed.auth, authKeyEnabled: true), fake: fake)
        let report = try #require(fake.snpReportFields(of: vm))
        #expect(report.idBlock)
        let lines = signed.stdout.split(separator: "\n")
        #expect(lines[1] == "id_key_hash: " + Base64.encode(try #require(report.idKeyDigest)))
        #expect(lines[2] == "author_key: " + Base64.encode(try #require(report.authorKeyDigest)))
    }

    @Test func theFakeFirmwareAcceptsBlocksThisLibrarySigns() throws {
        let expected = Hex.decode(FirmwareLaunchTests.matrix[0].measurement)!
        let block = SNPIDBlock(launchDigest: SHA384Digest(bytes: expected))
        let auth = try SNPIDAuth(signing: block, idKey: try SNPSigningKey(pemFile: V.path("inputs/author-key.pem")),
                                 authorKey: try SNPSigningKey(pemFile: V.path("inputs/id-key.pem")))
        #expect(Self.launchStatus(block: block.bytes, auth: auth.bytes, authorKey: true) == nil)
    }

    @Test func aTamperedIDBlockSignatureIsRefusedWithBadSignature() {
        var auth = Self.cases[0].auth
        auth[0x40] ^= 1  // R of the ID key's signature over the block
        #expect(Self.launchStatus(block: Self.cases[0].block, auth: auth, authorKey: false) == .badSignature)
    }

    @Test func aTamperedBlockIsRefusedWithBadSignature() {
        var block = Self.cases[0].block
        block[0x30] ^= 1  // FAMILY_ID: signed, but not compared with the launch
        #expect(Self.launchStatus(block: block, auth: Self.cases[0].auth, authorKey: false) == .badSignature)
    }

    @Test func theAuthorKeysSignatureIsCheckedOnlyWithAuthKeyEn() {
        var auth = Self.cases[0].auth
        auth[0x680 + 5] ^= 0x80  // R of the author key's signature over the ID key
        #expect(Self.launchStatus(block: Self.cases[0].block, auth: auth, authorKey: true) == .badSignature)
        #expect(Self.launchStatus(block: Self.cases[0].block, auth: auth, authorKey: false) == nil)
    }

    @Test func anIDBlockOfAnotherDigestIsRefusedWithBadMeasurement() {
        let other = Self.cases[1]  // signs the sid kernel-hashes launch
        #expect(Self.launchStatus(block: other.block, auth: other.auth, authorKey: true) == .badMeasurement)
    }

    @Test func anIDBlockOfAnotherPolicyIsRefusedWithPolicyFailure() throws {
        let expected = Hex.decode(FirmwareLaunchTests.matrix[0].measurement)!
        let debugPolicy = SNPPolicyBits(rawValue: SNPPolicyBits.launchDefault.rawValue | 1 << 19)
        let block = SNPIDBlock(launchDigest: SHA384Digest(bytes: expected), policy: debugPolicy)
        let key = try SNPSigningKey(pemFile: V.path("inputs/id-key.pem"))
        let auth = try SNPIDAuth(signing: block, idKey: key, authorKey: key)
        #expect(Self.launchStatus(block: block.bytes, auth: auth.bytes, authorKey: true) == .policyFailure)
    }

    @Test func aP256KeyIsRefusedNamingTheFileAndCurve() throws {
        #expect(Self.file.wrongCurve.status != 0)  // snp-create-id-block: "SNP only supports the EC curve P-384"
        #expect(Self.file.wrongCurve.stderrLastLine.contains("P-384"))
        let path = try V.path("inputs/p256-key.pem")
        #expect(throws: SNPIDBlockError.wrongKeyType(path: path, found: "an EC key on prime256v1")) {
            try SNPSigningKey(pemFile: path)
        }
        let result = try SNPVMMExecutable.run(["id-block"] + Self.file.wrongCurve.args)
        #expect(result.status == 2)
        #expect(result.stderr == "snpvmm: id-block: inputs/p256-key.pem: an EC key on prime256v1; "
            + "SNP ID and author keys are ECDSA P-384 (secp384r1)\n")
    }

    @Test(arguments: [
        (["--idkey", "inputs/id-key.pem", "--authorkey", "inputs/author-key.pem"], 2, "--measurement B64 is required"),
        (["--measurement", "AAAA", "--idkey", "inputs/id-key.pem", "--authorkey", "inputs/author-key.pem"], 2,
         "--measurement 'AAAA' is not 48 bytes of base64"),
        (["--measurement", String(repeating: "A", count: 64), "--idkey", "inputs/id-key.pem"], 2, "missing key files for id block"),
        (["--measurement", String(repeating: "A", count: 64), "--idkey", "inputs/kernel.bin", "--authorkey", "inputs/id-key.pem"],
         2, "inputs/kernel.bin: no unencrypted PEM private key"),
        (["--measurement", String(repeating: "A", count: 64), "--idkey", "inputs/absent.pem", "--authorkey", "inputs/id-key.pem"],
         2, "inputs/absent.pem: cannot open inputs/absent.pem: No such file or directory"),
    ] as [([String], Int32, String)])
    func idBlockMistakesAreOneLineErrors(arguments: [String], status: Int32, mentions: String) throws {
        let result = try SNPVMMExecutable.run(["id-block"] + arguments)
        #expect(result.status == status)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains(mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }

    @Test func theMeasurementMatrixCarriesEachCombinationsIDBlock() throws {
        let signed = Self.cases[0]
        let result = try SNPVMMExecutable.run([
            "measure", "--mode", "snp", "--ovmf", Self.signedLaunch.image, "--vcpus", "1-2", "--vcpu-type", "EPYC", "--json",
            "--idkey", signed.value("--idkey"), "--authorkey", signed.value("--authorkey"),
        ])
        #expect(result.status == 0, "\(result.stderr)")
        struct Record: Decodable { let vcpus: Int; let measurement: String; let id_block, id_auth, id_key_hash, author_key: String }
        let records = try JSONDecoder().decode([Record].self, from: Data(result.stdout.utf8))
        try #require(records.count == 2)
        #expect(Base64.decode(records[0].id_block) == signed.block)
        let lines = signed.stdout.split(separator: "\n")
        #expect(lines[1] == "id_key_hash: " + records[0].id_key_hash)
        #expect(lines[2] == "author_key: " + records[0].author_key)
        #expect(Self.launchStatus(block: Base64.decode(records[0].id_block)!, auth: Base64.decode(records[0].id_auth)!,
                                  authorKey: true) == nil)
        // The two-vCPU record signs its own measurement, which the one-vCPU launch refuses.
        #expect(Array(Base64.decode(records[1].id_block)!.prefix(48)) == Hex.decode(records[1].measurement))
        #expect(Self.launchStatus(block: Base64.decode(records[1].id_block)!, auth: Base64.decode(records[1].id_auth)!,
                                  authorKey: true) == .badMeasurement)
    }

    @Test func aMatrixWithAKeyOfTheWrongCurveIsAOneLineUsageError() throws {
        let result = try SNPVMMExecutable.run([
            "measure", "--mode", "snp", "--ovmf", Self.signedLaunch.image, "--vcpus", "1-2", "--vcpu-type", "EPYC", "--json",
            "--idkey", "inputs/p256-key.pem", "--authorkey", "inputs/author-key.pem",
        ])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr == "snpvmm measure: error: inputs/p256-key.pem: an EC key on prime256v1; "
            + "SNP ID and author keys are ECDSA P-384 (secp384r1)\n")
    }

    // MARK: snpvmm run --id-block --id-auth

    static func runSigned(_ block: [UInt8], _ auth: [UInt8], _ extra: [String] = []) throws -> SNPVMMExecutable.Result {
        try SNPVMMExecutable.run([
            "run", "--firmware", signedLaunch.image, "--platform", "snp", "--emulate", "--launch-only",
            "--vcpu-type", signedLaunch.vcpuType, "--id-block", Base64.encode(block), "--id-auth", Base64.encode(auth),
        ] + extra)
    }

    @Test func runWithAMatchingIDBlockPrintsTheMeasurement() throws {
        let signed = Self.cases[0]
        let result = try Self.runSigned(signed.block, signed.auth, ["--author-key-enabled"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == FirmwareLaunchTests.matrix[0].measurement + "\n")
        #expect(Hex.decode(FirmwareLaunchTests.matrix[0].measurement) == signed.measurement)
    }

    @Test func runReportsARefusedIDBlockInOneLine() throws {
        let other = Self.cases[1]
        let result = try Self.runSigned(other.block, other.auth)
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr == "snpvmm: run: LAUNCH_FINISH refused the ID block with firmware status BAD_MEASUREMENT (0xb): "
            + "the ID block names measurement \(Hex.encode(other.measurement)), not this launch's\n")
        var auth = Self.cases[0].auth
        auth[0x40] ^= 1
        let tampered = try Self.runSigned(Self.cases[0].block, auth)
        #expect(tampered.status == 1)
        #expect(tampered.stderr.hasPrefix("snpvmm: run: LAUNCH_FINISH refused the ID block with firmware status BAD_SIGNATURE (0xa)"))
        #expect(tampered.stderr.split(separator: "\n").count == 1)
    }

    @Test(arguments: [
        (["--id-block", Base64.encode([UInt8](repeating: 0, count: 95)), "--id-auth", Base64.encode([UInt8](repeating: 0, count: 4096))],
         "--id-block is 95 bytes; SNP_LAUNCH_FINISH takes 96"),
        (["--id-block", Base64.encode([UInt8](repeating: 0, count: 96)), "--id-auth", Base64.encode([UInt8](repeating: 0, count: 4000))],
         "--id-auth is 4000 bytes; SNP_LAUNCH_FINISH takes 4096"),
        (["--id-block", "not base64!", "--id-auth", "AAAA"], "--id-block is not base64"),
        (["--id-block", Base64.encode([UInt8](repeating: 0, count: 96))], "--id-block and --id-auth go together"),
        (["--author-key-enabled"], "--author-key-enabled applies to an --id-block"),
    ])
    func runIDBlockMistakesAreUsageErrors(arguments: [String], mentions: String) throws {
        let result = try SNPVMMExecutable.run([
            "run", "--firmware", V.bookworm, "--platform", "snp", "--emulate", "--launch-only", "--vcpu-type", "EPYC",
        ] + arguments)
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains(mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }

    @Test func anIDBlockOnAKernelRunIsAUsageError() throws {
        let result = try SNPVMMExecutable.run(["run", "--kernel", "inputs/kernel.bin", "--platform", "snp", "--emulate",
                                               "--id-block", "AAAA", "--id-auth", "AAAA"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("--id-block applies to an SEV-SNP firmware, plan or IGVM launch"), "\(result.stderr)")
    }

    @Test func base64AgreesWithFoundation() {
        for count in 0..<70 {
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let text = Data(bytes).base64EncodedString()
            #expect(Base64.encode(bytes) == text)
            #expect(Base64.decode(text) == bytes)
        }
        #expect(Base64.decode("AAA") == nil)
        #expect(Base64.decode("A=AA") == nil)
        #expect(Base64.decode("AA==AAAA") == nil)
    }
}
