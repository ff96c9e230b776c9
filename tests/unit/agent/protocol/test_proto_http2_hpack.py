"""The observer's HPACK walk (nodeagent.protocol.http2_hpack) against the `hpack` package's
Decoder, the reference: blocks from hpack's Encoder (Huffman or not, indexed, never indexed,
table size changes) and the same blocks damaged must give the same wanted fields and the same
dynamic table, and be refused for the same reasons, block after block on one connection."""

from __future__ import annotations

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.protocol.http2_hpack import WANTED, Decoder

NAMES = [
    b":method",
    b":path",
    b":authority",
    b":status",
    b"content-type",
    b"grpc-status",
    b"host",
    b"grpc-timeout",
    b"user-agent",
    b"te",
    b"x-trace",
    b"grpc-message",
]
VALUES = [b"POST", b"GET", b"/a.B/C", b"/", b"svc:8080", b"200", b"application/grpc", b"0", b""]

field = st.tuples(
    st.sampled_from(NAMES),
    st.one_of(st.sampled_from(VALUES), st.binary(max_size=40)),
    st.booleans(),  # never indexed
)
block = st.tuples(
    st.lists(field, max_size=12),
    st.booleans(),  # Huffman
    st.one_of(st.none(), st.sampled_from([0, 64, 256, 4096])),  # table size set before it
)


def wanted(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in WANTED:
            out.setdefault(bytes(name), bytes(value))
    return out


def encode(blocks: list[tuple[list[tuple[bytes, bytes, bool]], bool, int | None]]) -> list[bytes]:
    encoder = hpack.Encoder()
    out = []
    for fields, huffman, size in blocks:
        if size is not None:
            encoder.header_table_size = size
        headers = [
            NeverIndexedHeaderTuple(n, v) if never else HeaderTuple(n, v) for n, v, never in fields
        ]
        out.append(encoder.encode(headers, huffman=huffman))
    return out


def both(wire: list[bytes]) -> list[tuple[str, object, object]]:
    """Decode every block with both decoders, up to the first refusal; per block: ("ok",
    reference fields, ours) or ("error", reference exception, ours or exception)."""
    ref, ours = hpack.Decoder(max_header_list_size=1 << 30), Decoder()
    seen: list[tuple[str, object, object]] = []
    for data in wire:
        before = (list(ref.header_table.dynamic_entries), ref.header_table_size)
        try:
            expected = wanted(ref.decode(data, raw=True))
        except hpack.HPACKDecodingError as exc:
            try:
                got: object = ours.decode(data)
            except hpack.HPACKDecodingError as mine:
                got = mine
            seen.append(("error", exc, got))
            return seen
        seen.append(("ok", expected, ours.decode(data)))
        assert ours.entries == list(ref.header_table.dynamic_entries)
        assert ours.header_table_size == ref.header_table_size
        if (ours.entries, ours.header_table_size) == before:
            # A block that left the table as it was may come again (a remembered answer).
            assert ours.decode(data) == expected
    return seen


@settings(max_examples=300, deadline=None)
@given(st.lists(block, min_size=1, max_size=8))
def test_encoded_blocks_give_the_reference_fields_and_table(blocks) -> None:
    for kind, expected, got in both(encode(blocks)):
        assert kind == "ok"
        assert got == expected


@settings(max_examples=400, deadline=None)
@given(
    st.lists(block, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=3),
    st.integers(min_value=0, max_value=3),
)
def test_damaged_blocks_are_refused_as_the_reference_refuses_them(blocks, flips, cut) -> None:
    wire = encode(blocks)
    damaged = []
    for data in wire:
        data = bytearray(data)
        for at, octet in flips:
            if data:
                data[at % len(data)] = octet
        damaged.append(bytes(data[: max(0, len(data) - cut)]))
    for kind, expected, got in both(damaged):
        if kind == "ok":
            assert got == expected
        elif not isinstance(got, Exception):
            # Decoded where the reference refused: only for what this walk does not read (a
            # value's Huffman code in a field it skips) and the list limit it does not keep.
            assert "Huffman" in str(expected) or isinstance(
                expected, hpack.OversizedHeaderListError
            ), expected


def test_a_repeated_indexed_block_follows_the_table() -> None:
    """The same bytes of indexed fields after the table changed: the new entries' values, not
    the remembered ones."""
    ours = Decoder()
    encoder = hpack.Encoder()
    first = encoder.encode([(b":path", b"/one")], huffman=False)  # enters the table at 62
    assert ours.decode(first) == {b":path": b"/one"}
    assert ours.decode(b"\xbe") == {b":path": b"/one"}  # index 62
    assert ours.decode(b"\xbe") == {b":path": b"/one"}  # the remembered answer
    ours.decode(encoder.encode([(b":path", b"/two")], huffman=True))
    assert ours.decode(b"\xbe") == {b":path": b"/two"}
    assert ours.decode(b"\xbf") == {b":path": b"/one"}


def test_a_repeated_block_of_literals_outside_the_table_follows_the_table() -> None:
    """nginx's answers: indexed fields and literals that stay out of the table (server, date,
    content-type), the same bytes for every answer within a second: the remembered fields
    while the table stays, the new entry's value once it changed."""
    ours = Decoder()
    encoder = hpack.Encoder()
    ours.decode(encoder.encode([(b"content-type", b"text/plain")]))  # enters the table at 62
    answer = b"\x88\xbe" + encoder.encode(
        [NeverIndexedHeaderTuple(b"server", b"nginx"), NeverIndexedHeaderTuple(b"date", b"x")]
    )
    first = ours.decode(answer)
    assert first == {b":status": b"200", b"content-type": b"text/plain"}
    assert ours.decode(answer) is first  # remembered, not walked again
    ours.decode(encoder.encode([(b"content-type", b"application/json")]))  # now at 62
    assert ours.decode(answer) == {b":status": b"200", b"content-type": b"application/json"}
    grown = encoder.encode([(b"content-type", b"text/html")])  # enters the table: not kept
    ours.decode(grown)
    assert grown not in ours._memo and ours.entries[0] == (b"content-type", b"text/html")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62 in an empty table"),
        (b"\x82\x20", "size update after a field"),
        (b"\x3f\xe2\x1f", "size update to 4097 over 4096"),
        (b"\xff", "integer cut off"),
        (b"\xff\xff\xff\xff\xff\xff\x01", "integer over 6 octets"),
        (b"\x40\x05ab", "name cut off"),
        (b"\x44\x05ab", "value cut off"),
        (b"\x44\x81\x00", "value's Huffman code invalid"),
        (b"\x0f", "name index cut off"),
    ],
)
def test_bad_blocks_are_refused_by_both(data: bytes, why: str) -> None:
    with pytest.raises(hpack.HPACKDecodingError):
        hpack.Decoder().decode(data, raw=True)
    with pytest.raises(hpack.HPACKDecodingError):
        Decoder().decode(data)


def test_a_table_over_the_allowed_size_is_refused_at_the_next_block() -> None:
    ours = Decoder()
    ours.max_allowed_table_size = 100  # the other side's SETTINGS lowered it; no update came
    with pytest.raises(hpack.InvalidTableSizeError):
        ours.decode(b"\x82")


def test_remembered_blocks_stay_few_and_short() -> None:
    """A peer sending many distinct long blocks of indexed fields or of literals outside the
    table (a header block may have up to 1 MiB) must not grow what is remembered: 64 blocks of
    128 bytes at most."""
    ours, ref = Decoder(), hpack.Decoder(max_header_list_size=1 << 30)
    for n in range(100):
        literal = hpack.Encoder().encode([NeverIndexedHeaderTuple(b"x-n", b"v" * (n * 2))])
        for block in (
            bytes([0x82 + n % 60]) * (1 + n % 100),
            b"\x82" * 1_000 + bytes([0x83 + n % 50]),
            b"\x82" + literal,
        ):
            assert ours.decode(block) == wanted(ref.decode(block, raw=True))
    assert len(ours._memo) <= 64
    assert all(len(block) <= 128 for block in ours._memo)
