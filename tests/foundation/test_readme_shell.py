"""The README's shell blocks run as written, in order, in one scratch checkout — as a reader
following along would: a block may use what an earlier one made (`runs/…`), servers started
with `&` are stopped by the block's own `kill $!; wait`.

What the harness changes, and only that: the port 8080 becomes a free one (the machine may use
8080; `serve` without `--port` reads it from $STREAMREC_PORT), `curl` fails on an HTTP error
(as `curl -f`), and the block runs under `bash -e`, so a failing line fails the test. A block
preceded by `<!-- readme-test: skip (why) -->` needs something a test machine does not have or
takes minutes (the comment says which and where it is tested); its `streamrec` lines are still
parsed by the real command line, so an option or command that no longer exists fails here too.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from streamrec.cli import app

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(
    r"^(?:(<!-- readme-test: skip \(([^)]*)\) -->)\n)?```bash\n(.*?)^```", re.S | re.M
)

pytestmark = pytest.mark.slow


def shell_blocks(text: str) -> list[tuple[str, str | None]]:
    """(block, why it is skipped or None), in README order."""
    return [(m.group(3), m.group(2)) for m in BLOCK.finditer(text)]


def command_lines(block: str) -> list[list[str]]:
    """The `streamrec` invocations of a block as argument lists (continuations joined,
    comments, `&` and `torchrun …  -m` prefixes dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[-1] == "&":
            words = words[:-1]
        if words[:1] == ["torchrun"] and "streamrec" in words:
            words = words[words.index("streamrec"):]
        if words[:1] == ["streamrec"]:
            out.append(words[1:])
    return out


def parse_only(args: list[str]) -> None:
    """Parse a command line with the real CLI, down to its sub-command, without running it."""
    command = typer.main.get_command(app)
    context = command.make_context("streamrec", list(args))
    while hasattr(command, "commands"):  # a group: resolve its sub-command, parse the rest
        pending = [*getattr(context, "_protected_args", []), *context.args]
        name, command, rest = command.resolve_command(context, pending)
        context = command.make_context(name, rest, parent=context)


def test_the_block_finder_and_the_parser_see_what_a_reader_sees() -> None:
    text = ("```bash\nstreamrec eval runs/x --json  # note\n```\n"
            "<!-- readme-test: skip (needs kafka) -->\n```bash\n"
            "torchrun --nproc_per_node 2 -m streamrec train a.yaml \\\n    --out r &\n```\n")
    blocks = shell_blocks(text)
    assert [why for _, why in blocks] == [None, "needs kafka"]
    assert command_lines(blocks[1][0]) == [["train", "a.yaml", "--out", "r"]]
    parse_only(["eval", "runs/x", "--json"])
    with pytest.raises(Exception, match="No such option"):
        parse_only(["data", "convert", "a.tsv", "--outt", "b"])


def test_every_streamrec_line_of_the_readme_parses() -> None:
    blocks = shell_blocks((REPO / "README.md").read_text())
    lines = [args for block, _ in blocks for args in command_lines(block)]
    assert len(lines) >= 30
    for args in lines:
        parse_only(args)  # raises click's UsageError naming the bad option or command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_shell_block_of_the_readme_runs(tmp_path, data_dir, ml100k) -> None:
    blocks = shell_blocks((REPO / "README.md").read_text())
    runnable = [block for block, why in blocks if why is None]
    assert len(runnable) >= 5 and all(why for _, why in blocks if why is not None)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("examples", "benchmarks", "docs"):
        (checkout / name).symlink_to(REPO / name)
    (tmp_path / "shared").symlink_to(data_dir.parent)  # ../shared/data, as beside a checkout
    port = str(_free_port())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "STREAMREC_PORT": port,  # `serve` without --port
    }
    prelude = "curl() { command curl --fail-with-body \"$@\"; }\n"
    for i, block in enumerate(runnable, 1):
        script = prelude + block.replace("8080", port)
        log = tmp_path / f"block{i}.log"  # a file, not a pipe: a server left running holds it
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", script], cwd=checkout, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                proc.wait(timeout=900)
            finally:
                try:  # a server that a failed block left running
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        output = log.read_text()
        assert proc.returncode == 0, f"README shell block {i} failed:\n{block}\n{output[-4000:]}"
        # the examples are quiet: no traceback, no training-health warning
        assert "Traceback" not in output and "health: " not in output, output[-4000:]
    for made in ("criteo/model", "ratings/model", "ranker/model", "loop/deltas",
                 "online/status.json"):
        assert (checkout / "runs" / made).exists(), made
