import MemWallCore
import Synchronization

/// A reference from a request's block table to one cached block.
public struct BlockRef: Sendable, Hashable {
    /// The block's key.
    public var key: BlockKey
    /// Its slot in the engine, or -1 when the block could not be cached (every
    /// tier full of blocks in use); the request then computes it without caching it.
    public var slot: Int32
    /// The admission this reference belongs to (0: none). The index keeps the
    /// leases not yet released, so releasing one admission twice is refused
    /// instead of taking a second reference away from a block another request holds.
    var lease: UInt32 = 0
    /// True when the block is held by the cache.
    public var isCached: Bool { slot >= 0 }

    /// Same block and slot (which admission holds the reference does not count).
    public static func == (a: BlockRef, b: BlockRef) -> Bool { a.key == b.key && a.slot == b.slot }
    /// Hash of the key and slot.
    public func hash(into h: inout Hasher) { h.combine(key); h.combine(slot) }
}

/// The outcome of admitting a request's blocks.
public struct BlockAdmission: Sendable {
    /// One reference per block, in order; release them with ``BlockIndex/release(_:)``.
    public var blocks: [BlockRef]
    /// Leading blocks that were already cached (their KV need not be computed).
    public var hitBlocks: Int
    /// Of those, how many were found in each tier (before any promotion).
    public var hitsByTier: [Int]
}

/// The block index with prefix sharing, tiers, pins and tail-first eviction.
///
/// One cached block costs one 56-byte entry plus its share of the key table,
/// the candidate heaps and the policy's memory (see ``metadataBytes``). A
/// block is a candidate to leave its tier only when no request references it,
/// it is not pinned, and none of its children is in the same tier; since a
/// child is never in a faster tier than its parent, chains are always taken
/// tail first, and a parent is never dropped while a child is cached.
///
/// Not thread-safe: one owner (the replay loop, one router worker) or
/// ``KVCache``, which serialises access under a lock.
public final class BlockIndex {
    var core: BlockIndexCore

    /// Creates an empty index.
    /// - Parameters:
    ///   - tiers: Fastest first; see ``TierSpec/validate(_:)``.
    ///   - policy: Which block leaves a full tier first.
    ///   - blockSize: Tokens per block (1…65535).
    /// - Throws: `invalidArgument` for a bad tier list or block size.
    public init(tiers: [TierSpec], policy: EvictionPolicyName = .lru, blockSize: Int = 512) throws(MemWallError) {
        let total = tiers.reduce(0) { $0 &+ max($1.capacityBlocks, 0) }
        core = try BlockIndexCore(tiers: tiers, policy: try policy.make(capacity: total), blockSize: blockSize)
    }

    /// Creates an empty index with a policy of the caller's own (see ``EvictionPolicy``).
    /// - Throws: `invalidArgument` for a bad tier list or block size, or a policy with 0 or more than 4 lanes.
    public init(tiers: [TierSpec], policy: any EvictionPolicy, blockSize: Int = 512) throws(MemWallError) {
        core = try BlockIndexCore(tiers: tiers, policy: policy, blockSize: blockSize)
    }

    /// The tiers, fastest first.
    public var tiers: [TierSpec] { core.tiers }
    /// Tokens per full block.
    public var blockSize: Int { core.blockSize }
    /// The eviction policy's name.
    public var policyName: String { core.policyName }
    /// Blocks cached now.
    public var cachedBlockCount: Int { core.cachedBlockCount }
    /// Counters, with current occupancy.
    public var statistics: KVStatistics { core.statistics }
    /// Bytes of metadata the index holds now: entry array, free list, key
    /// table, candidate heaps and policy state, counted by allocated capacity.
    public var metadataBytes: Int { core.metadataBytes }
    /// Bytes of one block entry (the per-block part of ``metadataBytes``).
    public static var entryStride: Int { BlockIndexCore.entryStride }

    /// Number of leading `keys` that are cached, without touching anything.
    public func cachedPrefixLength(_ keys: some Collection<BlockKey>) -> Int { core.cachedPrefixLength(keys) }
    /// The tier holding `key`, if cached.
    public func tier(of key: BlockKey) -> Int? { core.tier(of: key) }
    /// The slot holding `key`, or `nil` when it is not cached.
    func slot(of key: BlockKey) -> Int32? {
        let s = core.table_find(key)
        return s < 0 ? nil : s
    }

    /// Requests currently referencing `key` (0 when it is not cached).
    public func referenceCount(of key: BlockKey) -> Int { core.referenceCount(of: key) }
    /// Tokens held in `key`'s block, or `nil` when it is not cached.
    public func tokenCount(of key: BlockKey) -> Int? { core.tokenCount(of: key) }

    /// Admits a request given as precomputed, prefix-chained block ids (full blocks).
    ///
    /// Cached leading blocks are hits: referenced, touched, and promoted to
    /// the fastest tier when it has room. The remaining blocks are stored
    /// (the caller computes their KV), making room by demoting or dropping
    /// candidates. Every returned reference holds the block until ``release(_:)``.
    /// - Throws: Only when moving bytes fails (real-bytes mode).
    public func admit(_ keys: some Collection<BlockKey>) throws(MemWallError) -> BlockAdmission {
        try core.admit(keys)
    }

    /// ``admit(_:)`` for a prompt whose last block holds `lastBlockTokens` tokens
    /// (1…``blockSize``): policies learn that a partly filled tail block can only
    /// be hit again by an identical prompt.
    /// - Throws: `invalidArgument` for a count outside 1…``blockSize``; errors moving bytes.
    public func admit(_ keys: some Collection<BlockKey>, lastBlockTokens: Int) throws(MemWallError) -> BlockAdmission {
        guard lastBlockTokens >= 1, lastBlockTokens <= blockSize else {
            throw .invalid("tokens in the last block", lastBlockTokens, expected: "1 to \(blockSize)")
        }
        return try core.admit(keys, tailTokens: lastBlockTokens)
    }

    /// Tells the cache which blocks its next queued requests will need, one key
    /// list per request, nearest first (replacing the previous hint).
    ///
    /// Until the next hint, cached blocks of those requests (and blocks stored
    /// later under those keys) leave a tier only when nothing unhinted can, and
    /// policies see them as hinted. With more than one tier, the cached prefixes
    /// of the hinted requests are promoted to the fastest tier, nearest request
    /// first, up to half of that tier (the other half stays for the blocks the
    /// running requests store). An empty list clears the hint.
    /// - Returns: Blocks promoted.
    /// - Throws: Only when moving bytes fails (real-bytes mode).
    @discardableResult
    public func hint(upcoming: [[BlockKey]]) throws(MemWallError) -> Int {
        try core.hint(upcoming: upcoming)
    }

    /// Drops a request's references; blocks nobody uses become candidates to leave.
    /// References that are uncached, or no longer name the block they named, are ignored.
    /// - Throws: `misuse` when (part of) these references were released
    ///   already; nothing is released then.
    public func release(_ blocks: [BlockRef]) throws(MemWallError) { try core.release(blocks) }

    /// Moves the cached prefix of `keys` to the fastest tier ahead of use, without referencing it.
    /// - Returns: Blocks promoted.
    @discardableResult
    public func prefetch(_ keys: some Collection<BlockKey>) throws(MemWallError) -> Int {
        try core.prefetch(keys)
    }

    /// Pins cached blocks (shared system prompts) so they never leave, or unpins them.
    /// - Returns: How many of `keys` were cached (and so changed).
    @discardableResult
    public func setPinned(_ keys: some Collection<BlockKey>, _ pinned: Bool) -> Int { core.setPinned(keys, pinned) }

    /// Splits `tokens` into blocks and admits them: full blocks and a partly
    /// filled tail, all keyed by chained hashes of their tokens and `extraKey`.
    /// - Returns: The request's block table and how many leading tokens were cached.
    public func admit(tokens: [UInt32], extraKey: UInt64 = 0) throws(MemWallError) -> (table: BlockTable, hitTokens: Int) {
        try core.admit(tokens: tokens, extraKey: extraKey)
    }

    /// Appends one token to a request's table.
    ///
    /// A full (or absent) tail starts a new block. A partly filled tail that
    /// other requests share is copied first (copy-on-write) so their view does
    /// not change; one the request holds alone is re-keyed in place. When the
    /// new content already exists in the cache, the request shares it instead.
    /// - Throws: Only when moving or copying bytes fails (real-bytes mode).
    public func append(token: UInt32, to table: inout BlockTable) throws(MemWallError) {
        var t = table
        try core.append(token: token, to: &t)
        table = t
    }

    /// Checks every structural invariant; returns a description of the first broken one.
    /// Used by tests after random operations; O(cached blocks).
    public func invariantViolation() -> String? { core.invariantViolation() }
}

/// The state and algorithms of ``BlockIndex``, kept in one struct so the hot
/// path pays for one exclusivity check per operation, not one per field access.
///
/// (Design notes, shared with ``BlockIndex``:) prefix sharing, tiers, pins and tail-first eviction.
///
/// One cached block costs one 56-byte ``Entry`` plus its share of the key
/// table, the candidate heaps and the policy's memory (see ``metadataBytes``).
/// A block is a candidate to leave its tier only when no request references
/// it, it is not pinned, and none of its children is in the same tier; since
/// a child is never in a faster tier than its parent, chains are always taken
/// tail first, and a parent is never dropped while a child is cached.
///
/// Not thread-safe: one owner (the replay loop, one router worker) or
/// ``KVCache``, which serialises access under a lock.
struct BlockIndexCore {
    struct Entry {
        var key: UInt64
        var score: UInt64
        var parent: Int32           // slot, -1 for a first block
        var refCount: Int32
        var heapPosition: Int32     // position in its tier's candidate heap, -1 if absent
        var hits: UInt32
        var children: (UInt32, UInt32, UInt32, UInt32)   // cached children per tier
        var tokenCount: UInt16
        var tier: UInt8
        var flags: UInt8            // Entry.live | Entry.pinned | Entry.hinted
        var lane: UInt8             // the policy's lane (see EvictionPolicy.laneCount)

        static let live: UInt8 = 1
        static let pinned: UInt8 = 2
        static let hinted: UInt8 = 4
        /// Bytes mode: the slot is reserved, the block's bytes were never stored (or a store is on its way).
        static let empty: UInt8 = 8
        /// Bytes mode: a move or store of the block failed; its bytes are not where the index says.
        static let lost: UInt8 = 16
        /// Bytes mode: the bytes are on their way to the slot the ledger names.
        static let moving: UInt8 = 32

        @inline(__always) func childCount(tier t: Int) -> UInt32 {
            switch t { case 0: children.0; case 1: children.1; case 2: children.2; default: children.3 }
        }
        @inline(__always) mutating func addChild(tier t: Int, _ delta: Int32) {
            switch t {
            case 0: children.0 = UInt32(Int32(children.0) + delta)
            case 1: children.1 = UInt32(Int32(children.1) + delta)
            case 2: children.2 = UInt32(Int32(children.2) + delta)
            default: children.3 = UInt32(Int32(children.3) + delta)
            }
        }
        var totalChildren: UInt32 { children.0 + children.1 + children.2 + children.3 }
    }

    /// The tiers, fastest first.
    let tiers: [TierSpec]
    /// Tokens per full block (for token-level admission and reports).
    let blockSize: Int
    /// The policy's name.
    var policyName: String { policy.name }

    private var entries: [Entry]
    private var freeSlots: [Int32]
    private var table: KeyTable
    /// Candidate heaps: per tier, one per policy lane and a last one for hinted blocks.
    private var heaps: [[HeapItem]]
    /// Blocks per tier and lane (candidates or not), for the policy's lane targets.
    private var laneBlocks: [Int]
    /// Lanes of the policy (1…4).
    private let laneCount: Int
    private var occupancy: [Int]
    private var policy: any EvictionPolicy
    /// The request being admitted, as policies see it.
    private var request = RequestView()
    /// Keys of the current hint, and the slots flagged for it.
    private var hintedKeys: Set<UInt64> = []
    private var hintedSlots: [Int32] = []
    private var clock: UInt64 = 0
    private(set) var stats: KVStatistics
    /// Admissions whose references are held (see ``BlockRef/lease``).
    private var liveLeases: Set<UInt32> = []
    /// Lease numbers are process-wide, so a table released on the wrong index
    /// is refused too (rather than matching a lease of that index by chance).
    private static let nextLease = Atomic<UInt32>(1)
    /// Where the blocks' bytes are, when the index keeps bytes (``KVCache`` with a ``TierStore``).
    var ledger: PayloadLedger?
    /// When set, every stored/moved/removed block is appended to ``pendingEvents``.
    var recordsEvents = false
    var pendingEvents: [KVEvent] = []

    /// Creates an empty index.
    /// - Parameters:
    ///   - tiers: Fastest first; see ``TierSpec/validate(_:)``.
    ///   - policy: Which block leaves a full tier first.
    ///   - blockSize: Tokens per block (1…65535).
    /// - Throws: `invalidArgument` for a bad tier list or block size.
    init(tiers: [TierSpec], policy: any EvictionPolicy, blockSize: Int = 512) throws(MemWallError) {
        try TierSpec.validate(tiers)
        guard blockSize > 0, blockSize <= Int(UInt16.max) else {
            throw .invalid("block size", blockSize, expected: "1 to \(UInt16.max) tokens")
        }
        guard (1...4).contains(policy.laneCount) else {
            throw .invalid("lane count of policy '\(policy.name)'", policy.laneCount, expected: "1 to 4")
        }
        let total = tiers.reduce(0) { $0 + $1.capacityBlocks }
        self.tiers = tiers
        self.blockSize = blockSize
        self.policy = policy
        laneCount = policy.laneCount
        entries = []
        entries.reserveCapacity(min(total, 1 << 20))
        freeSlots = []
        table = KeyTable(capacity: total)
        // Candidates are at most the tier's blocks; lanes share that, so each lane
        // reserves its share and grows only if the policy crowds one lane.
        let lanes = policy.laneCount
        heaps = tiers.flatMap { t in
            (0...lanes).map { lane in
                var h: [HeapItem] = []
                h.reserveCapacity(lane < lanes ? t.capacityBlocks / lanes : 0)
                return h
            }
        }
        laneBlocks = Array(repeating: 0, count: tiers.count * lanes)
        occupancy = Array(repeating: 0, count: tiers.count)
        stats = KVStatistics(tiers: tiers.count)
        stats.capacity = tiers.map(\.capacityBlocks)
    }

    // MARK: Queries

    /// Number of leading `keys` that are cached, without touching anything.
    func cachedPrefixLength(_ keys: some Collection<BlockKey>) -> Int {
        var n = 0
        for k in keys {
            if table.find(k.rawValue) < 0 { break }
            n += 1
        }
        return n
    }

    /// Whether `key` is cached, and in which tier.
    func tier(of key: BlockKey) -> Int? {
        let s = table.find(key.rawValue)
        return s < 0 ? nil : Int(entries[Int(s)].tier)
    }

    /// Requests currently referencing `key` (0 when it is not cached).
    func referenceCount(of key: BlockKey) -> Int {
        let s = table.find(key.rawValue)
        return s < 0 ? 0 : Int(entries[Int(s)].refCount)
    }

    /// Tokens held in `key`'s block, or `nil` when it is not cached.
    func tokenCount(of key: BlockKey) -> Int? {
        let s = table.find(key.rawValue)
        return s < 0 ? nil : Int(entries[Int(s)].tokenCount)
    }

    /// Blocks cached now.
    var cachedBlockCount: Int { table.count }

    /// Counters, with current occupancy.
    var statistics: KVStatistics {
        var s = stats
        s.occupancy = occupancy
        return s
    }

    /// Bytes of metadata the index holds now: entry array, free list, key
    /// table, candidate heaps and policy state, counted by their allocated
    /// capacity (not by their use).
    var metadataBytes: Int {
        entries.capacity * MemoryLayout<Entry>.stride
            + freeSlots.capacity * MemoryLayout<Int32>.stride
            + table.storageBytes
            + heaps.reduce(0) { $0 + $1.capacity * MemoryLayout<HeapItem>.stride }
            + laneBlocks.capacity * MemoryLayout<Int>.stride
            + hintedSlots.capacity * MemoryLayout<Int32>.stride
            + hintedKeys.capacity * (MemoryLayout<UInt64>.stride + 1)
            + policy.storageBytes
    }

    /// Bytes of one entry (the per-block part of ``metadataBytes``).
    static var entryStride: Int { MemoryLayout<Entry>.stride }

    // MARK: Admission

    /// Admits a request given as precomputed, prefix-chained block ids (full blocks).
    ///
    /// Cached leading blocks are hits: referenced, touched, and promoted to
    /// the fastest tier when it has room. The remaining blocks are stored
    /// (the caller computes their KV), making room by demoting or dropping
    /// candidates. Every returned reference holds the block until ``release(_:)``.
    /// - Throws: Only when moving bytes fails (real-bytes mode).
    mutating func admit(_ keys: some Collection<BlockKey>, tailTokens: Int? = nil) throws(MemWallError) -> BlockAdmission {
        clock &+= 1
        let lastIndex = keys.count - 1
        var refs: [BlockRef] = []
        refs.reserveCapacity(keys.count)
        var hitsByTier = Array(repeating: 0, count: tiers.count)
        var rest = keys[...]
        // Leading hits: found first, so every policy call sees the whole prefix hit.
        while let k = rest.first {
            let slot = table.find(k.rawValue)
            if slot < 0 { break }
            hitsByTier[Int(entries[Int(slot)].tier)] += 1
            refs.append(BlockRef(key: k, slot: slot))
            rest = rest.dropFirst()
        }
        let hitBlocks = refs.count
        request = RequestView(blocks: keys.count, hitBlocks: hitBlocks, tailTokens: tailTokens ?? blockSize)
        if let deepest = refs.last {
            request.chainHits = entries[Int(deepest.slot)].hits &+ 1
            request.chainScore = entries[Int(deepest.slot)].score
        }
        defer { request = RequestView() }
        for (i, r) in refs.enumerated() { touch(r.slot, position: i) }
        stats.lookups += keys.count
        for t in 0..<hitsByTier.count { stats.hitsByTier[t] += hitsByTier[t] }
        // Promote hits that sit in slower tiers, parents first (keeps child tier ≥ parent
        // tier), before storing the misses: new blocks then follow their parent into DRAM.
        if hitsByTier.count > 1 && hitBlocks > hitsByTier[0] {
            for i in 0..<hitBlocks {
                try promote(refs[i].slot)
            }
        }
        var parent: Int32 = refs.last?.slot ?? -1
        var position = hitBlocks
        for k in rest {
            defer { position += 1 }
            stats.misses += 1
            if parent < -1 {
                refs.append(BlockRef(key: k, slot: -1))   // an earlier block could not be cached
                stats.uncached += 1
                continue
            }
            var slot = table.find(k.rawValue)
            if slot >= 0 {
                // Cached under another chain (an id reused by the trace): share it.
                touch(slot, position: position)
            } else {
                let tokens = position == lastIndex ? (tailTokens ?? blockSize) : blockSize
                slot = try store(key: k.rawValue, parent: parent, tokenCount: tokens, position: position)
            }
            if slot < 0 {
                stats.uncached += 1
                parent = -2
            } else {
                parent = slot
            }
            refs.append(BlockRef(key: k, slot: slot))
        }
        if !refs.isEmpty {
            let lease = takeLease()
            for i in refs.indices { refs[i].lease = lease }
        }
        return BlockAdmission(blocks: refs, hitBlocks: hitBlocks, hitsByTier: hitsByTier)
    }

    /// A lease number not held now (0 is "none"; the counter wraps after 2^32 admissions).
    private mutating func takeLease() -> UInt32 {
        while true {
            let l = BlockIndexCore.nextLease.wrappingAdd(1, ordering: .relaxed).oldValue
            if l != 0 && liveLeases.insert(l).inserted { return l }
        }
    }

    /// Drops a request's references; blocks nobody uses become candidates to leave.
    /// References that are uncached, or no longer name the block they named, are ignored.
    /// - Throws: `misuse` when an admission these references belong to was
    ///   released already (or belongs to another index); nothing is released then.
    mutating func release(_ blocks: [BlockRef]) throws(MemWallError) {
        // A table's references share one lease; appends keep it.
        var first: UInt32 = 0
        var others: [UInt32] = []
        for r in blocks where r.lease != 0 && r.lease != first && !others.contains(r.lease) {
            guard liveLeases.contains(r.lease) else {
                throw MemWallError(.misuse,
                    "the references to block \(r.key) were released already (or were admitted on another index); release each admission once")
            }
            if first == 0 { first = r.lease } else { others.append(r.lease) }
        }
        if first != 0 { liveLeases.remove(first) }
        for l in others { liveLeases.remove(l) }
        dropReferences(blocks)
    }

    /// Takes one reference off each cached block of `blocks`, without lease checks.
    private mutating func dropReferences(_ blocks: [BlockRef]) {
        for r in blocks.reversed() where r.slot >= 0 {
            let s = Int(r.slot)
            guard s < entries.count, entries[s].flags & Entry.live != 0, entries[s].key == r.key.rawValue,
                  entries[s].refCount > 0 else { continue }
            entries[s].refCount -= 1
            refreshCandidacy(r.slot)
        }
    }

    /// Moves the cached prefix of `keys` to the fastest tier ahead of use, without referencing it.
    /// - Returns: Blocks promoted.
    @discardableResult
    mutating func prefetch(_ keys: some Collection<BlockKey>) throws(MemWallError) -> Int {
        // Hold the chain while it moves, so making room for a child cannot demote its parent.
        var chain: [Int32] = []
        for k in keys {
            let s = table.find(k.rawValue)
            if s < 0 { break }
            entries[Int(s)].refCount += 1
            refreshCandidacy(s)
            chain.append(s)
        }
        defer {
            for s in chain {
                entries[Int(s)].refCount -= 1
                refreshCandidacy(s)
            }
        }
        var moved = 0
        for s in chain where entries[Int(s)].tier != 0 {
            try promote(s)
            if entries[Int(s)].tier == 0 { moved += 1 } else { break }
        }
        return moved
    }

    /// Pins cached blocks (shared system prompts) so they never leave, or unpins them.
    /// - Returns: How many of `keys` were cached (and so changed).
    @discardableResult
    mutating func setPinned(_ keys: some Collection<BlockKey>, _ pinned: Bool) -> Int {
        var n = 0
        for k in keys {
            let s = table.find(k.rawValue)
            guard s >= 0 else { continue }
            detach(s)
            if pinned { entries[Int(s)].flags |= Entry.pinned } else { entries[Int(s)].flags &= ~Entry.pinned }
            refreshCandidacy(s)
            n += 1
        }
        return n
    }

    /// Replaces the hint: flags the cached blocks of `upcoming` (and remembers
    /// their keys for blocks stored later), then promotes their cached prefixes,
    /// nearest request first, up to half the fastest tier. Returns blocks promoted.
    mutating func hint(upcoming: [[BlockKey]]) throws(MemWallError) -> Int {
        for s in hintedSlots where entries[Int(s)].flags & Entry.hinted != 0 {
            detach(s)
            entries[Int(s)].flags &= ~Entry.hinted
            refreshCandidacy(s)
        }
        hintedSlots.removeAll(keepingCapacity: true)
        hintedKeys.removeAll(keepingCapacity: true)
        for keys in upcoming {
            for k in keys {
                hintedKeys.insert(k.rawValue)
                let s = table.find(k.rawValue)
                if s >= 0 { flagHinted(s) }
            }
        }
        guard tiers.count > 1 else { return 0 }
        let budget = tiers[0].capacityBlocks / 2
        var promoted = 0
        for keys in upcoming where promoted < budget {
            promoted += try prefetch(keys.prefix(budget - promoted))
        }
        return promoted
    }

    private mutating func flagHinted(_ slot: Int32) {
        guard entries[Int(slot)].flags & Entry.hinted == 0 else { return }
        detach(slot)
        entries[Int(slot)].flags |= Entry.hinted
        refreshCandidacy(slot)
        hintedSlots.append(slot)
    }

    // MARK: Token-level admission and appends (copy-on-write)

    /// Splits `tokens` into blocks and admits them: full blocks and a partly
    /// filled tail, all keyed by chained hashes of their tokens and `extraKey`.
    /// - Returns: The request's block table and how many leading tokens were cached.
    mutating func admit(tokens: [UInt32], extraKey: UInt64 = 0) throws(MemWallError) -> (table: BlockTable, hitTokens: Int) {
        var keys: [BlockKey] = []
        var counts: [Int] = []
        var parent: BlockKey?
        var i = 0
        while i < tokens.count {
            let end = min(i + blockSize, tokens.count)
            let k = BlockKey.chained(parent: parent, tokens: tokens[i..<end], extraKey: extraKey)
            keys.append(k)
            counts.append(end - i)
            parent = k
            i = end
        }
        let a = try admit(keys, tailTokens: counts.last)
        var hitTokens = 0
        for j in 0..<a.hitBlocks { hitTokens += counts[j] }
        return (BlockTable(blocks: a.blocks, tokenCount: tokens.count, extraKey: extraKey), hitTokens)
    }

    /// Appends one token to a request's table.
    ///
    /// A full (or absent) tail starts a new block. A partly filled tail that
    /// other requests share is copied first (copy-on-write) so their view does
    /// not change; one the request holds alone is re-keyed in place. When the
    /// new content already exists in the cache, the request shares it instead.
    /// - Throws: Only when moving or copying bytes fails (real-bytes mode).
    mutating func append(token: UInt32, to table: inout BlockTable) throws(MemWallError) {
        clock &+= 1
        let tailTokens = table.tokenCount - (table.blocks.count - 1) * blockSize
        if table.blocks.isEmpty || tailTokens >= blockSize {
            let parentRef = table.blocks.last
            let key = BlockKey.start(parent: parentRef?.key, extraKey: table.extraKey).appending(token: token)
            var parentSlot: Int32 = -1
            if let p = parentRef { parentSlot = p.isCached ? p.slot : -2 }
            var ref = try obtain(key: key, parent: parentSlot, tokenCount: 1, copyFrom: nil)
            ref.lease = parentRef?.lease ?? takeLease()
            table.blocks.append(ref)
            table.tokenCount += 1
            return
        }
        let old = table.blocks[table.blocks.count - 1]
        let newKey = old.key.appending(token: token)
        let count = tailTokens + 1
        guard old.isCached, Int(old.slot) < entries.count, entries[Int(old.slot)].flags & Entry.live != 0,
              entries[Int(old.slot)].key == old.key.rawValue, entries[Int(old.slot)].refCount > 0 else {
            // The tail was never cached: it stays private to this request.
            table.blocks[table.blocks.count - 1] = BlockRef(key: newKey, slot: -1, lease: old.lease)
            table.tokenCount += 1
            return
        }
        let s = Int(old.slot)
        let parentSlot = entries[s].parent
        if entries[s].refCount > 1 || table_contains(newKey) {
            // Shared tail: copy before writing (or share the block that already has the new content).
            if entries[s].refCount > 1 && !table_contains(newKey) { stats.copiesOnWrite += 1 }
            var ref = try obtain(key: newKey, parent: parentSlot, tokenCount: count, copyFrom: old.slot)
            ref.lease = old.lease
            dropReferences([old])
            table.blocks[table.blocks.count - 1] = ref
        } else {
            // Exclusive tail: re-key in place.
            let parentKey = parentSlot >= 0 ? BlockKey(rawValue: entries[Int(parentSlot)].key) : nil
            let t = Int(entries[s].tier)
            emit(.removed(key: old.key, parent: parentKey, tier: t))
            self.table.remove(old.key.rawValue)
            entries[s].key = newKey.rawValue
            entries[s].tokenCount = UInt16(count)
            self.table.insert(newKey.rawValue, slot: old.slot)
            emit(.stored(key: newKey, parent: parentKey, tier: t, tokenCount: count))
            table.blocks[table.blocks.count - 1] = BlockRef(key: newKey, slot: old.slot, lease: old.lease)
        }
        table.tokenCount += 1
    }

    private func table_contains(_ key: BlockKey) -> Bool { table.find(key.rawValue) >= 0 }

    func table_find(_ key: BlockKey) -> Int32 { table.find(key.rawValue) }

    /// References the block `key`, storing it (optionally copying bytes from `copyFrom`) when absent.
    private mutating func obtain(key: BlockKey, parent: Int32, tokenCount: Int, copyFrom: Int32?) throws(MemWallError) -> BlockRef {
        var slot = table.find(key.rawValue)
        if slot >= 0 {
            touch(slot, position: 0)
            return BlockRef(key: key, slot: slot)
        }
        stats.misses += 1
        if parent < -1 {
            stats.uncached += 1
            return BlockRef(key: key, slot: -1)
        }
        slot = try store(key: key.rawValue, parent: parent, tokenCount: tokenCount, position: 0)
        if slot < 0 {
            stats.uncached += 1
        } else if let src = copyFrom, ledger != nil, entries[Int(slot)].tier == 0, entries[Int(src)].tier == 0 {
            planCopy(from: src, to: slot)
        }
        return BlockRef(key: key, slot: slot)
    }

    // MARK: Placement

    /// What a policy is told about block `slot` at `position` of the current request.
    @inline(__always)
    private func context(_ slot: Int32, key: UInt64, position: Int, partial: Bool) -> EvictionContext {
        let e = entries[Int(slot)]
        return EvictionContext(key: BlockKey(rawValue: key), clock: clock, hits: e.hits, score: e.score, lane: Int(e.lane),
                               position: position, requestBlocks: request.blocks, requestHitBlocks: request.hitBlocks,
                               chainHits: request.chainHits, chainScore: request.chainScore, isPartial: partial,
                               isRoot: e.parent < 0, isHinted: e.flags & Entry.hinted != 0)
    }

    /// Marks a hit: one more reference, new score and lane.
    @inline(__always)
    private mutating func touch(_ slot: Int32, position: Int) {
        let s = Int(slot)
        detach(slot)
        entries[s].refCount += 1
        entries[s].hits &+= 1
        let p = policy.placeHit(context(slot, key: entries[s].key, position: position,
                                        partial: Int(entries[s].tokenCount) < blockSize))
        entries[s].score = p.score
        entries[s].hits = p.hits
        setLane(slot, p.lane)
    }

    /// Moves a block (out of any heap) to another lane, keeping the lane counts.
    @inline(__always)
    private mutating func setLane(_ slot: Int32, _ lane: Int) {
        let s = Int(slot)
        let l = min(max(lane, 0), laneCount - 1)
        guard Int(entries[s].lane) != l else { return }
        let base = Int(entries[s].tier) * laneCount
        laneBlocks[base + Int(entries[s].lane)] -= 1
        laneBlocks[base + l] += 1
        entries[s].lane = UInt8(l)
    }

    /// Stores a new block, referenced once, in the fastest tier not faster than its
    /// parent's that can make room. Returns -1 when no tier can.
    private mutating func store(key: UInt64, parent: Int32, tokenCount: Int, position: Int) throws(MemWallError) -> Int32 {
        let first = parent >= 0 ? Int(entries[Int(parent)].tier) : 0
        var tier = -1
        for t in first..<tiers.count where try makeRoom(in: t) {
            tier = t
            break
        }
        guard tier >= 0 else { return -1 }
        let hinted = !hintedKeys.isEmpty && hintedKeys.contains(key)
        let e = Entry(key: key, score: 0, parent: parent, refCount: 1, heapPosition: -1, hits: 0,
                      children: (0, 0, 0, 0), tokenCount: UInt16(tokenCount), tier: UInt8(tier),
                      flags: Entry.live | (hinted ? Entry.hinted : 0), lane: 0)
        let slot: Int32
        if let f = freeSlots.popLast() {
            slot = f
            entries[Int(f)] = e
        } else {
            slot = Int32(entries.count)
            entries.append(e)
        }
        let p = policy.placeNew(context(slot, key: key, position: position, partial: tokenCount < blockSize))
        let lane = min(max(p.lane, 0), laneCount - 1)
        entries[Int(slot)].score = p.score
        entries[Int(slot)].hits = p.hits
        entries[Int(slot)].lane = UInt8(lane)
        laneBlocks[tier * laneCount + lane] += 1
        if hinted { hintedSlots.append(slot) }
        table.insert(key, slot: slot)
        occupancy[tier] += 1
        stats.stores += 1
        if parent >= 0 {
            entries[Int(parent)].addChild(tier: tier, 1)
            refreshCandidacy(parent)
        }
        if ledger != nil {
            // makeRoom saw a slot to hand out; the bytes come from the caller (KVCache.store).
            ledger!.ensure(slot)
            let payload = ledger!.allocate(tier) ?? -1
            ledger!.slotOf[Int(slot)] = payload
            entries[Int(slot)].flags |= Entry.empty
        }
        if recordsEvents {
            emit(.stored(key: BlockKey(rawValue: key), parent: parentKey(slot), tier: tier, tokenCount: tokenCount))
        }
        return slot
    }

    /// Frees one block's worth of space in `tier`, demoting (or, from the last
    /// tier, dropping) the policy's lowest-scored candidate. False when every
    /// block there is in use, pinned, or a parent of another block in the tier.
    private mutating func makeRoom(in tier: Int) throws(MemWallError) -> Bool {
        // With bytes, a tier whose spare slots all wait for moves in flight elsewhere is full for now.
        if let ledger, occupancy[tier] < tiers[tier].capacityBlocks, !ledger.canAllocate(tier) { return false }
        while occupancy[tier] >= tiers[tier].capacityBlocks {
            // Write-through copies are the cheapest room: the block itself stays where it is.
            if tier == tiers.count - 1 && dropOldestShadow() { continue }
            guard let victim = popVictim(tier: tier) else { return false }
            // A victim with a write-through copy in the next (last) tier brings its own room.
            let ownsRoom = tier + 1 == tiers.count - 1 && ledger?.shadow[victim] != nil
            var room = false
            if tier + 1 < tiers.count { room = ownsRoom ? true : try makeRoom(in: tier + 1) }
            if room {
                try move(victim, to: tier + 1)
                stats.demotions += 1
            } else if entries[Int(victim)].totalChildren == 0 {
                drop(victim)
            } else {
                refreshCandidacy(victim)
                return false
            }
        }
        return true
    }

    /// Brings a cached block to tier 0 if its parent is there and tier 0 can make room.
    private mutating func promote(_ slot: Int32) throws(MemWallError) {
        let s = Int(slot)
        let from = Int(entries[s].tier)
        guard from > 0 else { return }
        let p = entries[s].parent
        if p >= 0 && entries[Int(p)].tier != 0 { return }
        // Bytes another operation is reading or writing stay where they are until it completes.
        if let ledger, ledger.inFlight[slot] != nil { return }
        // Keep this block out of its own tier's heap while room is made in tier 0.
        detach(slot)
        guard try makeRoom(in: 0) else { refreshCandidacy(slot); return }
        try move(slot, to: 0)
        stats.promotions += 1
    }

    private mutating func move(_ slot: Int32, to newTier: Int) throws(MemWallError) {
        let s = Int(slot)
        let from = Int(entries[s].tier)
        if ledger != nil && planMove(slot, from: from, to: newTier) {
            occupancy[newTier] -= 1   // the copy was counted there already
        }
        detach(slot)
        occupancy[from] -= 1
        occupancy[newTier] += 1
        let lane = Int(entries[s].lane)
        laneBlocks[from * laneCount + lane] -= 1
        laneBlocks[newTier * laneCount + lane] += 1
        entries[s].tier = UInt8(newTier)
        let p = entries[s].parent
        if p >= 0 {
            entries[Int(p)].addChild(tier: from, -1)
            entries[Int(p)].addChild(tier: newTier, 1)
            refreshCandidacy(p)
        }
        refreshCandidacy(slot)
        if recordsEvents {
            emit(.moved(key: BlockKey(rawValue: entries[s].key), parent: parentKey(slot), from: from, to: newTier))
        }
    }

    private mutating func drop(_ slot: Int32) {
        let s = Int(slot)
        let e = entries[s]
        let t = Int(e.tier)
        detach(slot)
        if ledger != nil {
            ledger!.release(t, ledger!.slotOf[s])
            ledger!.slotOf[s] = -1
            dropShadow(of: slot)
        }
        if recordsEvents { emit(.removed(key: BlockKey(rawValue: e.key), parent: parentKey(slot), tier: t)) }
        policy.didDrop(EvictionCandidate(key: BlockKey(rawValue: e.key), score: e.score, hits: e.hits, lane: Int(e.lane)))
        table.remove(e.key)
        occupancy[t] -= 1
        laneBlocks[t * laneCount + Int(e.lane)] -= 1
        stats.drops += 1
        entries[s].flags = 0
        entries[s].refCount = 0
        freeSlots.append(slot)
        if e.parent >= 0 {
            entries[Int(e.parent)].addChild(tier: t, -1)
            refreshCandidacy(e.parent)
        }
    }

    /// Lanes of the policy.
    var lanes: Int { laneCount }

    /// The lowest candidate of heap `h`, as a policy sees it.
    func peek(heap h: Int) -> EvictionCandidate? {
        guard let top = heaps[h].first else { return nil }
        let e = entries[Int(top.slot)]
        return EvictionCandidate(key: BlockKey(rawValue: e.key), score: e.score, hits: e.hits, lane: Int(e.lane))
    }

    private func parentKey(_ slot: Int32) -> BlockKey? {
        let p = entries[Int(slot)].parent
        return p >= 0 ? BlockKey(rawValue: entries[Int(p)].key) : nil
    }

    private mutating func emit(_ event: KVEvent) {
        if recordsEvents { pendingEvents.append(event) }
    }

    // MARK: Candidate heaps (per tier: one min-heap on score per policy lane and one
    // for hinted blocks; positions kept in entries)

    /// The heap a block belongs in, from its tier, lane and hint flag. A block's
    /// tier, lane and flags change only while it is out of every heap (``detach(_:)``).
    @inline(__always)
    private func heapIndex(_ e: Entry) -> Int {
        Int(e.tier) * (laneCount + 1) + (e.flags & Entry.hinted != 0 ? laneCount : Int(e.lane))
    }

    /// Takes a block out of its heap, if it is in one.
    @inline(__always)
    private mutating func detach(_ slot: Int32) {
        let e = entries[Int(slot)]
        if e.heapPosition >= 0 { heapRemove(heapIndex(e), at: Int(e.heapPosition)) }
    }

    /// Puts a block in or out of its heap according to the structural rules.
    @inline(__always)
    private mutating func refreshCandidacy(_ slot: Int32) {
        let s = Int(slot)
        let e = entries[s]
        let t = Int(e.tier)
        let candidate = e.flags & (Entry.live | Entry.pinned) == Entry.live && e.refCount == 0 && e.childCount(tier: t) == 0
        if candidate {
            if e.heapPosition < 0 { heapInsert(heapIndex(e), slot) }
        } else if e.heapPosition >= 0 {
            heapRemove(heapIndex(e), at: Int(e.heapPosition))
        }
    }

    /// The most keeps a policy may answer in one search for a victim before the
    /// engine evicts what it is offered: every candidate of the tier may be
    /// moved once per lane (a FIFO's second chance, a segment's demotion).
    private func keepLimit(tier: Int) -> Int {
        var n = 0
        for h in 0...laneCount { n += heaps[tier * (laneCount + 1) + h].count }
        return n * laneCount + 8
    }

    /// Takes the next block to leave `tier` out of its heap: from the lane the
    /// policy picks (the next non-empty one if that is empty), after the policy's
    /// review; hinted blocks only when no other candidate is left. `nil` when the
    /// tier has no candidate.
    private mutating func popVictim(tier: Int) -> Int32? {
        let base = tier * (laneCount + 1)
        if laneCount == 1 {
            // Scores alone decide (the default review always evicts): no lane choice.
            if !heaps[base].isEmpty { return heapPopMin(base) }
            return heapPopMin(base + 1)
        }
        var keeps = 0
        var limit = -1
        while true {
            let view = LaneView(laneBlocks: laneBlocks, base: tier * laneCount, count: laneCount)
            let wanted = policy.victimLane(capacity: tiers[tier].capacityBlocks, blocksIn: { view[$0] })
            var heap = -1
            for i in 0..<laneCount {
                let h = base + (min(max(wanted, 0), laneCount - 1) + i) % laneCount
                if !heaps[h].isEmpty { heap = h; break }
            }
            if heap < 0 { return heapPopMin(base + laneCount) }
            if limit < 0 { limit = keepLimit(tier: tier) }
            let slot = heaps[heap][0].slot
            let e = entries[Int(slot)]
            if keeps >= limit { return heapPopMin(heap) }
            let peeks = LanePeeks(self, base: base)
            let verdict = policy.review(EvictionCandidate(key: BlockKey(rawValue: e.key), score: e.score, hits: e.hits, lane: Int(e.lane)),
                                        capacity: tiers[tier].capacityBlocks, blocksIn: { view[$0] }, peek: { peeks[$0] })
            switch verdict {
            case .evict:
                return heapPopMin(heap)
            case .keep(let score, let lane, let hits):
                keeps += 1
                detach(slot)
                entries[Int(slot)].score = score
                entries[Int(slot)].hits = hits
                setLane(slot, lane)
                refreshCandidacy(slot)
            }
        }
    }

    /// One heap element: the score is kept next to the slot so sifting does
    /// not chase every comparison into the entry array (a cache miss each on
    /// large tiers). A block's score never changes while it is in a heap:
    /// ``touch(_:)`` takes it out first.
    struct HeapItem {
        var score: UInt64
        var slot: Int32
        @inline(__always) func precedes(_ o: HeapItem) -> Bool { score < o.score || (score == o.score && slot < o.slot) }
    }

    private mutating func heapInsert(_ t: Int, _ slot: Int32) {
        heaps[t].append(HeapItem(score: entries[Int(slot)].score, slot: slot))
        let last = heaps[t].count - 1
        entries.withUnsafeMutableBufferPointer { e in
            heaps[t].withUnsafeMutableBufferPointer { h in BlockIndexCore.siftUp(h, e, last) }
        }
    }

    private mutating func heapPopMin(_ t: Int) -> Int32? {
        guard let top = heaps[t].first else { return nil }
        heapRemove(t, at: 0)
        return top.slot
    }

    private mutating func heapRemove(_ t: Int, at position: Int) {
        entries.withUnsafeMutableBufferPointer { e in
            e[Int(heaps[t][position].slot)].heapPosition = -1
            let last = heaps[t].removeLast()
            guard position < heaps[t].count else { return }
            heaps[t].withUnsafeMutableBufferPointer { h in
                h[position] = last
                e[Int(last.slot)].heapPosition = Int32(position)
                BlockIndexCore.siftDown(h, e, position)
                BlockIndexCore.siftUp(h, e, Int(e[Int(last.slot)].heapPosition))
            }
        }
    }

    /// Puts `item` at heap position `i` and records the position in its entry.
    @inline(__always)
    private static func put(_ item: HeapItem, at i: Int, _ h: UnsafeMutableBufferPointer<HeapItem>, _ e: UnsafeMutableBufferPointer<Entry>) {
        h[i] = item
        e[Int(item.slot)].heapPosition = Int32(i)
    }

    private static func siftUp(_ h: UnsafeMutableBufferPointer<HeapItem>, _ e: UnsafeMutableBufferPointer<Entry>, _ start: Int) {
        var i = start
        let item = h[i]
        while i > 0 {
            let p = (i - 1) >> 1
            guard item.precedes(h[p]) else { break }
            put(h[p], at: i, h, e)
            i = p
        }
        put(item, at: i, h, e)
    }

    private static func siftDown(_ h: UnsafeMutableBufferPointer<HeapItem>, _ e: UnsafeMutableBufferPointer<Entry>, _ start: Int) {
        var i = start
        let n = h.count
        let item = h[i]
        while 2 * i + 1 < n {
            let l = 2 * i + 1
            let c = l + 1 < n && h[l + 1].precedes(h[l]) ? l + 1 : l
            guard h[c].precedes(item) else { break }
            put(h[c], at: i, h, e)
            i = c
        }
        put(item, at: i, h, e)
    }

    // MARK: Consistency (tests)

    /// Checks every structural invariant; returns a description of the first broken one.
    /// Used by tests after random operations; O(cached blocks).
    func invariantViolation() -> String? {
        var childCounts = [Int: [Int]]()
        for (i, e) in entries.enumerated() where e.flags & Entry.live != 0 {
            if table.find(e.key) != Int32(i) { return "block \(BlockKey(rawValue: e.key)) not found at its slot" }
            if e.parent >= 0 {
                let p = entries[Int(e.parent)]
                if p.flags & Entry.live == 0 { return "block \(BlockKey(rawValue: e.key)) cached without its parent" }
                if p.tier > e.tier { return "block \(BlockKey(rawValue: e.key)) in tier \(e.tier) faster than its parent in tier \(p.tier)" }
                childCounts[Int(e.parent), default: Array(repeating: 0, count: 4)][Int(e.tier)] += 1
            }
        }
        for (i, e) in entries.enumerated() where e.flags & Entry.live != 0 {
            let c = childCounts[i] ?? Array(repeating: 0, count: 4)
            for t in 0..<4 where Int(e.childCount(tier: t)) != c[t] {
                return "block \(BlockKey(rawValue: e.key)) counts \(e.childCount(tier: t)) children in tier \(t), has \(c[t])"
            }
        }
        for t in 0..<tiers.count where occupancy[t] > tiers[t].capacityBlocks {
            return "tier \(t) holds \(occupancy[t]) blocks, capacity \(tiers[t].capacityBlocks)"
        }
        var lanes = Array(repeating: 0, count: laneBlocks.count)
        for (i, e) in entries.enumerated() where e.flags & Entry.live != 0 {
            lanes[Int(e.tier) * laneCount + Int(e.lane)] += 1
            // Only blocks no request uses, not pinned and without a child in their tier may leave.
            let eligible = e.flags & Entry.pinned == 0 && e.refCount == 0 && e.childCount(tier: Int(e.tier)) == 0
            if eligible != (e.heapPosition >= 0) {
                return "block \(BlockKey(rawValue: e.key)) is \(eligible ? "not " : "")a candidate but \(eligible ? "may" : "may not") leave"
            }
            if e.heapPosition >= 0 {
                let h = heapIndex(e)
                if Int(e.heapPosition) >= heaps[h].count || heaps[h][Int(e.heapPosition)].slot != Int32(i) {
                    return "block \(BlockKey(rawValue: e.key)) is not where its heap position says"
                }
            }
        }
        if lanes != laneBlocks { return "lane counts \(laneBlocks) differ from the blocks' lanes \(lanes)" }
        return ledgerViolation()
    }
}

/// The request an index is admitting, as its policy sees it.
struct RequestView {
    var blocks = 1
    var hitBlocks = 0
    var tailTokens = 0
    var chainHits: UInt32 = 0
    var chainScore: UInt64 = 0
}

/// One tier's lane counts, copied so a policy can read them while it is mutated.
struct LaneView {
    private var counts: (Int, Int, Int, Int) = (0, 0, 0, 0)
    init(laneBlocks: [Int], base: Int, count: Int) {
        if count > 0 { counts.0 = laneBlocks[base] }
        if count > 1 { counts.1 = laneBlocks[base + 1] }
        if count > 2 { counts.2 = laneBlocks[base + 2] }
        if count > 3 { counts.3 = laneBlocks[base + 3] }
    }
    subscript(lane: Int) -> Int {
        switch lane { case 0: counts.0; case 1: counts.1; case 2: counts.2; case 3: counts.3; default: 0 }
    }
}

/// One tier's lowest candidate per lane, copied for the same reason.
struct LanePeeks {
    private var items: (EvictionCandidate?, EvictionCandidate?, EvictionCandidate?, EvictionCandidate?) = (nil, nil, nil, nil)
    init(_ core: BlockIndexCore, base: Int) {
        items.0 = core.peek(heap: base)
        if core.lanes > 1 { items.1 = core.peek(heap: base + 1) }
        if core.lanes > 2 { items.2 = core.peek(heap: base + 2) }
        if core.lanes > 3 { items.3 = core.peek(heap: base + 3) }
    }
    subscript(lane: Int) -> EvictionCandidate? {
        switch lane { case 0: items.0; case 1: items.1; case 2: items.2; case 3: items.3; default: nil }
    }
}

/// A request's blocks, as held by the request.
public struct BlockTable: Sendable {
    /// One reference per block, in order.
    public var blocks: [BlockRef]
    /// Tokens in the request so far.
    public var tokenCount: Int
    /// The extra key its blocks were hashed with.
    public var extraKey: UInt64

    /// Creates a table.
    public init(blocks: [BlockRef] = [], tokenCount: Int = 0, extraKey: UInt64 = 0) {
        self.blocks = blocks
        self.tokenCount = tokenCount
        self.extraKey = extraKey
    }
}

// MARK: Bytes: the index plans, the store moves

/// How one planned move ended, as the store reports it to ``BlockIndexCore/completePlan(_:outcomes:)``.
enum MoveOutcome: Sendable {
    /// The bytes landed; `checksum` is theirs (computed on the way for a store).
    case done(checksum: UInt64)
    case failed(MemWallError)
}

/// What the index decided for one key of a load or store.
enum BlockVerdict: Sendable, Equatable {
    /// A move of this block is in the plan.
    case planned
    /// Store: the block is cached with bytes already; nothing to write.
    case alreadyStored
    /// Not cached (load), or no tier could take it (store).
    case missing
    /// Load: cached, but its bytes were never stored.
    case notStored
    /// Load: a move or store of it failed; its bytes are not where the index says.
    case lost
    /// Another operation (this plan number) is moving or storing it now.
    case busy(UInt64)
}

extension BlockIndexCore {
    /// Whether entry `e` still is the live block `key`.
    @inline(__always)
    private func isLive(_ e: Int32, _ key: BlockKey) -> Bool {
        e >= 0 && Int(e) < entries.count && entries[Int(e)].flags & Entry.live != 0 && entries[Int(e)].key == key.rawValue
    }

    /// Records the relocation of a block's bytes to a slot of `to` (the entry's tier changes with it).
    /// - Returns: True when the block had a write-through copy in `to`, which it now is (nothing moves).
    @discardableResult
    mutating func planMove(_ slot: Int32, from: Int, to: Int) -> Bool {
        let s = Int(slot)
        if let copy = ledger!.shadow.removeValue(forKey: slot) {
            if to == tiers.count - 1 {
                ledger!.release(from, ledger!.slotOf[s])
                ledger!.slotOf[s] = copy
                return true
            }
            ledger!.shadow[slot] = copy
        }
        let source = ledger!.slotOf[s]
        let destination = ledger!.allocate(to) ?? -1
        ledger!.release(from, source)
        ledger!.slotOf[s] = destination
        guard entries[s].flags & (Entry.empty | Entry.lost) == 0 else { return false }   // no bytes to carry
        guard source >= 0, destination >= 0 else {
            entries[s].flags |= Entry.lost
            return false
        }
        ledger!.plan.moves.append(PlannedMove(entry: slot, key: BlockKey(rawValue: entries[s].key),
                                              from: .slot(tier: from, slot: source), to: .slot(tier: to, slot: destination),
                                              purpose: .relocate, checksum: ledger!.checksum[s], keyIndex: -1))
        return false
    }

    /// Write-through: a copy of the block stored from buffer `i` into the last
    /// tier, when that tier has room without evicting a block (copies older
    /// than this one may be given up). Without room the block is written back
    /// on eviction as usual.
    mutating func planShadow(entry s: Int32, key: BlockKey, buffer i: Int) {
        let last = tiers.count - 1
        guard Int(entries[Int(s)].tier) < last, ledger!.shadow[s] == nil else { return }
        if occupancy[last] >= tiers[last].capacityBlocks && !dropOldestShadow() { return }
        guard occupancy[last] < tiers[last].capacityBlocks, let copy = ledger!.allocate(last) else { return }
        occupancy[last] += 1
        ledger!.shadow[s] = copy
        ledger!.shadowOrder.append(s)
        ledger!.plan.moves.append(PlannedMove(entry: s, key: key, from: .buffer(i), to: .slot(tier: last, slot: copy),
                                              purpose: .shadow, checksum: 0, keyIndex: i))
    }

    /// Gives up the oldest write-through copy whose block is not in flight.
    /// - Returns: Whether one was given up.
    private mutating func dropOldestShadow() -> Bool {
        guard ledger != nil else { return false }
        var skipped: [Int32] = []
        defer { ledger!.shadowOrder.insert(contentsOf: skipped, at: ledger!.shadowHead) }
        while ledger!.shadowHead < ledger!.shadowOrder.count {
            let e = ledger!.shadowOrder[ledger!.shadowHead]
            ledger!.shadowHead += 1
            if ledger!.shadowHead > 1024 && ledger!.shadowHead * 2 > ledger!.shadowOrder.count {
                ledger!.shadowOrder.removeFirst(ledger!.shadowHead)
                ledger!.shadowHead = 0
            }
            guard ledger!.shadow[e] != nil else { continue }   // taken over or dropped since
            if ledger!.inFlight[e] != nil { skipped.append(e); continue }
            dropShadow(of: e)
            return true
        }
        return false
    }

    /// Frees a block's write-through copy, if it has one.
    private mutating func dropShadow(of e: Int32) {
        guard let copy = ledger!.shadow.removeValue(forKey: e) else { return }
        let last = tiers.count - 1
        ledger!.release(last, copy)
        occupancy[last] -= 1
    }

    /// Records a copy-on-write: `source`'s bytes into the freshly stored `destination` (both in DRAM).
    mutating func planCopy(from source: Int32, to destination: Int32) {
        let a = Int(source), b = Int(destination)
        guard entries[a].flags & (Entry.empty | Entry.lost) == 0 else { return }   // nothing to copy yet
        ledger!.checksum[b] = ledger!.checksum[a]
        entries[b].flags &= ~Entry.empty
        ledger!.plan.moves.append(PlannedMove(entry: destination, key: BlockKey(rawValue: entries[b].key),
                                              from: .slot(tier: 0, slot: ledger!.slotOf[a]), to: .slot(tier: 0, slot: ledger!.slotOf[b]),
                                              purpose: .relocate, checksum: ledger!.checksum[a], keyIndex: -1))
    }

    /// Leading `keys` whose bytes are cached (stored, not lost), and the tier of each.
    func storedPrefix(_ keys: some Collection<BlockKey>) -> [Int] {
        var tiersOf: [Int] = []
        for k in keys {
            let s = table.find(k.rawValue)
            guard s >= 0 else { break }
            let e = entries[Int(s)]
            if ledger != nil && e.flags & (Entry.empty | Entry.lost) != 0 { break }
            tiersOf.append(Int(e.tier))
        }
        return tiersOf
    }

    /// Plans reading each cached block of `keys` into the caller's buffer at the same position.
    /// - Parameter touching: Count the read as a use of the block (eviction order), as a runtime's load is.
    /// - Parameter positions: The position of each key in the operation (its buffer, its per-block error).
    mutating func planLoad(_ keys: [BlockKey], at positions: [Int], touching: Bool) -> [BlockVerdict] {
        clock &+= 1
        var verdicts: [BlockVerdict] = []
        verdicts.reserveCapacity(keys.count)
        for (k, i) in zip(keys, positions) {
            let s = table.find(k.rawValue)
            guard s >= 0 else { verdicts.append(.missing); continue }
            let flags = entries[Int(s)].flags
            if flags & Entry.lost != 0 { verdicts.append(.lost); continue }
            if flags & Entry.moving != 0 { verdicts.append(.busy(ledger!.movingBy[s] ?? 0)); continue }
            if flags & Entry.empty != 0 { verdicts.append(.notStored); continue }
            if touching {
                touch(s, position: i)
                entries[Int(s)].refCount -= 1   // a use, not a reference: the plan holds it until the bytes are out
                refreshCandidacy(s)
            }
            ledger!.plan.moves.append(PlannedMove(entry: s, key: k, from: .slot(tier: Int(entries[Int(s)].tier), slot: ledger!.slotOf[Int(s)]),
                                                  to: .buffer(i), purpose: .load, checksum: ledger!.checksum[Int(s)], keyIndex: i))
            verdicts.append(.planned)
        }
        return verdicts
    }

    /// Plans writing the caller's buffers as the blocks `keys` (a chain whose first block's
    /// parent is `parent`): blocks not cached are stored first (making room as admission
    /// does), reserved blocks without bytes are filled, blocks cached with bytes are skipped.
    /// - Returns: One verdict per key, and the blocks this call referenced (those it
    ///   created, and those of the chain it met); they stay referenced until
    ///   ``releaseCreated(_:)`` (after the plan holds the ones it moves).
    /// - Parameter writeThrough: Also write a copy of each block into the last tier (``planShadow(entry:key:buffer:)``).
    mutating func planStore(_ keys: [BlockKey], after parent: BlockKey?, writeThrough: Bool = false) -> (verdicts: [BlockVerdict], created: [Int32]) {
        clock &+= 1
        var verdicts: [BlockVerdict] = []
        var created: [Int32] = []
        var parentSlot: Int32 = parent.map { table.find($0.rawValue) } ?? -1
        if parentSlot >= 0 && entries[Int(parentSlot)].flags & Entry.live == 0 { parentSlot = -1 }
        request = RequestView(blocks: keys.count, hitBlocks: 0, tailTokens: blockSize)
        defer { request = RequestView() }
        // Every block of the chain met so far stays referenced while the rest is placed:
        // making room for a child must not demote its parent below it.
        func hold(_ s: Int32) {
            entries[Int(s)].refCount += 1
            refreshCandidacy(s)
            created.append(s)
        }
        if parentSlot >= 0 { hold(parentSlot) }
        for (i, k) in keys.enumerated() {
            var s = table.find(k.rawValue)
            if s >= 0 {
                hold(s)
                let flags = entries[Int(s)].flags
                if flags & Entry.moving != 0 {
                    verdicts.append(flags & Entry.empty != 0 ? .busy(ledger!.movingBy[s] ?? 0) : .alreadyStored)
                } else if flags & (Entry.empty | Entry.lost) == 0 {
                    verdicts.append(.alreadyStored)
                } else {
                    planWrite(entry: s, key: k, buffer: i)
                    if writeThrough { planShadow(entry: s, key: k, buffer: i) }
                    verdicts.append(.planned)
                }
                parentSlot = s
                continue
            }
            if parentSlot < -1 { verdicts.append(.missing); continue }
            do throws(MemWallError) {
                s = try store(key: k.rawValue, parent: parentSlot, tokenCount: blockSize, position: i)
            } catch {
                s = -1   // bytes mode plans; nothing in store() throws then
            }
            if s < 0 {
                verdicts.append(.missing)
                stats.uncached += 1
                parentSlot = -2
                continue
            }
            created.append(s)
            planWrite(entry: s, key: k, buffer: i)
            if writeThrough { planShadow(entry: s, key: k, buffer: i) }
            verdicts.append(.planned)
            parentSlot = s
        }
        return (verdicts, created)
    }

    private mutating func planWrite(entry s: Int32, key: BlockKey, buffer i: Int) {
        ledger!.plan.moves.append(PlannedMove(entry: s, key: key, from: .buffer(i),
                                              to: .slot(tier: Int(entries[Int(s)].tier), slot: ledger!.slotOf[Int(s)]),
                                              purpose: .store, checksum: 0, keyIndex: i))
    }

    /// Drops the creation references of blocks ``planStore(_:after:)`` made (the plan holds them now).
    mutating func releaseCreated(_ created: [Int32]) {
        for s in created where entries[Int(s)].refCount > 0 {
            entries[Int(s)].refCount -= 1
            refreshCandidacy(s)
        }
    }

    /// Ends planning of the current operation: every block the plan moves is
    /// held (referenced and marked in flight) until ``completePlan(_:outcomes:)``,
    /// and blocks whose bytes are on their way are marked moving.
    /// - Returns: The plan, or `nil` when it moves nothing (its freed slots are free at once).
    mutating func sealPlan() -> MovePlan? {
        guard ledger != nil else { return nil }
        // Moves of blocks that left again during the operation carry nothing anyone will read.
        var plan = ledger!.takePlan()
        let dead = plan.moves.contains { !isLive($0.entry, $0.key) }
        if dead {
            plan.moves.removeAll { !isLive($0.entry, $0.key) }
            plan.computeStages()
        }
        guard !plan.moves.isEmpty else {
            ledger!.returnSlots(of: plan)
            return nil
        }
        var seen = Set<Int32>()
        for m in plan.moves {
            if seen.insert(m.entry).inserted {
                plan.held.append(m.entry)
                entries[Int(m.entry)].refCount += 1
                ledger!.inFlight[m.entry, default: 0] += 1
                refreshCandidacy(m.entry)
            }
            if m.purpose != .load && m.purpose != .shadow {
                entries[Int(m.entry)].flags |= Entry.moving
                ledger!.movingBy[m.entry] = plan.id
            }
        }
        return plan
    }

    /// Records how a plan's moves ended and lets go of what it held: stored
    /// blocks get their checksum, blocks whose bytes did not land are marked
    /// lost (a later store of them repairs them), held blocks may leave again,
    /// and the plan's freed slots become free.
    mutating func completePlan(_ plan: MovePlan, outcomes: [MoveOutcome]) {
        for (i, m) in plan.moves.enumerated() where i < outcomes.count && isLive(m.entry, m.key) {
            let e = Int(m.entry)
            switch (outcomes[i], m.purpose) {
            case (.done(let sum), .store):
                ledger!.checksum[e] = sum
                entries[e].flags &= ~(Entry.empty | Entry.lost)
            case (.failed, .store), (.failed, .relocate):
                entries[e].flags |= Entry.lost
            case (.failed, .shadow):
                // The copy did not land; the block itself did (or failed on its own).
                if ledger!.shadow[m.entry] == m.to.slot?.slot { dropShadow(of: m.entry) }
            default:
                break
            }
        }
        for e in plan.held {
            let s = Int(e)
            if ledger!.movingBy[e] == plan.id {
                ledger!.movingBy[e] = nil
                entries[s].flags &= ~Entry.moving
            }
            if let n = ledger!.inFlight[e] { ledger!.inFlight[e] = n > 1 ? n - 1 : nil }
            if entries[s].refCount > 0 { entries[s].refCount -= 1 }
            refreshCandidacy(e)
        }
        ledger!.returnSlots(of: plan)
    }

    /// Bytes mode: every cached block holds one distinct slot of its tier; `nil` when so.
    func ledgerViolation() -> String? {
        guard let ledger else { return nil }
        var used = Array(repeating: Set<Int32>(), count: tiers.count)
        for (i, e) in entries.enumerated() where e.flags & Entry.live != 0 {
            let p = i < ledger.slotOf.count ? ledger.slotOf[i] : -1
            guard p >= 0, p < ledger.limit[Int(e.tier)] else {
                return "block \(BlockKey(rawValue: e.key)) in tier \(e.tier) has no payload slot"
            }
            guard used[Int(e.tier)].insert(p).inserted else {
                return "payload slot \(p) of tier \(e.tier) is held by two blocks"
            }
        }
        let last = tiers.count - 1
        for (e, copy) in ledger.shadow {
            guard Int(e) < entries.count, entries[Int(e)].flags & Entry.live != 0, Int(entries[Int(e)].tier) < last else {
                return "a write-through copy belongs to entry \(e), which is not a live block above the last tier"
            }
            guard used[last].insert(copy).inserted else { return "payload slot \(copy) of tier \(last) is held twice (a copy)" }
        }
        var blocks = Array(repeating: 0, count: tiers.count)
        for e in entries where e.flags & Entry.live != 0 { blocks[Int(e.tier)] += 1 }
        blocks[last] += ledger.shadow.count
        if blocks != occupancy { return "occupancy \(occupancy) differs from blocks and copies per tier \(blocks)" }
        if ledger.inFlight.isEmpty {
            for t in tiers.indices where ledger.slotsInUse(t) != used[t].count + ledger.plan.pool[t].count {
                return "tier \(t) has \(ledger.slotsInUse(t)) payload slots handed out for \(used[t].count) blocks"
            }
        }
        return nil
    }
}
