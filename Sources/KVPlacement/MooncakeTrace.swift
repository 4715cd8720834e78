#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// One request of a Mooncake-format trace.
public struct TraceRequest: Sendable, Hashable {
    /// Arrival, milliseconds since the start of the trace.
    public var timestamp: Int
    /// Prompt tokens.
    public var inputLength: Int
    /// Generated tokens.
    public var outputLength: Int
    /// Prefix-chained block ids, one per block of the prompt.
    public var blockIDs: [BlockKey]
}

/// A Mooncake FAST'25 trace: one JSON object per line with `timestamp`,
/// `input_length`, `output_length` and `hash_ids`.
///
/// The reader is a small purpose-built scanner (no Foundation): it accepts
/// exactly this flat shape, in any key order, ignores unknown scalar keys, and
/// reports the line number and what was wrong with any line it cannot read.
public struct MooncakeTrace: Sendable {
    /// Requests in file order.
    public var requests: [TraceRequest]
    /// Tokens per block the ids stand for (512 in the published traces).
    public var blockTokens: Int

    /// Total block references.
    public var blockReferences: Int { requests.reduce(0) { $0 + $1.blockIDs.count } }

    /// Longest line accepted (1 MiB): a published request line is a few KiB
    /// (hundreds of ids); a longer one is not a trace, and stopping there keeps a
    /// file without newlines (`/dev/zero`) from being read into memory.
    public static let maximumLineBytes = 1 << 20

    /// Most bytes read from one trace by default (256 MiB; the published traces are a few MB).
    public static let defaultMaximumBytes = 256 << 20

    /// Most block references one trace may hold (2^25, about 1.5 GB of ids and
    /// their parent table at worst); the published traces hold under a million.
    public static let maximumBlockReferences = 1 << 25

    /// Reads a trace file, one line at a time.
    /// - Parameters:
    ///   - limit: Read at most this many requests (and stop reading the file there).
    ///   - maximumBytes: Refuse a trace longer than this.
    /// - Throws: `notFound`/`systemCall` for the file, `malformedInput` naming the line
    ///   (also for a line over ``maximumLineBytes``, ids that are not prefix chains, or
    ///   more than `maximumBytes` of input).
    public static func load(path: String, blockTokens: Int = 512, limit: Int? = nil,
                            maximumBytes: Int = defaultMaximumBytes) throws(MemWallError) -> MooncakeTrace {
        var parser = try TraceParser(source: path, blockTokens: blockTokens, limit: limit)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            if e == .noEntry { throw MemWallError(.notFound, "trace '\(path)' does not exist", function: "open", errno: e) }
            throw .system("open", e, "cannot open trace '\(path)'")
        }
        defer { close(fd) }
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var total = 0
        while !parser.isFull {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                throw .system("read", e, "cannot read trace '\(path)'")
            }
            if n == 0 { break }
            total += n
            guard total <= maximumBytes else {
                throw MemWallError(.malformedInput,
                    "\(path): longer than \(maximumBytes) bytes, the most a trace may be; pass --limit to replay its first requests")
            }
            var start = 0
            while start < n, !parser.isFull, let nl = chunk[start ..< n].firstIndex(of: UInt8(ascii: "\n")) {
                if pending.isEmpty {
                    try parser.consume(chunk[start ..< nl])
                } else {
                    pending.append(contentsOf: chunk[start ..< nl])
                    try parser.checkLength(pending.count)
                    try parser.consume(pending[...])
                    pending.removeAll(keepingCapacity: true)
                }
                start = nl + 1
            }
            if !parser.isFull && start < n {
                pending.append(contentsOf: chunk[start ..< n])
                try parser.checkLength(pending.count)
            }
        }
        if !parser.isFull && !pending.isEmpty { try parser.consume(pending[...]) }
        return MooncakeTrace(requests: parser.requests, blockTokens: blockTokens)
    }

    /// Parses trace text.
    /// - Parameter source: Name used in error messages.
    /// - Throws: `malformedInput` with `source:line: what was wrong` (also for a line
    ///   over ``maximumLineBytes`` or ids that are not prefix chains); `invalidArgument`
    ///   for a block size outside 1…65535.
    public static func parse(_ text: some Collection<UInt8>, source: String = "trace", blockTokens: Int = 512,
                             limit: Int? = nil) throws(MemWallError) -> MooncakeTrace {
        var parser = try TraceParser(source: source, blockTokens: blockTokens, limit: limit)
        let bytes = Array(text)
        var start = 0
        while start < bytes.count, !parser.isFull {
            let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
            try parser.checkLength(end - start)
            try parser.consume(bytes[start ..< end])
            start = end + 1
        }
        return MooncakeTrace(requests: parser.requests, blockTokens: blockTokens)
    }
}

/// Reads a trace line by line and checks what spans lines: every block id keeps
/// the parent it had where it first appeared. Mooncake's ids are hashes of a
/// whole prefix, so one id always follows the same id; a trace where it does not
/// would let one cached block stand for two different prefixes, and the cache's
/// rule that a block's parent is cached whenever it is (the tier invariant) breaks.
private struct TraceParser {
    let source: String
    let blockTokens: Int
    let limit: Int?
    var requests: [TraceRequest] = []
    var line = 0
    var blockReferences = 0
    /// Block id → (the id before it, or `root`; the line it was first seen on).
    private var parents: [UInt64: (parent: UInt64, line: Int)] = [:]
    /// Not a valid id (ids are non-negative `Int`s), so it marks "first of its request".
    private static let root = UInt64.max

    init(source: String, blockTokens: Int, limit: Int?) throws(MemWallError) {
        guard blockTokens > 0, blockTokens <= Int(UInt16.max) else {
            throw .invalid("tokens per block", blockTokens, expected: "1 to \(UInt16.max)")
        }
        self.source = source
        self.blockTokens = blockTokens
        self.limit = limit
    }

    var isFull: Bool { limit.map { requests.count >= $0 } ?? false }

    /// Refuses a line (complete or still being read) over the bound; `line` is its number.
    func checkLength(_ count: Int) throws(MemWallError) {
        guard count <= MooncakeTrace.maximumLineBytes else {
            throw MemWallError(.malformedInput,
                "\(source):\(line + 1): line is longer than \(MooncakeTrace.maximumLineBytes) bytes; a trace has one JSON object of a few KiB per line")
        }
    }

    mutating func consume(_ text: ArraySlice<UInt8>) throws(MemWallError) {
        try checkLength(text.count)
        line += 1
        var p = LineParser(bytes: text, position: text.startIndex, end: text.endIndex)
        p.skipSpace()
        guard p.position < p.end else { return }
        let request: TraceRequest
        do throws(LineParser.Failure) {
            request = try p.request(blockTokens: blockTokens)
        } catch {
            throw MemWallError(.malformedInput, "\(source):\(line): \(error.reason)")
        }
        blockReferences += request.blockIDs.count
        guard blockReferences <= MooncakeTrace.maximumBlockReferences else {
            throw MemWallError(.malformedInput,
                "\(source):\(line): more than \(MooncakeTrace.maximumBlockReferences) block references in the trace, the most one replay holds; pass --limit to replay its first requests")
        }
        var parent = Self.root
        for id in request.blockIDs {
            let key = id.rawValue
            if let known = parents[key] {
                guard known.parent == parent else {
                    throw MemWallError(.malformedInput,
                        "\(source):\(line): hash id \(key) follows \(describe(parent)) here but \(describe(known.parent)) on line \(known.line); hash_ids must be prefix chains (one id, one parent)")
                }
            } else {
                parents[key] = (parent, line)
            }
            parent = key
        }
        requests.append(request)
    }

    private func describe(_ parent: UInt64) -> String {
        parent == Self.root ? "nothing (it starts the request)" : "id \(parent)"
    }
}

/// Scanner for one line of a Mooncake trace.
private struct LineParser {
    struct Failure: Error { var reason: String }
    let bytes: ArraySlice<UInt8>
    var position: Int
    let end: Int

    mutating func skipSpace() {
        while position < end, bytes[position] == 0x20 || bytes[position] == 0x09 || bytes[position] == 0x0D { position += 1 }
    }

    mutating func expect(_ c: UInt8) throws(Failure) {
        skipSpace()
        guard position < end, bytes[position] == c else {
            throw Failure(reason: "expected '\(Character(Unicode.Scalar(c)))' at column \(position - lineStart + 1)" + found())
        }
        position += 1
    }

    var lineStart: Int { bytes.startIndex }

    func found() -> String {
        position < end ? ", found '\(Character(Unicode.Scalar(bytes[position])))'" : ", found the end of the line"
    }

    mutating func string() throws(Failure) -> String {
        try expect(UInt8(ascii: "\""))
        let s = position
        while position < end, bytes[position] != UInt8(ascii: "\"") { position += 1 }
        guard position < end else { throw Failure(reason: "unterminated string") }
        let text = String(decoding: bytes[s..<position], as: UTF8.self)
        position += 1
        return text
    }

    mutating func integer(_ what: String) throws(Failure) -> Int {
        skipSpace()
        var negative = false
        if position < end, bytes[position] == UInt8(ascii: "-") { negative = true; position += 1 }
        var v = 0
        var digits = 0
        while position < end, bytes[position] >= 0x30, bytes[position] <= 0x39 {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(bytes[position] - 0x30))
            if o1 || o2 { throw Failure(reason: "\(what) does not fit in 64 bits") }
            v = a
            digits += 1
            position += 1
        }
        guard digits > 0 else { throw Failure(reason: "expected an integer for \(what)" + found()) }
        if position < end, bytes[position] == UInt8(ascii: ".") || bytes[position] == UInt8(ascii: "e") {
            throw Failure(reason: "\(what) must be a whole number")
        }
        return negative ? -v : v
    }

    mutating func request(blockTokens: Int) throws(Failure) -> TraceRequest {
        try expect(UInt8(ascii: "{"))
        var timestamp: Int?, input: Int?, output: Int?, ids: [BlockKey]?
        skipSpace()
        if position < end, bytes[position] == UInt8(ascii: "}") { throw Failure(reason: "empty object; expected timestamp, input_length, output_length, hash_ids") }
        while true {
            let key = try string()
            try expect(UInt8(ascii: ":"))
            switch key {
            case "timestamp": timestamp = try integer("timestamp")
            case "input_length": input = try integer("input_length")
            case "output_length": output = try integer("output_length")
            case "hash_ids":
                try expect(UInt8(ascii: "["))
                var list: [BlockKey] = []
                skipSpace()
                if position < end, bytes[position] == UInt8(ascii: "]") {
                    position += 1
                } else {
                    while true {
                        let v = try integer("a hash id")
                        guard v >= 0 else { throw Failure(reason: "hash id \(v) is negative") }
                        list.append(BlockKey(rawValue: UInt64(v)))
                        skipSpace()
                        guard position < end else { throw Failure(reason: "unterminated hash_ids list") }
                        if bytes[position] == UInt8(ascii: "]") { position += 1; break }
                        try expect(UInt8(ascii: ","))
                    }
                }
                ids = list
            default:
                // Unknown keys may carry a scalar; skip it.
                skipSpace()
                while position < end, bytes[position] != UInt8(ascii: ","), bytes[position] != UInt8(ascii: "}") { position += 1 }
            }
            skipSpace()
            guard position < end else { throw Failure(reason: "unterminated object") }
            if bytes[position] == UInt8(ascii: "}") { position += 1; break }
            try expect(UInt8(ascii: ","))
        }
        skipSpace()
        guard position == end else { throw Failure(reason: "unexpected text after the object" + found()) }
        guard let timestamp else { throw Failure(reason: "missing \"timestamp\"") }
        guard let input else { throw Failure(reason: "missing \"input_length\"") }
        guard let ids else { throw Failure(reason: "missing \"hash_ids\"") }
        guard input >= 0 else { throw Failure(reason: "input_length \(input) is negative") }
        let expected = input / blockTokens + (input % blockTokens == 0 ? 0 : 1)   // no overflow near Int.max
        guard ids.count == expected else {
            throw Failure(reason: "hash_ids has \(ids.count) ids but input_length \(input) needs \(expected) blocks of \(blockTokens) tokens")
        }
        return TraceRequest(timestamp: timestamp, inputLength: input, outputLength: output ?? 0, blockIDs: ids)
    }
}
