import CMemWallShim
import MemWallCore
import Synchronization
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// The cache as an inference runtime uses it: thread-safe, with events, and —
/// with a ``TierStore`` — the runtime's data path.
///
/// **The index plans, the store moves.** Every operation takes the lock only
/// to decide: the ``BlockIndex`` admits, evicts, promotes, and records the
/// bytes this needs moved as a plan (see ``MovePlan``), holding the blocks the
/// plan touches. The lock is released, the store applies the plan (all tiers
/// in flight together), and the lock is taken again briefly to record the
/// outcome. A lookup therefore never waits for a transfer, only for another
/// operation's planning — microseconds.
///
/// **The runtime API.** ``lookup(_:)`` answers how many leading blocks are
/// cached (and where); ``load(_:into:policy:)`` and
/// ``store(_:from:after:policy:)`` move blocks between the tiers and the
/// caller's registered buffers and return a ``KVTransfer`` that can be waited
/// for, polled, awaited, or observed through ``completionFileDescriptor`` (an
/// eventfd). Failures are per block (``KVTransferResult/failed``).
///
/// Events produced by an operation are delivered to subscribers after the lock
/// is released, in order, on the calling thread.
public final class KVCache: Sendable {
    private struct State: ~Copyable {
        var index: BlockIndex
        /// Plans that moved blocks and have not completed, for loads that wait for them.
        var tickets: [UInt64: PlanTicket] = [:]
        /// Caller regions registered for ``load(_:into:policy:)`` and ``store(_:from:after:policy:)``.
        var registered: Set<RegionID> = []
        /// Moves the store could not complete (their blocks are marked lost).
        var failedMoves = 0
        var closed = false
    }
    private let state: Mutex<State>
    private let store: TierStore?
    private let subscribers = Mutex<[UInt64: @Sendable (KVEvent) -> Void]>([:])
    private let nextSubscriber = Atomic<UInt64>(1)
    private let hasSubscribers = Atomic<Bool>(false)
    // Serialises delivery so subscribers see events in the order they happened.
    private let delivery = Mutex<Void>(())
    private let worker = KVWorker()
    private let eventFD = Atomic<Int32>(-1)

    /// Tiers, fastest first.
    public let tiers: [TierSpec]
    /// Tokens per block.
    public let blockSize: Int
    /// The eviction policy's name.
    public let policyName: String
    /// Blocks one plan of a load or store covers: a call for more is planned and
    /// applied in slices, so the lock is held for one slice's planning at a time
    /// (~2 µs per block), not for a whole call (a 1 GiB load at 4 KiB is 262,144 blocks).
    static let planSlice = 256
    /// Bytes per block payload, or `nil` for a metadata-only cache.
    public var blockBytes: Int? { store?.blockBytes }
    /// The host-wide pool this cache shares blocks through (a `pool:NAME` tier), if any.
    /// Not one of ``tiers`` (the index's own); in ``KVLookup/tiers`` it counts at ``sharedPosition``.
    public let shared: (any SharedKVTier)?
    /// The pool's place in the tier list the cache was made with (0 is DRAM): the tier number
    /// ``lookup(_:)`` reports for blocks read from it; the index's tiers after it count one higher.
    public let sharedPosition: Int?
    private let sharedCounts = SharedTierCounters()

    /// Creates a cache.
    /// - Parameters:
    ///   - tiers: Fastest first, DRAM first; at most one `pool:NAME` tier (``TierKind/pool``), the
    ///     host-wide pool, which needs `shared` and a byte store. The store's tiers are the others.
    ///   - store: Holds and moves the blocks' bytes; `nil` keeps metadata only.
    ///   - shared: The attached pool (`KVPool.attach(name:)`) of the `pool:NAME` tier. Lookups
    ///     and loads read a block from it when no faster tier of this cache holds it; stores
    ///     write every block into it as well, so the other processes attached to it find it.
    /// - Throws: `invalidArgument` for bad tiers or block size, or a pool tier without its pool
    ///   (or of another name or block size); `outOfBounds` when a store's tier is too small.
    public convenience init(tiers: [TierSpec], policy: EvictionPolicyName = .lfuda, blockSize: Int = 16,
                            store: TierStore? = nil, shared: (any SharedKVTier)? = nil) throws(MemWallError) {
        try TierSpec.validate(tiers, allowingShared: true)
        let position = tiers.firstIndex { $0.kind == .pool }
        if let position {
            guard let shared else {
                throw MemWallError(.invalidArgument, "tier \(tiers[position]) needs its pool attached: pass KVPool.attach(name: \"\(tiers[position].name)\") as shared")
            }
            guard shared.name == tiers[position].name else {
                throw .invalid("shared pool", shared.name, expected: "the pool the tier list names (\(tiers[position]))")
            }
            guard let store else {
                throw MemWallError(.invalidArgument, "tier \(tiers[position]) holds bytes: the cache needs a TierStore")
            }
            guard store.blockBytes == shared.blockBytes else {
                throw .invalid("block size of pool '\(shared.name)'", shared.blockBytes, expected: "the cache's \(store.blockBytes) bytes")
            }
        } else if shared != nil {
            throw MemWallError(.invalidArgument, "a shared pool needs its place in the tier list: add pool:\(shared?.name ?? "NAME") after dram")
        }
        let index = try BlockIndex(tiers: tiers.filter { $0.kind != .pool }, policy: policy, blockSize: blockSize)
        try self.init(index: index, store: store, shared: position.map { (shared, $0) })
    }

    /// A cache over an index built with any policy instance (the offline oracle in replays).
    init(index: sending BlockIndex, store: TierStore?, shared: ((any SharedKVTier)?, Int)? = nil) throws(MemWallError) {
        if let store {
            index.core.ledger = PayloadLedger(slots: try store.slotCounts(for: index.tiers))
        }
        tiers = index.tiers
        blockSize = index.blockSize
        policyName = index.policyName
        self.store = store
        self.shared = shared?.0
        sharedPosition = shared?.0 == nil ? nil : shared?.1
        state = Mutex(State(index: index))
    }

    deinit {
        worker.stop()
        let fd = eventFD.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Refuses every later call with `misuse`, lets the worker finish what was
    /// handed to it, and closes the eventfd. Registered regions are released
    /// with the store. A second close does nothing.
    public func close() {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        guard first else { return }
        worker.stop()
        let fd = eventFD.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { Glibc.close(fd) }
    }

    private static func closedError() -> MemWallError {
        MemWallError(.misuse, "the KV cache was closed; open a new one")
    }

    // MARK: Plan, apply, complete

    /// Plans under the lock, applies outside it, completes under it again; delivers events.
    private func run<R: Sendable>(_ body: (inout sending State) throws(MemWallError) -> R) throws(MemWallError) -> R {
        let (result, plan) = try planned(body)
        if let plan { apply(plan, buffers: []) }
        return result
    }

    /// The planning half: runs `body` under the lock, seals what it planned, hands out events.
    private func planned<R: Sendable>(_ body: (inout sending State) throws(MemWallError) -> R) throws(MemWallError) -> (R, MovePlan?) {
        let record = hasSubscribers.load(ordering: .relaxed)
        let (result, events, plan) = state.withLock { s -> (Result<R, MemWallError>, [KVEvent], MovePlan?) in
            guard !s.closed else { return (.failure(KVCache.closedError()), [], nil) }
            s.index.core.recordsEvents = record
            let r: Result<R, MemWallError>
            do throws(MemWallError) { r = .success(try body(&s)) } catch { r = .failure(error) }
            let plan = s.index.core.sealPlan()
            if let plan, plan.moves.contains(where: { $0.purpose != .load }) { s.tickets[plan.id] = PlanTicket() }
            let ev = s.index.core.pendingEvents
            s.index.core.pendingEvents.removeAll(keepingCapacity: true)
            return (r, ev, plan)
        }
        if !events.isEmpty { deliver(events) }
        switch result {
        case .success(let r): return (r, plan)
        case .failure(let e):
            if let plan { apply(plan, buffers: []) }   // what was decided before the error still moves
            throw e
        }
    }

    /// Moves a sealed plan's bytes (no lock held) and records the outcome.
    @discardableResult
    private func apply(_ plan: MovePlan, buffers: [KVBuffer]) -> [MoveOutcome] {
        let outcomes = store?.apply(plan, buffers: buffers) ?? []
        let ticket = state.withLock { s -> PlanTicket? in
            s.index.core.completePlan(plan, outcomes: outcomes)
            for (o, m) in zip(outcomes, plan.moves) where m.purpose != .load {
                if case .failed = o { s.failedMoves += 1 }
            }
            return s.tickets.removeValue(forKey: plan.id)
        }
        ticket?.finish()
        return outcomes
    }

    private func deliver(_ events: [KVEvent]) {
        let handlers = subscribers.withLock { Array($0.values) }
        delivery.withLock { _ in
            for e in events { for h in handlers { h(e) } }
        }
    }

    // MARK: Request-level API (admission, block tables)

    /// Admits a request's prompt tokens (split into blocks of ``blockSize``).
    /// - Parameter extraKey: Model / adapter identity mixed into every block key.
    /// - Returns: The request's block table and how many leading tokens were cached.
    public func admit(tokens: [UInt32], extraKey: UInt64 = 0) throws(MemWallError) -> (table: BlockTable, hitTokens: Int) {
        try run { s throws(MemWallError) in try s.index.admit(tokens: tokens, extraKey: extraKey) }
    }

    /// Admits a request given as precomputed, prefix-chained block ids.
    /// With a byte store, hits in slower tiers are promoted (their bytes
    /// have arrived when this returns) and new blocks get a reserved slot
    /// whose bytes ``store(_:from:after:policy:)`` writes.
    public func admit(blocks keys: [BlockKey]) throws(MemWallError) -> BlockAdmission {
        try run { s throws(MemWallError) in try s.index.admit(keys) }
    }

    /// ``admit(blocks:)`` for a prompt whose last block holds `lastBlockTokens` tokens.
    public func admit(blocks keys: [BlockKey], lastBlockTokens: Int) throws(MemWallError) -> BlockAdmission {
        try run { s throws(MemWallError) in try s.index.admit(keys, lastBlockTokens: lastBlockTokens) }
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

    /// Promotes the cached prefix of `keys` to DRAM ahead of use and waits for the bytes; returns blocks promoted.
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

    /// Number of leading `keys` cached now (metadata: blocks reserved by an admission count).
    public func cachedPrefixLength(_ keys: [BlockKey]) -> Int {
        state.withLock { $0.index.cachedPrefixLength(keys) }
    }

    /// The tier holding `key`, if cached.
    public func tier(of key: BlockKey) -> Int? { state.withLock { $0.index.tier(of: key) } }

    /// References on `key`: requests holding it, plus operations whose bytes are in flight.
    public func referenceCount(of key: BlockKey) -> Int { state.withLock { $0.index.referenceCount(of: key) } }

    /// Counters now.
    public var statistics: KVStatistics { state.withLock { $0.index.statistics } }

    /// Bytes moved per path ("mechanism: from -> to"; empty without a byte store).
    public var bytesMovedByPath: [String: Int] { store?.bytesMovedByPath ?? [:] }

    /// Moves between tiers that failed (their blocks are marked lost: loads of them fail, a store repairs them).
    public var failedMoves: Int { state.withLock { $0.failedMoves } }

    /// Checks the index's invariants (tests); `nil` when all hold.
    public func invariantViolation() -> String? { state.withLock { $0.index.invariantViolation() } }

    // MARK: Runtime API

    /// Leading `keys` whose bytes are cached (stored, not lost), and the tier of
    /// each. Takes the lock only to read the index: it does not wait for any
    /// transfer in flight. Without a byte store, every cached block counts.
    public func lookup(_ keys: [BlockKey]) -> KVLookup {
        let tiersOf = state.withLock { $0.index.core.storedPrefix(keys) }
        guard let shared, let pos = sharedPosition else { return KVLookup(count: tiersOf.count, tiers: tiersOf) }
        // Numbered as the tier list the cache was made with: the pool at `pos`, the index's slower tiers after it.
        var tiers = tiersOf.map { $0 < pos ? $0 : $0 + 1 }
        // A block this process holds only in a tier slower than the pool is read from the pool when it is there.
        for i in tiers.indices where tiers[i] > pos && (try? shared.lookup([keys[i]]).count) == 1 { tiers[i] = pos }
        if tiers.count < keys.count, let more = try? shared.lookup(Array(keys[tiers.count...])).count, more > 0 {
            tiers += Array(repeating: pos, count: more)
        }
        let inPool = tiers.reduce(0) { $0 + ($1 == pos ? 1 : 0) }
        if inPool > 0 { sharedCounts.hits.wrappingAdd(inPool, ordering: .relaxed) }
        return KVLookup(count: tiers.count, tiers: tiers)
    }

    /// What the cache did with its shared pool (zero without one).
    public var sharedStatistics: SharedTierStatistics {
        SharedTierStatistics(lookupHits: sharedCounts.hits.load(ordering: .relaxed),
                             blocksLoaded: sharedCounts.loaded.load(ordering: .relaxed),
                             blocksStored: sharedCounts.stored.load(ordering: .relaxed))
    }

    /// Reads from the shared pool the blocks of `keys` no faster tier of this cache holds.
    /// - Returns: Positions read (done), positions that failed for good (not held locally
    ///   either), and the bytes moved; everything else is for the cache's own tiers.
    private func loadShared(_ keys: [BlockKey], _ buffers: [KVBuffer]) -> (done: Set<Int>, failed: [KVBlockFailure], bytes: Int) {
        guard let shared, let pos = sharedPosition else { return ([], [], 0) }
        let local = state.withLock { $0.index.core.storedTiers(keys) }
        // Index tier t sits at list position t (< pos) or t + 1: slower than the pool when t >= pos.
        let candidates = keys.indices.filter { local[$0].map { $0 >= pos } ?? true }
        guard !candidates.isEmpty else { return ([], [], 0) }
        let result = withExtendedLifetime(buffers) {
            try? shared.load(candidates.map { keys[$0] }, into: candidates.map { buffers[$0].region.baseAddress + buffers[$0].offset })
        }
        guard let result else { return ([], [], 0) }
        var done = Set(candidates)
        var failed: [KVBlockFailure] = []
        for f in result.failed {
            let i = candidates[f.index]
            done.remove(i)
            if local[i] == nil { failed.append(KVBlockFailure(index: i, key: keys[i], error: f.error)) }
        }
        sharedCounts.loaded.wrappingAdd(done.count, ordering: .relaxed)
        return (done, failed, result.bytes)
    }

    /// Lets ``load(_:into:policy:)`` and ``store(_:from:after:policy:)`` use
    /// buffers in `region`: registers it with the transports of the storage and
    /// remote tiers (so NVMe reads and writes go straight into it, O_DIRECT).
    /// - Throws: `unsupported` without a byte store; the transports' registration errors.
    public func register(_ region: MemoryRegion) throws(MemWallError) {
        guard let store else { throw MemWallError(.unsupported, "this KV cache keeps no bytes (it was made without a TierStore)") }
        try state.withLock { s throws(MemWallError) in
            guard !s.closed else { throw KVCache.closedError() }
            guard !s.registered.contains(region.id) else { return }
            try store.register(region)
            s.registered.insert(region.id)
        }
    }

    /// Undoes ``register(_:)``; operations in flight on the region must have finished.
    /// - Throws: `notFound` when it was not registered.
    public func deregister(_ region: MemoryRegion) throws(MemWallError) {
        try state.withLock { s throws(MemWallError) in
            guard s.registered.remove(region.id) != nil else {
                throw MemWallError(.notFound, "\(region) is not registered with this KV cache")
            }
        }
        try store?.deregister(region)
    }

    /// Checks the caller's buffers before anything is planned.
    private func checkBuffers(_ keys: [BlockKey], _ buffers: [KVBuffer], _ what: String) throws(MemWallError) -> TierStore {
        guard let store else {
            throw MemWallError(.unsupported, "this KV cache keeps no bytes (it was made without a TierStore); \(what) needs one")
        }
        guard keys.count == buffers.count else {
            throw MemWallError(.invalidArgument, "\(what) got \(keys.count) keys and \(buffers.count) buffers; give one buffer per key")
        }
        let unregistered = state.withLock { s -> (Bool, MemoryRegion?) in
            (s.closed, buffers.first { !s.registered.contains($0.region.id) }?.region)
        }
        if unregistered.0 { throw KVCache.closedError() }
        if let r = unregistered.1 {
            throw MemWallError(.misuse, "\(what): \(r) is not registered with this KV cache; call register(_:) first")
        }
        let bytes = store.blockBytes
        for (i, b) in buffers.enumerated() {
            guard b.offset >= 0, b.offset <= b.region.byteCount - bytes else {
                throw MemWallError(.outOfBounds,
                    "\(what): buffer #\(i) at offset \(b.offset) of \(b.region) does not hold a \(ByteCount(bytes)) block")
            }
            guard Int(bitPattern: b.region.baseAddress + b.offset) % 4096 == 0 else {
                throw MemWallError(.misaligned,
                    "\(what): buffer #\(i) at offset \(b.offset) of \(b.region) is not 4096-aligned (storage tiers read and write it with O_DIRECT)")
            }
        }
        return store
    }

    /// Reads the cached blocks `keys` into the caller's buffers (one per key),
    /// from whatever tier holds each, checking every block's checksum on arrival.
    ///
    /// DRAM and memory tiers are copied by the CPU into the buffer (one copy,
    /// checksummed on the way); NVMe blocks are read by io_uring straight into
    /// it with O_DIRECT (no copy). Blocks not cached, never stored, lost, or
    /// damaged are per-block failures; blocks another operation is still moving
    /// are handled as `policy` says. Loading counts as a use of each block.
    /// - Returns: A handle; nothing has moved until it runs (its ``KVTransfer/wait()``
    ///   runs it on the calling thread, otherwise the cache's worker does).
    /// - Throws: Before anything moves: `misuse` for an unregistered buffer or a
    ///   closed cache, `invalidArgument` when keys and buffers differ in number,
    ///   `outOfBounds`/`misaligned` for a bad buffer, `unsupported` without a store.
    public func load(_ keys: [BlockKey], into buffers: [KVBuffer], policy: KVLoadPolicy = .wait) throws(MemWallError) -> KVTransfer {
        try load(keys, into: buffers, policy: policy, touching: true)
    }

    /// ``load(_:into:policy:)``; `touching: false` reads without counting a use (replays check bytes so).
    func load(_ keys: [BlockKey], into buffers: [KVBuffer], policy: KVLoadPolicy, touching: Bool) throws(MemWallError) -> KVTransfer {
        let store = try checkBuffers(keys, buffers, "load")
        guard !keys.isEmpty else { return KVTransfer(finished: KVTransferResult(blocks: 0, failed: [], bytes: 0)) }
        let deadline: UInt64? = switch policy {
        case .timeout(let ns): MonotonicClock.nanoseconds() &+ ns
        default: nil
        }
        return submit { [self] in
            // Blocks only the shared pool has (or has faster than this cache) come from it; the rest from the cache's tiers.
            let pooled = self.loadShared(keys, buffers)
            var failed: [KVBlockFailure] = pooled.failed
            var bytes = pooled.bytes
            let settled = pooled.done.union(pooled.failed.map(\.index))
            // Planned a slice at a time, so the lock is never held for a whole huge call.
            for start in stride(from: 0, to: keys.count, by: KVCache.planSlice) {
                var todo = (start..<min(start + KVCache.planSlice, keys.count)).filter { !settled.contains($0) }
                while !todo.isEmpty {
                    let subset = todo.map { keys[$0] }
                    let (verdicts, plan) = (try? self.planned { s in
                        s.index.core.planLoad(subset, at: todo, touching: touching)
                    }) ?? (Array(repeating: BlockVerdict.missing, count: todo.count), nil)
                    var waits: [UInt64] = []
                    var retry: [Int] = []
                    for (j, v) in verdicts.enumerated() {
                        let i = todo[j]
                        switch v {
                        case .planned, .alreadyStored: break
                        case .missing:
                            failed.append(KVBlockFailure(index: i, key: keys[i], error: MemWallError(.notFound, "not cached")))
                        case .notStored:
                            failed.append(KVBlockFailure(index: i, key: keys[i], error: MemWallError(.notFound, "reserved by an admission, but its bytes were never stored")))
                        case .lost:
                            failed.append(KVBlockFailure(index: i, key: keys[i], error: MemWallError(.corrupted, "a move of its bytes failed earlier; store it again")))
                        case .busy(let plan):
                            if case .bestEffort = policy {
                                failed.append(KVBlockFailure(index: i, key: keys[i], error: MemWallError(.busy, "still being moved or stored by another operation")))
                            } else {
                                waits.append(plan)
                                retry.append(i)
                            }
                        }
                    }
                    if let plan {
                        let outcomes = self.apply(plan, buffers: buffers)
                        for (o, m) in zip(outcomes, plan.moves) where m.keyIndex >= 0 {
                            switch o {
                            case .done: bytes += store.blockBytes
                            case .failed(let e): failed.append(KVBlockFailure(index: m.keyIndex, key: m.key, error: e))
                            }
                        }
                    }
                    todo = retry
                    guard !todo.isEmpty else { break }
                    // Wait for the plans moving them; a plan already finished has no ticket.
                    let tickets = self.state.withLock { s in waits.compactMap { s.tickets[$0] } }
                    var inTime = true
                    for t in tickets where !t.wait(deadline: deadline) { inTime = false; break }
                    if !inTime {
                        for i in todo {
                            failed.append(KVBlockFailure(index: i, key: keys[i], error: MemWallError(.timedOut, "still in flight elsewhere when the load's time ran out")))
                        }
                        break
                    }
                }
            }
            failed.sort { $0.index < $1.index }
            return KVTransferResult(blocks: keys.count, failed: failed, bytes: bytes)
        }
    }

    /// Writes the caller's buffers (one per key) as the blocks `keys`, a prefix
    /// chain whose first block's parent is `parent` (`nil`: it starts a chain).
    ///
    /// Blocks not cached are placed as admission places them — the fastest tier
    /// not faster than the parent's that can make room, evicting as needed, and
    /// the moves that eviction needs go in the same plan. Blocks an admission
    /// reserved are filled. Blocks cached with bytes already are skipped (no
    /// error: another request stored the same prefix). Each block's checksum is
    /// computed from the buffer once, while it is copied (DRAM, memory tiers)
    /// or while its O_DIRECT write to NVMe runs. A stored block is held until
    /// its bytes have landed, then it may leave like any other.
    /// - Parameter policy: ``KVWritePolicy/writeBack`` writes each block once, where it is
    ///   placed. ``KVWritePolicy/writeThrough`` also writes a copy into the last tier
    ///   (NVMe, typically) in the same plan, when that tier has room without evicting a
    ///   block; the handle finishes when both have landed. When the block is later
    ///   evicted down to the last tier it takes the copy over and nothing is written;
    ///   copies are the first thing the last tier gives up when it needs room.
    /// - Throws: As ``load(_:into:policy:)``, before anything moves.
    public func store(_ keys: [BlockKey], from buffers: [KVBuffer], after parent: BlockKey? = nil,
                      policy: KVWritePolicy = .writeBack) throws(MemWallError) -> KVTransfer {
        let store = try checkBuffers(keys, buffers, "store")
        guard !keys.isEmpty else { return KVTransfer(finished: KVTransferResult(blocks: 0, failed: [], bytes: 0)) }
        return submit { [self] in
            var failed: [KVBlockFailure] = []
            var bytes = 0
            // Planned a slice at a time, so the lock is never held for a whole huge call.
            for start in stride(from: 0, to: keys.count, by: KVCache.planSlice) {
                let range = start..<min(start + KVCache.planSlice, keys.count)
                let sliceKeys = Array(keys[range])
                let sliceParent = start == 0 ? parent : keys[start - 1]
                let planned = try? self.planned { s in
                    s.index.core.planStore(sliceKeys, after: sliceParent, writeThrough: policy == .writeThrough)
                }
                guard let planned else {
                    failed += range.map { KVBlockFailure(index: $0, key: keys[$0], error: KVCache.closedError()) }
                    break
                }
                let ((verdicts, created), plan) = planned
                if !created.isEmpty {
                    // The plan holds them now: the creation references go, so they can leave once stored.
                    self.state.withLock { s in s.index.core.releaseCreated(created) }
                }
                for (i, v) in verdicts.enumerated() where v == .missing {
                    failed.append(KVBlockFailure(index: start + i, key: sliceKeys[i],
                        error: MemWallError(.outOfBounds, "no tier could take it (every block there is in use or in flight)")))
                }
                if let plan {
                    let outcomes = self.apply(plan, buffers: Array(buffers[range]))
                    for (o, m) in zip(outcomes, plan.moves) where m.keyIndex >= 0 && m.purpose == .store {
                        switch o {
                        case .done: bytes += store.blockBytes
                        case .failed(let e): failed.append(KVBlockFailure(index: start + m.keyIndex, key: m.key, error: e))
                        }
                    }
                }
            }
            if let shared = self.shared {
                // Every block into the host-wide pool too (those there already are skipped): one copy
                // for every process attached to it. A block the pool took is cached even when this
                // cache's own tiers could not take it.
                let sources = buffers.map { UnsafeRawPointer($0.region.baseAddress + $0.offset) }
                if let r = withExtendedLifetime(buffers, { try? shared.store(keys, from: sources, after: parent) }) {
                    let refused = Set(r.failed.map(\.index))
                    failed.removeAll { $0.error.code == .outOfBounds && !refused.contains($0.index) }
                    bytes += r.bytes
                    self.sharedCounts.stored.wrappingAdd(r.bytes / store.blockBytes, ordering: .relaxed)
                }
            }
            failed.sort { $0.index < $1.index }
            return KVTransferResult(blocks: keys.count, failed: failed, bytes: bytes)
        }
    }

    /// Starts promoting the cached prefix of `keys` to DRAM; the handle finishes
    /// when the bytes are there (``KVTransferResult/bytes``: bytes promoted).
    public func startPrefetch(_ keys: [BlockKey]) throws(MemWallError) -> KVTransfer {
        try state.withLock { s throws(MemWallError) in if s.closed { throw KVCache.closedError() } }
        let bytes = store?.blockBytes ?? 0
        return submit { [self] in
            let promoted = (try? self.run { s throws(MemWallError) in try s.index.prefetch(keys) }) ?? 0
            return KVTransferResult(blocks: keys.count, failed: [], bytes: promoted * bytes)
        }
    }

    /// An eventfd (non-blocking, close-on-exec) whose counter grows by one each
    /// time a ``KVTransfer`` of this cache finishes — for an event loop
    /// (asyncio's `add_reader`, epoll): when it is readable, read it to reset
    /// it and poll the handles' ``KVTransfer/isDone``. Made on first use,
    /// closed by ``close()``; the cache owns it (do not close it yourself).
    /// - Throws: `systemCall` when the kernel refuses; `misuse` once closed.
    public var completionFileDescriptor: Int32 {
        get throws(MemWallError) {
            try state.withLock { s throws(MemWallError) in if s.closed { throw KVCache.closedError() } }
            let now = eventFD.load(ordering: .acquiring)
            if now >= 0 { return now }
            let fd = try CCall.minusOne(memwall_eventfd(), "eventfd", "cannot make the KV cache's completion eventfd")
            let (exchanged, original) = eventFD.compareExchange(expected: -1, desired: fd, ordering: .acquiringAndReleasing)
            if !exchanged { Glibc.close(fd) }
            return exchanged ? fd : original
        }
    }

    private func signalCompletion() {
        let fd = eventFD.load(ordering: .acquiring)
        if fd >= 0 { _ = memwall_eventfd_signal(fd) }
    }

    /// Hands an operation to the worker (and to whoever waits for it first).
    private func submit(_ job: @escaping @Sendable () -> KVTransferResult) -> KVTransfer {
        let t = KVTransfer(job: job) { [weak self] in self?.signalCompletion() }
        worker.enqueue(t)
        return t
    }

    // MARK: Checks (tests, replays)

    /// Reads `key`'s bytes wherever they are into a scratch buffer and checks their checksum.
    /// - Throws: `notFound` when it is not cached with bytes or there is no byte store; `corrupted`.
    public func verify(_ key: BlockKey) throws(MemWallError) {
        guard let store else { throw MemWallError(.notFound, "block \(key) is not cached with bytes (no byte store)") }
        let scratch = try MemoryRegion.allocate(byteCount: store.blockBytes, placement: MemoryPlacement(node: nil, label: "verify scratch"))
        try register(scratch)
        defer { try? deregister(scratch) }
        try load([key], into: [KVBuffer(region: scratch, offset: 0)], policy: .wait, touching: false).wait().check()
    }

    /// Overwrites one byte of `key`'s payload where it lives (tests prove checksums catch damage with it).
    func corruptForTesting(_ key: BlockKey) throws(MemWallError) {
        guard let store else { return }
        let at = state.withLock { s -> (Int, Int32)? in
            let e = s.index.core.table_find(key)
            guard e >= 0, let t = s.index.tier(of: key), let l = s.index.core.ledger, Int(e) < l.slotOf.count else { return nil }
            return (t, l.slotOf[Int(e)])
        }
        guard let at else { throw MemWallError(.notFound, "block \(key) is not cached") }
        try store.corruptForTesting(tier: at.0, slot: at.1)
    }

    // MARK: Events

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

/// What a cache did with its shared pool (``KVCache/sharedStatistics``).
public struct SharedTierStatistics: Sendable, Hashable {
    /// Blocks lookups found in the pool (and in no faster tier of the cache).
    public var lookupHits: Int
    /// Blocks loads read from the pool.
    public var blocksLoaded: Int
    /// Blocks stores wrote into the pool (blocks already there are not counted).
    public var blocksStored: Int
}

/// Counters behind ``SharedTierStatistics``.
final class SharedTierCounters: Sendable {
    let hits = Atomic<Int>(0)
    let loaded = Atomic<Int>(0)
    let stored = Atomic<Int>(0)
}

/// ``KVCache/lookup(_:)``'s answer.
public struct KVLookup: Sendable, Hashable {
    /// Leading keys whose bytes are cached (vLLM's matched blocks, HiCache's consecutive hits).
    public var count: Int
    /// The tier of each of those blocks, fastest = 0.
    public var tiers: [Int]

    /// `count` leading blocks found, in `tiers`.
    public init(count: Int, tiers: [Int]) {
        self.count = count
        self.tiers = tiers
    }
}

/// Identifies one event subscription.
public struct KVSubscription: Sendable, Hashable {
    /// Process-unique number.
    public let id: UInt64
}

/// The thread that runs a cache's operations nobody waits for, so their
/// handles finish (and the eventfd fires) on their own. Started on first use.
final class KVWorker: Sendable {
    private struct Queue {
        var jobs: [KVTransfer] = []
        var head = 0
        var stopping = false
        var thread: WorkerThread?
    }
    private let queue = Mutex(Queue())
    private let parking = ThreadParking()

    func enqueue(_ t: KVTransfer) {
        let start = queue.withLock { q -> Bool in
            q.jobs.append(t)
            return q.thread == nil && !q.stopping
        }
        if start {
            let thread = try? WorkerThread(name: "memwall-kv") { [self] in loop() }
            queue.withLock { $0.thread = thread }
            if thread == nil { t.runIfUnclaimed() }   // no thread: run it here rather than never
        }
        parking.wakeAll()
    }

    private func loop() {
        while true {
            var next: KVTransfer?
            var stop = false
            parking.wait(spins: 0) {
                queue.withLock { q in
                    if q.head < q.jobs.count {
                        next = q.jobs[q.head]
                        q.head += 1
                        if q.head == q.jobs.count { q.jobs.removeAll(keepingCapacity: true); q.head = 0 }
                        return true
                    }
                    stop = q.stopping
                    return stop
                }
            }
            if let next { next.runIfUnclaimed() } else if stop { return }
        }
    }

    /// Runs what is queued, then ends the thread (from any thread but the worker itself).
    func stop() {
        let thread = queue.withLock { q -> WorkerThread? in
            q.stopping = true
            return q.thread
        }
        parking.wakeAll()
        thread?.join()
    }
}
