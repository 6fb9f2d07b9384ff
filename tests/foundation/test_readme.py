"""The README's Python blocks run as written, in order, in one namespace (a later block may use
what an earlier one made, as a reader following along would) — from a scratch directory that
sees the repository's examples, so `runs/` and `model.pt` land there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.slow


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_the_block_finder_finds_python_blocks_only() -> None:
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a\n"]


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch, ml100k) -> None:
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    assert (tmp_path / "runs" / "ml100k" / "model" / "manifest.json").exists()
    assert (tmp_path / "model.pt").stat().st_size > 0
