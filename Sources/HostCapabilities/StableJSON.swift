import FoundationEssentials

/// The one JSON encoding of MemWall's reports, shared by the CLI's `--json` and the
/// C ABI so both print byte-identical documents: sorted keys (stable diffs), pretty
/// printed, slashes unescaped (paths stay readable).
public enum StableJSON {
    /// `value` encoded; non-finite numbers cannot be encoded (callers reject them earlier).
    public static func text(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
