/// Open-addressing map from a block key to its slot in the entry array.
///
/// Sized once for the cache's total capacity, so it never rehashes on the hot
/// path and its memory is known up front (it is part of the per-block metadata
/// figure). Key and slot share one 16-byte bucket, so a probe costs one cache
/// miss, not two. Linear probing with backward-shift deletion: no tombstones,
/// so lookups stay short however long the cache runs.
struct KeyTable {
    struct Bucket {
        var key: UInt64
        var slot: Int32   // -1 = empty
    }
    private var buckets: [Bucket]
    private let mask: Int
    private(set) var count = 0

    /// A table that holds `capacity` keys at a load factor of at most 3/4.
    init(capacity: Int) {
        var n = 16
        while n * 3 < max(capacity, 1) * 4 { n <<= 1 }
        buckets = Array(repeating: Bucket(key: 0, slot: -1), count: n)
        mask = n - 1
    }

    /// Bytes held by the table's storage.
    var storageBytes: Int { buckets.capacity * MemoryLayout<Bucket>.stride }

    @inline(__always)
    private func home(_ key: UInt64) -> Int { Int(truncatingIfNeeded: BlockKey.mix(key)) & mask }

    /// The slot stored for `key`, or -1.
    @inline(__always)
    func find(_ key: UInt64) -> Int32 {
        var i = home(key)
        while true {
            let b = buckets[i]
            if b.slot < 0 { return -1 }
            if b.key == key { return b.slot }
            i = (i + 1) & mask
        }
    }

    /// Inserts or replaces `key`. The caller keeps `count` within capacity.
    mutating func insert(_ key: UInt64, slot: Int32) {
        var i = home(key)
        while buckets[i].slot >= 0 {
            if buckets[i].key == key { buckets[i].slot = slot; return }
            i = (i + 1) & mask
        }
        buckets[i] = Bucket(key: key, slot: slot)
        count += 1
    }

    /// Removes `key` if present, shifting later members of its probe run back.
    mutating func remove(_ key: UInt64) {
        var i = home(key)
        while true {
            if buckets[i].slot < 0 { return }
            if buckets[i].key == key { break }
            i = (i + 1) & mask
        }
        count -= 1
        let m = mask
        buckets.withUnsafeMutableBufferPointer { b in
            var hole = i
            var j = i
            while true {
                j = (j + 1) & m
                if b[j].slot < 0 { break }
                let h = Int(truncatingIfNeeded: BlockKey.mix(b[j].key)) & m
                // Move j into the hole unless its home lies cyclically in (hole, j].
                let stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j)
                if !stays {
                    b[hole] = b[j]
                    hole = j
                }
            }
            b[hole].slot = -1
        }
    }
}
