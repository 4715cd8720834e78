import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore

/// `memwall bench`: microbenchmarks of the paths MemWall moves data on.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure memory-node copy bandwidth and latency, and O_DIRECT storage, the way MLC and fio do.",
        subcommands: [BenchMemoryCommand.self, BenchStorageCommand.self, BenchRDMACommand.self, BenchKVCommand.self, BenchPoolCommand.self]
    )
}

/// Shared pieces of the bench subcommands.
enum BenchOutput {
    /// Parses "1,4,16,32" into positive integers.
    static func integerList(_ text: String, what: String) throws -> [Int] {
        let parts = text.split(separator: ",").map { String($0).trimmingWhitespace() }
        let values = parts.compactMap { Int($0) }
        guard !parts.isEmpty, values.count == parts.count, values.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("invalid \(what) '\(text)': expected a comma-separated list of positive integers such as 1,4,16,32")
        }
        return values
    }

    /// Parses "4k,1M,64M" into byte counts.
    static func sizeList(_ text: String, what: String) throws -> [Int] {
        var out: [Int] = []
        for part in text.split(separator: ",") {
            let n = try ByteCount.parse(String(part)).rawValue
            guard n > 0 else { throw ValidationError("invalid \(what) '\(part)': expected a positive size such as 4k or 64M") }
            out.append(n)
        }
        guard !out.isEmpty else { throw ValidationError("invalid \(what) '\(text)': expected sizes such as 4k,1M,64M") }
        return out
    }

    /// `12.34` with two decimals.
    static func fixed(_ v: Double, _ places: Int = 2) -> String { formatDecimal(v, places: places) }

    /// Right-aligns `s` in `width` columns.
    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }
}
