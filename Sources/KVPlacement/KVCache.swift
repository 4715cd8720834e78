import MemWallCore
import Synchronization

/// The cache as an inference runtime uses it: thread-safe, with events.
///
/// Every operation takes one lock around the ``BlockIndex`` (and its byte
/// store, when real bytes are kept), so any number of request tasks may
/// admit, append and release at once. Events produced by an operation are
/// delivered to subscribers after the lock is released, in order, on the
/// calling thread.
public final class KVCache: Sendable {
    private struct State: ~Copyable {
        var index: BlockIndex
        var store: TierStore?
    }
    private let state: Mutex<State>
    private let subscribers = Mutex<[UInt64: @Sendable (KVEvent) -> Void]>([:])
    private let nextSubscriber = Atomic<UInt64>(1)
    private let hasSubscribers = Atomic<Bool>(false)
    // Serialises delivery so subscribers see events in the order they happened.
    private let delivery = Mutex<Void>(())

    /// Tiers, fastest first.
    public let tiers: [TierSpec]
    /// Tokens per block.
    public let blockSize: Int

    /// Creates a cache.
    /// - Parameters:
    ///   - store: Holds and moves the blocks' bytes; `nil` keeps metadata only.
    /// - Throws: `invalidArgument` for bad tiers or block size; store attachment errors.
    public init(tiers: [TierSpec], policy: EvictionPolicyName = .lfuda, blockSize: Int = 16,
                store: sending TierStore? = nil) throws(MemWallError) {
        let index = try BlockIndex(tiers: tiers, policy: policy, blockSize: blockSize)
        if let store { try store.attach(to: index) }
        self.tiers = tiers
        self.blockSize = blockSize
        state = Mutex(State(index: index, store: store))
    }

    private func run<R: Sendable>(_ body: (inout sending State) throws(MemWallError) -> R) throws(MemWallError) -> R {
        let record = hasSubscribers.load(ordering: .relaxed)
        let (result, events) = state.withLock { s -> (Result<R, MemWallError>, [KVEvent]) in
            s.index.core.recordsEvents = record
            let r: Result<R, MemWallError>
            do throws(MemWallError) { r = .success(try body(&s)) } catch { r = .failure(error) }
            let ev = s.index.core.pendingEvents
            s.index.core.pendingEvents.removeAll(keepingCapacity: true)
            return (r, ev)
        }
        if !events.isEmpty { deliver(events) }
        return try result.get()
    }

    private func deliver(_ events: [KVEvent]) {
        let handlers = subscribers.withLock { Array($0.values) }
        delivery.withLock { _ in
            for e in events { for h in handlers { h(e) } }
        }
    }

    /// Admits a request's prompt tokens (split into blocks of ``blockSize``).
    /// - Parameter extraKey: Model / adapter identity mixed into every block key.
    /// - Returns: The request's block table and how many leading tokens were cached.
    public func admit(tokens: [UInt32], extraKey: UInt64 = 0) throws(MemWallError) -> (table: BlockTable, hitTokens: Int) {
        try run { s throws(MemWallError) in try s.index.admit(tokens: tokens, extraKey: extraKey) }
    }

    /// Admits a request given as precomputed, prefix-chained block ids.
    public func admit(blocks keys: [BlockKey]) throws(MemWallError) -> BlockAdmission {
        try run { s throws(MemWallError) in try s.index.admit(keys) }
    }

    /// Appends generated tokens to a request's table (copy-on-write for a shared tail).
    public func append(tokens: [UInt32], to table: inout BlockTable) throws(MemWallError) {
        var t = table
        try run { s throws(MemWallError) in
            for tok in tokens { try s.index.append(token: tok, to: &t) }
        }
        table = t
    }

    /// Releases a request's blocks (the request finished or was preempted).
    /// - Throws: `misuse` when the table was released already; nothing
    ///   changes then (a block another request shares stays held).
    public func release(_ table: BlockTable) throws(MemWallError) {
        try release(table.blocks)
    }

    /// Releases blocks from ``admit(blocks:)``.
    /// - Throws: `misuse` when they were released already; nothing changes then.
    public func release(_ blocks: [BlockRef]) throws(MemWallError) {
        try run { s throws(MemWallError) in try s.index.release(blocks) }
    }

    /// Pins or unpins cached blocks; returns how many were cached.
    @discardableResult
    public func setPinned(_ keys: [BlockKey], _ pinned: Bool) -> Int {
        (try? run { s in s.index.setPinned(keys, pinned) }) ?? 0
    }

    /// Promotes the cached prefix of `keys` to DRAM ahead of use; returns blocks promoted.
    @discardableResult
    public func prefetch(_ keys: [BlockKey]) throws(MemWallError) -> Int {
        try run { s throws(MemWallError) in try s.index.prefetch(keys) }
    }

    /// Tells the cache which blocks its next queued requests will need (one key
    /// list per request, nearest first; replaces the previous hint): eviction
    /// keeps them while anything else can leave, and their cached prefixes are
    /// promoted to DRAM ahead of use. See ``BlockIndex/hint(upcoming:)``.
    /// - Returns: Blocks promoted.
    @discardableResult
    public func hint(upcoming: [[BlockKey]]) throws(MemWallError) -> Int {
        try run { s throws(MemWallError) in try s.index.hint(upcoming: upcoming) }
    }

    /// Number of leading `keys` cached now.
    public func cachedPrefixLength(_ keys: [BlockKey]) -> Int {
        state.withLock { $0.index.cachedPrefixLength(keys) }
    }

    /// The tier holding `key`, if cached.
    public func tier(of key: BlockKey) -> Int? { state.withLock { $0.index.tier(of: key) } }

    /// Requests referencing `key`.
    public func referenceCount(of key: BlockKey) -> Int { state.withLock { $0.index.referenceCount(of: key) } }

    /// Counters now.
    public var statistics: KVStatistics { state.withLock { $0.index.statistics } }

    /// Bytes moved per path (empty without a byte store).
    public var bytesMovedByPath: [String: Int] { state.withLock { $0.store?.bytesMovedByPath ?? [:] } }

    /// Checks the index's invariants (tests); `nil` when all hold.
    public func invariantViolation() -> String? { state.withLock { $0.index.invariantViolation() } }

    /// Verifies a cached block's bytes, wherever they live, against the checksum they travelled with.
    /// - Throws: `notFound` when it is not cached or there is no byte store; `corrupted`.
    public func verify(_ key: BlockKey) throws(MemWallError) {
        try run { s throws(MemWallError) in
            guard let store = s.store, let slot = s.index.slot(of: key), let t = s.index.tier(of: key) else {
                throw MemWallError(.notFound, "block \(key) is not cached with bytes")
            }
            try store.verify(slot: slot, key: key, tier: t, againstContents: false)
        }
    }

    /// Writes a referenced block's KV bytes in DRAM; the checksum is recomputed afterwards.
    /// - Throws: `notFound` without a byte store or for an uncached block;
    ///   `invalidArgument` when the block is not in DRAM.
    public func writeBytes(of block: BlockRef, _ body: @Sendable (UnsafeMutableRawBufferPointer) -> Void) throws(MemWallError) {
        try run { s throws(MemWallError) in
            guard let store = s.store, block.isCached, s.index.slot(of: block.key) == block.slot,
                  let t = s.index.tier(of: block.key) else {
                throw MemWallError(.notFound, "block \(block.key) is not cached with bytes (or the reference is stale)")
            }
            try store.withDRAMBytes(slot: block.slot, key: block.key, tier: t, body)
        }
    }

    /// Calls `handler` with every future event; keep the token to unsubscribe.
    public func subscribe(_ handler: @escaping @Sendable (KVEvent) -> Void) -> KVSubscription {
        let id = nextSubscriber.wrappingAdd(1, ordering: .relaxed).oldValue
        subscribers.withLock { $0[id] = handler }
        hasSubscribers.store(true, ordering: .relaxed)
        return KVSubscription(id: id)
    }

    /// Stops calling a subscriber.
    public func unsubscribe(_ subscription: KVSubscription) {
        let empty = subscribers.withLock { s -> Bool in
            s[subscription.id] = nil
            return s.isEmpty
        }
        if empty { hasSubscribers.store(false, ordering: .relaxed) }
    }
}

/// Identifies one event subscription.
public struct KVSubscription: Sendable, Hashable {
    /// Process-unique number.
    public let id: UInt64
}
