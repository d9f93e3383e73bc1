import LaunchMeasurement

/// `snpvmm id-block`: an SEV-SNP ID block and its authentication
/// information for a launch measurement, with the flags and output of
/// sev-snp-measure's `snp-create-id-block`, for QEMU's `sev-snp-guest`
/// `id-block`/`id-auth` properties or `snpvmm run --id-block/--id-auth`.
enum IDBlockCommand {
    static let summary = """
        id-block --measurement B64 --idkey PEM --authorkey PEM
                            sign an SEV-SNP ID block for a launch measurement
                            (as snp-create-id-block); see id-block --help
        """

    static let help = """
        usage: snpvmm id-block --measurement B64 --idkey PEM --authorkey PEM [--policy V]

        Prints the ID block (96 bytes) and ID authentication information (4096
        bytes) that SNP_LAUNCH_FINISH checks, as snp-create-id-block prints them:

          id-block=<base64>,id-auth=<base64>
          id_key_hash: <base64 SHA-384 of the ID public key>
          author_key: <base64 SHA-384 of the author public key>

          --measurement B64  the expected launch measurement, 48 bytes in base64
                             (snpvmm measure --output-format base64)
          --idkey PEM        the ID key: an ECDSA P-384 private key (SEC1 or PKCS#8)
          --authorkey PEM    the author key, which signs the ID key; also P-384
          --policy V         the guest policy the block names (default 0x30000, the
                             default of QEMU's sev-snp-guest); the launch's policy
                             must equal it

        The signatures are ECDSA with SHA-384 through libcrypto, R and S stored
        little-endian in 72 bytes each. ECDSA draws a fresh nonce, so id-auth
        differs between runs; the block and key digests do not.
        Exit status: 0 on success, 2 for a usage error or a key file that is not an
        unencrypted ECDSA P-384 private key.
        """

    static let parser = ArgumentParser(options: [
        ArgumentParser.help,
        OptionSpec(names: ["--measurement"], takesValue: true), OptionSpec(names: ["--idkey"], takesValue: true),
        OptionSpec(names: ["--authorkey"], takesValue: true), OptionSpec(names: ["--policy"], takesValue: true),
    ], dialect: .snpvmm(command: "id-block"))

    static func run(_ arguments: [String]) -> ExitCode {
        let given: ParsedArguments
        do { given = try parser.parse(arguments) } catch { fail("id-block: \(error)", status: .usage) }
        if given.has("--help") {
            print(help)
            return .success
        }
        guard let measurement = given["--measurement"] else { fail("id-block: --measurement B64 is required", status: .usage) }
        guard let idKeyPath = given["--idkey"], let authorKeyPath = given["--authorkey"] else {
            fail("id-block: missing key files for id block: give --idkey PEM and --authorkey PEM", status: .usage)
        }
        guard let digest = Base64.decode(measurement), digest.count == 48 else {
            fail("id-block: --measurement '\(measurement)' is not 48 bytes of base64 (a SHA-384 launch measurement)",
                 status: .usage)
        }
        var policy = SNPPolicyBits.launchDefault
        if let text = given["--policy"] {
            let hex = text.hasPrefix("0x") || text.hasPrefix("0X")
            guard let value = UInt64(hex ? text.dropFirst(2) : Substring(text), radix: hex ? 16 : 10) else {
                fail("id-block: --policy '\(text)' is not a number", status: .usage)
            }
            policy = SNPPolicyBits(rawValue: value)
        }
        do {
            let idKey = try SNPSigningKey(pemFile: idKeyPath)
            let authorKey = try SNPSigningKey(pemFile: authorKeyPath)
            let block = SNPIDBlock(launchDigest: SHA384Digest(bytes: digest), policy: policy)
            let auth = try SNPIDAuth(signing: block, idKey: idKey, authorKey: authorKey)
            print("id-block=\(Base64.encode(block.bytes)),id-auth=\(Base64.encode(auth.bytes))")
            print("id_key_hash: \(Base64.encode(idKey.publicKeyDigest.bytes))")
            print("author_key: \(Base64.encode(authorKey.publicKeyDigest.bytes))")
            return .success
        } catch {
            // A key that cannot be read or is not P-384 is bad input, like a bad flag.
            fail("id-block: \(error)", status: .usage)
        }
    }
}
