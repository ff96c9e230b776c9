"""nodemesh-dashboard: the web dashboard, served by uvicorn, fed by the public API."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from dashboard.app import create_app
from dashboard.publicapi import SERVICE_ACCOUNT_TOKEN
from nodemesh import ports


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodemesh-dashboard", description=__doc__)
    p.add_argument(
        "--public-api",
        default=f"nodemesh-controlplane.nodemesh.svc.cluster.local:{ports.PUBLIC_API}",
        type=lambda v: host_port(v) and v,  # kept as typed: gRPC takes [v6]:port itself
        help="the control plane's public API (gRPC), HOST:PORT",
    )
    p.add_argument(
        "--addr", default=f"0.0.0.0:{ports.DASHBOARD}", type=host_port, help="listen on HOST:PORT"
    )
    p.add_argument("--cache-seconds", type=float, default=1.0, help="share answers this long")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="chart history period")
    p.add_argument("--max-taps", type=int, default=8, help="live taps open at once")
    p.add_argument(
        "--token-file",
        default=SERVICE_ACCOUNT_TOKEN,
        help="the dashboard's own ServiceAccount token, sent to the public API on every call",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(
        args.public_api,
        ttl=args.cache_seconds,
        sample_period=args.sample_seconds,
        tap_limit=args.max_taps,
        token_file=args.token_file,
    )
    host, port = args.addr
    # The asyncio loop, not uvloop: grpc.aio drives its own I/O through the standard loop.
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="asyncio",
        http="httptools",
        log_level=args.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
