import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// `memwall`: topology discovery, microbenchmarks and KV-cache tools for
/// inference hosts with CXL memory, RDMA NICs and NVMe.
@main
struct MemWall: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memwall",
        abstract: "Move data across an inference host's memory hierarchy: DRAM, CXL, NVMe, RDMA.",
        version: "0.1.0",
        subcommands: [
            CapabilitiesCommand.self,
            TopoCommand.self,
            BenchCommand.self,
            KVCommand.self,
            PoolCommand.self,
            RDMAServeCommand.self,
        ]
    )

    /// Runs the chosen subcommand. MemWall's own errors print as one
    /// `error: …` line with exit status 1; argument errors keep the parser's
    /// message and usage (exit status 64). Output that could not be written
    /// is an error too (see ``Output/finish()``); a negative number after an
    /// option is read as its value (see ``CommandLineWords``).
    ///
    /// Plain `memwall topo …` invocations skip the parser (see
    /// ``TopoOptions/init(plainArguments:)``): its first parse would be a tenth
    /// of the command's run time.
    static func main() async {
        do {
            let words = CommandLineWords.normalized(Array(CommandLine.arguments.dropFirst()))
            if let topo = TopoOptions(plainArguments: words) {
                try topo.run()
                try Output.finish()
                return
            }
            var command = try parseAsRoot(words)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            try Output.finish()
        } catch let error as MemWallError {
            StandardError.write("error: \(error)\n")
            Glibc.exit(1)
        } catch {
            exit(withError: error)
        }
    }
}
