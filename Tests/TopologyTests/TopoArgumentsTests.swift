import ArgumentParser
import Testing
@testable import memwall

/// `memwall topo` reads plain invocations without swift-argument-parser
/// (`TopoOptions(plainArguments:)`); these tests hold that path to the parser's result.
@Suite struct TopoArgumentsTests {
    @Test("plain invocations read as the parser reads them", arguments: [
        ["topo"],
        ["topo", "--json"],
        ["topo", "--fsroot", "/tmp/snapshot"],
        ["topo", "--xml", "host.xml", "--json", "--svg", "host.svg"],
        ["topo", "--svg", "picture.svg", "--synthetic", "pack:2 numa:2 core:4 pu:1", "--json"],
        ["topo", "--xml", "help"],
        ["topo", "--fsroot", "dir with spaces/and=equals"],
    ])
    func sameAsParser(_ arguments: [String]) throws {
        let plain = try #require(TopoOptions(plainArguments: arguments))
        let parsed = try #require(try MemWall.parseAsRoot(arguments) as? TopoCommand)
        #expect(plain == parsed.options)
    }

    @Test("everything else is left to the parser", arguments: [
        [],
        ["bench"],
        ["--version"],
        ["help", "topo"],
        ["topo", "--help"],
        ["topo", "-h"],
        ["topo", "--version"],
        ["topo", "help"],
        ["topo", "--xml"],
        ["topo", "--xml=host.xml"],
        ["topo", "--xml", "a.xml", "--xml", "b.xml"],
        ["topo", "--json", "--json"],
        ["topo", "--xml", "a.xml", "--fsroot", "/tmp/snapshot"],
        ["topo", "--fsroot", "/tmp/snapshot", "--synthetic", "pu:2"],
        ["topo", "--xml", "-a.xml"],
        ["topo", "--xml", ""],
        ["topo", "--"],
        ["topo", "extra"],
        ["topo", "--generate-completion-script", "bash"],
        ["--generate-completion-script", "bash"],
    ])
    func othersGoToParser(_ arguments: [String]) {
        #expect(TopoOptions(plainArguments: arguments) == nil)
    }

    /// Conflicting inputs fall back, so the user still gets the parser's usage error.
    @Test func conflictingInputsGetTheParsersError() {
        #expect(throws: (any Error).self) {
            try MemWall.parseAsRoot(["topo", "--xml", "a.xml", "--fsroot", "/tmp/snapshot"])
        }
    }
}
