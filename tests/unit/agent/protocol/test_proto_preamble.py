"""The mesh tunnel preamble and its reply: round trips and every kind of bad input."""

from __future__ import annotations

import ipaddress

import pytest

from nodeagent.protocol.detect import Protocol
from nodeagent.protocol.preamble import (
    HEADER_SIZE,
    MAX_BODY,
    BadMagic,
    Oversized,
    Preamble,
    PreambleError,
    PreambleFlags,
    PreambleTruncated,
    ReplyCode,
    ReplyFlags,
    UnsupportedVersion,
    decode_preamble,
    decode_reply,
    encode_preamble,
    encode_reply,
    preamble_size,
)

SAMPLE = Preamble(
    target_port=8080,
    original_ip=ipaddress.ip_address("10.244.2.17"),
    protocol=Protocol.HTTP2,
    source_namespace="emojivoto",
    source_pod="web-7d9f8-abcde",
    flags=PreambleFlags.WANT_REPLY,
)


@pytest.mark.parametrize(
    "p",
    [
        SAMPLE,
        Preamble(
            5432,
            ipaddress.ip_address("fd00:10:244::5"),
            Protocol.OPAQUE,
            flags=PreambleFlags.SKIP_DETECTION | PreambleFlags.WANT_REPLY,
        ),
        Preamble(1, ipaddress.ip_address("0.0.0.0")),
        Preamble(
            65535,
            ipaddress.ip_address("10.0.0.1"),
            None,
            "ns-ü",
            "p" * 253,
            extensions=((7, b"future"), (200, b"")),
        ),
    ],
)
def test_round_trip(p: Preamble) -> None:
    wire = encode_preamble(p)
    assert preamble_size(wire[:HEADER_SIZE]) == len(wire)
    decoded, used = decode_preamble(wire + b"GET / HTTP/1.1\r\n")
    assert decoded == p
    assert used == len(wire)


def test_every_truncation_asks_for_the_right_size() -> None:
    wire = encode_preamble(SAMPLE)
    for n in range(len(wire)):
        with pytest.raises(PreambleTruncated) as info:
            decode_preamble(wire[:n])
        assert info.value.needed == (HEADER_SIZE if n < HEADER_SIZE else len(wire))


def test_wrong_magic() -> None:
    wire = encode_preamble(SAMPLE)
    with pytest.raises(BadMagic):
        decode_preamble(b"\x16\x03\x01" + wire[3:])
    with pytest.raises(BadMagic):
        decode_preamble(b"GET")  # even a short prefix is recognisably wrong


def test_unsupported_version() -> None:
    wire = bytearray(encode_preamble(SAMPLE))
    wire[4] = 2
    with pytest.raises(UnsupportedVersion) as info:
        decode_preamble(bytes(wire))
    assert info.value.version == 2


def test_oversized_fields_are_refused_both_ways() -> None:
    with pytest.raises(Oversized):
        encode_preamble(Preamble(80, SAMPLE.original_ip, source_pod="x" * 254))
    with pytest.raises(Oversized):
        encode_preamble(Preamble(80, SAMPLE.original_ip, extensions=((1, b"x" * 255),) * 5))
    header = bytearray(encode_preamble(SAMPLE)[:HEADER_SIZE])
    header[8:10] = (MAX_BODY + 1).to_bytes(2, "big")
    with pytest.raises(Oversized):
        preamble_size(bytes(header))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00\x04\x0a\x00\x00\x01\x00\x00", "target port 0"),
        (b"\x1f\x90\x05\x0a\x00\x00\x01\x00\x00\x00\x00\x00", "address length 5"),
        (b"\x1f\x90\x04\x0a\x00", "address runs past"),
        (b"\x1f\x90\x04\x0a\x00\x00\x01\x09ab", "namespace runs past"),
        (b"\x1f\x90\x04\x0a\x00\x00\x01\x02\xff\xfe\x00", "not UTF-8"),
        (b"\x1f\x90\x04\x0a\x00\x00\x01\x00\x00\x07\x05ab", "extension runs past"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    wire = b"NMTP\x01\x01\x00\x00" + len(body).to_bytes(2, "big") + body
    with pytest.raises(PreambleError, match=message):
        decode_preamble(wire)


def test_unknown_flag_bits_and_protocol_codes_survive() -> None:
    wire = bytearray(encode_preamble(SAMPLE))
    wire[5] = 99  # a protocol hint this version does not know
    wire[6:8] = (0x8002).to_bytes(2, "big")
    decoded, _ = decode_preamble(bytes(wire))
    assert decoded.protocol is None
    assert int(decoded.flags) == 0x8002 and PreambleFlags.WANT_REPLY in decoded.flags


def test_reply_round_trip_and_errors() -> None:
    ok = decode_reply(encode_reply(ReplyCode.ACCEPTED))
    assert ok.accepted and ok.reason == "accepted"
    denied = decode_reply(encode_reply(ReplyCode.POLICY_DENIED) + b"trailing")
    assert not denied.accepted and denied.reason == "policy_denied"
    assert decode_reply(encode_reply(77)).reason == "refused (77)"
    with pytest.raises(PreambleTruncated):
        decode_reply(b"NMTR\x01")
    with pytest.raises(BadMagic):
        decode_reply(b"HTTP/1.1 400")
    with pytest.raises(UnsupportedVersion):
        decode_reply(b"NMTR\x09\x00\x00\x00")


def test_reply_flags_round_trip_and_a_reply_without_them_has_none() -> None:
    flagged = encode_reply(ReplyCode.ACCEPTED, ReplyFlags.OBSERVED_AT_SOURCE)
    assert flagged == b"NMTR\x01\x00\x00\x01"
    assert decode_reply(flagged).flags == ReplyFlags.OBSERVED_AT_SOURCE
    # What an agent that knows no reply flags sends (the bytes were reserved, zero).
    assert decode_reply(b"NMTR\x01\x00\x00\x00").flags == ReplyFlags.NONE
    # Bits a later version may add are carried, not refused.
    assert int(decode_reply(b"NMTR\x01\x00\x80\x01").flags) == 0x8001
    with pytest.raises(PreambleError, match="reply flags 65536 out of range"):
        encode_reply(ReplyCode.ACCEPTED, 1 << 16)
