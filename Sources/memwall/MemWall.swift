import ArgumentParser

/// `memwall`: topology discovery, microbenchmarks and KV-cache tools for
/// inference hosts with CXL memory, RDMA NICs and NVMe.
@main
struct MemWall: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memwall",
        abstract: "Move data across an inference host's memory hierarchy: DRAM, CXL, NVMe, RDMA.",
        version: "0.1.0",
        subcommands: [
            CapabilitiesCommand.self, BenchRDMACommand.self, RDMAServeCommand.self,
        ]
    )
}
