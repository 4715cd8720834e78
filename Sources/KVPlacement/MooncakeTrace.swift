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

    /// Reads a trace file.
    /// - Parameters:
    ///   - limit: Read at most this many requests.
    /// - Throws: `notFound`/`systemCall` for the file, `malformedInput` naming the line.
    public static func load(path: String, blockTokens: Int = 512, limit: Int? = nil) throws(MemWallError) -> MooncakeTrace {
        let bytes = try readFile(path)
        return try parse(bytes, source: path, blockTokens: blockTokens, limit: limit)
    }

    /// Parses trace text.
    /// - Parameter source: Name used in error messages.
    /// - Throws: `malformedInput` with `source:line: what was wrong`; `invalidArgument` for a block size outside 1…65535.
    public static func parse(_ text: some Collection<UInt8>, source: String = "trace", blockTokens: Int = 512,
                             limit: Int? = nil) throws(MemWallError) -> MooncakeTrace {
        guard blockTokens > 0, blockTokens <= Int(UInt16.max) else {
            throw .invalid("tokens per block", blockTokens, expected: "1 to \(UInt16.max)")
        }
        var requests: [TraceRequest] = []
        let bytes = Array(text)
        var line = 0
        var start = 0
        while start < bytes.count {
            if let limit, requests.count >= limit { break }
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            line += 1
            var p = LineParser(bytes: bytes, position: start, end: end)
            p.skipSpace()
            if p.position < end {
                do throws(LineParser.Failure) {
                    requests.append(try p.request(blockTokens: blockTokens))
                } catch {
                    throw MemWallError(.malformedInput, "\(source):\(line): \(error.reason)")
                }
            }
            start = end + 1
        }
        return MooncakeTrace(requests: requests, blockTokens: blockTokens)
    }

    private static func readFile(_ path: String) throws(MemWallError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            if e == .noEntry { throw MemWallError(.notFound, "trace '\(path)' does not exist", function: "open", errno: e) }
            throw .system("open", e, "cannot open trace '\(path)'")
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                throw .system("read", e, "cannot read trace '\(path)'")
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }
}

/// Scanner for one line of a Mooncake trace.
private struct LineParser {
    struct Failure: Error { var reason: String }
    let bytes: [UInt8]
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

    var lineStart: Int {
        var s = position
        while s > 0 && bytes[s - 1] != UInt8(ascii: "\n") { s -= 1 }
        return s
    }

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
