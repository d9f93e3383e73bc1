/// Hexadecimal text of byte strings, as digests, ledgers and vectors print them.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    /// Lower case, two digits a byte, `separator` between bytes.
    public static func encode(_ bytes: some Sequence<UInt8>, separator: String = "") -> String {
        var text = [UInt8]()
        for byte in bytes {
            if !text.isEmpty { text.append(contentsOf: separator.utf8) }
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// A number as `0x` and lower-case hexadecimal, as errors and tables print addresses.
    public static func number(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }

    /// Pairs of hex digits in either case, with whitespace allowed between
    /// pairs (as Python's `bytes.fromhex`); nil for anything else.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var bytes = [UInt8](), pending: UInt8?
        for character in text.unicodeScalars {
            if character.properties.isWhitespace, pending == nil { continue }
            guard character.isASCII, let digit = UInt8(String(character), radix: 16) else { return nil }
            if let high = pending {
                bytes.append(high << 4 | digit)
                pending = nil
            } else {
                pending = digit
            }
        }
        return pending == nil ? bytes : nil
    }
}

/// Standard base64 (RFC 4648 §4, with padding), as sev-snp-measure and QEMU's
/// `id-block`/`id-auth` properties write binary values.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var output = [UInt8]()
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            let value = chunk.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (16 - 8 * UInt32($1.offset)) }
            for position in 0..<4 {
                output.append(position <= chunk.count ? alphabet[Int(value >> (18 - 6 * UInt32(position)) & 0x3F)] : UInt8(ascii: "="))
            }
            index += 3
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// The bytes of padded base64 text; nil for anything else (Python's
    /// `b64decode(..., validate=True)`).
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let characters = Array(text.utf8)
        guard characters.count % 4 == 0 else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(characters.count / 4 * 3)
        for start in stride(from: 0, to: characters.count, by: 4) {
            var value: UInt32 = 0, padding = 0
            for (position, character) in characters[start..<start + 4].enumerated() {
                if character == UInt8(ascii: "=") {
                    // Padding only ends the text: one or two characters of the last group.
                    guard start + 4 == characters.count, position >= 2 else { return nil }
                    padding += 1
                    value <<= 6
                    continue
                }
                guard padding == 0, let digit = alphabet.firstIndex(of: character) else { return nil }
                value = value << 6 | UInt32(digit)
            }
            for index in 0..<(3 - padding) { bytes.append(UInt8(truncatingIfNeeded: value >> (16 - 8 * UInt32(index)))) }
        }
        return bytes
    }
}
