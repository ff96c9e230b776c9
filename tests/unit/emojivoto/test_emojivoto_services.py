"""emoji, voting, web and vote-bot as real processes on loopback, talking to each other."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from emojivoto import catalog

pytestmark = pytest.mark.timeout(60)

LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class Service:
    module: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Processes:
    """Starts emojivoto modules as subprocesses and stops every one of them, also on failure."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._started: list[Service] = []

    def spawn(self, module: str, **env: str) -> Service:
        log = self._logs / f"{module}-{len(self._started)}.log"
        full_env = {**os.environ, "BIND_ADDRESS": "127.0.0.1", "PYTHONUNBUFFERED": "1", **env}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", f"emojivoto.{module}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        service = Service(module, popen, log)
        self._started.append(service)
        return service

    def wait_listening(self, service: Service, timeout_s: float = 15.0) -> Service:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = LISTENING.search(service.output())
            if found:
                service.port = int(found.group(2))
                return service
            if service.popen.poll() is not None:
                pytest.fail(f"{service.module} exited early:\n{service.output()}")
            time.sleep(0.05)
        pytest.fail(f"{service.module} did not start in {timeout_s} s:\n{service.output()}")

    def start(self, module: str, **env: str) -> Service:
        return self.wait_listening(self.spawn(module, **env))

    @staticmethod
    def stop(service: Service) -> int:
        if service.popen.poll() is None:
            service.popen.send_signal(signal.SIGTERM)
            try:
                service.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.popen.kill()
                service.popen.wait()
        return service.popen.returncode

    def stop_all(self) -> dict[str, int]:
        return {f"{s.module}[{i}]": self.stop(s) for i, s in enumerate(self._started)}


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    procs = Processes(tmp_path_factory.mktemp("emojivoto-logs"))
    try:
        yield procs
    finally:
        codes = procs.stop_all()
    # SIGTERM is the way Kubernetes stops a pod; each server must drain and exit cleanly.
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
def web(processes: Processes) -> Iterator[httpx.Client]:
    emoji = processes.spawn("emoji", GRPC_PORT="0")
    voting = processes.spawn("voting", GRPC_PORT="0")
    processes.wait_listening(emoji)
    processes.wait_listening(voting)
    web = processes.start(
        "web",
        WEB_PORT="0",
        EMOJISVC_HOST=f"127.0.0.1:{emoji.port}",
        VOTINGSVC_HOST=f"127.0.0.1:{voting.port}",
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=5.0) as client:
        yield client


def votes_on_leaderboard(web: httpx.Client) -> dict[str, int]:
    reply = web.get("/api/leaderboard")
    assert reply.status_code == 200, reply.text
    return {row["shortcode"]: row["votes"] for row in reply.json()}


def test_list_returns_the_whole_catalog(web: httpx.Client) -> None:
    reply = web.get("/api/list")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    listed = reply.json()
    assert [e["shortcode"] for e in listed] == [e.shortcode for e in catalog.EMOJI]
    assert {"shortcode": ":doughnut:", "unicode": "\U0001f369"} in listed


def test_a_vote_shows_on_the_leaderboard(web: httpx.Client) -> None:
    before = votes_on_leaderboard(web).get(":rocket:", 0)
    for _ in range(3):
        reply = web.get("/api/vote", params={"choice": ":rocket:"})
        assert reply.status_code == 200, reply.text
    board = web.get("/api/leaderboard").json()
    rocket = next(row for row in board if row["shortcode"] == ":rocket:")
    assert rocket == {"shortcode": ":rocket:", "unicode": "\U0001f680", "votes": before + 3}
    assert board == sorted(board, key=lambda row: -row["votes"])


def test_voting_for_the_doughnut_always_fails(web: httpx.Client) -> None:
    for _ in range(3):
        reply = web.get("/api/vote", params={"choice": ":doughnut:"})
        assert reply.status_code == 500
        assert reply.json()["grpc_status"] == "UNKNOWN"
        assert "doughnut" in reply.json()["error"]
    assert ":doughnut:" not in votes_on_leaderboard(web)


def test_unknown_or_missing_choice_is_the_clients_fault(web: httpx.Client) -> None:
    assert web.get("/api/vote", params={"choice": ":no_such_emoji:"}).status_code == 400
    assert web.get("/api/vote").status_code == 400
    assert web.get("/api/nothing-here").status_code == 404
    assert web.post("/api/vote", params={"choice": ":rocket:"}).status_code == 405


def test_page_and_readiness(web: httpx.Client) -> None:
    assert web.get("/ready").status_code == 200
    page = web.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/api/vote" in page.text
    # Works offline: nothing loaded from anywhere else.
    assert "http://" not in page.text and "https://" not in page.text


def _stats_when_done(bot: Service, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{bot.port}", timeout=2.0) as client:
        while time.monotonic() < deadline:
            stats = client.get("/stats").json()
            if stats["done"]:
                return stats
            time.sleep(0.1)
    pytest.fail(f"vote-bot did not finish in {timeout_s} s:\n{bot.output()}")


def test_vote_bot_counts_exactly_what_web_answered(web: httpx.Client, processes: Processes) -> None:
    before = sum(votes_on_leaderboard(web).values())
    rate, duration = 20, 2.0
    bot = processes.start(
        "vote_bot",
        WEB_HOST=str(web.base_url.netloc.decode()),
        VOTE_RATE=str(rate),
        VOTE_DURATION=str(duration),
        VOTE_SEED="7",
        STATS_PORT="0",
    )
    stats = _stats_when_done(bot)

    assert stats["in_flight"] == 0
    assert stats["sent"] == stats["succeeded"] + stats["failed"]
    # A fixed schedule: only a stall right at the end (a busy shared CPU) can cost a few ticks.
    assert rate * duration * 0.8 <= stats["sent"] <= rate * duration + 2
    by_path = stats["by_path"]
    assert set(by_path) == {"/api/list", "/api/vote"}
    assert sum(sum(outcomes.values()) for outcomes in by_path.values()) == stats["sent"]
    assert by_path["/api/list"] == {"2xx": by_path["/api/list"]["2xx"]}
    # Failures: only doughnut votes, every one of them, all 500s.
    doughnut = stats["by_choice"].pop(":doughnut:")
    assert stats["failed"] > 0
    assert doughnut == {"5xx": stats["failed"]}
    assert by_path["/api/vote"].get("5xx") == stats["failed"]
    assert stats["by_status"].get("500") == stats["failed"]
    assert all(outcomes.keys() == {"2xx"} for outcomes in stats["by_choice"].values())
    # The bot's successes are votes the voting service really counted.
    after = sum(votes_on_leaderboard(web).values())
    assert after - before == by_path["/api/vote"]["2xx"]
    # Keep-alive: a handful of connections for dozens of requests.
    assert stats["connections_opened"] <= stats["sent"] / 4

    assert Processes.stop(bot) == 0
    assert "stopped" in bot.output()


def test_vote_bot_counts_refused_connections_as_errors(processes: Processes) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    bot = processes.start(
        "vote_bot",
        WEB_HOST=f"127.0.0.1:{closed_port}",
        VOTE_RATE="50",
        VOTE_MAX_REQUESTS="6",
        STATS_PORT="0",
    )
    stats = _stats_when_done(bot)
    assert (stats["sent"], stats["succeeded"], stats["failed"]) == (6, 0, 6)
    assert sum(outcomes.get("error", 0) for outcomes in stats["by_path"].values()) == 6
    assert stats["by_status"] == {}
