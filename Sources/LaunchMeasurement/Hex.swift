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
