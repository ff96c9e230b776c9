"""HPACK (RFC 7541) for the HTTP/2 observer: the header table kept exactly, only wanted fields read.

The observer needs a handful of fields per header block (`WANTED`) but must keep the
connection's dynamic table in step with the peer's encoder, so every block is walked to its
end. The `hpack` package's Decoder builds every field of every block (a tuple object, a debug
log call and a UTF-8 check each, a copy of the rest of the block per literal): at gRPC's
steady state that was 60 % of the observer's CPU per call (bench/parsers.py, h2-grpc-unary).
This walk does only what the table and the wanted fields need:
- an indexed field is a table lookup, kept only if its name is wanted;
- a literal that enters the table is decoded (Huffman included), as the table holds it;
- a literal that does not enter the table is decoded only if its name is wanted, else skipped
  by its length (so its Huffman code is not checked: the endpoints do that);
- a short block that left the table as it was (one-byte indexed fields: a repeated request's
  or answer's block once its fields are in the table; or literals that stay out of it, as
  nginx sends every answer's `server`, `date` and `content-type`) gives the same fields as the
  last time the same bytes came, until the table changes: those are remembered (64 blocks of
  at most 128 bytes, so a peer cannot make the memory grow).
The static table and the Huffman code are the `hpack` package's. Errors are
`hpack.HPACKDecodingError` (and its subclasses), as from `hpack.Decoder`, for the same
reasons: index 0 or past the table, a table size update over the allowed size or after a
field, an integer over 5 continuation bytes, a block that ends inside a field, an invalid
Huffman string where one is decoded. Unlike `hpack.Decoder` there is no header list size
limit: nothing but the wanted fields is kept, so a block cannot make it hold more than the
block's own bytes (the frame reader bounds those).
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError, InvalidTableIndexError, InvalidTableSizeError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

# What the observer reads (nodeagent.protocol.http2); the first of each in a block counts.
WANTED = frozenset(
    {b":method", b":authority", b"host", b":path", b"content-type", b":status", b"grpc-status"}
)

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)
DEFAULT_TABLE_SIZE = HeaderTable.DEFAULT_SIZE
_ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1
_MAX_CONTINUATION = 5  # integer octets after the prefix, as hpack.Decoder allows
_MEMO_LIMIT = 64  # blocks remembered per direction
_MEMO_BLOCK = 128  # bytes, at most, of a block remembered (typical ones: 5-30)


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer whose prefix is in data[pos] (section 5.1), and the position after it."""
    mask = (1 << prefix_bits) - 1
    number = data[pos] & mask
    pos += 1
    if number < mask:
        return number, pos
    shift = 0
    for _ in range(_MAX_CONTINUATION):
        if pos >= len(data):
            raise HPACKDecodingError("header block ends inside an integer")
        octet = data[pos]
        pos += 1
        number += (octet & 0x7F) << shift
        if octet < 0x80:
            return number, pos
        shift += 7
    raise HPACKDecodingError(f"integer representation longer than {_MAX_CONTINUATION + 1} octets")


class Decoder:
    """One direction's header blocks, in order (the dynamic table is the connection's)."""

    __slots__ = ("_table", "_size", "_max_size", "max_allowed_table_size", "_memo", "_changes")

    def __init__(self) -> None:
        self._table: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is [0]
        self._size = 0
        self._max_size = DEFAULT_TABLE_SIZE
        # The largest table the peer may use: SETTINGS_HEADER_TABLE_SIZE of the other side.
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self._memo: dict[bytes, dict[bytes, bytes]] = {}
        self._changes = 0  # table changes so far: a block that made none may be remembered

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @property
    def entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests)."""
        return list(self._table)

    def decode(self, data: bytes) -> dict[bytes, bytes]:
        """The wanted fields of one whole header block (name -> value, the first of each).
        The returned dict may be shared with an earlier block's: do not change it."""
        short = len(data) <= _MEMO_BLOCK
        if short:
            fields = self._memo.get(data)
            if fields is not None:
                self._check_size()
                return fields
            if data and min(data) > 0x80 and max(data) < 0xFF:
                fields = self._indexed_only(data)
                self._check_size()
                self._remember(data, fields)
                return fields
        changes = self._changes
        fields = {}
        pos, end = 0, len(data)
        any_field = False
        while pos < end:
            octet = data[pos]
            if octet & 0x80:  # indexed field (section 6.1)
                index = octet & 0x7F
                if index == 0x7F:
                    index, pos = _integer(data, pos, 7)
                else:
                    pos += 1
                name, value = self._entry(index)
                if name in WANTED and name not in fields:
                    fields[name] = value
                any_field = True
            elif octet & 0x40:  # literal, enters the table (6.2.1)
                name, pos = self._name(data, pos, 6)
                value, pos = self._string(data, pos)
                self._add(name, value)
                if name in WANTED and name not in fields:
                    fields[name] = value
                any_field = True
            elif octet & 0x20:  # dynamic table size update (6.3)
                if any_field:
                    raise HPACKDecodingError("table size update after a header field")
                size, pos = _integer(data, pos, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError(
                        f"table size update to {size} over the allowed "
                        f"{self.max_allowed_table_size}"
                    )
                self._resize(size)
            else:  # literal, not indexed (6.2.2) or never indexed (6.2.3)
                name, pos = self._name(data, pos, 4)
                if name in WANTED and name not in fields:
                    value, pos = self._string(data, pos)
                    fields[name] = value
                else:
                    pos = self._skip(data, pos)
                any_field = True
        self._check_size()
        if short and self._changes == changes:
            self._remember(data, fields)
        return fields

    def _remember(self, data: bytes, fields: dict[bytes, bytes]) -> None:
        memo = self._memo
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[data] = fields

    def _indexed_only(self, data: bytes) -> dict[bytes, bytes]:
        fields: dict[bytes, bytes] = {}
        for index in data:
            name, value = self._entry(index & 0x7F)
            if name in WANTED and name not in fields:
                fields[name] = value
        return fields

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LENGTH:
            return _STATIC[index - 1]
        at = index - _STATIC_LENGTH - 1
        if index > 0 and at < len(self._table):
            return self._table[at]
        raise InvalidTableIndexError(f"table index {index} is not in the table")

    def _name(self, data: bytes, pos: int, prefix_bits: int) -> tuple[bytes, int]:
        index, after = _integer(data, pos, prefix_bits)
        if index:
            return self._entry(index)[0], after
        return self._string(data, after)

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise HPACKDecodingError("header block ends before a string")
        huffman = data[pos] & 0x80
        length, pos = _integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HPACKDecodingError("header block ends inside a string")
        raw = data[pos:end]
        return (decode_huffman(raw) if huffman else raw), end

    def _skip(self, data: bytes, pos: int) -> int:
        if pos >= len(data):
            raise HPACKDecodingError("header block ends before a string")
        length, pos = _integer(data, pos, 7)
        if pos + length > len(data):
            raise HPACKDecodingError("header block ends inside a string")
        return pos + length

    def _add(self, name: bytes, value: bytes) -> None:
        self._memo.clear()
        self._changes += 1
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:
            self._table.clear()
            self._size = 0
            return
        self._table.appendleft((name, value))
        self._size += size
        self._evict()

    def _resize(self, size: int) -> None:
        self._memo.clear()
        self._changes += 1
        self._max_size = size
        self._evict()

    def _evict(self) -> None:
        table = self._table
        while self._size > self._max_size:
            name, value = table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD

    def _check_size(self) -> None:
        # As hpack.Decoder: the table in use must fit what this side allows (a peer that
        # lowered its limit must see the encoder shrink the table by the next block).
        if self._max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError(
                f"table size {self._max_size} over the allowed {self.max_allowed_table_size}"
            )
