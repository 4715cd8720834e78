import CMemWallABI
import KVPlacement
import MemWallCore

extension BlockKey {
    /// The extra key for an identity given as bytes (a model name, an adapter id): the bytes
    /// folded through the block-key mixer as if they were tokens, after their length, so
    /// every caller — Swift, C, Python — derives the same 64-bit value from the same bytes.
    static func extraKey(bytes: UnsafeRawBufferPointer) -> UInt64 {
        var key = BlockKey.start(parent: nil, extraKey: UInt64(bytes.count))
        for byte in bytes { key = key.appending(token: UInt32(byte)) }
        return key.rawValue
    }
}

/// Most tokens one `mw_chain_keys` call hashes (2^31: far beyond any context window).
private let maximumTokens = 1 << 31

@c @implementation
public func mw_extra_key(_ bytes: UnsafeRawPointer?, _ length: Int, _ keyOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    ABI.run("mw_extra_key") { () throws(MemWallError) in
        let out = try ABI.required(keyOut, "key_out")
        let count = try ABI.count(length, "length", 0...(1 << 30))
        let base = count == 0 ? bytes : try ABI.required(bytes, "bytes")
        out.pointee = BlockKey.extraKey(bytes: UnsafeRawBufferPointer(start: base, count: count))
    }
}

@c @implementation
public func mw_chain_keys(_ tokens: UnsafePointer<UInt32>?, _ tokenCount: Int, _ blockTokens: Int,
                          _ extraKey: UInt64, _ parent: UnsafePointer<UInt64>?, _ includePartial: Int32,
                          _ keysOut: UnsafeMutablePointer<UInt64>?, _ keysCapacity: Int,
                          _ keyCountOut: UnsafeMutablePointer<Int>?) -> Int32 {
    ABI.run("mw_chain_keys") { () throws(MemWallError) in
        let countOut = try ABI.required(keyCountOut, "key_count_out")
        let n = try ABI.count(tokenCount, "token_count", 0...maximumTokens)
        let block = try ABI.count(blockTokens, "block_tokens", 1...(1 << 20))
        let capacity = try ABI.count(keysCapacity, "keys_capacity", 0...maximumTokens)
        guard includePartial == 0 || includePartial == 1 else {
            throw .invalid("include_partial", includePartial, expected: "0 or 1")
        }
        let needed = includePartial == 1 ? (n + block - 1) / block : n / block
        countOut.pointee = needed
        guard needed > 0 else { return }
        let input = try ABI.required(tokens, "tokens")
        let output = try ABI.required(keysOut, "keys_out")
        guard needed <= capacity else {
            throw MemWallError(.outOfBounds,
                "keys_out holds \(capacity) keys but \(n) tokens in blocks of \(block) make \(needed); *key_count_out says how many")
        }
        var previous = parent.map { BlockKey(rawValue: $0.pointee) }
        for i in 0..<needed {
            let start = i * block
            let key = BlockKey.chained(parent: previous, tokens: UnsafeBufferPointer(start: input + start, count: min(block, n - start)),
                                       extraKey: extraKey)
            output[i] = key.rawValue
            previous = key
        }
    }
}
