// libFuzzer entry point: the export table, the intra-host offer that carries
// one, and the socket exchange's fixed heads. Decoding is total, and a table or
// an offer that decodes re-encodes to exactly the same bytes (each format has
// one spelling, so nothing is skipped or guessed).
import FuzzSupport
import MemWallCore
@testable import RDMATransport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExportTable(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: count)
    if let table = try? ExportTableCodec.decode(bytes, peer: "fuzz") {
        precondition(table.count <= ExportTableCodec.maximumEntries)
        let again = ExportTableCodec.encode(table)
        precondition(again.elementsEqual(bytes), "decode/encode is not the identity")
    }
    if let offer = try? IntraHostOffer.decode(bytes, peer: "fuzz") {
        precondition(offer.identity.pid >= 1 && offer.identity.pid <= IntraHostOffer.maximumPID && offer.identity.bootID.count == 16)
        precondition(offer.challengeAddress != 0 && offer.exports.allSatisfy { $0.address != 0 })
        precondition(Set(offer.exports.map(\.key)).count == offer.exports.count, "two exports share a key")
        precondition(offer.encode().elementsEqual(bytes), "offer decode/encode is not the identity")
    }
    if count >= RDMAExchange.helloSize {
        let hello = UnsafeRawBufferPointer(rebasing: bytes[0 ..< RDMAExchange.helloSize])
        if let e = try? RDMAExchange.decodeHello(hello, peer: "fuzz") {
            precondition(e.queuePairNumber < 1 << 24 && e.packetSequenceNumber < 1 << 24 && e.gid.count == 16)
        }
    }
    if count >= RDMAExchange.helloSize + 4 {
        let head = UnsafeRawBufferPointer(rebasing: bytes[0 ..< RDMAExchange.helloSize + 4])
        if let (_, length) = try? RDMAExchange.decodeReplyHead(head, peer: "fuzz") {
            precondition(length >= 0 && length <= ExportTableCodec.maximumBytes)
        }
    }
    return 0
}

@_cdecl("FuzzExportTable_main")
public func fuzzExportTableMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzExportTable)
}
