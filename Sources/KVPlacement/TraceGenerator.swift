/// Deterministic workload traces with a structure the published Mooncake traces
/// lack, in the same format, so eviction policies are judged on more than one
/// shape of reuse.
public enum TraceGenerator {
    /// Tool-using agents over a shared document corpus.
    ///
    /// Each request starts with one of 4 system prompts (1–3 blocks). In 70 % of
    /// sessions a document follows (400 documents of 4–32 blocks, popularity
    /// Zipf with exponent 1, so a few documents are roots with many children),
    /// then a private query block. A session then runs 1–20 agent steps
    /// (geometric, mean 4): each step's prompt is the previous one's full blocks
    /// plus 1–2 blocks of tool output, ending in a partly filled block. 48
    /// sessions run at once and a request is a step of a random one of them, so
    /// a session's next step comes about 48 requests later — far sooner than a
    /// conversation's next turn, while documents are reused across sessions at
    /// every distance. Compared with the conversation trace: hot shared roots,
    /// bursty short-distance chain extensions, and frequency-skewed reuse.
    /// - Parameters:
    ///   - requests: Requests to generate (at most 10,000,000).
    ///   - seed: Seeds the SplitMix64 stream: the same seed gives the same trace.
    ///   - blockTokens: Tokens per block.
    public static func agentic(requests: Int, seed: UInt64, blockTokens: Int = 512) -> MooncakeTrace {
        var rng = SplitMix64(seed: seed)
        var ids = BlockIDs()
        let systemPrompts = (0..<4).map { p in (0..<(1 + p % 3)).map { UInt64(p * 16 + $0) } }
        let documents = (0..<400).map { _ in 4 + Int(rng.next() % 29) }
        // Zipf(1) over documents by inverse-CDF on the harmonic weights.
        var cumulative: [Double] = []
        var sum = 0.0
        for r in 1...documents.count {
            sum += 1 / Double(r)
            cumulative.append(sum)
        }
        struct Session { var blocks: [Int]; var stepsLeft: Int; var contentTag: UInt64 }
        var nextTag: UInt64 = 1 << 32
        func newSession(_ rng: inout SplitMix64) -> Session {
            let prompt = systemPrompts[Int(rng.next() % UInt64(systemPrompts.count))]
            var blocks: [Int] = []
            var parent = -1
            for c in prompt { parent = ids.id(parent: parent, content: c); blocks.append(parent) }
            if rng.unit() < 0.7 {
                let u = rng.unit() * sum
                var lo = 0, hi = cumulative.count - 1
                while lo < hi { let m = (lo + hi) / 2; if cumulative[m] < u { lo = m + 1 } else { hi = m } }
                for b in 0..<documents[lo] {
                    parent = ids.id(parent: parent, content: UInt64(1_000 + lo) << 16 | UInt64(b))
                    blocks.append(parent)
                }
            }
            nextTag += 1
            blocks.append(ids.id(parent: parent, content: nextTag))   // the query
            var steps = 1
            while steps < 20 && rng.unit() < 0.75 { steps += 1 }
            return Session(blocks: blocks, stepsLeft: steps, contentTag: nextTag)
        }
        var active = (0..<48).map { _ in newSession(&rng) }
        var out: [TraceRequest] = []
        out.reserveCapacity(min(max(requests, 0), 10_000_000))
        for i in 0..<min(max(requests, 0), 10_000_000) {
            let s = Int(rng.next() % UInt64(active.count))
            var session = active[s]
            // This step's prompt: the session's full blocks, plus a partly filled tail.
            nextTag += 1
            let tail = ids.id(parent: session.blocks.last ?? -1, content: nextTag)
            let partial = 1 + Int(rng.next() % UInt64(blockTokens - 1 > 0 ? blockTokens - 1 : 1))
            let blockIDs = (session.blocks + [tail]).map { BlockKey(rawValue: UInt64($0)) }
            out.append(TraceRequest(timestamp: i * 200, inputLength: session.blocks.count * blockTokens + min(partial, blockTokens),
                                    outputLength: 50 + Int(rng.next() % 450), blockIDs: blockIDs))
            // The tool's output extends the chain by 1–2 full blocks for the next step.
            session.stepsLeft -= 1
            for _ in 0..<(1 + Int(rng.next() % 2)) {
                nextTag += 1
                session.blocks.append(ids.id(parent: session.blocks.last ?? -1, content: nextTag))
            }
            active[s] = session.stepsLeft > 0 ? session : newSession(&rng)
        }
        return MooncakeTrace(requests: out, blockTokens: blockTokens)
    }

    /// Sequential ids for prefix-chained blocks: the same (parent, content) pair
    /// always gets the same id, as Mooncake's `hash_ids` do.
    private struct BlockIDs {
        var known: [UInt64: Int] = [:]
        mutating func id(parent: Int, content: UInt64) -> Int {
            let h = BlockKey.mix(UInt64(bitPattern: Int64(parent)) &* 0x9E37_79B9_7F4A_7C15 ^ BlockKey.mix(content))
            if let v = known[h] { return v }
            let v = known.count
            known[h] = v
            return v
        }
    }
}

/// SplitMix64: a small, fast, seedable generator (deterministic across platforms).
struct SplitMix64 {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return BlockKey.mix(state)
    }
    /// Uniform in [0, 1).
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

extension MooncakeTrace {
    /// The trace as JSON lines, the format ``load(path:blockTokens:limit:)`` reads.
    public func jsonLines() -> String {
        var out = ""
        for r in requests {
            out += "{\"timestamp\": \(r.timestamp), \"input_length\": \(r.inputLength), \"output_length\": \(r.outputLength), \"hash_ids\": ["
            out += r.blockIDs.map { String($0.rawValue) }.joined(separator: ", ")
            out += "]}\n"
        }
        return out
    }
}
