#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

extension Topology {
    /// Largest hwloc XML file read (64 MiB; lstopo's export of a 64-node,
    /// 4096-CPU machine is a few MiB).
    public static let maximumXMLBytes = 64 << 20

    /// Bound on a CPU's or a NUMA node's OS index in an XML file or a synthetic
    /// description (2^20; Linux allows at most 8192 CPUs and 1024 nodes today).
    public static let maximumObjectIndex = 1 << 20

    /// Bound on objects × (highest CPU or node index + 1) in an XML file. hwloc
    /// gives every object bitmaps as wide as the highest index, so a small file
    /// whose indexes are huge would cost gigabytes. 2^29 bits is about 64 MiB per
    /// bitmap kind: a 16,384-CPU machine with its cores and caches fits.
    public static let maximumBitmapBits = 1 << 29

    /// Bound on the processing units a synthetic description makes (the product
    /// of its level counts). hwloc's cost grows with the square of it: 16,384 PUs
    /// load in about a second, 65,536 take 16 s and 1 GB.
    public static let maximumSyntheticUnits = 1 << 14

    /// Reads an XML file, at most ``maximumXMLBytes``.
    /// - Throws: `notFound`/`systemCall` for the file, `malformedInput` when it is longer.
    static func readXML(_ path: String) throws(MemWallError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let err = Errno.current
            throw MemWallError(err == .noEntry ? .notFound : .systemCall,
                               "cannot open hwloc XML file '\(path)'", function: "open", errno: err)
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if Errno.current == .interrupted { continue }
                throw MemWallError(.systemCall, "cannot read hwloc XML file '\(path)'", function: "read", errno: .current)
            }
            if n == 0 { return out }
            guard out.count + n <= maximumXMLBytes else {
                throw MemWallError(.malformedInput,
                                   "'\(path)' is longer than \(maximumXMLBytes) bytes, the most an hwloc XML topology may be here")
            }
            out.append(contentsOf: chunk[0 ..< n])
        }
    }

    /// Checks what hwloc imports without complaint but MemWall cannot use or
    /// afford: every `<object>`'s numbers hwloc would convert or size memory by.
    ///
    /// The scan follows hwloc's own XML reader (`name="value"` attributes, double
    /// quotes only), so a file hwloc reads is seen here the same way. The work is
    /// linear in the file's size.
    /// - Throws: `malformedInput` naming the object, the attribute, its text and what is valid:
    ///   a CPU or node index that is not a number below ``maximumObjectIndex``; two
    ///   NUMA nodes with one index; a memory or cache size that is not a byte count
    ///   below 2^63; a set without its complete set (or the reverse), which crashes
    ///   hwloc 2.9; objects × indexes over ``maximumBitmapBits``.
    static func checkXMLObjects(_ bytes: [UInt8], path: String) throws(MemWallError) {
        var scanner = XMLObjectScanner(bytes: bytes)
        var objects = 0
        var highestIndex = 0
        var nodeIndexes: Set<Int> = []
        while let object = scanner.nextObject() {
            objects += 1
            let type = object["type"] ?? "?"
            func bad(_ attribute: String, _ value: String, _ expected: String) -> MemWallError {
                let index = attribute == "os_index" ? "" : object["os_index"].map { " os_index=\"\($0)\"" } ?? ""
                return MemWallError(.malformedInput,
                    "'\(path)': object \(type)\(index) has \(attribute)=\"\(value)\": expected \(expected)")
            }
            if type == "PU" || type == "NUMANode", let text = object["os_index"] {
                guard let index = decimal(text), index < maximumObjectIndex else {
                    throw bad("os_index", text, "a CPU or node number from 0 to \(maximumObjectIndex - 1)")
                }
                highestIndex = max(highestIndex, index)
                if type == "NUMANode" {
                    guard nodeIndexes.insert(index).inserted else {
                        throw MemWallError(.malformedInput,
                            "'\(path)': two NUMA nodes have os_index \(index); each node needs its own index")
                    }
                }
            }
            // hwloc 2.9 sorts children by their complete sets and dereferences a missing
            // one (found by FuzzTopologyXML; lstopo crashes on such a file too).
            for (set, complete) in [("cpuset", "complete_cpuset"), ("nodeset", "complete_nodeset")]
            where (object[set] == nil) != (object[complete] == nil) {
                let (has, lacks) = object[set] == nil ? (complete, set) : (set, complete)
                throw MemWallError(.malformedInput,
                    "'\(path)': object \(type)\(object["os_index"].map { " os_index=\"\($0)\"" } ?? "") has \(has) but no \(lacks); hwloc needs both or neither")
            }
            for attribute in ["local_memory", "cache_size"] {
                if let text = object[attribute], decimal(text) == nil {
                    throw bad(attribute, text, "a byte count from 0 to \(Int.max)")
                }
            }
            // A set's text ("0x000000ff,,0x1") holds 4 bits per hex digit and 32 per comma
            // (hwloc writes a zero word as nothing): that bounds its highest index too.
            for attribute in ["cpuset", "complete_cpuset", "nodeset", "complete_nodeset"] {
                if let text = object[attribute] {
                    let commas = text.utf8.reduce(0) { $0 + ($1 == UInt8(ascii: ",") ? 1 : 0) }
                    highestIndex = max(highestIndex, 32 * commas + 4 * text.utf8.count)
                }
            }
        }
        let (bits, overflow) = objects.multipliedReportingOverflow(by: highestIndex + 1)
        guard !overflow, bits <= maximumBitmapBits else {
            throw MemWallError(.malformedInput,
                "'\(path)' has \(objects) objects and CPU or node indexes up to \(highestIndex): hwloc would need bitmaps of \(objects) × \(highestIndex + 1) bits; at most \(maximumBitmapBits) are allowed")
        }
    }

    /// Checks a synthetic description's size before hwloc builds it.
    /// - Throws: `invalidArgument` naming the description, how many processing
    ///   units it makes and ``maximumSyntheticUnits``.
    static func checkSynthetic(_ text: String) throws(MemWallError) {
        // Attributes in parentheses ("(memory=1GB)", "(indexes=…)") and attached memory
        // in brackets carry no level count; drop them, then every level is `type:count` or `count`.
        var levels = ""
        var depth = 0
        for c in text {
            switch c {
            case "(", "[": depth += 1
            case ")", "]": depth = max(0, depth - 1)
            default: if depth == 0 { levels.append(c) }
            }
        }
        var units = 1
        for token in levels.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
            let count = token.split(separator: ":", omittingEmptySubsequences: false).last.map(String.init) ?? ""
            guard let n = decimal(count) else { continue }   // hwloc reports what it cannot parse
            let (product, overflow) = units.multipliedReportingOverflow(by: n)
            units = overflow ? Int.max : product
        }
        guard units <= maximumSyntheticUnits else {
            let amount = units == Int.max ? "more than \(Int.max)" : "\(units)"
            throw .invalid("synthetic description", text,
                           expected: "at most \(maximumSyntheticUnits) processing units (the product of the level counts); this one makes \(amount)")
        }
    }

    /// A non-negative decimal `Int` written with digits only (no sign, no space), else nil.
    private static func decimal(_ text: String) -> Int? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Int(text)
    }
}

/// Finds each `<object …>` start tag and its `name="value"` attributes.
private struct XMLObjectScanner {
    let bytes: [UInt8]
    var position = 0

    private static let tag = Array("<object".utf8)

    mutating func nextObject() -> [String: String]? {
        guard let start = find(Self.tag) else { return nil }
        position = start + Self.tag.count
        var attributes: [String: String] = [:]
        while position < bytes.count {
            while position < bytes.count, isSpace(bytes[position]) { position += 1 }
            guard position < bytes.count, bytes[position] != UInt8(ascii: ">"), bytes[position] != UInt8(ascii: "/") else { break }
            let nameStart = position
            while position < bytes.count, bytes[position] != UInt8(ascii: "="), !isSpace(bytes[position]),
                  bytes[position] != UInt8(ascii: ">") { position += 1 }
            let name = String(decoding: bytes[nameStart ..< position], as: UTF8.self)
            guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "="), bytes[position + 1] == UInt8(ascii: "\"") else { break }
            position += 2
            let valueStart = position
            while position < bytes.count, bytes[position] != UInt8(ascii: "\"") { position += 1 }
            attributes[name] = String(decoding: bytes[valueStart ..< position], as: UTF8.self)
            position += 1
        }
        return attributes
    }

    private func find(_ needle: [UInt8]) -> Int? {
        var i = position
        while i + needle.count <= bytes.count {
            if bytes[i] == needle[0], bytes[i ..< i + needle.count].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    private func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
}
