"""The package's non-KV surface: loading, host reports, keys, regions and errors."""

from __future__ import annotations

import json
import subprocess
import threading

import numpy as np
import pytest

import memwall


def test_library_loads_with_matching_abi() -> None:
    assert memwall.abi_version() == memwall._native.ABI_VERSION == 1
    assert memwall.library_version() == memwall.__version__


def test_library_comes_from_the_package_when_it_carries_one() -> None:
    from pathlib import Path
    inside = Path(memwall.__file__).parent / "libmemwall.so"
    if not inside.exists():
        pytest.skip("this install carries no libmemwall.so (a source install using the system's)")
    assert Path(memwall.library_path()).resolve() == inside.resolve()


def test_capabilities_is_the_cli_document(cli: str, scratch) -> None:
    mine = memwall.capabilities(str(scratch))
    theirs = json.loads(subprocess.run([cli, "capabilities", "--json", "--dir", str(scratch)],
                                       check=True, capture_output=True, text=True).stdout)
    assert mine["schema"] == "memwall.capabilities/1"
    # Same keys and decisions; free-memory figures may differ between the two probes.
    assert sorted(mine) == sorted(theirs)
    assert mine["decisions"].keys() == theirs["decisions"].keys()
    assert [d["mode"] for d in mine["decisions"].values()] == [d["mode"] for d in theirs["decisions"].values()]
    assert mine["directIO"] == theirs["directIO"]


def test_topology_is_the_cli_document(cli: str) -> None:
    description = "pack:2 numa:2 core:2 pu:1"
    mine = memwall.topology("synthetic:" + description)
    theirs = json.loads(subprocess.run([cli, "topo", "--json", "--synthetic", description],
                                       check=True, capture_output=True, text=True).stdout)
    assert mine == theirs
    assert mine["schema"] == "memwall.topology/1"
    assert len(mine["nodes"]) == 4


def test_live_topology_has_nodes() -> None:
    assert memwall.topology()["nodes"]


def test_report_errors_are_memwall_errors() -> None:
    with pytest.raises(memwall.NotFoundError, match="/nonexistent/memwall"):
        memwall.capabilities("/nonexistent/memwall")
    with pytest.raises(memwall.InvalidArgumentError, match="xml:PATH") as e:
        memwall.topology("floppy:/dev/fd0")
    assert e.value.code == "invalid-argument" and e.value.status == -2
    assert isinstance(e.value, memwall.Error) and isinstance(e.value, ValueError)
    with pytest.raises(memwall.NotFoundError):
        memwall.topology("xml:/nonexistent.xml")


def test_chain_keys_chain_and_match_the_c_program() -> None:
    tokens = list(range(1000, 1040))
    keys = memwall.chain_keys(tokens, block_tokens=16, extra=42, partial=True)
    # The C test prints these for the same input (Tests/c/abi_test.c); both come from BlockKey.chained.
    assert [hex(k) for k in keys] == ["0x98b9ad3ca1eafa25", "0x383aaec8095b8836", "0x2aa7fb1888b7647c"]
    full = memwall.chain_keys(tokens, block_tokens=16, extra=42)
    assert list(full) == list(keys[:2])
    assert list(memwall.chain_keys(tokens[16:32], extra=42, parent=int(keys[0]))) == [keys[1]]
    assert keys.dtype == np.uint64


def test_chain_keys_depend_on_extra_and_on_every_earlier_token() -> None:
    tokens = np.arange(64, dtype=np.uint32)
    a = memwall.chain_keys(tokens, extra=b"model-a")
    b = memwall.chain_keys(tokens, extra=b"model-b")
    assert len(a) == 4 and not set(a) & set(b)
    changed = tokens.copy()
    changed[0] = 999
    c = memwall.chain_keys(changed, extra=b"model-a")
    assert all(x != y for x, y in zip(a, c)), "a change in block 0 must change every later key"
    assert memwall.extra_key("model-a") == memwall.extra_key(b"model-a") != memwall.extra_key(b"")
    assert memwall.chain_keys([], extra=b"x").size == 0
    assert memwall.chain_keys(range(15)).size == 0


@pytest.mark.parametrize("bad, message", [
    ([-1, 2], "0 ... 2\\*\\*32-1"),
    ([2 ** 32], "0 ... 2\\*\\*32-1"),
    ([[1, 2]], "one-dimensional"),
    ([1.5], "integers"),
])
def test_chain_keys_refuse_bad_tokens(bad, message) -> None:
    with pytest.raises(memwall.InvalidArgumentError, match=message):
        memwall.chain_keys(bad)


def test_chain_keys_refuse_bad_block_size_and_extra() -> None:
    with pytest.raises(memwall.InvalidArgumentError, match="block_tokens"):
        memwall.chain_keys([1, 2], block_tokens=0)
    with pytest.raises(memwall.InvalidArgumentError, match="extra"):
        memwall.chain_keys([1, 2], extra=3.5)  # type: ignore[arg-type]
    with pytest.raises(memwall.InvalidArgumentError, match="2\\*\\*64"):
        memwall.extra_key(-1)


def test_region_allocate_view_close() -> None:
    region = memwall.Region.allocate(10_000)
    assert region.nbytes == 12_288 and region.address % 4096 == 0
    view = region.array((3, 4096))
    view[:] = 0xA5
    assert int(view.sum()) == 0xA5 * 12_288
    del view
    region.close()
    assert region.closed
    with pytest.raises(memwall.MisuseError, match="closed already"):
        region.close()
    with pytest.raises(memwall.MisuseError):
        region.node()


def test_region_on_the_far_node() -> None:
    region = memwall.Region.allocate(1 << 20, "far", huge_pages=True)
    node, emulated = region.node()
    assert node >= 0
    region.close()


def test_region_view_keeps_memory_alive() -> None:
    view = memwall.Region.allocate(8192).array()
    # The Region object is gone from our hands; the view still owns it.
    view[:] = 1
    assert int(view.sum()) == 8192


@pytest.mark.parametrize("nbytes, node, error, message", [
    (0, None, memwall.InvalidArgumentError, "positive"),
    (4096, 4096, memwall.NotFoundError, "valid nodes"),
    (4096, -3, memwall.InvalidArgumentError, "node"),
    (4096, "near", memwall.InvalidArgumentError, "node"),
    (1 << 62, None, memwall.InvalidArgumentError, "bytes"),
])
def test_region_allocate_refuses(nbytes, node, error, message) -> None:
    with pytest.raises(error, match=message):
        memwall.Region.allocate(nbytes, node)


def test_region_adopts_numpy_without_copy() -> None:
    array = np.zeros(1 << 16, dtype=np.uint8)
    region = memwall.Region.adopt(array)
    assert region.address == array.ctypes.data and region.nbytes == array.nbytes
    region.close()
    with pytest.raises(memwall.InvalidArgumentError, match="read-only"):
        memwall.Region.adopt(np.frombuffer(b"x" * 4096, dtype=np.uint8))
    with pytest.raises(memwall.InvalidArgumentError, match="contiguous"):
        memwall.Region.adopt(np.zeros((64, 64), dtype=np.uint8)[:, ::2])


def test_handles_from_many_threads() -> None:
    errors: list = []

    def churn() -> None:
        try:
            for _ in range(200):
                r = memwall.Region.allocate(4096)
                handle = r.handle
                r.close()
                with pytest.raises(memwall.MisuseError):   # the raw handle, closed a second time
                    memwall._native.check(memwall._native.lib.mw_region_close(handle))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_forged_and_stale_handles_are_misuse_not_crashes() -> None:
    lib = memwall._native.lib
    for forged in (0x1234, 0x5200000001000001, 0xFFFFFFFFFFFFFFFF):
        with pytest.raises(memwall.MisuseError, match="not an open mw_region handle"):
            memwall._native.check(lib.mw_region_close(forged))
    with pytest.raises(memwall.InvalidArgumentError, match="NULL"):
        memwall._native.check(lib.mw_region_close(None))


def test_every_error_class_carries_code_and_status() -> None:
    from memwall.errors import _BY_STATUS, error_for
    for status, cls in _BY_STATUS.items():
        name = memwall._native.lib.mw_status_name(status).decode()
        assert cls.code == name, f"{cls.__name__} has code {cls.code}, the library calls {status} {name}"
        e = error_for(status, "what happened")
        assert isinstance(e, cls) and isinstance(e, memwall.Error) and e.message == "what happened"
