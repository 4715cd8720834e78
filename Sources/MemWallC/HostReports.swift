import CMemWallABI
import HostCapabilities
import MemWallCore
import Topology

extension MemWallError.Code {
    /// A failure with no better code (an encoder error); `MW_E_INTERNAL` across the C ABI.
    static let internalFailure = MemWallError.Code(rawValue: "internal")
}

/// Longest path or description the report functions accept.
private let pathLimit = 4096

@c @implementation
public func mw_capabilities_json(_ directory: UnsafePointer<CChar>?,
                                 _ jsonOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    ABI.run("mw_capabilities_json") { () throws(MemWallError) in
        let out = try ABI.required(jsonOut, "json_out")
        let dir = directory == nil ? "." : try ABI.string(directory, "directory", limit: pathLimit)
        let text: String
        do {
            text = try CapabilitiesReport.probe(directory: dir).jsonText()
        } catch let error as MemWallError {
            throw error
        } catch {
            throw MemWallError(.internalFailure, "cannot encode the capabilities report: \(error)")
        }
        try ReturnedStrings.hand(text, to: out)
    }
}

@c @implementation
public func mw_topology_json(_ source: UnsafePointer<CChar>?,
                             _ jsonOut: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    ABI.run("mw_topology_json") { () throws(MemWallError) in
        let out = try ABI.required(jsonOut, "json_out")
        let text = source == nil ? "" : try ABI.string(source, "source", limit: pathLimit)
        let topology = try Topology.load(try topologySource(text))
        try ReturnedStrings.hand(topology.json().serialized(), to: out)
    }
}

/// `""` → live; `xml:PATH`, `fsroot:DIR`, `synthetic:DESCRIPTION` → the CLI's alternatives.
private func topologySource(_ text: String) throws(MemWallError) -> TopologySource {
    if text.isEmpty { return .live }
    guard let colon = text.firstIndex(of: ":") else {
        throw .invalid("topology source", text, expected: "\"\" (live), xml:PATH, fsroot:DIR or synthetic:DESCRIPTION")
    }
    let kind = text[..<colon], value = String(text[text.index(after: colon)...])
    guard !value.isEmpty else {
        throw .invalid("topology source", text, expected: "a path or description after '\(kind):'")
    }
    switch kind {
    case "xml": return .xml(path: value)
    case "fsroot": return .fsroot(path: value)
    case "synthetic": return .synthetic(value)
    default:
        throw .invalid("topology source", text, expected: "\"\" (live), xml:PATH, fsroot:DIR or synthetic:DESCRIPTION")
    }
}
