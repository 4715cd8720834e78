// libFuzzer entry point: the first byte picks the tokens per block (1…64, so
// short lines still make blocks), the rest is trace text. Parsing is total, and
// whatever it accepts replays through a small two-tier cache without breaking
// a structural invariant of the block index.
import KVPlacement
import FuzzSupport
import MemWallCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTrace(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let blockTokens = 1 + Int(data[0] % 64)
    let text = UnsafeBufferPointer(start: data + 1, count: count - 1)
    guard let trace = try? MooncakeTrace.parse(text, source: "fuzz", blockTokens: blockTokens) else { return 0 }
    for r in trace.requests {
        precondition(r.blockIDs.count == (r.inputLength + blockTokens - 1) / blockTokens)
    }
    // Bound the replay's work: a long accepted trace was already checked above.
    guard trace.blockReferences <= 4096,
          let index = try? BlockIndex(tiers: [TierSpec(name: "dram", kind: .dram, capacityBlocks: 4),
                                              TierSpec(name: "far", kind: .farMemory, capacityBlocks: 8)],
                                      policy: .lru, blockSize: blockTokens) else { return 0 }
    for r in trace.requests {
        guard let a = try? index.admit(r.blockIDs) else { continue }
        do { try index.release(a.blocks) } catch {
            preconditionFailure("the first release of an admission was refused: \(error.message)")
        }
        if let broken = index.invariantViolation() {
            preconditionFailure("accepted trace breaks the block index: \(broken)")
        }
    }
    return 0
}

@_cdecl("FuzzTrace_main")
public func fuzzTraceMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzTrace)
}
