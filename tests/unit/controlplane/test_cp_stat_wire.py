"""A Stat answer written directly (controlplane.stat_wire, stat_answer.encode) is byte for byte
the answer protobuf encodes from the same rows (stat_answer.build), whatever the rows hold:
optional fields absent or 0.0, zero counts, counts past one and two varint bytes, TCP counts
with and without requests, names in any script, an empty namespace, no rows at all."""

from __future__ import annotations

import random

import pytest

from controlplane import stat_answer, stat_wire
from nodemesh.api import public_pb2 as pb

NAMES = ["web-0", "a", "zz", "ñandú-7", "日本-pod", "x" * 200, "emoji-\U0001f680", "b-1"]
NAMESPACES = ["", "default", "ns0", "ns10", "ñs", "命名空间"]
COUNTS = [0, 1, 127, 128, 16_383, 16_384, 2**21, 2**40, 2**63 + 5]


def _traffic(rng: random.Random) -> tuple[object, ...] | None:
    if rng.random() < 0.15:
        return None
    success, failure = rng.choice(COUNTS), rng.choice([0, 0, 1, 300])
    if (success + failure) >= 2**64:
        success = 2**63
    quantiles = [rng.choice([None, 0.0, 0.0005, 1.25, 3.4e5]) for _ in range(3)]
    if rng.random() < 0.5:
        quantiles = [0.9, 2.1, 7.4]
    covered = rng.choice([60, 63.5, 1e-9, 10])
    gauge, read, write, denied = (rng.choice([0, 0, 3, 200, 2**35]) for _ in range(4))
    return (covered, success, failure, gauge, read, write, denied, *quantiles)


def _both(
    rng: random.Random, rows: int, *, kind: str = "pod", namespace: str = "", name: str = ""
) -> tuple[bytes, bytes]:
    groups: stat_answer.Groups = {}
    traffic: dict[stat_answer.Group, tuple[object, ...]] = {}
    enrolled = []
    for _ in range(rows):
        key = (rng.choice(NAMESPACES), f"{rng.choice(NAMES)}-{rng.randrange(10**6)}")
        pods = [(key[0], f"p{i}", f"uid{i}") for i in range(rng.choice([0, 1, 2, 130]))]
        enrolled += pods[: rng.randrange(len(pods) + 1)]
        if rng.random() < 0.9:
            groups[key] = pods
        t = _traffic(rng)
        if t is not None or key not in groups:
            traffic[key] = t if t is not None else _traffic_always(rng)
    window = rng.choice([60, 0, 900, 200])
    asked = {
        "kind": kind, "namespace": namespace, "name": name, "window": window, "groups": groups,
        "traffic": traffic, "enrolled": enrolled,
    }  # fmt: skip
    return stat_answer.encode(**asked), stat_answer.build(**asked).SerializeToString()  # type: ignore[arg-type]


def _traffic_always(rng: random.Random) -> tuple[object, ...]:
    while (t := _traffic(rng)) is None:
        pass
    return t


@pytest.mark.parametrize("seed", range(8))
def test_the_written_answer_is_the_one_protobuf_encodes(seed: int) -> None:
    rng = random.Random(seed)
    written, encoded = _both(rng, rng.choice([0, 1, 40, 600]))
    assert written == encoded
    pb.StatResponse.FromString(written)  # and it reads back


def test_a_namespace_or_a_name_asked_and_every_kind() -> None:
    rng = random.Random(99)
    for kind in stat_answer.PLAIN_KINDS:
        for namespace, name in (("", ""), ("ns0", ""), ("ñs", ""), ("", "a-5")):
            written, encoded = _both(rng, 300, kind=kind, namespace=namespace, name=name)
            assert written == encoded, (kind, namespace, name)


def test_one_row_field_by_field() -> None:
    """The rows protobuf makes when fields are absent or zero: only the resource, an optional
    double given 0.0 (written), a rate of 0.0 (left out), TCP counts without requests."""
    cases: list[tuple[tuple[str, str, str], int, int, tuple[object, ...] | None]] = [
        (("pod", "", "n"), 0, 0, None),
        (("namespace", "", "ns"), 3, 5, None),
        (("pod", "ns", "p"), 1, 1, (60, 0, 0, 0, 0, 0, 0, None, None, None)),
        (("pod", "ns", "p"), 1, 1, (60, 0, 4, 0, 0, 0, 0, 0.0, 0.0, 0.0)),
        (("pod", "ns", "p"), 0, 2, (10, 0, 0, 5, 0, 0, 1, None, None, None)),
        (("pod", "ns", "p"), 1, 1, (60, 10, 0, 7, 1, 2, 300, 1.0, None, 9.5)),
    ]
    fields = stat_wire.ResourceFields()
    for (kind, ns, name), meshed, total, t in cases:
        answer = pb.StatResponse()
        resource = {"kind": kind, "namespace": ns, "name": name}
        if t is None:
            answer.rows.add(resource=resource, meshed_pods=meshed, total_pods=total)
        else:
            covered, success, failure, gauge, read, write, denied, p50, p95, p99 = t
            requests = success + failure  # type: ignore[operator]
            answer.rows.add(
                resource=resource, meshed_pods=meshed, total_pods=total, requests=requests,
                rps=requests / covered,  # type: ignore[operator]
                covered_seconds=covered, success_rate=success / requests if requests else None,  # type: ignore[operator]
                latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
                tcp_open_connections=gauge, tcp_read_bytes=read, tcp_write_bytes=write,
                authz_denied=denied,
            )  # fmt: skip
        written = stat_wire.row(fields.of(kind)[(ns, name)], meshed, total, t)
        assert written == answer.SerializeToString(), (kind, ns, name, t)


def test_a_negative_count_is_refused_as_protobuf_refuses_it() -> None:
    with pytest.raises(ValueError):
        stat_wire.varint(-1)
    with pytest.raises(ValueError):
        pb.StatRow(requests=-1)
