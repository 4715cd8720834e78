#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

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
        let index: BlockIndex
        if policy == .belady {
            index = try BlockIndex(tiers: tiers, policy: BeladyPolicy(requests: trace.requests.map(\.blockIDs)),
                                   blockSize: trace.blockTokens)
        } else {
            index = try BlockIndex(tiers: tiers, policy: policy, blockSize: trace.blockTokens)
        }
        if let store { try store.attach(to: index) }
        var saved = 0
        var input = 0
        let total = trace.requests.count
        let started = MonotonicClock.nanoseconds()
        let cpuStarted = threadCPUNanoseconds()
        var prefetched = 0
        let progressEvery = store == nil ? 2000 : 100
        for (i, r) in trace.requests.enumerated() {
            if prefetchAhead > 0, i + prefetchAhead < total {
                prefetched += try index.prefetch(trace.requests[i + prefetchAhead].blockIDs)
            }
            if lookahead > 0 {
                let upcoming = trace.requests[min(i + 1, total)..<min(i + 1 + lookahead, total)].map(\.blockIDs)
                prefetched += try index.hint(upcoming: upcoming)
            }
            // The trace says how full the last block is (the ids cover whole and partial blocks).
            let tail = r.inputLength - (r.blockIDs.count - 1) * trace.blockTokens
            let a = r.blockIDs.isEmpty || tail < 1 || tail > trace.blockTokens
                ? try index.admit(r.blockIDs) : try index.admit(r.blockIDs, lastBlockTokens: tail)
            if let store {
                try store.verifyAndFill(admission: a)
            }
            try index.release(a.blocks)
            saved += min(a.hitBlocks * trace.blockTokens, r.inputLength)
            input += r.inputLength
            // Real-bytes replays run ~100× slower: report often enough that a slow run
            // (a TCG guest) does not look like a stuck one.
            if let progress, (i + 1) % progressEvery == 0 { progress(i + 1, total) }
        }
        let seconds = Double(MonotonicClock.nanoseconds() - started) / 1e9
        let cpuSeconds = Double(threadCPUNanoseconds() &- cpuStarted) / 1e9
        progress?(total, total)
        let residentGrowth = store == nil ? max(0, residentBytes() - residentBefore) : 0
        return ReplayResult(policy: index.policyName, tiers: tiers, requests: total, statistics: index.statistics,
                            inputTokens: input, prefillTokensSaved: saved, seconds: seconds, cpuSeconds: cpuSeconds,
                            metadataBytes: index.metadataBytes, residentGrowthBytes: residentGrowth, cachedBlocks: index.cachedBlockCount,
                            bytesMoved: store?.bytesMovedByPath ?? [:], prefetchedBlocks: prefetched, lookahead: lookahead,
                            verifiedReads: store?.verifiedReads ?? 0)
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
