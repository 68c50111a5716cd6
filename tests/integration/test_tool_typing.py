"""A user's tools keep their signatures under `mypy --strict` (issue 10, Types).

`typed_user_code/user_tool.py` is written as a user writes a tool and a
workflow: it must check clean. A second snippet calls its methods wrongly: each
wrong call must be reported, which it would not be if `@fl.read` or
`@fl.mutator` handed back an untyped callable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy comes with the dev extra")

USER_TOOL = Path(__file__).parent / "typed_user_code" / "user_tool.py"

# Each wrong line is marked with the error code mypy must give it.
WRONG_CALLS = '''\
from user_tool import Ledger

ledger = Ledger()
ledger.append("k", "three")  # expect: arg-type
ledger.append("k")  # expect: call-arg
ledger.find()  # expect: call-arg
ledger.drop("k", 1)  # expect: call-arg
ledger.clear(all=True)  # expect: call-arg
name: str = ledger.append("k", 3)  # expect: assignment
reveal_type(ledger.append)  # expect: revealed
'''


def _mypy_strict(workdir: Path, *files: str) -> subprocess.CompletedProcess[str]:
    # Run where no configuration of ours is found (`--config-file=`): flowledger
    # is seen as an installed package, as a user's project sees it.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file=", "--no-error-summary",
         "--cache-dir", str(workdir / ".mypy_cache"), *files],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )


def test_tool_methods_keep_their_signatures_under_mypy_strict(tmp_path: Path) -> None:
    shutil.copy(USER_TOOL, tmp_path / "user_tool.py")
    (tmp_path / "wrong_calls.py").write_text(WRONG_CALLS)

    result = _mypy_strict(tmp_path, "user_tool.py", "wrong_calls.py")
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr

    # The user's own code checks clean.
    assert not [line for line in lines if line.startswith("user_tool.py")], result.stdout

    # Every wrong call is reported, on its line, with its code; nothing else is.
    expected: dict[int, set[str]] = {}
    for number, text in enumerate(WRONG_CALLS.splitlines(), start=1):
        mark = re.search(r"# expect: ([\w-]+)$", text)
        if mark and mark.group(1) != "revealed":
            expected[number] = {mark.group(1)}
    reported: dict[int, set[str]] = {}
    for line in lines:
        found = re.match(r"wrong_calls\.py:(\d+): error: .*\[([\w-]+)\]$", line)
        if found:
            reported.setdefault(int(found.group(1)), set()).add(found.group(2))
        else:
            assert re.match(r"wrong_calls\.py:\d+: note: ", line), (line, result.stdout)
    assert reported == expected, result.stdout

    # The mutator is seen with the user's signature, not as `Any`.
    revealed = [line for line in lines if "Revealed type is" in line]
    assert len(revealed) == 1, result.stdout
    assert re.search(r"key: (builtins\.)?str, amount: (builtins\.)?int\) -> (builtins\.)?int",
                     revealed[0]), revealed[0]
