"""The plugin <-> agent wire protocol: round trips, validation, framing, fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nodemesh_cni.protocol import (
    MAX_FRAME_BYTES,
    Attachment,
    FrameBuffer,
    Interface,
    Pod,
    PodIP,
    ProtocolError,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)

POD = Pod(
    container_id="0123abcd",
    netns="/var/run/netns/cni-1",
    ifname="eth0",
    namespace="shop",
    name="web-1",
    uid="u-1",
    interfaces=(Interface(name="eth0", mac="aa:bb:cc:dd:ee:ff", sandbox="/var/run/netns/cni-1"),),
    ips=(PodIP(address="10.244.1.5/24", gateway="10.244.1.1", interface=0),),
)


def test_add_request_wire_format_is_pinned() -> None:
    frame = encode_request(Request(id="r1", command="add", pod=POD))
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert json.loads(frame) == {
        "v": 1,
        "id": "r1",
        "cmd": "add",
        "pod": {
            "container_id": "0123abcd",
            "netns": "/var/run/netns/cni-1",
            "ifname": "eth0",
            "namespace": "shop",
            "name": "web-1",
            "uid": "u-1",
            "interfaces": [
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
        },
    }


@pytest.mark.parametrize(
    "request_",
    [
        Request(command="add", pod=POD),
        Request(
            command="del", pod=Pod(container_id="c", netns="", ifname="eth0", namespace="", name="")
        ),
        Request(command="check", pod=POD),
        Request(command="gc", attachments=(Attachment(container_id="c1", ifname="eth0"),)),
        Request(command="gc"),
        Request(command="status"),
    ],
    ids=lambda r: r.command,
)
def test_requests_round_trip(request_: Request) -> None:
    assert decode_request(encode_request(request_)) == request_


@pytest.mark.parametrize("meshed", [True, False, None])
@pytest.mark.parametrize("status", ["ok", "error", "retry"])
def test_replies_round_trip(status: str, meshed: bool | None) -> None:
    reply = Reply(id="r9", status=status, message="why\nnot", meshed=meshed)
    frame = encode_reply(reply)
    assert frame.count(b"\n") == 1  # the newline in the message is escaped
    assert decode_reply(frame) == reply


def test_reply_to_copies_the_request_id() -> None:
    request = Request(command="status")
    assert Reply.to(request, status="ok").id == request.id
    assert Request(command="status").id != request.id  # fresh random ids


def test_records_are_immutable_and_hashable() -> None:
    with pytest.raises(AttributeError):
        POD.name = "other"  # type: ignore[misc]
    assert hash(POD) == hash(decode_request(encode_request(Request(command="add", pod=POD))).pod)
    assert POD.ips[0].ip == "10.244.1.5"


def _frame(**fields: object) -> bytes:
    base: dict[str, object] = {
        "v": 1,
        "id": "abc",
        "cmd": "add",
        "pod": json.loads(encode_request(Request(command="add", pod=POD)))["pod"],
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("frame", "message", "request_id"),
    [
        (b"{nope", "not JSON", None),
        (b"[1, 2]", "not a JSON object", None),
        (b"[" * 100_000, "not JSON", None),
        (_frame(v=2), "unsupported protocol version 2", "abc"),
        (_frame(v=...), "unsupported protocol version None", "abc"),
        (_frame(id=""), "id must be", None),
        (_frame(id="x" * 65), "id must be", None),
        (_frame(cmd="attach"), "unknown command 'attach'", "abc"),
        (_frame(pod=None), "pod must be an object", "abc"),
        (_frame(pod={"container_id": "c"}), "pod.interfaces must be list", "abc"),
    ],
)
def test_bad_requests_name_the_problem_and_keep_the_id(
    frame: bytes, message: str, request_id: str | None
) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        decode_request(frame)
    assert caught.value.request_id == request_id


def test_add_needs_netns_namespace_and_name_but_del_does_not() -> None:
    pod = json.loads(encode_request(Request(command="add", pod=POD)))["pod"]
    for field in ("netns", "namespace", "name", "container_id", "ifname"):
        with pytest.raises(ProtocolError, match=f"pod.{field} must not be empty"):
            decode_request(_frame(pod={**pod, field: ""}))
    for field in ("netns", "namespace", "name"):
        assert decode_request(_frame(cmd="del", pod={**pod, field: ""})).command == "del"


def test_interface_index_must_be_an_int_not_a_bool() -> None:
    pod = json.loads(encode_request(Request(command="add", pod=POD)))["pod"]
    pod["ips"][0]["interface"] = True
    with pytest.raises(ProtocolError, match="interface"):
        decode_request(_frame(pod=pod))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"v": 1, "id": "a", "status": "maybe"}, "unknown status"),
        ({"v": 1, "id": "a", "status": "ok", "meshed": "yes"}, "meshed"),
        ({"v": 1, "id": "a", "status": "ok", "message": 3}, "message"),
        ({"v": 0, "id": "a", "status": "ok"}, "protocol version"),
    ],
)
def test_bad_replies_are_rejected(obj: dict[str, object], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_reply(json.dumps(obj).encode())


def test_constructors_refuse_inconsistent_requests() -> None:
    with pytest.raises(ValueError, match="needs pod"):
        Request(command="add")
    with pytest.raises(ValueError, match="takes no pod"):
        Request(command="status", pod=POD)
    with pytest.raises(ValueError, match="unknown command"):
        Request(command="attach")
    with pytest.raises(ValueError, match="unknown status"):
        Reply(id="a", status="fine")


def test_frame_buffer_splits_joins_and_bounds_frames() -> None:
    buffer = FrameBuffer()
    a = encode_reply(Reply(id="a", status="ok"))
    b = encode_reply(Reply(id="b", status="error"))
    stream = a + b
    assert buffer.feed(stream[:5]) == []
    assert buffer.pending == 5
    frames = buffer.feed(stream[5:])
    assert [decode_reply(f).id for f in frames] == ["a", "b"]
    assert buffer.pending == 0
    with pytest.raises(ProtocolError, match="longer than"):
        buffer.feed(b"x" * MAX_FRAME_BYTES)


def test_oversized_frames_are_refused_on_both_ends() -> None:
    many = tuple(Attachment(container_id="c" * 64, ifname="eth0") for _ in range(80_000))
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_request(Request(command="gc", attachments=many))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_request(b" " * (MAX_FRAME_BYTES + 1))


_text = st.text(max_size=40)
_pods = st.builds(
    Pod,
    container_id=st.text(min_size=1, max_size=64),
    netns=st.text(min_size=1, max_size=64),
    ifname=st.text(min_size=1, max_size=15),
    namespace=st.text(min_size=1, max_size=63),
    name=st.text(min_size=1, max_size=63),
    uid=_text,
    interfaces=st.lists(
        st.builds(Interface, name=st.text(min_size=1, max_size=15), mac=_text, sandbox=_text),
        max_size=3,
    ).map(tuple),
    ips=st.lists(
        st.builds(
            PodIP,
            address=st.text(min_size=1, max_size=43),
            gateway=_text,
            interface=st.none() | st.integers(min_value=0, max_value=10),
        ),
        max_size=3,
    ).map(tuple),
)


@given(pod=_pods, command=st.sampled_from(["add", "del", "check"]))
def test_any_pod_round_trips(pod: Pod, command: str) -> None:
    request = Request(command=command, pod=pod)
    frame = encode_request(request)
    assert frame.count(b"\n") == 1
    assert decode_request(frame) == request


@given(data=st.binary(max_size=300))
def test_garbage_only_ever_raises_protocol_error(data: bytes) -> None:
    for decode in (decode_request, decode_reply):
        try:
            decode(data)
        except ProtocolError:
            pass


@given(
    obj=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "v",
                        "id",
                        "cmd",
                        "pod",
                        "status",
                        "meshed",
                        "attachments",
                        "interfaces",
                        "ips",
                        "name",
                    ]
                ),
                children,
                max_size=6,
            )
        ),
        max_leaves=20,
    )
)
def test_json_of_any_shape_only_ever_raises_protocol_error(obj: object) -> None:
    data = json.dumps(obj).encode()
    for decode in (decode_request, decode_reply):
        try:
            decode(data)
        except ProtocolError:
            pass
