import MemWallCore
import Testing

@Suite("Sizes parse and print the way operators write them")
struct ByteCountTests {
    @Test(arguments: [("4096", 4096), ("4k", 4096), ("4KiB", 4096), ("64M", 64 << 20),
                      ("1.5GiB", 3 << 29), (" 2 g ", 2 << 30), ("512b", 512), ("0", 0)])
    func parses(_ text: String, _ bytes: Int) throws {
        #expect(try ByteCount.parse(text).rawValue == bytes)
    }

    @Test(arguments: ["", "abc", "-4k", "1.3", "4 parsecs", "1e400"])
    func rejectsWithTheValueInTheMessage(_ text: String) {
        let e = #expect(throws: MemWallError.self) { try ByteCount.parse(text) }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("'\(text)'") == true)
    }

    @Test func formats() {
        #expect(ByteCount(4096).description == "4 KiB")
        #expect(ByteCount(3 << 29).description == "1.5 GiB")
        #expect(ByteCount(100).description == "100 B")
        #expect(ByteCount(3 * 1024 * 1024 - 1).description == "3 MiB", "rounding up must not leave a bare decimal point")
        #expect(formatDecimal(2.005, places: 2) == "2.01" || formatDecimal(2.005, places: 2) == "2.00")
        #expect(formatDecimal(-0.5, places: 1) == "-0.5")
    }
}

@Suite("Latency percentiles match a sorted reference")
struct LatencyHistogramTests {
    @Test func percentilesWithinBucketError() {
        var h = LatencyHistogram()
        var values: [UInt64] = []
        var x: UInt64 = 88172645463325252
        for _ in 0..<50_000 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            let v = 100 + x % 1_000_000
            values.append(v)
            h.record(v)
        }
        values.sort()
        for p in [50.0, 90, 99, 99.9] {
            let exact = Double(values[Int((p / 100 * Double(values.count)).rounded(.up)) - 1])
            let got = Double(h.percentile(p))
            #expect(abs(got - exact) / exact < 0.02, "p\(p): \(got) vs \(exact)")
        }
        #expect(h.percentile(100) == values.last)
        #expect(h.min == values.first)
        #expect(h.count == 50_000)
    }

    @Test func emptyAndMerged() {
        var a = LatencyHistogram()
        #expect(a.percentile(99) == 0)
        var b = LatencyHistogram()
        a.record(10); b.record(1000)
        a.merge(b)
        #expect(a.count == 2 && a.min == 10 && a.max == 1000)
    }
}
