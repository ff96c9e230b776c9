"""The vote-bot: drives web at a fixed rate and counts every outcome, served as JSON on /stats.

Each tick sends one GET: `/api/list` (a VOTE_LIST_SHARE of them) or `/api/vote` for a random
emoji, the doughnut included (VOTE_DOUGHNUT_SHARE extra), so some votes fail. Run as
`python3 -m emojivoto.vote_bot`. Env: WEB_HOST (web-svc.emojivoto:80), VOTE_RATE (5 per s),
VOTE_TIMEOUT (5 s), VOTE_MAX_IN_FLIGHT (32), VOTE_DURATION / VOTE_MAX_REQUESTS (0: no end; at
the end the bot stops sending, waits for replies, sets "done" and keeps serving /stats),
VOTE_SEED (fixed random choices), STATS_PORT (8081), BIND_ADDRESS (0.0.0.0).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from emojivoto import asgi, bot_stats, catalog, http1_pool, lifecycle
from nodemesh.tasks import spawn

# When the bot falls this far behind its schedule (a stalled loop), it drops the backlog
# instead of bursting to catch up.
MAX_LAG_S = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    web_host: str
    web_port: int
    rate: float
    timeout_s: float
    max_in_flight: int
    list_share: float
    doughnut_share: float
    duration_s: float
    max_requests: int
    seed: int | None

    @classmethod
    def from_env(cls) -> Settings:
        host, _, port = lifecycle.env_str("WEB_HOST", "web-svc.emojivoto:80").rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit("WEB_HOST must be host:port")
        seed = lifecycle.env_str("VOTE_SEED", "")
        rate = lifecycle.env_float("VOTE_RATE", 5.0)
        if rate <= 0:
            raise SystemExit("VOTE_RATE must be above 0")
        return cls(
            web_host=host.strip("[]"),
            web_port=int(port),
            rate=rate,
            timeout_s=lifecycle.env_float("VOTE_TIMEOUT", 5.0),
            max_in_flight=max(1, lifecycle.env_int("VOTE_MAX_IN_FLIGHT", 32)),
            list_share=lifecycle.env_float("VOTE_LIST_SHARE", 0.2),
            doughnut_share=lifecycle.env_float("VOTE_DOUGHNUT_SHARE", 0.15),
            duration_s=lifecycle.env_float("VOTE_DURATION", 0.0),
            max_requests=lifecycle.env_int("VOTE_MAX_REQUESTS", 0),
            seed=int(seed) if seed else None,
        )

    @property
    def host_header(self) -> str:
        return f"{self.web_host}:{self.web_port}"


def next_request(rng: random.Random, settings: Settings) -> tuple[str, str, str | None]:
    """(request target, path, vote choice) for one tick."""
    if rng.random() < settings.list_share:
        return "/api/list", "/api/list", None
    if rng.random() < settings.doughnut_share:
        choice = catalog.DOUGHNUT
    else:
        choice = rng.choice(catalog.EMOJI).shortcode
    return f"/api/vote?choice={quote(choice, safe=':')}", "/api/vote", choice


async def _one_request(
    client: http1_pool.Http1Client,
    stats: bot_stats.BotStats,
    *,
    target: str,
    path: str,
    choice: str | None,
) -> None:
    stats.request_sent()
    try:
        response = await client.get(target)
    except http1_pool.RequestTimedOut:
        stats.request_ended(path=path, outcome=bot_stats.TIMEOUT, choice=choice)
    except http1_pool.RequestFailed:
        stats.request_ended(path=path, outcome=bot_stats.ERROR, choice=choice)
    except BaseException:
        # Cancelled at shutdown or a bug: still ended, so the counters keep adding up.
        stats.request_ended(path=path, outcome=bot_stats.ERROR, choice=choice)
        raise
    else:
        outcome = bot_stats.status_class(response.status)
        stats.request_ended(path=path, outcome=outcome, status=response.status, choice=choice)


async def drive(
    client: http1_pool.Http1Client,
    stats: bot_stats.BotStats,
    *,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    """Send on schedule until stop, the duration or the request budget ends; await replies."""
    rng = random.Random(settings.seed)
    loop = asyncio.get_running_loop()
    interval = 1.0 / settings.rate
    start = next_at = loop.time()
    pending: set[asyncio.Task[None]] = set()
    # Requests started here: a request counts itself as sent only once its task runs, and a
    # loop behind schedule starts the next without yielding (VOTE_MAX_REQUESTS=6 sent 7).
    started = 0
    while not stop.is_set():
        if settings.duration_s and loop.time() - start >= settings.duration_s:
            break
        if settings.max_requests and started >= settings.max_requests:
            break
        if len(pending) >= settings.max_in_flight:
            stats.skipped += 1
        else:
            target, path, choice = next_request(rng, settings)
            task = spawn(
                _one_request(client, stats, target=target, path=path, choice=choice),
                name=f"vote-bot {path}",
            )
            started += 1
            pending.add(task)
            task.add_done_callback(pending.discard)
        next_at += interval
        delay = next_at - loop.time()
        if delay < -MAX_LAG_S:
            next_at = loop.time()
        elif delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
    # Every request ends by its own timeout, so this wait is bounded.
    if pending:
        await asyncio.wait(pending)


class StatsApp:
    """GET /stats: the counters as JSON; GET /ready: 200."""

    def __init__(self, stats: bot_stats.BotStats, client: http1_pool.Http1Client, **info: Any):
        self._stats = stats
        self._client = client
        self._info = info

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stats":
            snapshot = self._stats.snapshot(
                connections_opened=self._client.connections_opened,
                stale_retries=self._client.stale_retries,
                **self._info,
            )
            await asgi.send_json(send, 200, snapshot)
        elif scope["path"] == "/ready":
            await asgi.send_json(send, 200, {"ready": True})
        else:
            await asgi.send_json(send, 404, {"error": "try /stats"})


async def run() -> None:
    log = lifecycle.configure_logging("vote-bot")
    stop = lifecycle.stop_on_signals()
    settings = Settings.from_env()
    host = lifecycle.bind_address()
    sock = lifecycle.bind_tcp(host, lifecycle.env_int("STATS_PORT", 8081))
    stats = bot_stats.BotStats()
    client = http1_pool.Http1Client(
        settings.web_host,
        settings.web_port,
        host_header=settings.host_header,
        timeout_s=settings.timeout_s,
    )
    app = StatsApp(stats, client, web=settings.host_header, rate=settings.rate)
    serving_stop = asyncio.Event()
    serving = spawn(asgi.serve(app, sock=sock, stop=serving_stop), name="vote-bot stats")
    log.info(
        lifecycle.listening_line("stats HTTP", host, sock.getsockname()[1])
        + f" voting against {settings.host_header} at {settings.rate}/s"
    )
    try:
        await drive(client, stats, settings=settings, stop=stop)
        stats.finish()
        log.info("stopped sending: %d sent, %d failed", stats.sent, stats.failed)
        await stop.wait()
    finally:
        client.close()
        serving_stop.set()
        await serving
    log.info("stopped")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
