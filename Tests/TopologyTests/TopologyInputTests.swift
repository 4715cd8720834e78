import Foundation
import MemWallCore
import Testing
@testable import Topology

/// Bad input is a typed one-line error, never a crash; synthetic and hand-made inputs load.
@Suite struct TopologyInputTests {
    private func temporaryFile(_ name: String, _ contents: String) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-\(getpid())-\(name)")
        try contents.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    private func expectError(_ source: TopologySource, _ code: MemWallError.Code, mentioning text: String) {
        do {
            _ = try Topology.load(source)
            Issue.record("\(source) loaded but should have failed with \(code)")
        } catch {
            #expect(error.code == code)
            #expect(error.description.contains(text))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func missingXMLFile() {
        expectError(.xml(path: "/nonexistent/topology.xml"), .notFound, mentioning: "/nonexistent/topology.xml")
    }

    @Test func truncatedXML() throws {
        let path = try temporaryFile("truncated.xml", "<?xml version=\"1.0\"?>\n<topology version=\"2.0\">\n<object type=\"Machine\"")
        expectError(.xml(path: path), .malformedInput, mentioning: path)
    }

    @Test func notXMLAtAll() throws {
        let path = try temporaryFile("notxml.xml", "hello, this is not a topology\n")
        expectError(.xml(path: path), .malformedInput, mentioning: "no <topology> element")
    }

    @Test func fsrootThatIsNotSysfs() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-\(getpid())-notsysfs")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        expectError(.fsroot(path: dir.path), .malformedInput, mentioning: "is not a sysfs snapshot")
    }

    @Test func fsrootThatDoesNotExist() {
        expectError(.fsroot(path: "/nonexistent/fsroot"), .notFound, mentioning: "/nonexistent/fsroot")
    }

    @Test(arguments: ["pack:2 foo:3", "", "pack:x", "numa:2 core:-1"])
    func badSyntheticDescription(_ text: String) {
        expectError(.synthetic(text), .invalidArgument, mentioning: "synthetic description")
    }

    @Test func syntheticTopology() throws {
        let topology = try Topology.load(.synthetic("pack:2 numa:2 core:4 pu:1"))
        #expect(topology.packages.count == 2)
        #expect(topology.nodes.count == 4)
        #expect(topology.coreCount == 16)
        #expect(topology.processingUnitCount == 16)
        #expect(topology.tiers.map(\.kind) == [.dram])
        // Nothing is known about figures, so none may appear.
        #expect(topology.nodes.allSatisfy { $0.figures.isEmpty && $0.hasCPUs == nil })
        #expect(topology.packages.map(\.cpus.description) == ["0-7", "8-15"])
    }

    @Test func jsonIsStableAndComplete() throws {
        let topology = try Topology.load(.synthetic("pack:1 numa:2 core:2 pu:2"))
        let first = topology.json().serialized()
        let second = try Topology.load(.synthetic("pack:1 numa:2 core:2 pu:2")).json().serialized()
        #expect(first == second)
        let parsed = try JSONSerialization.jsonObject(with: Data(first.utf8)) as? [String: Any]
        #expect(parsed?["schema"] as? String == Topology.jsonSchema)
        let nodes = parsed?["nodes"] as? [[String: Any]]
        #expect(nodes?.count == 2)
        #expect(nodes?.first?["hasCPUs"] is NSNull)
        let keys = ["osIndex", "logicalIndex", "kind", "tierRank", "capacityBytes", "freeBytes", "hasCPUs", "cpus",
                    "locality", "attachedTo", "hwlocSubtype", "hwlocInfo", "kernelTier", "figures",
                    "ignoredZeroFigures", "memorySideCaches", "cxl", "dax", "evidence"]
        #expect(Set(nodes?.first?.keys.map { $0 } ?? []) == Set(keys))
    }

    @Test func jsonEscapesStrings() {
        let value = JSONValue.object([("a\"b", .string("line\nnext\t\u{01}\\"))])
        #expect(value.serialized() == "{\n  \"a\\\"b\": \"line\\nnext\\t\\u0001\\\\\"\n}")
    }

    @Test func cpuSetParsesAndPrintsKernelLists() throws {
        #expect(try CPUSet.parse("0-3,8,10-11").description == "0-3,8,10-11")
        #expect(try CPUSet.parse("").isEmpty)
        #expect(try CPUSet.parse(" 5 ").indexes == [5])
        #expect(throws: MemWallError.self) { try CPUSet.parse("3-1") }
        #expect(throws: MemWallError.self) { try CPUSet.parse("a") }
        #expect(SysfsFacts.parseCPUMask("00000000,0000000f")?.description == "0-3")
        #expect(SysfsFacts.parseCPUMask("00000001,00000000")?.description == "32")
    }

    @Test func liveMachineLoads() throws {
        let topology = try Topology.load(.live)
        #expect(!topology.nodes.isEmpty)
        #expect(topology.processingUnitCount > 0)
        // On a live machine sysfs is read, so every node knows its CPUs and free memory.
        #expect(topology.nodes.allSatisfy { $0.hasCPUs != nil })
        #expect(topology.nodes.contains { $0.free != nil })
    }
}
