"""Shared fixtures. The package under test is the one installed in the environment (make
test installs ./python with the freshly built libmemwall inside it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

import memwall


def memwall_cli() -> Optional[str]:
    """The memwall executable of the same build ($MEMWALL_CLI, set by scripts/test-python)."""
    path = os.environ.get("MEMWALL_CLI")
    if path and os.access(path, os.X_OK):
        return path
    return shutil.which("memwall")


@pytest.fixture
def cli() -> str:
    path = memwall_cli()
    if path is None:
        pytest.skip("the memwall executable is not built or not on PATH (set MEMWALL_CLI)")
    return path


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory on a real filesystem (O_DIRECT needs one; tmpfs refuses it)."""
    base = Path(os.environ.get("MEMWALL_TEST_DIR", "/var/tmp"))
    d = base / f"memwall-pytest-{os.getpid()}-{tmp_path.name}"
    d.mkdir(parents=True, exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def kv_available() -> bool:
    return "mw_kv_open" not in memwall._native.missing


requires_kv = pytest.mark.skipif(not kv_available(),
                                 reason="the loaded libmemwall has no KV cache (mw_kv_open missing)")
