"""The L7 path's HTTP/1 codec against h11 as the reference: what the codec writes, h11 reads
as meant (framing, keep-alive); what h11 writes, the codec reads the same however the bytes are
split; malformed input is an error, never a silent guess."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.protocol.http1_codec import (
    END,
    Http1Error,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    Trailers,
    request_head,
    response_head,
)

bodies = st.binary(max_size=3000)
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"])
targets = st.from_regex(rb"\A/[a-z0-9/._\-]{0,30}(\?[a-z0-9=&]{0,20})?\Z")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [p for p in pieces if p]  # b"" is the peer closing


def requests_read(data: bytes, cuts: list[int]) -> list[tuple[bytes, bytes, bytes]]:
    reader = RequestReader()
    out: list[tuple[bytes, bytes, bytes]] = []
    body = b""
    head: RequestHead | None = None
    for piece in [*split(data, cuts), b""]:
        reader.feed(piece)
        while (event := reader.next_event()) is not None:
            if isinstance(event, RequestHead):
                head, body = event, b""
            elif event is END:
                assert head is not None
                out.append((head.method, head.target, body))
            else:
                body += event  # type: ignore[operator]
    return out


@given(
    st.lists(st.tuples(methods, targets, bodies, st.booleans()), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_pipelined_requests_written_by_the_codec_read_the_same_by_h11_and_the_codec(
    reqs: list[tuple[bytes, bytes, bytes, bool]], cuts: list[int]
) -> None:
    wire = b""
    for method, target, body, chunked in reqs:
        headers = [(b"host", b"web"), (b"x-n", b"1")]
        if not chunked:
            headers.append((b"content-length", str(len(body)).encode()))
        head, framing = request_head(method, target, headers, chunked=chunked)
        half = len(body) // 2  # bodies go out in pieces, as they are streamed
        wire += head + framing.data(body[:half]) + framing.data(body[half:]) + framing.end()
    expected = [(m, t, b) for m, t, b, _ in reqs]

    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    seen: list[tuple[bytes, bytes, bytes]] = []
    for _ in reqs:
        request = server.next_event()
        assert isinstance(request, h11.Request)
        body = b""
        while isinstance(event := server.next_event(), h11.Data):
            body += event.data
        assert isinstance(event, h11.EndOfMessage)
        seen.append((request.method, request.target, body))
        server.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
        server.send(h11.EndOfMessage())
        server.start_next_cycle()
    assert seen == expected
    assert requests_read(wire, cuts) == expected


@given(
    status=st.sampled_from([200, 201, 204, 304, 404, 503]),
    method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
    framing=st.sampled_from(["length", "chunked", "none"]),
    http11=st.booleans(),
    wants_close=st.booleans(),
    body=bodies,
)
def test_answers_written_by_the_codec_are_read_by_h11_as_meant(
    status: int, method: bytes, framing: str, http11: bool, wants_close: bool, body: bytes
) -> None:
    """An upstream's answer as the agent passes it on, to a client of either HTTP version that
    did or did not ask to close: h11 (the client) gets the body (none for HEAD/204/304) and
    the same idea of whether the connection stays open."""
    headers = [(b"server", b"up")]
    if framing == "length":
        headers.append((b"content-length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
    keep_asked = http11 and not wants_close
    head, writer, keep = response_head(
        status, b"", headers, method=method, peer_http11=http11, keep_alive=keep_asked
    )
    bodiless = method == b"HEAD" or status in (204, 304)
    wire = head + writer.data(body[:7]) + writer.data(body[7:]) + writer.end()

    client = h11.Connection(h11.CLIENT)
    req_headers = [(b"host", b"web")] + ([(b"connection", b"close")] if wants_close else [])
    # (h11 sends only HTTP/1.1: what a 1.0 client would get it reads all the same)
    client.send(h11.Request(method=method, target="/", headers=req_headers))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    if not keep:
        client.receive_data(b"")  # the agent closes after an answer it did not keep alive
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == status
    got = b""
    while isinstance(event := client.next_event(), h11.Data):
        got += event.data
    assert isinstance(event, h11.EndOfMessage)
    assert got == (b"" if bodiless else body)
    assert keep == (client.their_state is h11.DONE)
    assert keep == keep_asked or (not bodiless and framing == "none" and not http11)


def read_answer(method: bytes, pieces: list[bytes]) -> tuple[ResponseReader, list[object]]:
    reader = ResponseReader(method)
    events: list[object] = []
    for piece in pieces:
        reader.feed(piece)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return reader, events


@given(body=bodies, cuts=st.lists(st.integers(min_value=0), max_size=6), interim=st.booleans())
def test_an_h11_answer_split_anywhere_reads_whole_and_reusable(
    body: bytes, cuts: list[int], interim: bool
) -> None:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
    server.next_event()
    wire = server.send(h11.InformationalResponse(status_code=100, headers=[])) if interim else b""
    wire += server.send(h11.Response(status_code=200, headers=[(b"x-a", b"1")]))  # chunked
    wire += server.send(h11.Data(data=body)) if body else b""
    wire += server.send(h11.EndOfMessage())
    reader, events = read_answer(b"GET", split(wire, cuts))
    assert isinstance(events[0], ResponseHead) and events[0].status == 200
    assert b"".join(e for e in events[1:-1] if isinstance(e, bytes)) == body
    assert events[-1] is END and reader.reusable


def test_a_head_answer_ends_at_its_head_and_bytes_after_it_spoil_the_connection() -> None:
    head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    reader, events = read_answer(b"HEAD", [head[:30], head[30:]])
    assert [type(e) for e in events] == [ResponseHead, type(END)] and reader.reusable
    reader, _ = read_answer(b"HEAD", [head + b"123456789"])  # a body a HEAD must not have
    assert not reader.reusable


@pytest.mark.parametrize(
    ("wire", "eof", "body", "reusable"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the close", True, b"until the close", False),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
            False,
            b"hi",
            False,
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False, b"", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False, b"", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200", False, b"hi", False),
    ],
    ids=["http10-until-close", "connection-close", "204", "304", "stray-bytes"],
)
def test_answer_framing_and_reuse(wire: bytes, eof: bool, body: bytes, reusable: bool) -> None:
    reader, events = read_answer(b"GET", [wire, b""] if eof else [wire])
    assert events[-1] is END
    assert b"".join(e for e in events if isinstance(e, bytes)) == body
    assert reader.reusable is reusable


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the upstream closes
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",  # never asked for
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_a_broken_answer_is_an_error(wire: bytes) -> None:
    with pytest.raises(Http1Error):
        read_answer(b"GET", [wire, b""])


@pytest.mark.parametrize(
    ("name", "value", "target"),
    [(b"x-a", b"v\r\nx-injected: 1", b"/"), (b"x-a", b"v\0", b"/"), (b"x-a", b"v", b"/a b")],
)
def test_heads_that_would_split_are_refused(name: bytes, value: bytes, target: bytes) -> None:
    with pytest.raises(Http1Error):
        request_head(b"GET", target, [(b"host", b"web"), (name, value)], chunked=False)
    if target == b"/":
        with pytest.raises(Http1Error):
            response_head(
                200, b"", [(name, value)], method=b"GET", peer_http11=True, keep_alive=True
            )


def test_an_oversized_request_head_is_an_error_not_a_growing_buffer() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: web\r\nx-big: ")
    for _ in range(5):
        reader.feed(b"a" * 40_000)
    with pytest.raises(Http1Error):
        reader.next_event()


def test_a_request_with_a_transfer_coding_other_than_chunked_is_an_error() -> None:
    reader = RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    with pytest.raises(Http1Error, match="only chunked"):
        reader.next_event()


@given(cuts=st.lists(st.integers(min_value=0), max_size=6), body=bodies)
def test_trailers_are_read_and_written_again_both_ways(cuts: list[int], body: bytes) -> None:
    """A chunked request and a chunked answer with trailer fields, as h11 writes them, split
    anywhere: the codec gives them as a `Trailers` event before END, and writes them after the
    last chunk where h11 reads them (less the fields a trailer may not carry)."""
    trailers = [(b"x-sum", b"42"), (b"host", b"elsewhere"), (b"x-b", b"2")]
    kept = [(b"x-sum", b"42"), (b"x-b", b"2")]
    client = h11.Connection(h11.CLIENT)
    wire = client.send(h11.Request(method="POST", target="/", headers=[
        (b"host", b"web"), (b"transfer-encoding", b"chunked")]))  # fmt: skip
    wire += client.send(h11.Data(data=body)) if body else b""
    wire += client.send(h11.EndOfMessage(headers=trailers))
    reader = RequestReader()
    events: list[object] = []
    for piece in split(wire, cuts):
        reader.feed(piece)
        while (event := reader.next_event()) is not None:
            events.append(event)
    assert isinstance(events[-2], Trailers) and events[-1] is END
    assert sorted((n.lower(), v) for n, v in events[-2].headers) == sorted(trailers)
    head, writer = request_head(b"POST", b"/", [(b"host", b"web")], chunked=True)
    server = h11.Connection(h11.SERVER)
    server.receive_data(head + writer.data(body) + writer.end(events[-2].headers))
    while not isinstance(event := server.next_event(), h11.EndOfMessage):
        assert event is not h11.NEED_DATA
    assert sorted(event.headers) == sorted(kept)

    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    while not isinstance(server.next_event(), h11.EndOfMessage):
        pass
    answer = server.send(h11.Response(status_code=200, headers=[(b"x-a", b"1")]))  # chunked
    answer += server.send(h11.Data(data=body)) if body else b""
    answer += server.send(h11.EndOfMessage(headers=trailers))
    reader_r, got = read_answer(b"POST", split(answer, cuts))
    assert isinstance(got[-2], Trailers) and got[-1] is END and reader_r.reusable
    out, writer2, _ = response_head(
        200, b"", [(b"transfer-encoding", b"chunked")], method=b"POST", peer_http11=True,
        keep_alive=True,
    )  # fmt: skip
    client.receive_data(out + writer2.data(body) + writer2.end(got[-2].headers))
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert event is not h11.NEED_DATA
    assert sorted(event.headers) == sorted(kept)


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\nContent-Length: 5\n\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\n"],
    ids=["lf", "crlf-then-lf"],
)
def test_a_head_answer_ending_in_bare_lf_ends_there(head: bytes) -> None:
    """The parser refuses bare LFs in an answer: the answer to a HEAD is refused at its empty
    line too, however it was split, instead of waiting for a CRLF CRLF that never comes."""
    for cut in range(1, len(head)):
        reader = ResponseReader(b"HEAD")
        reader.feed(head[:cut])
        reader.feed(head[cut:])
        with pytest.raises(Http1Error):
            reader.next_event()
        with pytest.raises(Http1Error):
            read_answer(b"GET", [head + b"hello"])
