import CLibcrypto

// SEV-SNP ID blocks (SEV-SNP firmware ABI, SNP_LAUNCH_FINISH, tables
// ID_BLOCK, ID_AUTH, ECDSA public key and ECDSA signature). A guest owner
// signs the launch digest and policy they expect with an ID key, and the ID
// key with an author key; the firmware checks both at launch finish and puts
// the keys' digests in every attestation report.

/// The 96-byte ID block: the launch digest and policy a guest owner expects.
public struct SNPIDBlock: Equatable, Sendable {
    public static let size = 96

    public var launchDigest: SHA384Digest
    /// FAMILY_ID and IMAGE_ID: 16 bytes each, chosen by the guest owner; reported back in attestation.
    public var familyID: [UInt8]
    public var imageID: [UInt8]
    /// VERSION: the firmware accepts 1.
    public var version: UInt32
    public var guestSVN: UInt32
    public var policy: SNPPolicyBits

    public init(launchDigest: SHA384Digest, policy: SNPPolicyBits = .launchDefault,
                familyID: [UInt8] = [UInt8](repeating: 0, count: 16), imageID: [UInt8] = [UInt8](repeating: 0, count: 16),
                version: UInt32 = 1, guestSVN: UInt32 = 0) {
        precondition(familyID.count == 16 && imageID.count == 16, "FAMILY_ID and IMAGE_ID are 16 bytes")
        self.launchDigest = launchDigest
        self.familyID = familyID
        self.imageID = imageID
        self.version = version
        self.guestSVN = guestSVN
        self.policy = policy
    }

    /// Reads an ID block as LAUNCH_FINISH takes it.
    public init(bytes: [UInt8]) throws(SNPIDBlockError) {
        guard bytes.count == Self.size else { throw .wrongSize(what: "ID block", bytes: bytes.count, expected: Self.size) }
        launchDigest = SHA384Digest(bytes: Array(bytes[0..<48]))
        familyID = Array(bytes[0x30..<0x40])
        imageID = Array(bytes[0x40..<0x50])
        version = bytes.loadLE(UInt32.self, at: 0x50)
        guestSVN = bytes.loadLE(UInt32.self, at: 0x54)
        policy = SNPPolicyBits(rawValue: bytes.loadLE(UInt64.self, at: 0x58))
    }

    /// The block as LAUNCH_FINISH takes it and as the ID key signs it.
    public var bytes: [UInt8] {
        var out = launchDigest.bytes + familyID + imageID + [UInt8](repeating: 0, count: 16)
        out.storeLE(version, at: 0x50)
        out.storeLE(guestSVN, at: 0x54)
        out.storeLE(policy.rawValue, at: 0x58)
        return out
    }
}

/// A guest policy as the ID block carries it (64 bits, little-endian).
///
/// LaunchMeasurement does not depend on the KVM layer, so this is the raw
/// value; `SNPGuestPolicy` in GuestMemfd names its bits.
public struct SNPPolicyBits: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// 0x30000: SMT allowed and the reserved bit 17 set; QEMU's and sev-snp-measure's default.
    public static let launchDefault = SNPPolicyBits(rawValue: 0x30000)
    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// The 4096-byte ID authentication information: the signature over the ID
/// block, the ID key, the author key's signature over the ID key, and the
/// author key.
public struct SNPIDAuth: Equatable, Sendable {
    public static let size = 4096
    /// ID_KEY_ALGO and AUTH_KEY_ALGO: 1 is ECDSA P-384 with SHA-384, the only one defined.
    public static let ecdsaP384SHA384: UInt32 = 1

    static let idBlockSignatureOffset = 0x40
    static let idKeyOffset = 0x240
    static let idKeySignatureOffset = 0x680
    static let authorKeyOffset = 0x880

    public private(set) var bytes: [UInt8]

    public init(bytes: [UInt8]) throws(SNPIDBlockError) {
        guard bytes.count == Self.size else { throw .wrongSize(what: "ID auth", bytes: bytes.count, expected: Self.size) }
        self.bytes = bytes
    }

    /// Signs `block` with `idKey`, and `idKey` with `authorKey`.
    public init(signing block: SNPIDBlock, idKey: SNPSigningKey, authorKey: SNPSigningKey) throws(SNPIDBlockError) {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.storeLE(Self.ecdsaP384SHA384, at: 0)
        bytes.storeLE(Self.ecdsaP384SHA384, at: 4)
        bytes.replaceSubrange(Self.idBlockSignatureOffset..<Self.idBlockSignatureOffset + 512, with: try idKey.sign(block.bytes))
        bytes.replaceSubrange(Self.idKeyOffset..<Self.idKeyOffset + 1028, with: idKey.publicKey)
        bytes.replaceSubrange(Self.idKeySignatureOffset..<Self.idKeySignatureOffset + 512, with: try authorKey.sign(idKey.publicKey))
        bytes.replaceSubrange(Self.authorKeyOffset..<Self.authorKeyOffset + 1028, with: authorKey.publicKey)
        self.bytes = bytes
    }

    /// The ID public key in the firmware's layout (1028 bytes).
    public var idKey: [UInt8] { Array(bytes[Self.idKeyOffset..<Self.idKeyOffset + 1028]) }
    /// The author public key in the firmware's layout (1028 bytes).
    public var authorKey: [UInt8] { Array(bytes[Self.authorKeyOffset..<Self.authorKeyOffset + 1028]) }
}

/// Why an ID block could not be made or read.
public enum SNPIDBlockError: Error, Equatable, Sendable, CustomStringConvertible {
    case wrongSize(what: String, bytes: Int, expected: Int)
    /// The key file could not be read or holds no private key.
    case unreadableKey(path: String, reason: String)
    /// The key is not an EC key on P-384.
    case wrongKeyType(path: String, found: String)
    case signingFailed(reason: String)

    public var description: String {
        switch self {
        case let .wrongSize(what, bytes, expected):
            "\(what) is \(bytes) bytes; SNP_LAUNCH_FINISH takes \(expected)"
        case let .unreadableKey(path, reason):
            "\(path): \(reason)"
        case let .wrongKeyType(path, found):
            "\(path): \(found); SNP ID and author keys are ECDSA P-384 (secp384r1)"
        case let .signingFailed(reason):
            "ECDSA P-384 signing failed: \(reason)"
        }
    }
}

/// An ECDSA P-384 private key from a PEM file (SEC1 or PKCS#8, unencrypted),
/// that signs in the firmware's layout.
public final class SNPSigningKey: @unchecked Sendable {
    private let key: OpaquePointer
    /// The public key in the firmware's layout: curve 2 (P-384), then Qx and
    /// Qy, 72 bytes each, little-endian, then zeros to 1028 bytes.
    public let publicKey: [UInt8]

    /// The SHA-384 of `publicKey`: ID_KEY_DIGEST or AUTHOR_KEY_DIGEST in an attestation report.
    public var publicKeyDigest: SHA384Digest { SHA384.hash(publicKey) }

    public convenience init(pemFile path: String) throws(SNPIDBlockError) {
        let pem: [UInt8]
        do { pem = try FileBytes.read(path) } catch { throw .unreadableKey(path: path, reason: "\(error)") }
        try self.init(pem: pem, name: path)
    }

    /// - Parameter name: how errors name the key (its file).
    public init(pem: [UInt8], name: String = "key") throws(SNPIDBlockError) {
        let loaded: OpaquePointer? = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        ERR_clear_error()
        guard let loaded else { throw .unreadableKey(path: name, reason: "no unencrypted PEM private key") }
        guard EVP_PKEY_is_a(loaded, "EC") == 1 else {
            let type = EVP_PKEY_get0_type_name(loaded).map { String(cString: $0) } ?? "unknown"
            EVP_PKEY_free(loaded)
            throw .wrongKeyType(path: name, found: "a \(type) key")
        }
        var group = [CChar](repeating: 0, count: 64)
        var groupLength = 0
        let read = EVP_PKEY_get_utf8_string_param(loaded, "group", &group, group.count, &groupLength) == 1
        let groupName = read ? String(decoding: group.prefix(groupLength).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        guard groupName == "secp384r1" else {
            EVP_PKEY_free(loaded)
            throw .wrongKeyType(path: name, found: "an EC key on \(groupName.isEmpty ? "an unnamed curve" : groupName)")
        }
        var publicKey = [UInt8](repeating: 0, count: 1028)
        publicKey.storeLE(UInt32(2), at: 0)
        for (parameter, offset) in [("qx", 4), ("qy", 76)] {
            var number: OpaquePointer?
            guard EVP_PKEY_get_bn_param(loaded, parameter, &number) == 1, let number else {
                EVP_PKEY_free(loaded)
                throw .unreadableKey(path: name, reason: "libcrypto gives no public \(parameter)")
            }
            publicKey.withUnsafeMutableBufferPointer { out in
                _ = BN_bn2lebinpad(number, out.baseAddress! + offset, 72)
            }
            BN_free(number)
        }
        key = loaded
        self.publicKey = publicKey
    }

    deinit { EVP_PKEY_free(key) }

    /// ECDSA with SHA-384 over `message`, in the firmware's signature layout:
    /// R and S, 72 bytes each, little-endian, then zeros to 512 bytes.
    public func sign(_ message: [UInt8]) throws(SNPIDBlockError) -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else { throw .signingFailed(reason: "out of memory") }
        defer { EVP_MD_CTX_free(context) }
        var der = [UInt8](repeating: 0, count: 256)
        var derLength = der.count
        let signed = message.withUnsafeBytes { raw in
            EVP_DigestSignInit(context, nil, EVP_sha384(), nil, key) == 1
                && EVP_DigestSign(context, &der, &derLength, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), raw.count) == 1
        }
        guard signed else {
            ERR_clear_error()
            throw .signingFailed(reason: "EVP_DigestSign")
        }
        let decoded: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_ECDSA_SIG(nil, &cursor, derLength)
        }
        guard let decoded else { throw .signingFailed(reason: "undecodable DER signature") }
        defer { ECDSA_SIG_free(decoded) }
        var signature = [UInt8](repeating: 0, count: 512)
        signature.withUnsafeMutableBufferPointer { out in
            _ = BN_bn2lebinpad(ECDSA_SIG_get0_r(decoded), out.baseAddress!, 72)
            _ = BN_bn2lebinpad(ECDSA_SIG_get0_s(decoded), out.baseAddress! + 72, 72)
        }
        return signature
    }
}
