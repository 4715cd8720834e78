// libFuzzer entry point: the input is an hwloc XML file, loaded the way
// `memwall topo --xml FILE` loads it. Loading is total (an error or a
// topology), bounded in memory (libFuzzer's -rss_limit_mb catches a blow-up),
// and a topology it returns has one node per OS index.
#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport
import MemWallCore
import Topology

/// One scratch file per process, rewritten for every input (hwloc reads XML from a path).
private let path: String = {
    let p = "/tmp/memwall-fuzz-xml-\(getpid()).xml"
    return p
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTopologyXML(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
    guard fd >= 0 else { return 0 }
    var done = 0
    while done < count {
        let n = write(fd, data + done, count - done)
        if n <= 0 { break }
        done += n
    }
    close(fd)
    guard let topology = try? Topology.load(.xml(path: path)) else { return 0 }
    let indexes = topology.nodes.map(\.osIndex)
    precondition(Set(indexes).count == indexes.count, "two nodes share an OS index: \(indexes)")
    for n in topology.nodes {
        precondition(n.osIndex >= 0 && n.osIndex < Topology.maximumObjectIndex, "node index \(n.osIndex)")
        if let c = n.capacity { precondition(c.rawValue >= 0) }
    }
    return 0
}

@_cdecl("FuzzTopologyXML_main")
public func fuzzTopologyXMLMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzTopologyXML)
}
