import MemWallCore

/// A set of CPU (PU) operating-system indexes, printed the way the kernel and
/// numactl write them: `0-3,8,10-11`.
public struct CPUSet: Hashable, Sendable, CustomStringConvertible {
    /// The CPU indexes, ascending, without duplicates.
    public private(set) var indexes: [Int]

    /// Creates a set from any indexes (sorted and deduplicated here).
    public init(_ indexes: some Sequence<Int>) {
        self.indexes = Array(Set(indexes)).sorted()
    }

    /// Wraps indexes the caller already has ascending and unique (bitmap walks).
    init(ascendingUnique indexes: [Int]) {
        self.indexes = indexes
    }

    /// The empty set.
    public static let empty = CPUSet([])

    /// Whether the set holds no CPU.
    public var isEmpty: Bool { indexes.isEmpty }
    /// How many CPUs the set holds.
    public var count: Int { indexes.count }

    /// Whether `cpu` is in the set.
    public func contains(_ cpu: Int) -> Bool { binarySearch(cpu) }

    /// Whether the two sets share at least one CPU.
    public func intersects(_ other: CPUSet) -> Bool {
        var i = 0, j = 0
        while i < indexes.count && j < other.indexes.count {
            if indexes[i] == other.indexes[j] { return true }
            if indexes[i] < other.indexes[j] { i += 1 } else { j += 1 }
        }
        return false
    }

    /// Whether every CPU of `other` is in this set.
    public func isSuperset(of other: CPUSet) -> Bool {
        other.indexes.allSatisfy { binarySearch($0) }
    }

    /// The kernel's list format, `0-3,8`; empty string for the empty set.
    public var description: String {
        var parts: [String] = []
        var i = 0
        while i < indexes.count {
            var j = i
            while j + 1 < indexes.count && indexes[j + 1] == indexes[j] + 1 { j += 1 }
            parts.append(i == j ? "\(indexes[i])" : "\(indexes[i])-\(indexes[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// Parses the kernel's list format (`0-3,8,10-11`; whitespace and an empty
    /// string are accepted, the latter being the empty set).
    /// - Throws: ``MemWallError`` (`invalidArgument`) naming the text when it is not a list.
    public static func parse(_ text: String) throws(MemWallError) -> CPUSet {
        let trimmed = text.trimmingWhitespace()
        if trimmed.isEmpty { return .empty }
        var result: [Int] = []
        for part in trimmed.split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  let low = Int(bounds[0].trimmingWhitespaceSubstring()), low >= 0,
                  let high = Int(bounds[bounds.count - 1].trimmingWhitespaceSubstring()), high >= low,
                  high - low < 1 << 20 else {
                throw .invalid("CPU list", text, expected: "a list such as 0-3,8,10-11")
            }
            result.append(contentsOf: low...high)
        }
        return CPUSet(result)
    }

    private func binarySearch(_ value: Int) -> Bool {
        var low = 0, high = indexes.count
        while low < high {
            let mid = (low + high) / 2
            if indexes[mid] == value { return true }
            if indexes[mid] < value { low = mid + 1 } else { high = mid }
        }
        return false
    }
}

extension Substring {
    func trimmingWhitespaceSubstring() -> String { String(self).trimmingWhitespace() }
}
