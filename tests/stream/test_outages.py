"""Services that go away: a Redis restart is waited out by the running trainer (nothing lost,
nothing repeated, no restart of the trainer), brokers gone for longer than the service timeout
end the run with a checkpoint and exit 4, and a command that cannot reach its service at all
says so in one line within its timeout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from streamrec.data.movielens import load_ml_latest_small

from .conftest import _service_missing
from .test_online import CONFIG

BAD = b"{not json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _streamrec(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamrec", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


class RedisServer:
    """redis-server on a fixed loopback port with an fsync-always append-only file, so a
    SIGKILL loses nothing Redis acknowledged (what an operator runs for a trainer's stream)."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            _service_missing("redis-server")
        self.folder, self.port = folder, _free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        _wait_for(lambda: _answers(client), 20, "redis-server")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError):
        return False


def _entries_read(port: int) -> int:
    """Entries Redis has delivered to the trainer's consumer group."""
    import redis

    groups = redis.Redis(port=port).xinfo_groups("events")
    return int(groups[0]["entries-read"] or 0) if groups else 0


def _produce_redis(port: int, values: list[bytes]) -> list[str]:
    """→ the entry id of each value."""
    import redis

    client = redis.Redis(port=port)
    return [client.xadd("events", {"data": v}).decode() for v in values]


def _values(ml_small_dir, start: int, n: int) -> tuple[list[bytes], set[int]]:
    rows = load_ml_latest_small(ml_small_dir).slice(start, n).to_pylist()
    bad = {i for i in range(n) if (start + i) % 9 == 0}
    return [BAD if i in bad else json.dumps(r).encode() for i, r in enumerate(rows)], bad


def test_a_redis_restart_is_waited_out_nothing_lost_nothing_repeated(tmp_path, ml_small_dir):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        cfg = tmp_path / "online.yaml"
        cfg.write_text(yaml.safe_dump(CONFIG))
        first, bad1 = _values(ml_small_dir, 0, 1500)
        ids = _produce_redis(server.port, first)
        run = tmp_path / "run"
        proc = _streamrec("online", str(cfg), "--source", f"redis://127.0.0.1:{server.port}/events",
                          "--out", str(run), "--stop-when-idle", "4", "--json")
        _wait_for(lambda: _entries_read(server.port) == 1500, 120, "the first half delivered")
        server.kill()  # SIGKILL while the trainer waits for more
        _wait_for(lambda: _status(run).get("source_unavailable") is not None, 30,
                  "source_unavailable in status.json")
        time.sleep(2)
        server.start()  # same port, same append-only file
        second, bad2 = _values(ml_small_dir, 1500, 1500)
        ids += _produce_redis(server.port, second)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "source unavailable" in err and "source available again" in err
        status = json.loads(out)
        bad_ids = {ids[i] for i in bad1} | {ids[1500 + i] for i in bad2}
        assert status["events_consumed"] == 3000
        assert status["events_trained"] == 3000 - len(bad_ids)
        assert status["source_unavailable"] is None
        dead = [json.loads(line)["file"] for line in (run / "dead_letter.jsonl").open()]
        assert sorted(dead) == sorted(f"entry {i}" for i in bad_ids)  # each once
        import redis

        pending = redis.Redis(port=server.port).xpending("events", "default")["pending"]
        assert pending == 0  # every entry acknowledged once its checkpoint was on disk
    finally:
        server.stop()


def test_brokers_gone_longer_than_the_timeout_end_the_run_with_a_checkpoint(
    tmp_path, ml_small_dir
):
    pytest.importorskip("confluent_kafka")
    cluster = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time, confluent_kafka as ck\n"
            "c = ck.Producer({'test.mock.num.brokers': 1})\n"
            "b = c.list_topics(timeout=10).brokers.values()\n"
            "print(','.join(f'{x.host}:{x.port}' for x in b), flush=True)\n"
            "time.sleep(600)\n")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        brokers = cluster.stdout.readline().strip()
        values, bad = _values(ml_small_dir, 0, 1000)
        import confluent_kafka as ck

        producer = ck.Producer({"bootstrap.servers": brokers})
        for v in values:
            producer.produce("events", value=v)
        assert producer.flush(30) == 0
        cfg = tmp_path / "online.yaml"
        cfg.write_text(yaml.safe_dump(CONFIG))
        run = tmp_path / "run"
        proc = _streamrec("online", str(cfg), "--source", f"kafka://{brokers}/events", "--out",
                          str(run), "--service-timeout", "4")
        _wait_for(lambda: _status(run).get("events_consumed") == 1000, 120, "every event")
        cluster.kill()
        cluster.wait()
        gone = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 4, err
        assert time.monotonic() - gone < 40
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and brokers in errors[0] and "unavailable for" in errors[0]
        assert "Traceback" not in err
        status = _status(run)
        assert status["source_unavailable"]["since"] > 0
        assert status["events_trained"] == 1000 - len(bad)
        from streamrec.store import read_manifest

        saved = read_manifest(run / "checkpoint").online
        assert saved.events_trained == 1000 - len(bad)  # a rerun continues from here
    finally:
        cluster.kill()


@pytest.mark.parametrize("scheme", ["kafka", "redis"])
def test_a_service_nobody_answers_is_one_line_and_exit_4_within_the_timeout(
    tmp_path, ml_small_dir, scheme
):
    if scheme == "kafka":
        pytest.importorskip("confluent_kafka")
    url = f"{scheme}://127.0.0.1:{_free_port()}/events"
    cfg = tmp_path / "online.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    ratings = Path(ml_small_dir) / "ratings.csv"
    for args in (
        ["stream", "produce", str(ratings), "--format", "ml-latest-small", "--to", url],
        ["online", str(cfg), "--source", url, "--out", str(tmp_path / "run")],
    ):
        started = time.monotonic()
        proc = _streamrec(*args, "--service-timeout", "3", env={**os.environ})
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 4, err
        assert time.monotonic() - started < 20
        lines = [line for line in err.splitlines() if not line.startswith("%")]
        assert len(lines) == 1 and lines[0].startswith("error:") and "127.0.0.1" in lines[0]
