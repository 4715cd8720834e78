#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Transport

/// What one replay of a trace through one cache configuration measured.
public struct ReplayResult: Sendable {
    /// Policy name.
    public var policy: String
    /// Tiers replayed.
    public var tiers: [TierSpec]
    /// Requests replayed.
    public var requests: Int
    /// Counters at the end (lookups, hits per tier, promotions, demotions, …).
    public var statistics: KVStatistics
    /// Prompt tokens over all requests.
    public var inputTokens: Int
    /// Prompt tokens whose KV came from the cache instead of being computed.
    public var prefillTokensSaved: Int
    /// Wall time of the replay loop alone (parsing excluded), seconds.
    public var seconds: Double
    /// CPU time the replaying thread used in the loop, seconds (immune to other load on the host).
    public var cpuSeconds: Double
    /// Metadata bytes at the end (see ``BlockIndex/metadataBytes``).
    public var metadataBytes: Int
    /// Growth of the process's resident memory from just before the index was
    /// created to the end of the replay (`/proc/self/statm`): an independent
    /// check of ``metadataBytes`` that counts only pages really touched, and
    /// includes allocator overhead. 0 for real-bytes replays (payloads would
    /// dominate) or where /proc is unavailable.
    public var residentGrowthBytes: Int
    /// Blocks cached at the end.
    public var cachedBlocks: Int
    /// Bytes moved, by path; empty for a metadata-only replay.
    public var bytesMoved: [String: Int]
    /// Blocks promoted ahead of use by prefetching (`prefetchAhead`) or by lookahead hints.
    public var prefetchedBlocks: Int
    /// Queued requests the replay hinted to the cache before each admission (0 = none).
    public var lookahead: Int = 0
    /// Block payloads checked against their deterministic contents; 0 for metadata only.
    public var verifiedReads: Int
    /// Real bytes: per storage or remote tier, seconds during which its I/O was in flight
    /// (``TierStore/deviceBusyNanoseconds``); empty for metadata only.
    public var deviceBusySeconds: [String: Double] = [:]

    /// Block lookups per second.
    public var lookupsPerSecond: Double { seconds > 0 ? Double(statistics.lookups) / seconds : 0 }
    /// Block lookups per second of the replaying thread's CPU time (one core).
    public var lookupsPerCPUSecond: Double { cpuSeconds > 0 ? Double(statistics.lookups) / cpuSeconds : 0 }
    /// Metadata bytes per cached block (0 when nothing is cached).
    public var metadataBytesPerBlock: Double { cachedBlocks == 0 ? 0 : Double(metadataBytes) / Double(cachedBlocks) }
}

/// Replays a Mooncake trace through a ``BlockIndex``: admit every request's
/// blocks, then release them (the request finished), as a serving engine would.
public enum TraceReplay {
    /// Runs one replay.
    /// - Parameters:
    ///   - store: Moves and verifies real bytes when given; metadata only when `nil`.
    ///   - prefetchAhead: Before admitting request *i*, promote the cached prefix of
    ///     request *i + prefetchAhead* to DRAM (as a scheduler that sees its queue
    ///     would); 0 disables prefetching.
    ///   - lookahead: Emulates a scheduler's queue of this many admitted requests:
    ///     before admitting request *i*, hint requests *i + 1 … i + lookahead* to the
    ///     cache (``BlockIndex/hint(upcoming:)``); 0 disables it.
    ///   - progress: Called every 2,000 requests (100 with real bytes) with (done, total).
    /// - Throws: Configuration errors, or a transfer or checksum failure in real-bytes mode.
    public static func run(_ trace: MooncakeTrace, tiers: [TierSpec], policy: EvictionPolicyName,
                           store: TierStore? = nil, prefetchAhead: Int = 0, lookahead: Int = 0,
                           progress: ((Int, Int) -> Void)? = nil) throws(MemWallError) -> ReplayResult {
        guard prefetchAhead >= 0, lookahead >= 0 else {
            throw .invalid("prefetch distance or lookahead", min(prefetchAhead, lookahead), expected: "0 or more requests")
        }
        let residentBefore = residentBytes()
        func makeIndex() throws(MemWallError) -> BlockIndex {
            if policy == .belady {
                return try BlockIndex(tiers: tiers, policy: BeladyPolicy(requests: trace.requests.map(\.blockIDs)),
                                      blockSize: trace.blockTokens)
            }
            return try BlockIndex(tiers: tiers, policy: policy, blockSize: trace.blockTokens)
        }
        // Metadata only: the index alone. Real bytes: the runtime's data path (KVCache), the
        // same index decisions, so hit rates are identical; admissions reserve, stores fill.
        let engine: ReplayEngine
        if let store { engine = .bytes(try BytesReplay(index: try makeIndex(), store: store)) } else { engine = .metadata(try makeIndex()) }
        let policyName = engine.policyName
        var saved = 0
        var input = 0
        let total = trace.requests.count
        let started = MonotonicClock.nanoseconds()
        let cpuStarted = threadCPUNanoseconds()
        var prefetched = 0
        let progressEvery = store == nil ? 2000 : 100
        for (i, r) in trace.requests.enumerated() {
            if prefetchAhead > 0, i + prefetchAhead < total {
                prefetched += try engine.prefetch(trace.requests[i + prefetchAhead].blockIDs)
            }
            if lookahead > 0 {
                let upcoming = trace.requests[min(i + 1, total)..<min(i + 1 + lookahead, total)].map(\.blockIDs)
                prefetched += try engine.hint(upcoming)
            }
            // The trace says how full the last block is (the ids cover whole and partial blocks).
            let tail = r.inputLength - (r.blockIDs.count - 1) * trace.blockTokens
            let hits = try engine.serve(r.blockIDs, lastBlockTokens: r.blockIDs.isEmpty || tail < 1 || tail > trace.blockTokens ? nil : tail)
            saved += min(hits * trace.blockTokens, r.inputLength)
            input += r.inputLength
            // Real-bytes replays run ~100× slower: report often enough that a slow run
            // (a TCG guest) does not look like a stuck one.
            if let progress, (i + 1) % progressEvery == 0 { progress(i + 1, total) }
        }
        let seconds = Double(MonotonicClock.nanoseconds() - started) / 1e9
        let cpuSeconds = Double(threadCPUNanoseconds() &- cpuStarted) / 1e9
        progress?(total, total)
        let residentGrowth = store == nil ? max(0, residentBytes() - residentBefore) : 0
        return ReplayResult(policy: policyName, tiers: tiers, requests: total, statistics: engine.statistics,
                            inputTokens: input, prefillTokensSaved: saved, seconds: seconds, cpuSeconds: cpuSeconds,
                            metadataBytes: engine.metadataBytes, residentGrowthBytes: residentGrowth, cachedBlocks: engine.cachedBlocks,
                            bytesMoved: engine.bytesMoved, prefetchedBlocks: prefetched, lookahead: lookahead,
                            verifiedReads: engine.verifiedReads, deviceBusySeconds: engine.deviceBusySeconds)
    }
}

/// What a replay drives: the index alone, or the runtime data path over it.
private enum ReplayEngine {
    case metadata(BlockIndex)
    case bytes(BytesReplay)

    /// Admits a request, moves its bytes (bytes mode), releases it; returns its hit blocks.
    func serve(_ ids: [BlockKey], lastBlockTokens: Int?) throws(MemWallError) -> Int {
        switch self {
        case .metadata(let index):
            let a: BlockAdmission
            if let n = lastBlockTokens { a = try index.admit(ids, lastBlockTokens: n) } else { a = try index.admit(ids) }
            try index.release(a.blocks)
            return a.hitBlocks
        case .bytes(let b):
            return try b.serve(ids, lastBlockTokens: lastBlockTokens)
        }
    }

    func prefetch(_ ids: [BlockKey]) throws(MemWallError) -> Int {
        switch self {
        case .metadata(let index): try index.prefetch(ids)
        case .bytes(let b): try b.cache.prefetch(ids)
        }
    }

    func hint(_ upcoming: [[BlockKey]]) throws(MemWallError) -> Int {
        switch self {
        case .metadata(let index): try index.hint(upcoming: upcoming)
        case .bytes(let b): try b.cache.hint(upcoming: upcoming)
        }
    }

    var policyName: String {
        switch self {
        case .metadata(let index): index.policyName
        case .bytes(let b): b.cache.policyName
        }
    }

    var statistics: KVStatistics {
        switch self {
        case .metadata(let index): index.statistics
        case .bytes(let b): b.cache.statistics
        }
    }

    var metadataBytes: Int {
        switch self {
        case .metadata(let index): index.metadataBytes
        case .bytes(let b): b.metadataBytes
        }
    }

    var cachedBlocks: Int {
        switch self {
        case .metadata(let index): index.cachedBlockCount
        case .bytes(let b): b.cache.statistics.occupancy.reduce(0, +)
        }
    }

    var bytesMoved: [String: Int] {
        if case .bytes(let b) = self { return b.cache.bytesMovedByPath }
        return [:]
    }

    var verifiedReads: Int {
        if case .bytes(let b) = self { return b.verified }
        return 0
    }

    var deviceBusySeconds: [String: Double] {
        if case .bytes(let b) = self { return b.store.deviceBusyNanoseconds.mapValues { Double($0) / 1e9 } }
        return [:]
    }
}

/// A real-bytes replay: every request's new blocks are written from the
/// replay's buffers with their deterministic contents (``TierStore/deterministicPayload``),
/// and every hit is loaded back and compared with those contents — through
/// the same ``KVCache`` load and store a runtime uses.
private final class BytesReplay {
    let cache: KVCache
    let store: TierStore
    let metadataBytes: Int
    private let buffers: MemoryRegion
    private let blockBytes: Int
    private let expected: MemoryRegion
    /// Blocks per store or load call.
    static let chunk = 32
    private(set) var verified = 0

    init(index: sending BlockIndex, store: TierStore) throws(MemWallError) {
        metadataBytes = index.metadataBytes
        cache = try KVCache(index: index, store: store)
        self.store = store
        blockBytes = store.blockBytes
        buffers = try MemoryRegion.allocate(byteCount: blockBytes * BytesReplay.chunk, placement: MemoryPlacement(node: nil, label: "replay buffers"))
        expected = try MemoryRegion.allocate(byteCount: blockBytes, placement: MemoryPlacement(node: nil, label: "replay scratch"))
        try cache.register(buffers)
    }

    func serve(_ ids: [BlockKey], lastBlockTokens: Int?) throws(MemWallError) -> Int {
        let a: BlockAdmission
        if let n = lastBlockTokens { a = try cache.admit(blocks: ids, lastBlockTokens: n) } else { a = try cache.admit(blocks: ids) }
        do throws(MemWallError) {
            let fresh = a.blocks[a.hitBlocks...].filter(\.isCached).map(\.key)
            for start in stride(from: 0, to: fresh.count, by: BytesReplay.chunk) {
                let keys = Array(fresh[start..<min(start + BytesReplay.chunk, fresh.count)])
                for (j, k) in keys.enumerated() {
                    buffers.withUnsafeMutableBytes(offset: j * blockBytes, length: blockBytes) { TierStore.deterministicPayload(k, $0) }
                }
                try cache.store(keys, from: slots(keys.count)).wait().check()
            }
            let hits = a.blocks[..<a.hitBlocks].map(\.key)
            for start in stride(from: 0, to: hits.count, by: BytesReplay.chunk) {
                let keys = Array(hits[start..<min(start + BytesReplay.chunk, hits.count)])
                try cache.load(keys, into: slots(keys.count), policy: .wait, touching: false).wait().check()
                for (j, k) in keys.enumerated() {
                    expected.withUnsafeMutableBytes(length: blockBytes) { TierStore.deterministicPayload(k, $0) }
                    let same = buffers.withUnsafeBytes(offset: j * blockBytes, length: blockBytes) { got in
                        expected.withUnsafeBytes(length: blockBytes) { got.elementsEqual($0) }
                    }
                    guard same else {
                        throw MemWallError(.corrupted, "block \(k) came back with other contents than it was stored with")
                    }
                    verified += 1
                }
            }
        } catch {
            try? cache.release(a.blocks)
            throw error
        }
        try cache.release(a.blocks)
        return a.hitBlocks
    }

    private func slots(_ n: Int) -> [KVBuffer] {
        (0..<n).map { KVBuffer(region: buffers, offset: $0 * blockBytes) }
    }
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), nanoseconds.
func threadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Resident set size of this process in bytes, from `/proc/self/statm`; 0 when unreadable.
func residentBytes() -> Int {
    let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 128)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return 0 }
    let fields = buf[0..<n].split(separator: UInt8(ascii: " "))
    guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
