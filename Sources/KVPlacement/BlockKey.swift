/// Identity of one cached KV block: a chained hash of everything before it.
///
/// A block's key stands for its own tokens *and* every token before it, so two
/// requests share a block only when they share the whole prefix up to and
/// including it. Keys are built incrementally — ``start(parent:extraKey:)``,
/// then ``appending(token:)`` once per token — which is what lets a partly
/// filled tail block be re-keyed in O(1) when a token is appended. Traces that
/// carry precomputed, already-chained ids (Mooncake's `hash_ids`) use
/// ``init(rawValue:)`` directly.
///
/// The mixing function is fixed (not Swift's per-process seeded `Hasher`), so
/// keys are stable across processes and can be published in events.
public struct BlockKey: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The 64-bit key.
    public let rawValue: UInt64

    /// Wraps a key or a precomputed, prefix-chained block id.
    @inline(__always)
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The state a block's key starts from, before its first token.
    /// - Parameters:
    ///   - parent: Key of the previous block of the sequence, `nil` for the first block.
    ///   - extraKey: Anything else that changes the KV contents for the same tokens
    ///     (model id, LoRA adapter id, multimodal input hash); 0 when nothing does.
    public static func start(parent: BlockKey?, extraKey: UInt64 = 0) -> BlockKey {
        let p = parent.map { $0.rawValue } ?? 0x6A09_E667_F3BC_C908  // distinct from any parent key 0
        return BlockKey(rawValue: BlockKey.mix(p ^ BlockKey.mix(extraKey &+ 0x9E37_79B9_7F4A_7C15)))
    }

    /// The key of this block with one more token.
    @inline(__always)
    public func appending(token: UInt32) -> BlockKey {
        BlockKey(rawValue: BlockKey.mix(rawValue &+ (UInt64(token) &* 0xD6E8_FEB8_6659_FD93) &+ 1))
    }

    /// The key of a block made of `tokens` after `parent`.
    public static func chained(parent: BlockKey?, tokens: some Sequence<UInt32>, extraKey: UInt64 = 0) -> BlockKey {
        var k = start(parent: parent, extraKey: extraKey)
        for t in tokens { k = k.appending(token: t) }
        return k
    }

    /// A 64-bit finaliser (the SplitMix64 constants): every input bit affects every output bit.
    @inline(__always)
    package static func mix(_ value: UInt64) -> UInt64 {
        var x = value
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        return x ^ (x >> 31)
    }

    /// Orders by raw value (for stable output).
    public static func < (a: BlockKey, b: BlockKey) -> Bool { a.rawValue < b.rawValue }

    /// `"block#1a2b…"` in hex.
    public var description: String { "block#" + String(rawValue, radix: 16) }
}
