"""The README's tour, as a newcomer saves it: `tour.py` runs and prints what
the README shows, its two test files (`test_tour.py`, the exactly-once
`test_shop.py`) pass as written, in a process of their own, and the second
workflow (`digest.py`) runs as the README says."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def block_after(marker: str) -> str:
    """The first ```python block after `marker` in the README, unindented."""
    text = README.read_text()
    rest = text[text.index(marker):]
    start = rest.index("```python\n") + len("```python\n")
    indent = rest[:start].rsplit("\n", 2)[-2].index("```")
    end = rest.index("\n" + " " * indent + "```\n", start)
    return textwrap.dedent(rest[start:end + 1])


def test_the_tour_runs_as_the_readme_shows(tmp_path: Path) -> None:
    (tmp_path / "tour.py").write_text(block_after("Save this as `tour.py`"))
    runs = [subprocess.run([sys.executable, "tour.py"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    console = "".join(f"$ python tour.py\n{run.stdout}" for run in runs)
    assert console in README.read_text(), console


def test_the_readmes_test_files_pass_as_written(tmp_path: Path) -> None:
    (tmp_path / "tour.py").write_text(block_after("Save this as `tour.py`"))
    (tmp_path / "test_tour.py").write_text(block_after("saved next to it as `test_tour.py`"))
    (tmp_path / "test_shop.py").write_text(block_after("saved as `test_shop.py`"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "test_tour.py", "test_shop.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


def test_the_second_workflow_runs_as_the_readme_says(tmp_path: Path) -> None:
    (tmp_path / "digest.py").write_text(block_after("Save it as `digest.py`"))
    done = subprocess.run([sys.executable, "-m", "flowledger.cli", "--store",
                           "sqlite:///digest.db", "run", "digest.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout
