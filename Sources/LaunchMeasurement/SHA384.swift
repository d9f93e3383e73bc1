import CLibcrypto

/// A 48-byte SHA-384 digest.
public struct SHA384Digest: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 48, "a SHA-384 digest is 48 bytes")
        self.bytes = bytes
    }

    /// 48 zero bytes: the initial SNP launch digest.
    public static let zero = SHA384Digest(bytes: [UInt8](repeating: 0, count: 48))

    /// Lower-case hexadecimal, 96 characters.
    public var hex: String { Hex.encode(bytes) }

    public var description: String { hex }
}

/// SHA-384 from OpenSSL's libcrypto (EVP interface).
///
/// One instance hashes one message: `update` any number of times, then
/// `finalize` once. Not shared between threads.
public final class SHA384 {
    private let context: OpaquePointer

    public init() {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex2(context, FetchedDigest.sha384.pointer, nil) == 1 else {
            fatalError("libcrypto could not set up a SHA-384 context (out of memory)")
        }
        self.context = context
    }

    deinit { EVP_MD_CTX_free(context) }

    /// Adds bytes to the message.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    /// Adds bytes to the message.
    public func update<Bytes: Collection<UInt8>>(_ bytes: Bytes) {
        if bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) == nil {
            Array(bytes).withUnsafeBytes { update($0) }
        }
    }

    /// Returns the digest of everything added.
    public func finalize() -> SHA384Digest {
        var output = [UInt8](repeating: 0, count: 48)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &output, &length)
        return SHA384Digest(bytes: output)
    }

    /// The digest of `bytes` in one call.
    public static func hash<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> SHA384Digest {
        if let digest = bytes.withContiguousStorageIfAvailable({ hash(UnsafeRawBufferPointer($0)) }) { return digest }
        let hasher = SHA384()
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The digest of `bytes` in one call.
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> SHA384Digest {
        SHA384Digest(bytes: MessageDigest.sha384.hash(bytes))
    }
}

/// One-shot digests with other algorithms, for measurements that use them
/// (the Arm CCA realm initial measurement uses SHA-256 or SHA-512).
public enum MessageDigest: Sendable {
    case sha256, sha384, sha512

    /// The digest of `bytes`.
    public func hash(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: digestLength)
        var length: UInt32 = 0
        guard EVP_Digest(bytes.baseAddress, bytes.count, &output, &length, fetched.pointer, nil) == 1 else {
            fatalError("libcrypto could not compute a digest (out of memory)")
        }
        return output
    }

    /// The digest of `bytes`.
    public func hash(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { hash($0) } }
}

/// One libcrypto digest context, reused page after page by one thread, with
/// the algorithm fetched once per process: OpenSSL 3 looks an algorithm up
/// under a lock on every implicit fetch (EVP_sha384() in EVP_DigestInit_ex),
/// which serialised the threads.
final class PageDigester {
    private let context: OpaquePointer
    private let algorithm: OpaquePointer

    init(_ digest: MessageDigest) {
        guard let context = EVP_MD_CTX_new() else { fatalError("libcrypto could not allocate a digest context (out of memory)") }
        self.context = context
        self.algorithm = digest.fetched.pointer
    }

    deinit { EVP_MD_CTX_free(context) }

    /// Writes the digest of `bytes` to `output`, which holds the algorithm's digest length.
    func digest(_ bytes: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer) {
        var length: UInt32 = 0
        guard EVP_DigestInit_ex2(context, algorithm, nil) == 1, EVP_DigestUpdate(context, bytes.baseAddress, bytes.count) == 1,
              EVP_DigestFinal_ex(context, output.assumingMemoryBound(to: UInt8.self), &length) == 1 else {
            fatalError("libcrypto could not compute a digest")
        }
    }
}

/// An algorithm fetched from libcrypto's default provider, kept for the process.
struct FetchedDigest: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ name: String) {
        guard let pointer = EVP_MD_fetch(nil, name, nil) else { fatalError("libcrypto has no \(name)") }
        self.pointer = pointer
    }
    static let sha256 = FetchedDigest("SHA256"), sha384 = FetchedDigest("SHA384"), sha512 = FetchedDigest("SHA512")
}

extension MessageDigest {
    var fetched: FetchedDigest {
        switch self {
        case .sha256: .sha256
        case .sha384: .sha384
        case .sha512: .sha512
        }
    }

    /// Bytes in one digest.
    public var digestLength: Int {
        switch self {
        case .sha256: 32
        case .sha384: 48
        case .sha512: 64
        }
    }
}
