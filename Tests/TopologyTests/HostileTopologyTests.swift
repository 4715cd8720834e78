#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemWallCore
import Testing
@testable import Topology

/// Topology input built to hurt: numbers hwloc stores in 64 bits, indexes that
/// size memory, duplicate nodes, runaway synthetic descriptions, huge files.
/// Each is a one-line typed error naming the bad value, found before hwloc spends anything on it.
@Suite struct HostileTopologyTests {
    /// The lab guest's XML (two NUMA nodes, two PUs) with `edit` applied.
    private func labXML(_ name: String, _ edit: (String) -> String) throws -> String {
        let original = try String(contentsOf: TestData.fixtures.appendingPathComponent("lab-guest.xml"), encoding: .utf8)
        let edited = edit(original)
        #expect(edited != original, "the edit of \(name) changed nothing")
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-\(getpid())-\(name).xml")
        try edited.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// Loads the XML at `path` and expects a `malformedInput` error whose message names `needle`.
    private func expectMalformed(_ path: String, saying needle: String) throws {
        let e = try #require(loadError(.xml(path: path)))
        #expect(e.code == .malformedInput)
        #expect(e.message.contains(needle), "\(e.message)")
    }

    /// A committed fuzzing regression input.
    private func regression(_ name: String) -> String {
        TestData.repositoryRoot.appendingPathComponent("Fuzz/corpus/FuzzTopologyXML/\(name)").path
    }

    private func loadError(_ source: TopologySource) -> MemWallError? {
        do {
            _ = try Topology.load(source)
            return nil
        } catch {
            return error
        }
    }

    @Test("local_memory too large for 64 bits, or negative: an error naming the text, not a trap",
          arguments: ["99999999999999999999999", "-5", "18446744073709551615"])
    func memoryThatIsNoByteCount(_ value: String) throws {
        let path = try labXML("memory-\(value.hashValue)") { $0.replacingOccurrences(of: "local_memory=\"1055211520\"", with: "local_memory=\"\(value)\"") }
        let e = try #require(loadError(.xml(path: path)))
        #expect(e.code == .malformedInput)
        #expect(e.message.contains("local_memory=\"\(value)\""), "\(e.message)")
        #expect(e.message.contains("\(Int.max)"), "\(e.message)")
    }

    @Test("two NUMA nodes with one os_index are an error naming the index, not merged")
    func duplicateNodeIndex() throws {
        let path = try labXML("dup-node") { $0.replacingOccurrences(of: "type=\"NUMANode\" os_index=\"1\"", with: "type=\"NUMANode\" os_index=\"0\"") }
        try expectMalformed(path, saying: "two NUMA nodes have os_index 0")
    }

    @Test("an os_index of 2^32-1 on every object is refused before hwloc sizes bitmaps by it")
    func hugeObjectIndex() throws {
        let path = try labXML("huge-index") { $0.replacingOccurrences(of: #"os_index="\d+""#, with: "os_index=\"4294967295\"", options: .regularExpression) }
        let e = try #require(loadError(.xml(path: path)))
        #expect(e.code == .malformedInput)
        #expect(e.message.contains("os_index=\"4294967295\""), "\(e.message)")
        #expect(e.message.contains("\(Topology.maximumObjectIndex - 1)"), "\(e.message)")
    }

    @Test("an object with a cpuset but no complete_cpuset is refused: hwloc 2.9 dereferences the missing set (found by fuzzing)")
    func missingCompleteSet() throws {
        let path = try labXML("no-complete") { text in
            guard let r = text.range(of: "complete_cpuset=") else { return text }
            return text.replacingCharacters(in: r, with: "mcpolete_cpuset=")
        }
        try expectMalformed(path, saying: "has cpuset but no complete_cpuset")
    }

    @Test("a file on which hwloc's importer itself crashes is an error, not the end of this process (found by fuzzing)")
    func hwlocCrashIsContained() throws {
        try expectMalformed(regression("regression-hwloc-crash-mangled-sets.xml"), saying: "hwloc crashed (signal 11)")
    }

    @Test("packages at two depths of the tree are refused: hwloc's count for the type is then -1 (found by fuzzing)")
    func packagesAtTwoDepths() throws {
        try expectMalformed(regression("regression-packages-at-two-depths.xml"), saying: "more than one depth")
    }

    @Test("a NUMA node without os_index is refused instead of shown as P#4294967295 (found by fuzzing)")
    func nodeWithoutIndex() throws {
        let path = try labXML("no-index") { $0.replacingOccurrences(of: "type=\"NUMANode\" os_index=\"1\"", with: "type=\"NUMANode\"") }
        try expectMalformed(path, saying: "has OS index 4294967295")
    }

    @Test("many objects with wide CPU sets are refused by the bitmap budget")
    func bitmapBudget() throws {
        // 40,000 PUs, each with an index near the bound: well under the file-size limit.
        var xml = "<?xml version=\"1.0\"?>\n<topology version=\"2.0\">\n<object type=\"Machine\" os_index=\"0\">\n"
        for i in 0 ..< 40_000 { xml += "<object type=\"PU\" os_index=\"\(1_000_000 - i)\"/>\n" }
        xml += "</object>\n</topology>\n"
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-\(getpid())-wide.xml")
        try xml.write(to: url, atomically: true, encoding: .utf8)
        let e = try #require(loadError(.xml(path: url.path)))
        #expect(e.code == .malformedInput)
        #expect(e.message.contains("at most \(Topology.maximumBitmapBits)"), "\(e.message)")
    }

    @Test("an XML file over the size bound is refused without being read whole")
    func oversizedFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-\(getpid())-big.xml")
        try "<?xml version=\"1.0\"?>\n<topology version=\"2.0\">\n".write(to: url, atomically: true, encoding: .utf8)
        // Sparse: the bytes past the header are holes, so the test costs no disk.
        #expect(truncate(url.path, off_t(Topology.maximumXMLBytes + 1)) == 0)
        defer { unlink(url.path) }
        let e = try #require(loadError(.xml(path: url.path)))
        #expect(e.code == .malformedInput)
        #expect(e.message.contains("longer than \(Topology.maximumXMLBytes) bytes"), "\(e.message)")
    }

    @Test("a synthetic description whose level counts multiply past the bound is refused with the bound",
          arguments: ["pack:1000 numa:1000 core:1000 pu:1000", "pack:64 core:64 pu:16",
                      "pack:99999999999 numa:99999999999 core:99999999999 pu:99999999999"])
    func runawaySynthetic(_ text: String) {
        let e = loadError(.synthetic(text))
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("at most \(Topology.maximumSyntheticUnits) processing units") == true, "\(String(describing: e))")
    }

    @Test("synthetic descriptions within the bound, with attributes and attached memory, still load")
    func syntheticWithinBound() throws {
        #expect(try Topology.load(.synthetic("pack:2 numa:2 core:4 pu:2")).nodes.count == 4)
        #expect(try Topology.load(.synthetic("pack:1 [numa] [numa(memory=1GB)] core:2 pu:1")).nodes.count == 2)
    }

    @Test("what the bound-checked XML reader accepts is what hwloc reads: the fixture loads unchanged")
    func fixtureStillLoads() throws {
        let t = try Topology.load(.xml(path: TestData.fixtures.appendingPathComponent("lab-guest.xml").path))
        #expect(t.nodes.map(\.osIndex) == [0, 1])
        #expect(t.nodes[0].capacity == ByteCount(1_055_211_520))
    }
}
