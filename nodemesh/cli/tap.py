"""`nodemesh tap`: live requests of a resource, one line per request, response and end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import click
from google.protobuf.json_format import MessageToDict

from nodemesh.api import public_pb2 as pb
from nodemesh.api import tap_pb2
from nodemesh.cli import resources
from nodemesh.cli.publicapi import PublicApi
from nodemesh.cli.target import TargetOptions, resolve, target_options

_DIRECTION = {tap_pb2.INBOUND: "in", tap_pb2.OUTBOUND: "out"}
_GRPC = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
]


def _peer(p: tap_pb2.TapPeer) -> str:
    return f"{p.ip}:{p.port}" if p.ip else "-"


def _resource(prefix: str, p: tap_pb2.TapPeer) -> list[str]:
    if p.workload:
        what = f"{prefix}_res={resources.short_kind(p.workload_kind)}/{p.workload}"
    elif p.pod:
        what = f"{prefix}_res=pod/{p.pod}"
    else:
        return []
    return [what, f"{prefix}_ns={p.namespace}"]


def line(ev: tap_pb2.TapEvent, *, wide: bool = False) -> str:
    """Conduit's tap line: `req|rsp|end id=NODE:N proxy=in|out src=… dst=… tls=… <details>`."""
    kind = ev.WhichOneof("kind") or "?"
    parts = [
        kind,
        f"id={ev.node}:{ev.request_id}",
        f"proxy={_DIRECTION.get(ev.direction, '?')}",
        f"src={_peer(ev.src)}",
        f"dst={_peer(ev.dst)}",
        f"tls={'true' if ev.tls else 'false'}",
    ]
    if kind == "req":
        r = ev.req
        parts += [f":method={r.method}", f":authority={r.authority}", f":path={r.path}"]
        if r.route:
            parts.append(f"route={r.route}")
    elif kind == "rsp":
        parts += [f":status={ev.rsp.status}", f"latency={ev.rsp.since_request_us}us"]
    elif kind == "end":
        e = ev.end
        if e.HasField("grpc_status"):
            code = _GRPC[e.grpc_status] if e.grpc_status < len(_GRPC) else str(e.grpc_status)
            parts.append(f"grpc-status={code}")
        parts += [f"duration={e.since_request_us}us", f"response-length={e.response_bytes}B"]
        if e.error:
            parts.append(f"error={e.error!r}")
    if wide:
        parts += _resource("src", ev.src) + _resource("dst", ev.dst)
        if ev.dst.service:
            parts.append(f"dst_svc={ev.dst.service}")
    return " ".join(parts)


def as_json(ev: tap_pb2.TapEvent) -> str:
    body = MessageToDict(ev, preserving_proto_field_name=True)
    return json.dumps(body, sort_keys=True)


def tap_request(
    resource: str, *, namespace: str, to: str | None, method: str, path: str, max_rps: float
) -> pb.TapRequest:
    kind, name = resources.parse(resource)
    request = pb.TapRequest(
        resource=resources.message(kind, name, namespace),
        method=method.upper(),
        path_prefix=path,
        max_rps=max_rps,
    )
    dst = resources.option_resource(to, namespace, param="'--to'")
    if dst:
        request.to_resource.CopyFrom(dst)
    return request


def until(
    events: Iterator[tap_pb2.TapEvent], *, deadline: float | None
) -> Iterator[tap_pb2.TapEvent]:
    # The deadline is checked per event; a quiet stream is ended by the gRPC timeout instead.
    for ev in events:
        yield ev
        if deadline is not None and time.monotonic() >= deadline:
            return


def tap_options(f):  # type: ignore[no-untyped-def]
    for decorator in reversed(
        [
            click.argument("resource"),
            click.option("-n", "--namespace", default="default", show_default=True),
            click.option("--to", metavar="RESOURCE", help="Only requests to this (KIND[/NAME])."),
            click.option("--method", default="", help="Only this HTTP method."),
            click.option("--path", default="", help="Only paths starting with this."),
            click.option(
                "--max-rps",
                type=click.FloatRange(min=0.1, max=1000),
                default=100.0,
                show_default=True,
                help="At most this many requests per second.",
            ),
            click.option(
                "--duration",
                type=click.FloatRange(min=0.1),
                metavar="SECONDS",
                help="Stop after this long (default: until Ctrl-C).",
            ),
        ]
    ):
        f = decorator(f)
    return f


@click.command()
@tap_options
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "json"]),
    default="table",
    help="table: one line per event; wide adds the resources; json: one object a line.",
)
@target_options
def tap(
    resource: str,
    namespace: str,
    to: str | None,
    method: str,
    path: str,
    max_rps: float,
    duration: float | None,
    output: str,
    target: TargetOptions,
) -> None:
    """Watch live requests of RESOURCE (deploy/web, pod/NAME, ns/NAME, svc/NAME, node/NAME)."""
    request = tap_request(
        resource, namespace=namespace, to=to, method=method, path=path, max_rps=max_rps
    )
    with resolve(target) as endpoint, PublicApi(endpoint, timeout=duration or 10.0) as api:
        if request.resource.kind not in resources.CLUSTER_SCOPED:
            api.check_namespace(namespace)
        deadline = time.monotonic() + duration if duration else None
        try:
            for ev in until(api.tap_for(request, seconds=duration), deadline=deadline):
                click.echo(as_json(ev) if output == "json" else line(ev, wide=output == "wide"))
        except KeyboardInterrupt:
            pass
