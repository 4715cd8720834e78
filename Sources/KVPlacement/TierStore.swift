import CMemWallShim
import MemWallCore
import Synchronization
import Transport

/// Where one slower tier's bytes live and the transport that reaches them.
public struct TierBacking: Sendable {
    /// The far side: a memory region (far memory), a storage target (NVMe) or a peer's segment.
    public var target: TransferTarget
    /// Moves bytes between host memory and `target` (storage and remote tiers; a
    /// memory-region tier is copied by the CPU, see ``TierStore``).
    public var transport: any Transport

    /// Creates a backing.
    public init(target: TransferTarget, transport: any Transport) {
        self.target = target
        self.transport = transport
    }
}

/// One caller-owned block buffer: ``TierStore/blockBytes`` bytes at `offset`
/// in `region`, which must be registered with the cache (``KVCache/register(_:)``).
/// Storage tiers read and write it with O_DIRECT, so keep it page-aligned
/// (a region from ``MemoryRegion/allocate(byteCount:placement:)`` and offsets
/// that are multiples of 4096 are).
public struct KVBuffer: Sendable {
    /// The registered region holding the buffer.
    public var region: MemoryRegion
    /// Byte offset of the block in `region`.
    public var offset: Int

    /// Names one block buffer.
    public init(region: MemoryRegion, offset: Int) {
        self.region = region
        self.offset = offset
    }
}

/// Moves cached blocks' bytes where the index's plans say: the mover of the
/// plan / apply split (see docs/kv-placement.md). It keeps no per-block state —
/// which slot of which tier holds a block, and the checksum its bytes carry,
/// are the index's — and it never calls the index: ``apply(_:buffers:)`` takes
/// a sealed ``MovePlan`` and returns one ``MoveOutcome`` per move.
///
/// Tier 0 is one DRAM ``MemoryRegion`` cut into block-sized slots; each slower
/// tier is a ``TierBacking`` cut the same way. How a move runs depends on the
/// two places it joins:
/// - host memory to host memory (DRAM slots, a memory-region tier such as CXL
///   far memory, the caller's buffers): one CPU pass that copies and checksums
///   together (`memwall_copy_checksum`, as fast as memcpy), non-temporal stores
///   into slower tiers;
/// - host memory to or from a storage or remote tier: the tier's transport,
///   straight between the slot and the host side — for NVMe that is O_DIRECT
///   into the caller's registered buffer or the DRAM slot, no staging copy.
///   Moves of one stage are grouped per (tier, direction), sorted by slot,
///   and adjacent slots are merged into larger I/Os; the groups of every tier
///   are posted before any is waited for, and the CPU copies of the same stage
///   run while the I/O is in flight;
/// - storage or remote tier to another such tier: through a one-block DRAM
///   staging buffer (one copy; no default tier layout needs it).
///
/// Every time bytes arrive in host memory their checksum is compared with the
/// one they carry; a mismatch fails that block's move with `corrupted`. A
/// store's checksum is computed from the caller's buffer once, while its bytes
/// are copied or written.
public final class TierStore: Sendable {
    /// Bytes per block payload.
    public let blockBytes: Int
    /// Slots of the DRAM tier (its capacity plus spare slots for moves in flight).
    let dramSlots: Int
    private let dram: MemoryRegion
    private let backings: [TierBacking?]     // index = tier; nil for DRAM
    private let staging: Mutex<MemoryRegion>
    private struct Counters {
        var bytesByPath: [String: Int] = [:]
        var verified = 0
        var batches = 0
        var busy: [String: UInt64] = [:]
        var tierNames: [String] = []
        var registrations: [(any Transport, MemoryRegion)] = []
        var callerRegions: [(any Transport, MemoryRegion)] = []
    }
    private let counters = Mutex(Counters())
    /// Largest I/O a merge of adjacent slots makes (or one block, when larger).
    static let mergeLimit = 1 << 20
    /// Bytes per posted request of one group: a long prefix goes out as several
    /// requests, so the blocks of the first are checked while the rest are in flight.
    static let requestLimit = 2 << 20

    /// Spare payload slots a tier of `capacity` blocks gets beyond its capacity:
    /// room for blocks another operation is still moving out of it. A plan can
    /// always reuse the slots it frees itself, so this only serves concurrency.
    public static func spareSlots(forCapacity capacity: Int) -> Int { max(8, min(256, capacity / 4)) }

    /// Creates a store.
    /// - Parameters:
    ///   - blockBytes: Payload bytes per block (a multiple of 4096, for O_DIRECT storage tiers).
    ///   - dramBlocks: DRAM capacity in blocks (spare slots are added).
    ///   - lowerTiers: Backing of tiers 1…n, each large enough for its capacity (checked by ``slotCounts(for:)``).
    /// - Throws: `invalidArgument` for a bad block size, `systemCall` when DRAM cannot be allocated;
    ///   registration errors of the tiers' transports.
    public init(blockBytes: Int, dramBlocks: Int, lowerTiers: [TierBacking]) throws(MemWallError) {
        try TierStore.checkBlockBytes(blockBytes)
        guard dramBlocks > 0, dramBlocks <= TierSpec.maximumBlocks else {
            throw .invalid("DRAM capacity", dramBlocks, expected: "1 to \(TierSpec.maximumBlocks) blocks")
        }
        self.blockBytes = blockBytes
        dramSlots = dramBlocks + TierStore.spareSlots(forCapacity: dramBlocks)
        dram = try MemoryRegion.allocate(byteCount: blockBytes * dramSlots, placement: MemoryPlacement(node: nil, label: "DRAM"))
        staging = Mutex(try MemoryRegion.allocate(byteCount: blockBytes, placement: MemoryPlacement(node: nil, label: "DRAM staging")))
        backings = [nil] + lowerTiers.map { Optional($0) }
        // DRAM, the staging buffer and memory-region tiers are the host side of
        // moves to storage and remote tiers: register them with those transports.
        var regs: [(any Transport, MemoryRegion)] = []
        func ensure(_ t: any Transport, _ r: MemoryRegion) throws(MemWallError) {
            if regs.contains(where: { $0.0 === t && $0.1 === r }) { return }
            try t.register(r)
            regs.append((t, r))
        }
        let hostRegions = [dram, staging.withLock { $0 }] + lowerTiers.compactMap { b -> MemoryRegion? in
            if case .memory(let r) = b.target { return r } else { return nil }
        }
        do throws(MemWallError) {
            for b in lowerTiers where !TierStore.isHost(b.target) {
                for r in hostRegions { try ensure(b.transport, r) }
            }
        } catch {
            for (t, r) in regs { try? t.deregister(r) }
            throw error
        }
        counters.withLock { $0.registrations = regs }
    }

    /// Payload sizes the store accepts: whole 4 KiB pages (O_DIRECT), at most 1 GiB.
    static func checkBlockBytes(_ blockBytes: Int) throws(MemWallError) {
        guard blockBytes > 0, blockBytes % 4096 == 0, blockBytes <= 1 << 30 else {
            throw .invalid("block payload size", blockBytes, expected: "a positive multiple of 4096 bytes, at most 1 GiB")
        }
    }

    deinit {
        let regs = counters.withLock { $0.registrations + $0.callerRegions }
        for (t, r) in regs { try? t.deregister(r) }
    }

    private static func isHost(_ target: TransferTarget) -> Bool {
        if case .memory = target { return true }
        return false
    }

    /// Checks the backings against the index's tiers and names them.
    /// - Returns: Payload slots per tier: capacity plus spare, as far as each backing holds.
    /// - Throws: `invalidArgument` when the tier count differs, `outOfBounds` when a tier is too small.
    func slotCounts(for tiers: [TierSpec]) throws(MemWallError) -> [Int] {
        guard tiers.count == backings.count else {
            throw .invalid("tier count of the byte store", backings.count, expected: "\(tiers.count), as in the index")
        }
        var slots: [Int] = []
        for (t, spec) in tiers.enumerated() {
            let bytes = t == 0 ? Int64(dram.byteCount) : backings[t].map(\.target.byteCount) ?? 0
            let held = Int(bytes / Int64(blockBytes))
            guard held >= spec.capacityBlocks else {
                throw MemWallError(.outOfBounds,
                    "tier \(spec.name) holds \(held) blocks of \(ByteCount(blockBytes)), the index wants \(spec.capacityBlocks)")
            }
            slots.append(min(held, spec.capacityBlocks + TierStore.spareSlots(forCapacity: spec.capacityBlocks)))
        }
        counters.withLock { $0.tierNames = tiers.map(\.name) }
        return slots
    }

    /// Registers a caller's buffer region with every transport that moves
    /// bytes between host memory and a storage or remote tier (a memory tier
    /// needs no registration: the CPU copies). Idempotent per region.
    func register(_ region: MemoryRegion) throws(MemWallError) {
        var done: [any Transport] = []
        for case let b? in backings where !TierStore.isHost(b.target) && !done.contains(where: { $0 === b.transport }) {
            let known = counters.withLock { c in c.callerRegions.contains { $0.0 === b.transport && $0.1 === region } }
            if !known {
                try b.transport.register(region)
                counters.withLock { $0.callerRegions.append((b.transport, region)) }
            }
            done.append(b.transport)
        }
    }

    /// Undoes ``register(_:)``.
    func deregister(_ region: MemoryRegion) throws(MemWallError) {
        let mine = counters.withLock { c -> [(any Transport, MemoryRegion)] in
            let m = c.callerRegions.filter { $0.1 === region }
            c.callerRegions.removeAll { $0.1 === region }
            return m
        }
        var first: MemWallError?
        for (t, r) in mine {
            do throws(MemWallError) { try t.deregister(r) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
    }

    /// Transport names per tier (`nil` for DRAM), for reports.
    public var transportNames: [String?] {
        backings.map { b in
            b.map { TierStore.isHost($0.target) ? "cpu copy (\($0.target))" : "\($0.transport.name) (\($0.transport.capabilities.implementation))" }
        }
    }

    /// Bytes moved, by "mechanism: from -> to".
    public var bytesMovedByPath: [String: Int] { counters.withLock { $0.bytesByPath } }
    /// Blocks whose bytes were checked against their checksum on arrival, and matched.
    public var verifiedReads: Int { counters.withLock { $0.verified } }
    /// Requests posted to storage and remote transports.
    public var requestsPosted: Int { counters.withLock { $0.batches } }
    /// Per storage or remote tier (by name): nanoseconds during which at least
    /// one of its requests was in flight — the time the device was busy for us,
    /// so bytes / busy time is the throughput we drew from it (as fio reports
    /// for a job that keeps it busy).
    public var deviceBusyNanoseconds: [String: UInt64] { counters.withLock { $0.busy } }

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
            let bytes = (t.capacityBlocks + TierStore.spareSlots(forCapacity: t.capacityBlocks)) * blockBytes
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

    // MARK: Applying plans

    /// One end of a move, resolved: host memory (a region and offset) or a device tier's offset.
    private enum Place {
        case host(MemoryRegion, Int)
        case device(Int, Int64)
    }

    private func place(_ end: MoveEnd, _ buffers: [KVBuffer]) -> Place {
        switch end {
        case .buffer(let i):
            return .host(buffers[i].region, buffers[i].offset)
        case .slot(let t, let s):
            let offset = Int(s) * blockBytes
            if t == 0 { return .host(dram, offset) }
            if case .memory(let r)? = backings[t]?.target { return .host(r, offset) }
            return .device(t, Int64(offset))
        }
    }

    private func name(_ end: MoveEnd, _ names: [String]) -> String {
        switch end {
        case .buffer: "caller"
        case .slot(let t, _): t < names.count ? names[t] : "tier \(t)"
        }
    }

    /// Moves every block of a sealed plan, stage by stage, and reports each move's outcome.
    /// Never throws: a failure is the outcome of the moves it hit.
    func apply(_ plan: MovePlan, buffers: [KVBuffer]) -> [MoveOutcome] {
        var outcomes = [MoveOutcome](repeating: .failed(MemWallError(.cancelled, "the move did not run")), count: plan.moves.count)
        if plan.stageCount <= 1 {
            run(Array(plan.moves.indices), of: plan.moves, buffers: buffers, into: &outcomes)
        } else {
            var byStage = Array(repeating: [Int](), count: plan.stageCount)
            for (i, m) in plan.moves.enumerated() { byStage[m.stage].append(i) }
            for stage in byStage where !stage.isEmpty { run(stage, of: plan.moves, buffers: buffers, into: &outcomes) }
        }
        return outcomes
    }

    /// What arrival checks: the checksum the block carries, or (a store) none yet.
    private func arrived(_ m: PlannedMove, sum: UInt64, names: [String]) -> MoveOutcome {
        if m.purpose.storesCallerBytes { return .done(checksum: sum) }
        guard sum == m.checksum else {
            return .failed(MemWallError(.corrupted,
                "block \(m.key) read from \(name(m.from, names)) has checksum \(String(sum, radix: 16)), it was stored with \(String(m.checksum, radix: 16))"))
        }
        return .done(checksum: sum)
    }

    /// One posted request and, per descriptor, the moves it carries.
    private struct Posted {
        var tier: Int
        var operation: TransferOperation
        var request: TransferRequest
        var moves: [[Int]]
    }

    private func run(_ indices: [Int], of moves: [PlannedMove], buffers: [KVBuffer], into outcomes: inout [MoveOutcome]) {
        let names = counters.withLock { $0.tierNames }
        var hostMoves: [Int] = []
        var staged: [Int] = []
        // (tier, read?) → moves; reads bring bytes to host memory.
        var groups: [Int: [Int]] = [:]
        for i in indices {
            switch (place(moves[i].from, buffers), place(moves[i].to, buffers)) {
            case (.host, .host): hostMoves.append(i)
            case (.host, .device(let t, _)): groups[t * 2, default: []].append(i)
            case (.device(let t, _), .host): groups[t * 2 + 1, default: []].append(i)
            case (.device, .device): staged.append(i)
            }
        }
        var paths: [String: Int] = [:]
        var verified = 0
        // 1. Every device group goes out before anything waits.
        let started = MonotonicClock.nanoseconds()
        var posted: [Posted] = []
        for (g, members) in groups.sorted(by: { $0.key < $1.key }) {
            let tier = g / 2
            let operation: TransferOperation = g % 2 == 1 ? .read : .write
            guard let backing = backings[tier] else { continue }
            do throws(MemWallError) {
                posted += try post(members, of: moves, tier: tier, operation: operation, backing: backing, buffers: buffers)
            } catch {
                for i in members { outcomes[i] = .failed(error) }
            }
        }
        // 2. Host copies run while the I/O is in flight.
        for i in hostMoves {
            let m = moves[i]
            guard case let .host(src, so) = place(m.from, buffers), case let .host(dst, dOff) = place(m.to, buffers) else { continue }
            let streaming: Int32 = m.to.slot.map { $0.tier > 0 } == true ? 1 : 0
            let sum = memwall_copy_checksum(dst.baseAddress + dOff, src.baseAddress + so, blockBytes, streaming)
            outcomes[i] = arrived(m, sum: sum, names: names)
            if !m.purpose.storesCallerBytes, case .done = outcomes[i] { verified += 1 }
            paths["cpu: \(name(m.from, names)) -> \(name(m.to, names))", default: 0] += blockBytes
        }
        // 3. Stores to devices: their checksums are computed from the caller's buffers while the writes run.
        var storeSums: [Int: UInt64] = [:]
        for p in posted where p.operation == .write {
            for i in p.moves.joined() where moves[i].purpose.storesCallerBytes {
                if case let .host(src, so) = place(moves[i].from, buffers) {
                    storeSums[i] = memwall_checksum(src.baseAddress + so, blockBytes)
                }
            }
        }
        // 4. Device to device, through the staging buffer.
        for i in staged {
            outcomes[i] = stage(moves[i], buffers: buffers, names: names)
            if case .done = outcomes[i] {
                verified += 1
                paths["staged: \(name(moves[i].from, names)) -> \(name(moves[i].to, names))", default: 0] += blockBytes
            }
        }
        // 5. Wait in posting order; check what arrived in host memory.
        for p in posted {
            _ = try? p.request.waitBlocking()
            let label = "\(backings[p.tier]?.transport.name ?? "?"): "
            for (d, members) in p.moves.enumerated() {
                switch p.request.status(ofDescriptor: d) {
                case .completed:
                    for i in members {
                        let m = moves[i]
                        if p.operation == .read, case let .host(dst, dOff) = place(m.to, buffers) {
                            outcomes[i] = arrived(m, sum: memwall_checksum(dst.baseAddress + dOff, blockBytes), names: names)
                            if case .done = outcomes[i] { verified += 1 }
                        } else {
                            outcomes[i] = .done(checksum: m.purpose.storesCallerBytes ? storeSums[i] ?? 0 : m.checksum)
                        }
                        paths[label + "\(name(m.from, names)) -> \(name(m.to, names))", default: 0] += blockBytes
                    }
                case .failed(let e):
                    for i in members { outcomes[i] = .failed(e) }
                default:
                    for i in members {
                        outcomes[i] = .failed(MemWallError(.cancelled, "the move of block \(moves[i].key) was cancelled"))
                    }
                }
            }
        }
        let requests = posted.count
        let busyTiers = Set(posted.map(\.tier))
        let elapsed = MonotonicClock.nanoseconds() &- started
        counters.withLock { c in
            for t in busyTiers { c.busy[name(.slot(tier: t, slot: 0), names), default: 0] += elapsed }
            for (k, v) in paths { c.bytesByPath[k, default: 0] += v }
            c.verified += verified
            c.batches += requests
        }
    }

    /// Posts one (tier, direction) group: sorted by slot, adjacent slots merged,
    /// split into requests of at most ``requestLimit`` bytes.
    private func post(_ members: [Int], of moves: [PlannedMove], tier: Int, operation: TransferOperation,
                      backing: TierBacking, buffers: [KVBuffer]) throws(MemWallError) -> [Posted] {
        struct Piece { var region: MemoryRegion; var local: Int; var device: Int64; var length: Int; var moves: [Int] }
        var items: [(region: MemoryRegion, local: Int, device: Int64, move: Int)] = []
        items.reserveCapacity(members.count)
        for i in members {
            let (host, device) = operation == .read ? (moves[i].to, moves[i].from) : (moves[i].from, moves[i].to)
            guard case let .host(r, lo) = place(host, buffers), case let .device(_, off) = place(device, buffers) else { continue }
            items.append((r, lo, off, i))
        }
        items.sort { $0.device < $1.device }
        let merge = max(blockBytes, TierStore.mergeLimit)
        var pieces: [Piece] = []
        for it in items {
            if var last = pieces.last, last.region === it.region, last.local + last.length == it.local,
               last.device + Int64(last.length) == it.device, last.length + blockBytes <= merge {
                last.length += blockBytes
                last.moves.append(it.move)
                pieces[pieces.count - 1] = last
            } else {
                pieces.append(Piece(region: it.region, local: it.local, device: it.device, length: blockBytes, moves: [it.move]))
            }
        }
        var out: [Posted] = []
        var start = 0
        let limit = max(blockBytes, TierStore.requestLimit)
        while start < pieces.count {
            var end = start
            var bytes = 0
            while end < pieces.count && (end == start || bytes + pieces[end].length <= limit) {
                bytes += pieces[end].length
                end += 1
            }
            let chunk = pieces[start..<end]
            let descriptors = chunk.map {
                TransferDescriptor(local: $0.region, localOffset: $0.local, target: backing.target, targetOffset: $0.device, length: $0.length)
            }
            do throws(MemWallError) {
                let request = try backing.transport.post(backing.transport.prepare(operation, descriptors))
                out.append(Posted(tier: tier, operation: operation, request: request, moves: chunk.map(\.moves)))
            } catch {
                // What went out already is waited for by the caller; the rest fails with this error.
                for p in out { _ = try? p.request.waitBlocking() }
                throw error
            }
            start = end
        }
        return out
    }

    /// A move between two device tiers, through the staging buffer.
    private func stage(_ m: PlannedMove, buffers: [KVBuffer], names: [String]) -> MoveOutcome {
        guard case let .device(ft, fo) = place(m.from, buffers), case let .device(tt, to) = place(m.to, buffers),
              let source = backings[ft], let destination = backings[tt] else {
            return .failed(MemWallError(.unsupported, "block \(m.key): no staged path from \(name(m.from, names)) to \(name(m.to, names))"))
        }
        return staging.withLock { buffer -> MoveOutcome in
            do throws(MemWallError) {
                try source.transport.post(source.transport.prepare(.read, [
                    TransferDescriptor(local: buffer, localOffset: 0, target: source.target, targetOffset: fo, length: blockBytes)])).waitBlocking()
                let sum = memwall_checksum(buffer.baseAddress, blockBytes)
                let verdict = arrived(m, sum: sum, names: names)
                guard case .done = verdict else { return verdict }
                try destination.transport.post(destination.transport.prepare(.write, [
                    TransferDescriptor(local: buffer, localOffset: 0, target: destination.target, targetOffset: to, length: blockBytes)])).waitBlocking()
                return verdict
            } catch {
                return .failed(error)
            }
        }
    }

    /// Checksum of a payload (the one every block carries; see `memwall_checksum` in the C shim).
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard let base = bytes.baseAddress else { return memwall_checksum(nil, 0) }
        return memwall_checksum(base, bytes.count)
    }

    /// Overwrites one byte of the payload slot `slot` of `tier` (tests prove checksums catch damage with it).
    func corruptForTesting(tier: Int, slot: Int32) throws(MemWallError) {
        let end = MoveEnd.slot(tier: tier, slot: slot)
        switch place(end, []) {
        case .host(let r, let o):
            r.withUnsafeMutableBytes(offset: o, length: 1) { $0[0] ^= 0xFF }
        case .device(let t, let o):
            guard let b = backings[t] else { return }
            try staging.withLock { buffer throws(MemWallError) in
                try b.transport.post(b.transport.prepare(.read, [
                    TransferDescriptor(local: buffer, localOffset: 0, target: b.target, targetOffset: o, length: blockBytes)])).waitBlocking()
                buffer.withUnsafeMutableBytes(length: 1) { $0[0] ^= 0xFF }
                try b.transport.post(b.transport.prepare(.write, [
                    TransferDescriptor(local: buffer, localOffset: 0, target: b.target, targetOffset: o, length: blockBytes)])).waitBlocking()
            }
        }
    }

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

}
