import KVPlacement
@testable import KVPool
import MemWallCore
import Testing
import Transport
