import ArgumentParser
import CMemWallShim
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import HostCapabilities
import MemWallCore

/// Standard output for every command, checked: output that cannot be
/// written (a full disk, `/dev/full`, a closed pipe) is an error and a
/// non-zero exit, never a silent success.
enum Output {
    /// Stable JSON: sorted keys, pretty, slashes unescaped. Non-finite numbers
    /// cannot be encoded; commands reject them when they parse their options.
    static func json(_ value: some Encodable) throws -> String {
        try StableJSON.text(value)
    }

    /// Prints `value` as ``json(_:)`` followed by a newline.
    static func printJSON(_ value: some Encodable) throws {
        print(try json(value))
    }

    /// Makes sure everything printed so far reached standard output.
    /// - Throws: `systemCall` naming the errno (ENOSPC for `/dev/full`, EPIPE, EIO).
    static func finish() throws(MemWallError) {
        if memwall_flush_standard_output() != 0 {
            throw .system("write", .current, "cannot write the output to standard output; nothing (or only part) of it was written")
        }
    }

    /// Writes `text` straight to descriptor 1 (after what `print` buffered), resuming short writes.
    /// - Throws: as ``finish()``.
    static func write(_ text: String) throws(MemWallError) {
        try finish()
        var copy = text
        let failure: Errno? = copy.withUTF8 { buffer in
            guard let base = buffer.baseAddress else { return nil }
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(1, base + offset, buffer.count - offset)
                if n < 0 && errno == EINTR { continue }
                if n < 0 { return .current }
                offset += n
            }
            return nil
        }
        if let failure {
            throw .system("write", failure, "cannot write the output to standard output; nothing (or only part) of it was written")
        }
    }
}

/// The `--json` and `--quiet` switches most commands share.
struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print stable JSON on standard output.")
    var json = false

    @Flag(name: .long, help: "No progress lines on standard error.")
    var quiet = false
}

/// Checks of numeric option values, each error naming the option and the valid range.
enum OptionCheck {
    /// `value` lies in `range`.
    static func inRange<T: Comparable & CustomStringConvertible>(_ option: String, _ value: T, _ range: ClosedRange<T>,
                                                                   unit: String = "") throws {
        guard range.contains(value) else {
            throw ValidationError("invalid \(option) '\(value)': expected \(range.lowerBound) to \(range.upperBound)\(unit.isEmpty ? "" : " " + unit)")
        }
    }

    /// A finite `value` in `(lower, upper]` or `[lower, upper]`.
    static func finite(_ option: String, _ value: Double, above lower: Double, orEqual: Bool = false, atMost upper: Double,
                       unit: String = "") throws {
        let ok = value.isFinite && (orEqual ? value >= lower : value > lower) && value <= upper
        guard ok else {
            throw ValidationError("invalid \(option) '\(value)': expected a number in \(orEqual ? "[" : "(")\(formatDecimal(lower, places: lower.rounded() == lower ? 0 : 2)), \(formatDecimal(upper, places: 0))]\(unit.isEmpty ? "" : " " + unit)")
        }
    }

    /// A byte size (e.g. 4k, 1G) in `range`.
    static func size(_ option: String, _ text: String, _ range: ClosedRange<Int>) throws -> Int {
        guard let n = try? ByteCount.parse(text).rawValue, range.contains(n) else {
            throw ValidationError("invalid \(option) '\(text)': expected a size from \(ByteCount(range.lowerBound)) to \(ByteCount(range.upperBound)) (such as 4k, 64M, 1G)")
        }
        return n
    }
}

/// Command-line words as the parser should see them.
enum CommandLineWords {
    /// Joins `--name -5` into `--name=-5`. swift-argument-parser reads a word
    /// that starts with `-` as an option, so a negative number after an option
    /// would be reported as "Missing value"; joined, it reaches the option's own
    /// check, whose error names the option and the valid range.
    static func normalized(_ words: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < words.count {
            let w = words[i]
            if w.hasPrefix("--"), w.count > 2, !w.contains("="), i + 1 < words.count, looksNegative(words[i + 1]) {
                out.append(w + "=" + words[i + 1])
                i += 2
                continue
            }
            out.append(w)
            i += 1
        }
        return out
    }

    private static func looksNegative(_ w: String) -> Bool {
        guard w.hasPrefix("-"), w.count > 1 else { return false }
        let rest = w.dropFirst()
        if ["inf", "infinity", "nan"].contains(rest.lowercased()) { return true }
        guard let first = rest.first, first.isNumber || first == "." else { return false }
        return true
    }
}
