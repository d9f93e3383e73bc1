import CLibcrypto
import GuestMemfd

// The fake firmware's own ID-block check at SNP_LAUNCH_FINISH, written from
// the SEV-SNP firmware ABI (SNP_LAUNCH_FINISH; tables ID_BLOCK, ID_AUTH,
// ECDSA public key, ECDSA signature) apart from LaunchMeasurement's
// SNPIDBlock, so that a layout error in either shows as a refused launch.

/// What the firmware checks of ID_BLOCK and ID_AUTH, in the order it checks.
struct FirmwareIDBlockCheck {
    /// ID_BLOCK (96 bytes) and ID_AUTH (4096 bytes) as copied from the host.
    let block: [UInt8]
    let auth: [UInt8]
    /// AUTH_KEY_EN: the author key's signature over the ID key is checked too.
    let authorKeyEnabled: Bool

    /// The firmware status LAUNCH_FINISH fails with, or nil when the block is accepted.
    func status(launchDigest: [UInt8], policy: UInt64) -> SEVFirmwareStatus? {
        let idKeyAlgorithm = word32(auth, 0x00)
        let authorKeyAlgorithm = word32(auth, 0x04)
        // Algorithm 1 (ECDSA P-384 with SHA-384) is the only one the ABI defines.
        guard idKeyAlgorithm == 1, !authorKeyEnabled || authorKeyAlgorithm == 1 else { return .invalidParam }
        let idKey = Array(auth[0x240..<0x240 + 1028])
        guard verify(signature: Array(auth[0x40..<0x40 + 512]), over: block, key: idKey) else { return .badSignature }
        if authorKeyEnabled {
            let authorKey = Array(auth[0x880..<0x880 + 1028])
            guard verify(signature: Array(auth[0x680..<0x680 + 512]), over: idKey, key: authorKey) else { return .badSignature }
        }
        guard Array(block[0..<48]) == launchDigest else { return .badMeasurement }
        guard word64(block, 0x58) == policy else { return .policyFailure }
        return nil
    }

    /// ID_KEY_DIGEST and, with AUTH_KEY_EN, AUTHOR_KEY_DIGEST: SHA-384 of each public key as given.
    var keyDigests: (idKey: [UInt8], authorKey: [UInt8]?) {
        (FirmwareHash.sha384.digest(Array(auth[0x240..<0x240 + 1028])),
         authorKeyEnabled ? FirmwareHash.sha384.digest(Array(auth[0x880..<0x880 + 1028])) : nil)
    }

    private func word32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    private func word64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) }
    }

    /// Verifies an ECDSA P-384/SHA-384 signature (R and S little-endian, 72
    /// bytes each) with a public key in the firmware's layout (curve ID 2,
    /// then Qx and Qy little-endian, 72 bytes each).
    private func verify(signature: [UInt8], over message: [UInt8], key: [UInt8]) -> Bool {
        guard word32(key, 0) == 2 else { return false }
        // P-384 coordinates and scalars are 48 bytes; the upper 24 of each 72-byte field must be zero.
        for start in [4, 76] where key[(start + 48)..<(start + 72)].contains(where: { $0 != 0 }) { return false }
        for start in [0, 72] where signature[(start + 48)..<(start + 72)].contains(where: { $0 != 0 }) { return false }
        // SEC1 uncompressed point: 0x04, X big-endian, Y big-endian.
        let point = [0x04] + key[4..<52].reversed() + key[76..<124].reversed()
        guard let publicKey = Self.publicKey(point: point) else { return false }
        defer { EVP_PKEY_free(publicKey) }
        guard let ecdsa = ECDSA_SIG_new() else { return false }
        defer { ECDSA_SIG_free(ecdsa) }
        let r = signature.withUnsafeBufferPointer { BN_lebin2bn($0.baseAddress, 48, nil) }
        let s = signature.withUnsafeBufferPointer { BN_lebin2bn($0.baseAddress! + 72, 48, nil) }
        guard ECDSA_SIG_set0(ecdsa, r, s) == 1 else {
            BN_free(r)
            BN_free(s)
            return false
        }
        var derPointer: UnsafeMutablePointer<UInt8>?
        let derLength = i2d_ECDSA_SIG(ecdsa, &derPointer)
        guard derLength > 0, let derPointer else { return false }
        defer { CRYPTO_free(derPointer, #fileID, #line) }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        let verified = message.withUnsafeBufferPointer { bytes in
            EVP_DigestVerifyInit(context, nil, EVP_sha384(), nil, publicKey) == 1
                && EVP_DigestVerify(context, derPointer, Int(derLength), bytes.baseAddress, bytes.count) == 1
        }
        ERR_clear_error()
        return verified
    }

    /// A P-384 public key from its SEC1 point; nil when the point is not on the curve.
    private static func publicKey(point: [UInt8]) -> OpaquePointer? {
        // The builder keeps pointers to names and values until the key is
        // made, so they must outlive it: static strings and one buffer.
        func cString(_ text: StaticString) -> UnsafePointer<CChar> {
            UnsafeRawPointer(text.utf8Start).assumingMemoryBound(to: CChar.self)
        }
        return point.withUnsafeBufferPointer { bytes -> OpaquePointer? in
            guard let builder = OSSL_PARAM_BLD_new() else { return nil }
            defer { OSSL_PARAM_BLD_free(builder) }
            guard OSSL_PARAM_BLD_push_utf8_string(builder, cString("group"), cString("secp384r1"), 0) == 1,
                  OSSL_PARAM_BLD_push_octet_string(builder, cString("pub"), bytes.baseAddress, bytes.count) == 1,
                  let parameters = OSSL_PARAM_BLD_to_param(builder) else { return nil }
            defer { OSSL_PARAM_free(parameters) }
            guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { return nil }
            defer { EVP_PKEY_CTX_free(context) }
            var key: OpaquePointer?
            guard EVP_PKEY_fromdata_init(context) == 1,
                  EVP_PKEY_fromdata(context, &key, clibcrypto_evp_pkey_public_key, parameters) == 1 else {
                ERR_clear_error()
                return nil
            }
            return key
        }
    }
}
