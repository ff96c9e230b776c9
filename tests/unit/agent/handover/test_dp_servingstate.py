"""The serving state an agent keeps across its restart: the table and its pods' certificates
round-trip through a root-only file; a corrupt, foreign or exposed file is refused with a line
that says why (and the agent starts without it); expired certificates are not loaded."""

from __future__ import annotations

import datetime
import logging
import os
import stat
from pathlib import Path

import pytest
from dp_identities import API, WEB, issue
from dp_tables import endpoint, pod, service, table

from controlplane.identity import CertificateAuthority
from nodeagent.handover.servingstate import ServingKeeper, ServingStateError, ServingStateFile
from nodeagent.proxy.routing import Routes
from nodeagent.upstream.certstore import CertStore
from nodeagent.upstream.table import DestinationTable
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb
from nodemesh.identity import CaMaterial
from nodemesh.model import InboundMode, MeshedPod, PodKey, WorkloadRef


def _served_table() -> DestinationTable:
    t = table([service("api", "10.96.0.10", 80, [endpoint("10.244.2.5", 8080)])], [
        pod("web-1", "10.244.1.4")
    ])  # fmt: skip
    lone = MeshedPod(
        key=PodKey("shop", "db-0"),
        ip="10.244.2.9",
        node="node2",
        identity="spiffe://cluster.local/ns/shop/sa/db",
        workload=WorkloadRef("StatefulSet", "shop", "db"),
        inbound_mode=InboundMode.STRICT,
    )
    t.apply(
        pb.Update(revision=7, delta=pb.Delta(meshed_pods_updated=[codec.meshed_pod_to_pb(lone)]))
    )
    return t


def _keeper(path: Path, anchor: CaMaterial, *, node: str = "node1") -> ServingKeeper:
    return ServingKeeper(
        ServingStateFile(path, node=node),
        table=DestinationTable(node),
        certs=CertStore(trust_anchors_pem=anchor.certificate_pem()),
    )


def test_table_and_certificates_round_trip_in_a_root_only_file(
    tmp_path: Path, anchor: CaMaterial, authority: CertificateAuthority
) -> None:
    path = tmp_path / "run" / "agent-private" / "serving.json"
    served = _served_table()
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    web = store.install(issue(authority, WEB))
    store.install(issue(authority, API))
    saver = ServingKeeper(ServingStateFile(path, node="node1"), table=served, certs=store)
    assert saver.save_if_changed() and not saver.save_if_changed()  # nothing new: no write

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not list(path.parent.glob(".*tmp"))

    restarted = _keeper(path, anchor)
    change = restarted.load()
    assert change is not None and change.snapshot
    t = restarted.table
    assert t.synced and t.revision == served.revision
    assert (t.services, t.pods, t.meshed_pods) == (served.services, served.pods, served.meshed_pods)
    # The pod IP that backs no Service is still known as meshed after the restart.
    (target,) = Routes(t).resolve("10.244.2.9", 5432).targets
    assert target.meshed and target.identity == "spiffe://cluster.local/ns/shop/sa/db"
    assert restarted.certs is not None
    held = restarted.certs.current(WEB)
    assert held is not None and restarted.certs.current(API) is not None
    # The same key and chain, not merely a certificate of the same name.
    assert held.certified.chain_pem() == web.certified.chain_pem()
    assert held.certified.key_pem == web.certified.key_pem


def test_a_certificate_that_expired_while_the_agent_was_away_is_not_used(
    tmp_path: Path, anchor: CaMaterial, authority: CertificateAuthority, caplog
) -> None:
    path = tmp_path / "serving.json"
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    short = store.install(issue(authority, WEB, lifetime=datetime.timedelta(minutes=5)))
    store.install(issue(authority, API))
    ServingKeeper(
        ServingStateFile(path, node="node1"), table=_served_table(), certs=store
    ).save_if_changed()

    later = short.expires_at + 1
    saved = ServingStateFile(path, node="node1").load(now=later)
    assert saved is not None
    assert [c.identity for c in saved.certificates] == [API]
    assert saved.expired == (WEB,)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x00\x01 half a write", "not JSON"),
        (b'{"format": "something-else", "version": 1}', "not a nodemesh-agent-serving-state file"),
        (
            b'{"format": "nodemesh-agent-serving-state", "version": 99}',
            "format version 99; this agent reads version 1",
        ),
        (
            b'{"format": "nodemesh-agent-serving-state", "version": 1, "node": "node2"}',
            "written by the agent of node 'node2', this is 'node1'",
        ),
        (
            b'{"format": "nodemesh-agent-serving-state", "version": 1, "node": "node1",'
            b' "saved_at": 1, "revision": 1, "table": "!!", "certificates": []}',
            "table:",
        ),
    ],
)
def test_a_corrupt_or_foreign_file_is_refused_with_a_clear_line(
    tmp_path: Path, anchor: CaMaterial, caplog, content: bytes, why: str
) -> None:
    path = tmp_path / "serving.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ServingStateError, match=why.replace("(", r"\(").replace(")", r"\)")):
        ServingStateFile(path, node="node1").load()
    keeper = _keeper(path, anchor)
    with caplog.at_level(logging.ERROR):
        assert keeper.load() is None  # the agent starts without it, it does not crash
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith(f"ignoring saved serving state {path}: ") and why in line
    assert not keeper.table.synced


def test_a_file_others_could_read_or_write_is_refused(tmp_path: Path, anchor: CaMaterial) -> None:
    path = tmp_path / "serving.json"
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    ServingKeeper(
        ServingStateFile(path, node="node1"), table=_served_table(), certs=store
    ).save_if_changed()
    os.chmod(path, 0o644)
    with pytest.raises(ServingStateError, match="mode 0644"):
        ServingStateFile(path, node="node1").load()
    link = tmp_path / "link.json"
    os.chmod(path, 0o600)
    link.symlink_to(path)
    with pytest.raises(ServingStateError, match="cannot open"):
        ServingStateFile(link, node="node1").load()


def test_no_file_means_no_state_and_nothing_is_saved_before_a_table(
    tmp_path: Path, anchor: CaMaterial
) -> None:
    path = tmp_path / "serving.json"
    keeper = _keeper(path, anchor)
    assert keeper.load() is None
    assert not keeper.save_if_changed() and not path.exists()


def test_by_default_the_state_lives_in_a_private_directory_beside_the_state_file() -> None:
    from nodeagent.config import parse_args

    cfg = parse_args(["--node", "n1", "--state-file", "/var/run/nodemesh/agent-state.json"])
    assert cfg.serving_state_file == Path("/var/run/nodemesh/agent-private/serving.json")
    cfg = parse_args(["--node", "n1", "--serving-state", "/srv/s.json"])
    assert cfg.serving_state_file == Path("/srv/s.json")


def test_forgetting_removes_the_saved_keys_and_saves_no_more(
    tmp_path: Path, anchor: CaMaterial, authority: CertificateAuthority
) -> None:
    """Uninstall: the agent's last save on SIGTERM must not put the keys back on the node."""
    path = tmp_path / "run" / "agent-private" / "serving.json"
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    store.install(issue(authority, WEB))
    keeper = ServingKeeper(ServingStateFile(path, node="node1"), table=_served_table(), certs=store)
    assert keeper.save_if_changed() and path.exists()
    keeper.forget()
    assert not path.exists() and not path.parent.exists()
    store.install(issue(authority, API))  # something changed after: still nothing written
    assert not keeper.save_if_changed() and not path.parent.exists()
