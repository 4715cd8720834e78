#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemWallCore
import NUMATransport
import RDMATransport
import Testing
import URingTransport

@Suite("Host probes call the real libraries")
struct HostProbeTests {
    @Test func numaReportsAtLeastOneNodeWithMemoryAndCPUs() throws {
        let p = NUMAProbe.probe()
        guard p.available else { try Test.cancel("libnuma reports no NUMA support here: \(p.reason ?? "")") }
        #expect(!p.nodes.isEmpty)
        #expect(p.nodes.allSatisfy { $0.memoryBytes > 0 && $0.freeBytes <= $0.memoryBytes })
        #expect(p.nodes.contains { $0.cpuCount > 0 }, "some node must hold the CPUs running this test")
    }

    @Test func ioURingProbeIsConsistent() {
        let p = URingProbe.probe()
        if p.setupWorks {
            #expect(p.supportedOpcodes.contains("NOP"))
            #expect(Set(p.supportedOpcodes).isDisjoint(with: p.missingOpcodes))
            #expect(p.registeredBuffersWork == (p.registeredBuffersError == nil))
        } else {
            #expect(p.setupError?.contains("io_uring_queue_init") == true, "a refusal must say which call refused")
        }
    }

    @Test func directIORoundTripsInATempDirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-dio-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try DirectIOProbe.probe(directory: dir)
        #expect(p.works == (p.reason == nil))
        #expect(p.filesystem != "")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "the probe leaves no file behind")
    }

    @Test func directIORejectsMissingAndNonDirectoryPaths() {
        let missing = #expect(throws: MemWallError.self) { try DirectIOProbe.probe(directory: "/nonexistent/memwall") }
        #expect(missing?.code == .notFound)
        #expect(missing?.message.contains("/nonexistent/memwall") == true)
        let file = #expect(throws: MemWallError.self) { try DirectIOProbe.probe(directory: "/etc/hostname") }
        #expect(file?.code == .invalidArgument)
    }

    @Test(.enabled(if: getuid() != 0, "root can write anywhere; the unwritable-directory case needs a normal user"))
    func directIORejectsUnwritableDirectory() {
        let e = #expect(throws: MemWallError.self) { try DirectIOProbe.probe(directory: "/proc") }
        #expect(e?.code == .invalidArgument)
    }

    @Test func rdmaProbeAgreesWithSysfs() {
        let p = RDMAProbe.probe()
        let sysfs = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/infiniband")) ?? []
        #expect(Set(p.devices.map(\.name)) == Set(sysfs))
        if p.devices.isEmpty {
            #expect(!p.hasActivePort)
        }
    }
}

@Suite("memwall capabilities: output and bad input")
struct CapabilitiesCommandTests {
    @Test func jsonIsStableAndComplete() throws {
        let bin = try #require(memwallBinary, "build the memwall product first (make test does)")
        let r = try run(bin, ["capabilities", "--json", "--dir", NSTemporaryDirectory()])
        #expect(r.status == 0, "\(r.stderr)")
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(obj["schema"] as? String == "memwall.capabilities/1")
        for key in ["numa", "ioURing", "directIO", "rdma", "hwloc", "decisions", "kernel"] {
            #expect(obj[key] != nil, "missing \(key)")
        }
        let decisions = try #require(obj["decisions"] as? [String: [String: String]])
        for path in ["memory", "storage", "remote"] {
            let mode = decisions[path]?["mode"]
            #expect(mode == "hardware" || mode == "emulation", "\(path): \(String(describing: mode))")
        }
    }

    @Test func textLabelsEmulation() throws {
        let bin = try #require(memwallBinary)
        let r = try run(bin, ["capabilities"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("MemWall will use:"))
        if RDMAProbe.probe().devices.isEmpty {
            #expect(r.stdout.contains("EMULATION  TCP"), "without RDMA devices the remote path must say it is emulated")
        }
    }

    @Test(arguments: [
        (["capabilities", "--dir", "/nonexistent/x"], "does not exist"),
        (["capabilities", "--dir", "/etc/hostname"], "expected a directory"),
        (["frobnicate"], "Unexpected argument 'frobnicate'"),
    ])
    func badInputIsOneClearErrorAndNonZeroExit(_ args: [String], _ expected: String) throws {
        let bin = try #require(memwallBinary)
        let r = try run(bin, args)
        #expect(r.status != 0)
        #expect(r.stderr.contains(expected), "stderr was: \(r.stderr)")
        #expect(!r.stderr.contains("Fatal error"), "bad input must never crash")
    }
}
