/// Open-addressing map from a block key to its slot in the entry array.
///
/// Sized once for the cache's total capacity, so it never rehashes on the hot
/// path and its memory is known up front (it is part of the per-block metadata
/// figure). Linear probing with backward-shift deletion: no tombstones, so
/// lookups stay short however long the cache runs.
struct KeyTable {
    private var keys: [UInt64]
    private var slots: [Int32]   // -1 = empty bucket
    private let mask: Int
    private(set) var count = 0

    /// A table that holds `capacity` keys at a load factor of at most 3/4.
    init(capacity: Int) {
        var buckets = 16
        while buckets * 3 < max(capacity, 1) * 4 { buckets <<= 1 }
        keys = Array(repeating: 0, count: buckets)
        slots = Array(repeating: -1, count: buckets)
        mask = buckets - 1
    }

    /// Bytes held by the table's storage.
    var storageBytes: Int { keys.capacity * MemoryLayout<UInt64>.stride + slots.capacity * MemoryLayout<Int32>.stride }

    @inline(__always)
    private func home(_ key: UInt64) -> Int { Int(truncatingIfNeeded: BlockKey.mix(key)) & mask }

    /// The slot stored for `key`, or -1.
    @inline(__always)
    func find(_ key: UInt64) -> Int32 {
        var i = home(key)
        while true {
            let s = slots[i]
            if s < 0 { return -1 }
            if keys[i] == key { return s }
            i = (i + 1) & mask
        }
    }

    /// Inserts or replaces `key`. The caller keeps `count` within capacity.
    mutating func insert(_ key: UInt64, slot: Int32) {
        var i = home(key)
        while slots[i] >= 0 {
            if keys[i] == key { slots[i] = slot; return }
            i = (i + 1) & mask
        }
        keys[i] = key
        slots[i] = slot
        count += 1
    }

    /// Removes `key` if present, shifting later members of its probe run back.
    mutating func remove(_ key: UInt64) {
        var i = home(key)
        while true {
            if slots[i] < 0 { return }
            if keys[i] == key { break }
            i = (i + 1) & mask
        }
        count -= 1
        var hole = i
        var j = i
        while true {
            j = (j + 1) & mask
            if slots[j] < 0 { break }
            let h = home(keys[j])
            // Move j into the hole unless its home lies cyclically in (hole, j].
            let stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j)
            if !stays {
                keys[hole] = keys[j]
                slots[hole] = slots[j]
                hole = j
            }
        }
        slots[hole] = -1
    }
}
