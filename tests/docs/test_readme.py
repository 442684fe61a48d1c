"""The README's code blocks run as they stand, and its public API table is engine.__all__.

Fence languages say what a block is:
- ```python: run, each block in a fresh interpreter, from a scratch folder that sees the repository's
  configs/ and hubconf.py (so files a block writes land there, not in the repository).
- ```bash: shell commands that install packages, launch multi-process runs or train for minutes; they
  are not run here. What they run is tested where it lives (tests/engine/test_train.py, test_demo.py,
  tests/distributed/, tests/data/), and `make test` itself is what CI runs.
- ```text: output or layout listings, nothing to run.
Any other fence language (or none) fails the test, so a new block has to say which kind it is.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
KINDS = {"python", "bash", "text"}


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number of the opening fence) of every fenced block."""
    blocks, lang, start, lines = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1), n, []
        elif line.startswith("```") and lang is not None:
            blocks.append((lang, "\n".join(lines) + "\n", start))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"README.md: the block opened at line {start} is never closed"
    return blocks


BLOCKS = code_blocks(README.read_text())
PYTHON = [(code, line) for lang, code, line in BLOCKS if lang == "python"]


def test_every_block_says_what_it_is():
    bad = [(line, lang) for lang, _, line in BLOCKS if lang not in KINDS]
    assert not bad, f"README.md blocks with a fence language outside {sorted(KINDS)} (line, language): {bad}"
    assert PYTHON, "README.md has no python block to run"


@pytest.mark.parametrize("code,line", PYTHON, ids=[f"line{line}" for _, line in PYTHON])
def test_python_block_runs(code, line, tmp_path):
    for name in ("configs", "hubconf.py"):   # what a block may use from a clone, read-only
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"README.md block at line {line} failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"


def test_api_table_is_engine_all():
    import engine
    text = README.read_text()
    section = text[text.index("## Using it as a library"):]
    section = section[:section.index("\n## ", 3)]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    listed = {name for r in rows for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", r.split("|")[1])}
    assert listed == set(engine.__all__), (f"README API table vs engine.__all__: only in the README "
                                           f"{sorted(listed - set(engine.__all__))}, only in engine.__all__ "
                                           f"{sorted(set(engine.__all__) - listed)}")
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
