import MemWallCore
import Transport

/// Where one slower tier's bytes live and the transport that reaches them.
public struct TierBacking: Sendable {
    /// The far side: a memory region (far memory), a storage target (NVMe) or a peer's segment.
    public var target: TransferTarget
    /// Moves bytes between DRAM and `target`.
    public var transport: any Transport

    /// Creates a backing.
    public init(target: TransferTarget, transport: any Transport) {
        self.target = target
        self.transport = transport
    }
}

/// Holds every cached block's bytes in the tier the index put it in, and
/// moves them through the tiers' transports when the index moves the block.
///
/// DRAM (tier 0) is one ``MemoryRegion`` cut into block-sized slots; each
/// slower tier is a ``TierBacking`` cut the same way. A checksum is computed
/// when a block's bytes are stored and travels with the block; every time the
/// bytes come back to DRAM (promotion) or are read for use, they are checked
/// against it, and a mismatch is a `corrupted` error naming the block.
///
/// Moves between two slower tiers go directly when the source is a memory
/// region (it is then the transfer's local side), and through a one-block DRAM
/// staging buffer otherwise.
///
/// Demotions (writes to a slower tier) are batched: during one index operation
/// they are collected per destination tier and, when the operation ends
/// (``BlockPayloadStore/finishMoves()``), posted as one descriptor list per
/// tier — all tiers at once — and waited for once. Until then the slot a
/// demoted block left is not reused (it is still the write's source), which is
/// what the ``batchSlack`` spare slots per tier are for; a read of a slot still
/// waiting to be written posts the batch first. Promotions, which must be
/// checked on arrival, run at once.
public final class TierStore {
    /// Bytes per block payload.
    public let blockBytes: Int
    private let dram: MemoryRegion
    private let staging: MemoryRegion
    private let expected: MemoryRegion       // scratch for the deterministic contents being compared
    private let backings: [TierBacking?]     // index = tier; nil for DRAM
    private var freeSlots: [[Int32]]
    private var location: [Int32] = []       // block slot → payload slot in its tier
    private var checksums: [UInt64] = []     // block slot → checksum of its payload
    private var registrations: [(any Transport, MemoryRegion)] = []
    /// Spare payload slots per tier beyond its capacity: how many demotions one
    /// batch can hold before it must be posted early.
    public static let batchSlack = 256
    /// One batched write: a block's bytes on their way to a slower tier.
    private struct PendingWrite {
        var source: MemoryRegion
        var sourceOffset: Int
        var payloadSlot: Int32
        var blockSlot: Int32
        var path: String
    }
    private var pendingWrites: [[PendingWrite]] = []      // by destination tier
    private var pendingDestinations: [Set<Int32>] = []    // payload slots being written, by tier
    private var deferredFree: [[Int32]] = []              // slots freed while the batch may still read them
    private var hasPending = false
    /// Block slot → why its bytes never arrived in the tier the index moved it to.
    private var lostBytes: [Int32: MemWallError] = [:]
    /// Batches posted (each: one request per destination tier), for reports.
    public private(set) var batchesPosted = 0
    /// `false` posts every demotion on its own and waits for it, as the store
    /// did before batching (kept to measure what batching buys).
    public var batchesMoves = true
    private weak var index: BlockIndex?
    /// Bytes moved, by "transport: from → to".
    public private(set) var bytesMovedByPath: [String: Int] = [:]
    /// Payload checks that passed.
    public private(set) var verifiedReads = 0
    private let payload: @Sendable (BlockKey, UnsafeMutableRawBufferPointer) -> Void
    private var tierNames: [String] = []

    /// Creates a store.
    /// - Parameters:
    ///   - blockBytes: Payload bytes per block (a multiple of 4096, for O_DIRECT storage tiers).
    ///   - dramBlocks: DRAM slots (the DRAM tier's capacity).
    ///   - lowerTiers: Backing of tiers 1…n, each large enough for its capacity (checked in ``attach(to:)``).
    ///   - payload: Writes a block's contents (defaults to ``deterministicPayload(key:into:)``).
    /// - Throws: `invalidArgument` for a bad block size, `systemCall` when DRAM cannot be allocated.
    public init(blockBytes: Int, dramBlocks: Int, lowerTiers: [TierBacking],
                payload: @escaping @Sendable (BlockKey, UnsafeMutableRawBufferPointer) -> Void = TierStore.deterministicPayload) throws(MemWallError) {
        try TierStore.checkBlockBytes(blockBytes)
        guard dramBlocks > 0 else { throw .invalid("DRAM capacity", dramBlocks, expected: "a positive number of blocks") }
        self.blockBytes = blockBytes
        dram = try MemoryRegion.allocate(byteCount: blockBytes * (dramBlocks + TierStore.batchSlack),
                                         placement: MemoryPlacement(node: nil, label: "DRAM"))
        staging = try MemoryRegion.allocate(byteCount: blockBytes, placement: MemoryPlacement(node: nil, label: "DRAM staging"))
        expected = try MemoryRegion.allocate(byteCount: blockBytes, placement: MemoryPlacement(node: nil, label: "DRAM scratch"))
        backings = [nil] + lowerTiers.map { Optional($0) }
        freeSlots = []
        self.payload = payload
        // Register the DRAM-side regions (and memory-backed tiers, which act as the local side of
        // moves to slower tiers) with every transport that will move them.
        var regs: [(any Transport, MemoryRegion)] = []
        func ensure(_ t: any Transport, _ r: MemoryRegion) throws(MemWallError) {
            if regs.contains(where: { $0.0 === t && $0.1 === r }) { return }
            try t.register(r)
            regs.append((t, r))
        }
        do throws(MemWallError) {
            for (i, b) in lowerTiers.enumerated() {
                try ensure(b.transport, dram)
                try ensure(b.transport, staging)
                for older in lowerTiers[..<i] {
                    if case .memory(let r) = older.target { try ensure(b.transport, r) }
                }
            }
        } catch {
            for (t, r) in regs { try? t.deregister(r) }
            throw error
        }
        registrations = regs
    }

    /// Payload sizes the store accepts: whole 4 KiB pages (O_DIRECT), at most 1 GiB.
    static func checkBlockBytes(_ blockBytes: Int) throws(MemWallError) {
        guard blockBytes > 0, blockBytes % 4096 == 0, blockBytes <= 1 << 30 else {
            throw .invalid("block payload size", blockBytes, expected: "a positive multiple of 4096 bytes, at most 1 GiB")
        }
    }

    deinit {
        // Nothing is in flight between operations (finishMoves waits), but a
        // batch an aborted operation left unposted is dropped with its regions.
        for (t, r) in registrations { try? t.deregister(r) }
    }

    /// Connects the store to `index`, which then reports every placement change here.
    /// - Throws: `invalidArgument` when the tier count differs, `outOfBounds` when a tier is too small.
    public func attach(to index: BlockIndex) throws(MemWallError) {
        guard index.tiers.count == backings.count else {
            throw .invalid("tier count of the byte store", backings.count, expected: "\(index.tiers.count), as in the index")
        }
        let cap = index.tiers.map(\.capacityBlocks)
        guard dram.byteCount >= cap[0] * blockBytes else {
            throw MemWallError(.outOfBounds, "DRAM tier holds \(dram.byteCount / blockBytes) blocks, the index wants \(cap[0])")
        }
        for t in 1..<backings.count {
            guard let b = backings[t] else { continue }
            let need = Int64(cap[t]) * Int64(blockBytes)
            guard b.target.byteCount >= need else {
                throw MemWallError(.outOfBounds,
                    "tier \(index.tiers[t].name) needs \(ByteCount(Int(need))) for \(cap[t]) blocks of \(ByteCount(blockBytes)); \(b.target) is smaller")
            }
        }
        // Every tier gets its capacity plus whatever spare slots its backing holds
        // (up to batchSlack), which lets a batch of demotions leave slots unreused.
        let room = (0..<backings.count).map { t -> Int in
            let bytes = t == 0 ? Int64(dram.byteCount) : backings[t].map(\.target.byteCount) ?? 0
            return min(Int(bytes / Int64(blockBytes)), cap[t] + TierStore.batchSlack)
        }
        freeSlots = room.map { c in (0..<Int32(c)).reversed().map { $0 } }
        pendingWrites = Array(repeating: [], count: backings.count)
        pendingDestinations = Array(repeating: [], count: backings.count)
        deferredFree = Array(repeating: [], count: backings.count)
        tierNames = index.tiers.map(\.name)
        self.index = index
        index.payloads = self
    }

    /// Builds the store with one NVMe tier at most, backed by `storagePath`
    /// (created when absent and then removed when the store goes; an existing
    /// file or device is used only as `existingStorage` allows). See
    /// ``build(tiers:blockBytes:registry:storage:farMemory:)``.
    public static func build(tiers: [TierSpec], blockBytes: Int, registry: TransportRegistry,
                             storagePath: String, existingStorage: ExistingFileUse = .refuse,
                             farMemory: ((Int) throws -> MemoryRegion)? = nil) throws(MemWallError) -> (store: TierStore, backings: [TierBacking]) {
        try build(tiers: tiers, blockBytes: blockBytes, registry: registry,
                  storage: { _, bytes throws(MemWallError) in
                      try StorageTarget(path: storagePath, createWithSize: bytes, existing: existingStorage)
                  },
                  farMemory: farMemory)
    }

    /// Builds the backing of every tier below DRAM from a transport registry:
    /// extra DRAM tiers as host memory, far memory from `farMemory` (a NUMA
    /// allocator binding pages to a CPU-less node; without one, host memory
    /// labelled emulated), NVMe as the storage target `storage` gives, each
    /// moved by whatever transport the registry selects for its kind.
    /// - Parameters:
    ///   - storage: The target of the NVMe tier at a position in `tiers`, at
    ///     least the given bytes large. Tiers never share a file: two tiers
    ///     given one target (or one file opened twice, which its lock refuses)
    ///     are an error.
    ///   - farMemory: Allocates `bytes` of far memory.
    /// - Throws: `unsupported` naming the tier when no transport moves its kind
    ///   or it needs a peer; `invalidArgument` when two tiers share a target;
    ///   errors from allocating memory or opening storage.
    public static func build(tiers: [TierSpec], blockBytes: Int, registry: TransportRegistry,
                             storage: (_ tier: Int, _ bytes: Int64) throws(MemWallError) -> StorageTarget,
                             farMemory: ((Int) throws -> MemoryRegion)? = nil) throws(MemWallError) -> (store: TierStore, backings: [TierBacking]) {
        try TierSpec.validate(tiers)
        try checkBlockBytes(blockBytes)   // with capacities ≤ 2^26, sizes below cannot overflow
        var backings: [TierBacking] = []
        for (position, t) in tiers.enumerated().dropFirst() {
            let bytes = (t.capacityBlocks + TierStore.batchSlack) * blockBytes
            func transport(_ kind: LocationKind) throws(MemWallError) -> any Transport {
                do throws(MemWallError) {
                    return try registry.select(for: kind)
                } catch {
                    let known = registry.transports.map { "\($0.name) (\($0.capabilities.implementation))" }
                    throw MemWallError(error.code,
                        "tier '\(t.name)' (\(t.kind)) cannot be used here: \(error.message); transports available: "
                            + (known.isEmpty ? "none" : known.joined(separator: ", ")),
                        function: error.function, errno: error.errno)
                }
            }
            switch t.kind {
            case .dram:
                let region = try MemoryRegion.allocate(byteCount: bytes, placement: MemoryPlacement(node: nil, label: "DRAM"))
                backings.append(TierBacking(target: .memory(region), transport: try transport(.memory)))
            case .farMemory:
                let region: MemoryRegion
                if let farMemory {
                    do {
                        region = try farMemory(bytes)
                    } catch let e as MemWallError {
                        throw e
                    } catch {
                        throw MemWallError(.systemCall, "cannot allocate \(ByteCount(bytes)) of far memory for tier '\(t.name)': \(error)")
                    }
                } else {
                    region = try MemoryRegion.allocate(byteCount: bytes,
                        placement: MemoryPlacement(node: nil, isEmulated: true, label: "far memory"))
                }
                backings.append(TierBacking(target: .memory(region), transport: try transport(.memory)))
            case .nvme:
                let mover = try transport(.storage)
                let target = try storage(position, Int64(bytes))
                for case .storage(let other) in backings.map(\.target) where other.isSameFile(as: target) {
                    throw MemWallError.invalid("storage of tier '\(t.name)'", target.path,
                                              expected: "a file of its own (tiers never share a file)")
                }
                backings.append(TierBacking(target: .storage(target), transport: mover))
            case .remote:
                throw MemWallError(.unsupported,
                    "tier '\(t.name)' (remote) needs a connected peer; build its TierBacking from a RemoteSegment the RDMA/TCP transport resolved")
            }
        }
        let store = try TierStore(blockBytes: blockBytes, dramBlocks: tiers[0].capacityBlocks, lowerTiers: backings)
        return (store, backings)
    }

    /// Transport names per tier (`nil` for DRAM), for reports.
    public var transportNames: [String?] { backings.map { $0.map { "\($0.transport.name) (\($0.transport.capabilities.implementation))" } } }

    // MARK: Deterministic contents

    /// Fills `buffer` with bytes that depend only on `key` (a SplitMix64 stream seeded by it).
    public static let deterministicPayload: @Sendable (BlockKey, UnsafeMutableRawBufferPointer) -> Void = { key, buffer in
        guard let base = buffer.baseAddress else { return }
        let words = buffer.count / 8
        let p = base.bindMemory(to: UInt64.self, capacity: words)
        var state = key.rawValue &* 0x9E37_79B9_7F4A_7C15 &+ 0x2545_F491_4F6C_DD1D
        for i in 0..<words {
            state &+= 0x9E37_79B9_7F4A_7C15
            p[i] = BlockKey.mix(state)
        }
        for i in (words * 8)..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: state >> UInt64(i % 8 * 8)) }
    }

    /// 64-bit checksum of a payload (word-wise multiply-xor, then finalised).
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325 ^ UInt64(bytes.count)
        let words = bytes.count / 8
        for i in 0..<words {
            let w = bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
            h = (h ^ w) &* 0x0000_0100_0000_01B3 &+ UInt64(i)
            h ^= h >> 29
        }
        for i in (words * 8)..<bytes.count { h = (h ^ UInt64(bytes[i])) &* 0x0000_0100_0000_01B3 }
        return BlockKey.mix(h)
    }

    // MARK: Checks used by replays

    /// After an admission: checks every hit block's bytes (reading them back
    /// from a slower tier when they were not promoted) against the checksum
    /// they travelled with and against their deterministic contents.
    /// - Throws: `corrupted` naming the block; transfer errors.
    public func verifyAndFill(admission: BlockAdmission) throws(MemWallError) {
        guard let index else { return }
        for r in admission.blocks.prefix(admission.hitBlocks) where r.isCached {
            guard let t = index.tier(of: r.key) else { continue }
            try verify(slot: r.slot, key: r.key, tier: t, againstContents: true)
        }
    }

    /// Reads a block's bytes (from whatever tier holds them) and checks them.
    /// - Parameter againstContents: Also compare with the deterministic payload for `key`.
    /// - Throws: `notFound` for a slot that holds no bytes or a tier that does not exist; `corrupted`.
    public func verify(slot: Int32, key: BlockKey, tier: Int, againstContents: Bool) throws(MemWallError) {
        try checkHolds(slot: slot, tier: tier, key: key)
        try finishMoves()
        try checkArrived(slot: slot, key: key, tier: tier)
        let s = Int(slot)
        let bytesRegion: MemoryRegion
        let offset: Int
        if tier == 0 {
            bytesRegion = dram
            offset = Int(location[s]) * blockBytes
        } else {
            try move(.read, tier: tier, payloadSlot: location[s], local: staging, at: 0, path: "verify")
            bytesRegion = staging
            offset = 0
        }
        let sum = bytesRegion.withUnsafeBytes(offset: offset, length: blockBytes) { TierStore.checksum($0) }
        guard sum == checksums[s] else {
            throw MemWallError(.corrupted, "block \(key) in tier \(tierNames[tier]) has checksum \(String(sum, radix: 16)), it was stored with \(String(checksums[s], radix: 16))")
        }
        if againstContents {
            expected.withUnsafeMutableBytes(length: blockBytes) { payload(key, $0) }
            let same = bytesRegion.withUnsafeBytes(offset: offset, length: blockBytes) { a in
                expected.withUnsafeBytes(length: blockBytes) { b in a.elementsEqual(b) }
            }
            guard same else {
                throw MemWallError(.corrupted, "block \(key) in tier \(tierNames[tier]) does not hold the contents it was stored with")
            }
        }
        verifiedReads += 1
    }

    /// Gives write access to a block's bytes in DRAM (where a runtime computes
    /// its KV), then recomputes the checksum that travels with it.
    /// - Throws: `invalidArgument` when the block is not in DRAM.
    public func withDRAMBytes<R>(slot: Int32, key: BlockKey, tier: Int,
                                 _ body: (UnsafeMutableRawBufferPointer) -> R) throws(MemWallError) -> R {
        guard tier == 0, slot >= 0, Int(slot) < location.count, location[Int(slot)] >= 0 else {
            throw MemWallError(.invalidArgument, "block \(key) is in tier \(tierNames[tier]), not DRAM; admit or prefetch it first")
        }
        let offset = Int(location[Int(slot)]) * blockBytes
        return dram.withUnsafeMutableBytes(offset: offset, length: blockBytes) { buf in
            let r = body(buf)
            checksums[Int(slot)] = TierStore.checksum(UnsafeRawBufferPointer(buf))
            return r
        }
    }

    /// Overwrites one byte of a cached block's payload wherever it lives (tests use it to prove checksums catch damage).
    public func corruptForTesting(slot: Int32, tier: Int) throws(MemWallError) {
        try checkHolds(slot: slot, tier: tier, key: BlockKey(rawValue: 0))
        try finishMoves()
        let s = Int(slot)
        if tier == 0 {
            dram.withUnsafeMutableBytes(offset: Int(location[s]) * blockBytes, length: 1) { $0[0] ^= 0xFF }
            return
        }
        try move(.read, tier: tier, payloadSlot: location[s], local: staging, at: 0, path: "test")
        staging.withUnsafeMutableBytes(length: 1) { $0[0] ^= 0xFF }
        try move(.write, tier: tier, payloadSlot: location[s], local: staging, at: 0, path: "test")
    }

    private func checkHolds(slot: Int32, tier: Int, key: BlockKey) throws(MemWallError) {
        guard tier >= 0, tier < backings.count, slot >= 0, Int(slot) < location.count, location[Int(slot)] >= 0 else {
            throw MemWallError(.notFound, "no bytes are stored for \(key) at slot \(slot) in tier \(tier)")
        }
    }

    // MARK: Moving bytes

    private func allocate(tier: Int, key: BlockKey) throws(MemWallError) -> Int32 {
        if freeSlots[tier].isEmpty && hasPending {
            try finishMoves()   // the batch holds the slots this tier could reuse
        }
        guard let s = freeSlots[tier].popLast() else {
            throw MemWallError(.outOfBounds, "tier \(tierNames[tier]) has no free slot for \(key) (index and store disagree)")
        }
        return s
    }

    /// Frees a payload slot, or keeps it aside while a batch may still read it.
    private func release(tier: Int, payloadSlot: Int32) {
        if hasPending { deferredFree[tier].append(payloadSlot) } else { freeSlots[tier].append(payloadSlot) }
    }

    /// Refuses a block whose batched write failed: its bytes are not where the index says.
    private func checkArrived(slot: Int32, key: BlockKey, tier: Int) throws(MemWallError) {
        if let e = lostBytes[slot] {
            throw MemWallError(.corrupted, "block \(key) never reached tier \(tierNames[tier]): \(e.message)",
                               function: e.function, errno: e.errno)
        }
    }

    /// Queues a write of one block to a slower tier for the current batch.
    private func enqueueWrite(tier: Int, payloadSlot: Int32, blockSlot: Int32, from region: MemoryRegion, at offset: Int, path: String) {
        guard backings[tier] != nil else { return }
        pendingWrites[tier].append(PendingWrite(source: region, sourceOffset: offset, payloadSlot: payloadSlot,
                                                blockSlot: blockSlot, path: path))
        pendingDestinations[tier].insert(payloadSlot)
        hasPending = true
    }

    /// Posts every batched write — one request per destination tier, all in
    /// flight together — waits for all, then frees the slots they read from.
    /// A failed descriptor marks its block as lost (refused on read-back) and
    /// the first error is thrown after every request has finished.
    func finishMoves() throws(MemWallError) {
        guard hasPending else { return }
        var posted: [(tier: Int, writes: [PendingWrite], request: TransferRequest)] = []
        var firstError: MemWallError?
        for t in 1..<pendingWrites.count where !pendingWrites[t].isEmpty {
            guard let b = backings[t] else { continue }
            let writes = pendingWrites[t]
            let descriptors = writes.map { w in
                TransferDescriptor(local: w.source, localOffset: w.sourceOffset, target: b.target,
                                   targetOffset: Int64(w.payloadSlot) * Int64(blockBytes), length: blockBytes)
            }
            do throws(MemWallError) {
                posted.append((t, writes, try b.transport.post(b.transport.prepare(.write, descriptors))))
            } catch {
                for w in writes { lostBytes[w.blockSlot] = error }
                if firstError == nil { firstError = error }
            }
        }
        for p in posted {
            _ = try? p.request.waitBlocking()
            let name = backings[p.tier]?.transport.name ?? "?"
            for (i, w) in p.writes.enumerated() {
                switch p.request.status(ofDescriptor: i) {
                case .completed:
                    bytesMovedByPath["\(name): \(w.path) -> \(tierNames[p.tier])", default: 0] += blockBytes
                case .failed(let e):
                    lostBytes[w.blockSlot] = e
                    if firstError == nil { firstError = e }
                default:
                    let e = MemWallError(.cancelled, "the write of block slot \(w.blockSlot) to tier \(tierNames[p.tier]) was cancelled")
                    lostBytes[w.blockSlot] = e
                    if firstError == nil { firstError = e }
                }
            }
        }
        if !posted.isEmpty { batchesPosted += 1 }
        for t in 0..<pendingWrites.count {
            pendingWrites[t].removeAll(keepingCapacity: true)
            pendingDestinations[t].removeAll(keepingCapacity: true)
            freeSlots[t].append(contentsOf: deferredFree[t])
            deferredFree[t].removeAll(keepingCapacity: true)
        }
        hasPending = false
        if let firstError { throw firstError }
    }

    private func ensureCapacity(_ slot: Int32) {
        while location.count <= Int(slot) { location.append(-1); checksums.append(0) }
    }

    /// Moves one block between `local` at `offset` and payload slot `payloadSlot`
    /// of `tier`, through that tier's transport, and counts the bytes per path.
    /// `.read` brings the block from the tier, `.write` sends it there; `path`
    /// names the other side in the statistics.
    private func move(_ operation: TransferOperation, tier: Int, payloadSlot: Int32,
                      local region: MemoryRegion, at offset: Int, path: String) throws(MemWallError) {
        guard let b = backings[tier] else { return }
        let d = TransferDescriptor(local: region, localOffset: offset, target: b.target,
                                   targetOffset: Int64(payloadSlot) * Int64(blockBytes), length: blockBytes)
        try b.transport.post(b.transport.prepare(operation, [d])).waitBlocking()
        let label = operation == .read ? "\(tierNames[tier]) -> \(path)" : "\(path) -> \(tierNames[tier])"
        bytesMovedByPath["\(b.transport.name): \(label)", default: 0] += blockBytes
    }
}

extension TierStore: BlockPayloadStore {
    func store(slot: Int32, key: BlockKey, tier: Int) throws(MemWallError) {
        ensureCapacity(slot)
        let p = try allocate(tier: tier, key: key)
        location[Int(slot)] = p
        lostBytes[slot] = nil
        if tier == 0 {
            let sum = dram.withUnsafeMutableBytes(offset: Int(p) * blockBytes, length: blockBytes) { buf in
                payload(key, buf)
                return TierStore.checksum(UnsafeRawBufferPointer(buf))
            }
            checksums[Int(slot)] = sum
        } else {
            let sum = staging.withUnsafeMutableBytes(length: blockBytes) { buf in
                payload(key, buf)
                return TierStore.checksum(UnsafeRawBufferPointer(buf))
            }
            checksums[Int(slot)] = sum
            do throws(MemWallError) {
                try move(.write, tier: tier, payloadSlot: p, local: staging, at: 0, path: "new block")
            } catch {
                freeSlots[tier].append(p)
                location[Int(slot)] = -1
                throw error
            }
        }
    }

    func move(slot: Int32, key: BlockKey, from: Int, to: Int) throws(MemWallError) {
        let s = Int(slot)
        let src = location[s]
        if hasPending && pendingDestinations[from].contains(src) {
            try finishMoves()   // the bytes to move are still on their way into `from`
        }
        let dst = try allocate(tier: to, key: key)
        do throws(MemWallError) {
            if to == 0 {
                try checkArrived(slot: slot, key: key, tier: from)
                try move(.read, tier: from, payloadSlot: src, local: dram, at: Int(dst) * blockBytes, path: tierNames[0])
                let sum = dram.withUnsafeBytes(offset: Int(dst) * blockBytes, length: blockBytes) { TierStore.checksum($0) }
                guard sum == checksums[s] else {
                    throw MemWallError(.corrupted,
                        "block \(key) promoted from tier \(tierNames[from]) has checksum \(String(sum, radix: 16)), it was stored with \(String(checksums[s], radix: 16))")
                }
                verifiedReads += 1
            } else if from == 0 {
                enqueueWrite(tier: to, payloadSlot: dst, blockSlot: slot, from: dram, at: Int(src) * blockBytes, path: tierNames[0])
                try postAtOnceUnlessBatching(slot)
            } else if let source = backings[from], case .memory(let r) = source.target {
                enqueueWrite(tier: to, payloadSlot: dst, blockSlot: slot, from: r, at: Int(src) * blockBytes, path: tierNames[from])
                try postAtOnceUnlessBatching(slot)
            } else {
                try move(.read, tier: from, payloadSlot: src, local: staging, at: 0, path: "staging")
                try move(.write, tier: to, payloadSlot: dst, local: staging, at: 0, path: "staging")
            }
        } catch {
            freeSlots[to].append(dst)
            throw error
        }
        release(tier: from, payloadSlot: src)
        location[s] = dst
    }

    /// Without batching, writes the move just queued now; if it fails the
    /// index keeps the block where it was, whose bytes are intact.
    private func postAtOnceUnlessBatching(_ slot: Int32) throws(MemWallError) {
        guard !batchesMoves else { return }
        do throws(MemWallError) {
            try finishMoves()
        } catch {
            lostBytes[slot] = nil
            throw error
        }
    }

    func remove(slot: Int32, key: BlockKey, tier: Int) {
        let s = Int(slot)
        guard s < location.count, location[s] >= 0 else { return }
        release(tier: tier, payloadSlot: location[s])
        location[s] = -1
        lostBytes[slot] = nil
    }

    func copy(from source: Int32, to destination: Int32) throws(MemWallError) {
        let a = Int(location[Int(source)]) * blockBytes
        let b = Int(location[Int(destination)]) * blockBytes
        let base = dram.baseAddress
        (base + b).copyMemory(from: base + a, byteCount: blockBytes)
        checksums[Int(destination)] = checksums[Int(source)]
        bytesMovedByPath["cpu copy-on-write: \(tierNames[0]) -> \(tierNames[0])", default: 0] += blockBytes
    }
}
