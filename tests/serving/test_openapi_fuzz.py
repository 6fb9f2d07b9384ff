"""Schemathesis against a real server: every request it generates from GET /openapi.json (the
ranker's, the retriever's, feedback and the admin bodies, positive and negative) must be
answered as the document says — no 5xx, no schema-valid body refused, no undocumented
status."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TOKEN = "s3cret"  # the token conftest.Server recognises

pytestmark = pytest.mark.slow


def test_the_served_api_matches_its_openapi_document(
    trained_run, retriever_run, start_server, tmp_path
):
    server = start_server(
        trained_run, "--retriever", str(retriever_run), "--token", TOKEN,
        "--actions", str(tmp_path / "actions"), "--log-impressions", str(tmp_path / "imps"),
    )
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "all",
            "--max-examples",
            "150",
            "--seed",
            "1",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its cassettes and caches stay out of the repository
        timeout=600,
    )
    report = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", report)
    assert done.returncode == 0, report[-6000:]
    assert generated and int(generated.group(1)) >= 1000, report[-2000:]
