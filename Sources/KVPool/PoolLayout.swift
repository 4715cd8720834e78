import CMemWallShim
import MemWallCore

/// Where everything is in a pool segment, derived from four numbers (block
/// size, slot count, process slots, bucket count) by one function, so that a
/// segment's header can be checked by recomputing its offsets: a header whose
/// offsets differ from what its own counts give was not written by this code.
///
/// ```
/// 0                  header (one page; memwall_pool_header in its first 512 bytes)
/// processTableOffset processSlots × 128 bytes (memwall_pool_process)
/// holdsOffset        processSlots × slotCount × UInt32: references each process holds on each slot
/// slotTableOffset    slotCount × 64 bytes (memwall_pool_slot)
/// bucketOffset       bucketCount × UInt64: key → slot, open addressing
/// dataOffset         slotCount × blockBytes, page-aligned: the blocks
/// ```
struct PoolLayout: Sendable, Hashable {
    var blockBytes: Int
    var slotCount: Int
    var processSlots: Int
    var bucketCount: Int
    var processTableOffset: Int
    var holdsOffset: Int
    var slotTableOffset: Int
    var bucketOffset: Int
    var dataOffset: Int
    /// Bytes the layout needs (the segment may be larger: DAX devices come in fixed sizes).
    var usedBytes: Int

    /// Most blocks a pool holds (as a KV cache's index: 2^26).
    static let maximumSlots = 1 << 26
    /// Most processes attached at once (the owner field of a slot's state word is 8 bits; 255 means none).
    static let maximumProcesses = 254
    /// Processes a pool has room for unless told otherwise.
    static let defaultProcesses = 32
    static let headerBytes = 4096
    /// Longest probe sequence in the key table: an insert that would need a
    /// longer one is refused (at load factor ½ it never happens by chance), so
    /// every lookup — also in a damaged table — ends within this many buckets.
    static let probeLimit = 512

    /// The layout of `slotCount` blocks of `blockBytes` for `processSlots` processes.
    /// Callers bound the three numbers first (``check(blockBytes:)`` and the limits above),
    /// so the arithmetic below cannot overflow.
    init(blockBytes: Int, slotCount: Int, processSlots: Int, bucketCount: Int? = nil) {
        self.blockBytes = blockBytes
        self.slotCount = slotCount
        self.processSlots = processSlots
        self.bucketCount = bucketCount ?? PoolLayout.buckets(for: slotCount)
        func up(_ n: Int, _ to: Int) -> Int { (n + to - 1) / to * to }
        processTableOffset = PoolLayout.headerBytes
        holdsOffset = up(processTableOffset + processSlots * MemoryLayout<memwall_pool_process>.size, 64)
        slotTableOffset = up(holdsOffset + processSlots * slotCount * 4, 64)
        bucketOffset = up(slotTableOffset + slotCount * MemoryLayout<memwall_pool_slot>.size, 64)
        dataOffset = up(bucketOffset + self.bucketCount * 8, 4096)
        usedBytes = dataOffset + slotCount * blockBytes
    }

    /// Buckets for `slots` keys: a power of two, at least twice as many (load factor ≤ ½).
    static func buckets(for slots: Int) -> Int {
        var b = 16
        while b < 2 * slots { b <<= 1 }
        return b
    }

    /// Block sizes a pool accepts: whole pages (a view can then be read with O_DIRECT), at most 1 GiB.
    static func check(blockBytes: Int) throws(MemWallError) {
        guard blockBytes > 0, blockBytes % 4096 == 0, blockBytes <= 1 << 30 else {
            throw .invalid("block size", blockBytes, expected: "a positive multiple of 4096 bytes, at most 1 GiB")
        }
    }

    /// The most blocks of `blockBytes` a segment of `segmentBytes` holds with room for `processSlots` processes.
    /// - Throws: `invalidArgument` when not even one block fits, or a number is out of range.
    static func plan(segmentBytes: Int, blockBytes: Int, processSlots: Int) throws(MemWallError) -> PoolLayout {
        try check(blockBytes: blockBytes)
        guard (1...maximumProcesses).contains(processSlots) else {
            throw .invalid("process count", processSlots, expected: "1 to \(maximumProcesses) processes attached at once")
        }
        guard segmentBytes > 0, segmentBytes <= 1 << 46 else {
            throw .invalid("pool size", segmentBytes, expected: "a positive size of at most 64 TiB")
        }
        // Per block: its bytes, its slot, its references, at most four buckets' worth (2 to 4 per key).
        let perSlot = blockBytes + MemoryLayout<memwall_pool_slot>.size + 4 * processSlots + 32
        let fixed = headerBytes + processSlots * MemoryLayout<memwall_pool_process>.size + 3 * 64 + 4096 + 16 * 8
        var n = min(maximumSlots, max(0, (segmentBytes - fixed) / perSlot))
        while n > 0 && PoolLayout(blockBytes: blockBytes, slotCount: n, processSlots: processSlots).usedBytes > segmentBytes { n -= 1 }
        // The estimate is conservative (it charges four buckets per key): take what else fits.
        while n < maximumSlots && PoolLayout(blockBytes: blockBytes, slotCount: n + 1, processSlots: processSlots).usedBytes <= segmentBytes { n += 1 }
        guard n >= 1 else {
            throw .invalid("pool size", ByteCount(segmentBytes),
                           expected: "at least \(ByteCount(PoolLayout(blockBytes: blockBytes, slotCount: 1, processSlots: processSlots).usedBytes)) for one block of \(ByteCount(blockBytes)) and \(processSlots) processes")
        }
        return PoolLayout(blockBytes: blockBytes, slotCount: n, processSlots: processSlots)
    }

    /// The layout a peer's header describes, or why it cannot be trusted.
    ///
    /// Everything is checked before anything else is read: the magic, the
    /// version, the header size, the layout checksum, each count against its
    /// limit, every offset against the one the counts give, and the whole
    /// layout against the bytes actually mapped.
    /// - Parameter mappedBytes: The size of the file or device.
    /// - Throws: `corrupted` naming the first field that is wrong.
    static func validate(_ h: memwall_pool_header, mappedBytes: Int, path: String) throws(MemWallError) -> PoolLayout {
        func bad(_ what: String) -> MemWallError {
            MemWallError(.corrupted, "'\(path)' is not a usable KV pool segment: \(what); destroy it (memwall pool destroy) and create it again")
        }
        guard h.magic == MEMWALL_POOL_MAGIC else { throw bad("its magic number is wrong (not a memwall pool)") }
        guard h.version == MEMWALL_POOL_VERSION else {
            throw bad("it has layout version \(h.version), this memwall reads version \(MEMWALL_POOL_VERSION)")
        }
        guard h.header_bytes == UInt32(MemoryLayout<memwall_pool_header>.size) else { throw bad("its header size \(h.header_bytes) is wrong") }
        var copy = h
        let sum = withUnsafeBytes(of: &copy) { b in memwall_checksum(b.baseAddress, Int(offsetOfLayoutChecksum)) }
        guard sum == h.layout_checksum else { throw bad("its layout checksum does not match (the header was overwritten)") }
        guard h.block_bytes <= 1 << 30, h.block_bytes > 0, h.block_bytes % 4096 == 0 else { throw bad("block size \(h.block_bytes)") }
        let block = Int(h.block_bytes)
        let slots = Int(h.slot_count), processes = Int(h.process_slots), buckets = Int(h.bucket_count)
        guard (1...maximumSlots).contains(slots) else { throw bad("slot count \(slots)") }
        guard (1...maximumProcesses).contains(processes) else { throw bad("process slot count \(processes)") }
        guard buckets >= 2 * slots, buckets <= 4 * maximumSlots, buckets & (buckets - 1) == 0 else { throw bad("bucket count \(buckets)") }
        let l = PoolLayout(blockBytes: block, slotCount: slots, processSlots: processes, bucketCount: buckets)
        guard h.process_table_offset == UInt64(l.processTableOffset), h.holds_offset == UInt64(l.holdsOffset),
              h.slot_table_offset == UInt64(l.slotTableOffset), h.bucket_offset == UInt64(l.bucketOffset),
              h.data_offset == UInt64(l.dataOffset) else { throw bad("its table offsets do not follow from its counts") }
        guard h.segment_bytes >= UInt64(l.usedBytes), h.segment_bytes <= UInt64(mappedBytes) else {
            throw bad("it claims \(h.segment_bytes) bytes, needs \(l.usedBytes), and \(mappedBytes) are there")
        }
        return l
    }

    /// Bytes of the header the layout checksum covers.
    static let offsetOfLayoutChecksum = MemoryLayout<memwall_pool_header>.offset(of: \.layout_checksum) ?? 176
}
