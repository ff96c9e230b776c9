"""nodemesh-ingress: serve Ingress objects of class nodemesh (HTTP and TLS) from a meshed pod."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from ingress.proxy import Edge
from ingress.sources import KubeSource, LabSource
from ingress.spec import CLASS_NAME
from ingress.state import Objects, Snapshot
from ingress.tls import Terminator
from nodemesh import ports
from nodemesh.kubeclient import load_api_client
from nodemesh.tasks import cancel_all, spawn

log = logging.getLogger("nodemesh.ingress")
DRAIN_SECONDS = 10.0


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT") from None
    if not host or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodemesh-ingress", description=__doc__)
    p.add_argument(
        "--source",
        choices=("kubernetes", "lab"),
        default="kubernetes",
        help="where Ingresses, Services, EndpointSlices and Secrets come from",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="--source lab: the lab's directory (its objects/ folder is read)",
    )
    p.add_argument("--kubeconfig", help="outside a cluster: the kubeconfig to use")
    p.add_argument(
        "--ingress-class",
        default=CLASS_NAME,
        help="the class name served (besides IngressClasses naming nodemesh.io/ingress)",
    )
    p.add_argument("--http-addr", type=_addr, default=("0.0.0.0", ports.INGRESS_HTTP))
    p.add_argument("--https-addr", type=_addr, default=("0.0.0.0", ports.INGRESS_HTTPS))
    p.add_argument("--admin-addr", type=_addr, default=("0.0.0.0", ports.INGRESS_ADMIN))
    p.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM: keep serving (not ready, closing each kept-alive "
        "connection after its answer) this long, while load balancers stop sending",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = p.parse_args(argv)
    if args.source == "lab" and args.state_dir is None:
        p.error("--source lab needs --state-dir")
    return args


class Ingress:
    def __init__(self, objects: Objects) -> None:
        self.objects = objects
        self.current = Snapshot()
        self.ready = False
        self._problems: set[str] = set()
        self._pending = False

    def snapshot(self) -> Snapshot:
        return self.current

    def changed(self) -> None:
        # Coalesce a burst of changes (a relist, an apply of many objects) into one rebuild.
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_later(0.05, self._rebuild)

    def _rebuild(self) -> None:
        self._pending = False
        snap = self.objects.snapshot()
        problems = set(snap.problems)
        for p in sorted(problems - self._problems):
            log.warning("%s", p)
        for p in sorted(self._problems - problems):
            log.info("resolved: %s", p)
        self._problems = problems
        if snap.ingresses != self.current.ingresses:
            log.info("serving %d Ingress(es) of class %s", snap.ingresses, self.objects.class_name)
        self.current = snap


async def _admin(ingress: Ingress, edge: Edge, source: Any, r: Any, w: Any) -> None:
    try:
        line = await asyncio.wait_for(r.readline(), 5)
        path = line.split()[1].decode() if len(line.split()) > 1 else "/"
        if path == "/ready":
            ok = ingress.ready and source.ready and not edge.draining
            status, body = (200, "ready\n") if ok else (503, "not synced yet\n")
        elif path == "/live":
            status, body = 200, "live\n"
        elif path == "/metrics":
            s = edge.stats
            lines = [
                f"nodemesh_ingress_requests_total {s.requests}",
                f"nodemesh_ingress_upstream_connections_total {s.upstream_connections}",
                f"nodemesh_ingress_ingresses {ingress.current.ingresses}",
                f"nodemesh_ingress_problems {len(ingress.current.problems)}",
            ]
            lines += [f'nodemesh_ingress_responses_total{{status="{k}"}} {v}'
                      for k, v in sorted(s.by_status.items())]  # fmt: skip
            status, body = 200, "\n".join(lines) + "\n"
        else:
            status, body = 404, "not found\n"
        data = body.encode()
        w.write(
            f"HTTP/1.1 {status} X\r\ncontent-length: {len(data)}\r\n"
            f"content-type: text/plain\r\nconnection: close\r\n\r\n".encode()
            + data
        )
        await w.drain()
    except (OSError, TimeoutError, IndexError):
        pass
    finally:
        w.close()


async def run(args: argparse.Namespace) -> None:
    objects = Objects(class_name=args.ingress_class)
    ingress = Ingress(objects)
    source: LabSource | KubeSource
    if args.source == "lab":
        source = LabSource(args.state_dir, objects)
    else:
        source = KubeSource(load_api_client(args.kubeconfig), objects)

    def changed() -> None:
        ingress.ready = True
        ingress.changed()

    edge = Edge(ingress.snapshot)
    tls = Terminator(ingress.snapshot)
    servers = [
        await asyncio.start_server(
            lambda r, w: edge.serve(r, w, scheme="http"), *args.http_addr, reuse_address=True
        ),
        await asyncio.start_server(
            lambda r, w: edge.serve(r, w, scheme="https"),
            *args.https_addr,
            ssl=tls.context,
            reuse_address=True,
            ssl_handshake_timeout=10,
        ),
        await asyncio.start_server(
            lambda r, w: _admin(ingress, edge, source, r, w), *args.admin_addr, reuse_address=True
        ),
    ]
    log.info("nodemesh-ingress: HTTP on %s:%d, HTTPS on %s:%d, class %s, source %s",
             *args.http_addr, *args.https_addr, args.ingress_class, args.source)  # fmt: skip
    follow = spawn(source.run(changed), name="ingress-source")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    edge.draining = True
    log.info("stopping: not ready; serving %.0f s more", args.shutdown_grace_seconds)
    await asyncio.sleep(args.shutdown_grace_seconds)
    for s in servers:
        s.close()
    deadline = loop.time() + DRAIN_SECONDS
    while edge.active and loop.time() < deadline:
        await asyncio.sleep(0.1)
    log.info("stopped (%d request(s) cut)", edge.active)
    edge.close()
    await cancel_all([follow])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
