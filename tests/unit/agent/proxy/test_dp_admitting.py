"""The inbound tunnel's admission, played like a Playbook: each report in, the next step out."""

from __future__ import annotations

import ipaddress

import pytest

from nodeagent.protocol import preamble as pre
from nodeagent.proxy.admitting import (
    Answer,
    Authorize,
    Connect,
    ReadPreamble,
    Refuse,
    TunnelAdmission,
    WaitCert,
)
from nodeagent.proxy.failclosed import NO_TABLE
from nodemesh import ports

POD_IP = "10.244.1.7"
ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT = "spiffe://cluster.local/ns/shop/sa/cart"
F = pre.PreambleFlags


def header(port: int = 8080, ip: str = POD_IP, flags: F = F.WANT_REPLY) -> pre.Preamble:
    return pre.Preamble(target_port=port, original_ip=ipaddress.ip_address(ip), flags=flags)


def admission(**kw) -> TunnelAdmission:  # type: ignore[no-untyped-def]
    kw.setdefault("pod_ip", POD_IP)
    kw.setdefault("identity", ID)
    kw.setdefault("strict", False)
    return TunnelAdmission(**kw)


def test_accepted_the_client_waiting_for_its_reply_gets_it_after_the_app_connected() -> None:
    p = admission()
    assert p.start(table_known=True) == WaitCert(ID)
    assert p.preamble(header(), client_id=CLIENT) == Authorize(8080, opaque=False, replied=False)
    assert p.authorized(gate=False) == Connect(8080)
    assert p.connected() == Answer(pre.ReplyCode.ACCEPTED, reply=True)


def test_a_per_request_gate_has_answered_already_so_no_second_reply() -> None:
    p = admission()
    p.start(table_known=True)
    p.preamble(header(), client_id=CLIENT)
    assert p.authorized(gate=True) == Connect(8080)
    assert p.connected() == Answer(pre.ReplyCode.ACCEPTED, reply=False)


def test_the_app_refusing_is_answered_connect_failed_naming_its_port() -> None:
    p = admission()
    p.start(table_known=True)
    p.preamble(header(), client_id=CLIENT)
    p.authorized(gate=False)
    refused = ConnectionRefusedError(111, "Connection refused")
    assert p.connect_failed(refused) == Answer(
        pre.ReplyCode.CONNECT_FAILED, "app port 8080: [Errno 111] Connection refused", reply=True
    )


def test_no_table_is_refused_before_any_tls() -> None:
    assert admission().start(table_known=False) == Refuse(NO_TABLE)


def test_no_certificate_for_the_pod_is_refused_naming_it() -> None:
    p = admission()
    assert p.start(table_known=True) == WaitCert(ID)
    assert p.no_certificate() == Refuse(f"no certificate for {ID} yet")
    unknown = admission(identity="")
    assert unknown.start(table_known=True) == Refuse("no certificate for this pod yet")


def test_a_failed_handshake_is_refused_naming_the_error() -> None:
    p = admission()
    p.start(table_known=True)
    assert p.tunnel_failed(pre.BadMagic("not a preamble")) == Refuse("tunnel: not a preamble")


def test_another_ip_or_an_agent_port_is_no_such_target() -> None:
    for h in (header(ip="10.244.1.8"), header(port=ports.INBOUND), header(port=ports.TUNNEL)):
        p = admission()
        p.start(table_known=True)
        step = p.preamble(h, client_id=CLIENT)
        assert step == Answer(
            pre.ReplyCode.NO_SUCH_TARGET, f"no target {h.original_ip}", reply=True
        ), h
    # A client that did not ask for a reply is not sent one: its connection is just declined.
    p = admission()
    p.start(table_known=True)
    assert p.preamble(header(ip="10.244.1.8", flags=F.NONE), client_id=CLIENT).reply is False


def test_strict_refuses_an_unauthenticated_client_without_a_trust_anchor() -> None:
    p = admission(strict=True, tls=False)
    assert p.start(table_known=True) == ReadPreamble()
    assert p.preamble(header(), client_id="") == Answer(
        pre.ReplyCode.POLICY_DENIED, "strict inbound mode: client not authenticated", reply=True
    )
    permissive = admission(tls=False)
    permissive.start(table_known=True)
    assert isinstance(permissive.preamble(header(), client_id=""), Authorize)


def test_skip_detection_and_opaque_ports_make_the_connection_opaque() -> None:
    p = admission()
    p.start(table_known=True)
    step = p.preamble(header(flags=F.SKIP_DETECTION), client_id=CLIENT)
    assert step == Authorize(8080, opaque=True, replied=True)
    p.authorized(gate=False)
    assert p.connected() == Answer(pre.ReplyCode.ACCEPTED, skip_detection=True)
    listed = admission(opaque_ports=frozenset({5432}))
    listed.start(table_known=True)
    assert listed.preamble(header(5432), client_id=CLIENT) == Authorize(
        5432, opaque=True, replied=False
    )
    listed.authorized(gate=False)
    assert listed.connected().skip_detection is False  # detection is the tap's to skip


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    # asyncio.wait_for's TimeoutError carries no message: the app's port timing out was
    # reported as "app port 8080: " (in metrics, tap and the agent's log), saying nothing.
    p = admission()
    p.start(table_known=True)
    assert p.tunnel_failed(TimeoutError()) == Refuse("tunnel: TimeoutError")
    p.preamble(header(), client_id=CLIENT)
    p.authorized(gate=False)
    assert p.connect_failed(TimeoutError()).error == "app port 8080: TimeoutError"


OBSERVES = F.WANT_REPLY | F.SOURCE_OBSERVES


def test_observe_once_is_taken_when_the_source_offers_it_and_nothing_here_must_parse() -> None:
    p = admission()
    p.start(table_known=True)
    p.preamble(header(flags=OBSERVES), client_id=CLIENT)
    p.authorized(gate=False)
    answer = p.connected()
    assert answer == Answer(pre.ReplyCode.ACCEPTED, reply=True, observed_at_source=True)
    assert answer.reply_flags == pre.ReplyFlags.OBSERVED_AT_SOURCE


@pytest.mark.parametrize(
    ("flags", "port", "gate"),
    [
        (F.WANT_REPLY, 8080, False),  # not offered (an agent that does not know it, or opaque)
        (F.SOURCE_OBSERVES, 8080, False),  # offered, but the source would not hear the answer
        (OBSERVES | F.SKIP_DETECTION, 8080, False),  # opaque: nothing to observe
        (OBSERVES, 5432, False),  # an opaque port of this pod
        (OBSERVES, 8080, True),  # a per-request authorization gate parses every request here
    ],
)
def test_observe_once_is_declined_when_the_source_cannot_or_this_agent_must_parse(
    flags: pre.PreambleFlags, port: int, gate: bool
) -> None:
    p = admission(opaque_ports=frozenset({5432}))
    p.start(table_known=True)
    p.preamble(header(port=port, flags=flags), client_id=CLIENT)
    p.authorized(gate=gate)
    answer = p.connected()
    assert answer.accepted and not answer.observed_at_source
    assert answer.reply_flags == pre.ReplyFlags.NONE


def test_a_refused_connection_never_takes_observe_once() -> None:
    p = admission()
    p.start(table_known=True)
    p.preamble(header(flags=OBSERVES), client_id=CLIENT)
    p.authorized(gate=False)
    answer = p.connect_failed(ConnectionRefusedError(111, "Connection refused"))
    assert not answer.accepted and not answer.observed_at_source
