/// A number of bytes that prints and parses the way operators write sizes.
public struct ByteCount: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByIntegerLiteral {
    /// The size in bytes.
    public var rawValue: Int
    /// Wraps a byte count.
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Wraps a byte count.
    public init(_ bytes: Int) { self.rawValue = bytes }
    /// Wraps a byte count literal.
    public init(integerLiteral value: Int) { self.rawValue = value }

    /// `n` kibibytes.
    public static func kib(_ n: Int) -> ByteCount { ByteCount(n << 10) }
    /// `n` mebibytes.
    public static func mib(_ n: Int) -> ByteCount { ByteCount(n << 20) }
    /// `n` gibibytes.
    public static func gib(_ n: Int) -> ByteCount { ByteCount(n << 30) }

    /// Orders by size.
    public static func < (a: ByteCount, b: ByteCount) -> Bool { a.rawValue < b.rawValue }

    /// Binary units, shortest exact form first: `4 KiB`, `1.5 MiB`, `512 B`.
    public var description: String { ByteCount.format(Double(rawValue)) }

    /// Formats a byte quantity with binary units and at most two decimals.
    public static func format(_ bytes: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = bytes
        var i = 0
        while abs(v) >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        if v == v.rounded() { return "\(Int(v)) \(units[i])" }
        var text = formatDecimal(v, places: 2)
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return "\(text) \(units[i])"
    }

    /// Parses `4096`, `4k`, `4KiB`, `64M`, `1.5GiB`, `2 g` (binary multiples; `KB` is
    /// read as KiB, as fio and numactl do).
    /// - Throws: ``MemWallError`` naming the text and the accepted forms.
    public static func parse(_ text: String) throws(MemWallError) -> ByteCount {
        let trimmed = text.trimmingWhitespace().lowercased()
        var number = Substring(trimmed)
        var shift = 0
        let suffixes: [(String, Int)] = [
            ("kib", 10), ("mib", 20), ("gib", 30), ("tib", 40),
            ("kb", 10), ("mb", 20), ("gb", 30), ("tb", 40),
            ("k", 10), ("m", 20), ("g", 30), ("t", 40), ("b", 0),
        ]
        for (s, sh) in suffixes where number.hasSuffix(s) {
            number = number.dropLast(s.count)
            shift = sh
            break
        }
        let digits = String(number).trimmingWhitespace()
        guard let value = Double(digits), value >= 0, value.isFinite,
              value * Double(1 << shift) < Double(Int.max) else {
            throw .invalid("size", text, expected: "a non-negative byte count such as 4096, 4k, 64MiB or 1.5G")
        }
        let bytes = value * Double(1 << shift)
        guard bytes == bytes.rounded() else {
            throw .invalid("size", text, expected: "a whole number of bytes")
        }
        return ByteCount(Int(bytes))
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and newlines.
    public func trimmingWhitespace() -> String {
        let ws: Set<Character> = [" ", "\t", "\n", "\r"]
        var s = Substring(self)
        while let f = s.first, ws.contains(f) { s = s.dropFirst() }
        while let l = s.last, ws.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

/// Formats `value` with exactly `places` decimals, without Foundation's locale rules.
public func formatDecimal(_ value: Double, places: Int) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
    var scale = 1.0
    for _ in 0..<places { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    let frac = Int(scaled - Double(whole) * scale)
    let sign = value < 0 && scaled != 0 ? "-" : ""
    if places == 0 { return "\(sign)\(whole)" }
    var f = String(frac)
    while f.count < places { f = "0" + f }
    return "\(sign)\(whole).\(f)"
}
