"""Fixtures the end-to-end CLI tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flowledger.engine.faults import CRASH_EXIT_CODE
from tests.e2e.test_cli import EXAMPLE, flowledger


@pytest.fixture
def crashed(tmp_path: Path) -> Path:
    """The example killed right after its second ledger insert."""
    shutil.copytree(EXAMPLE.parent / "inbox", tmp_path / "inbox")
    result = flowledger("run", str(EXAMPLE), cwd=tmp_path,
                        env={"FLOWLEDGER_CRASH_AT": "after_call#2"})
    assert result.returncode == CRASH_EXIT_CODE
    return tmp_path
