"""The wire protocol between nodemesh-cni (client) and the node agent (server), without I/O.

Transport
    A unix stream socket, by default /var/run/nodemesh/cni.sock (the agent creates it mode 0600).
    The plugin connects, writes one request frame, waits for one reply frame and closes. A server
    must answer requests on one connection in order; the plugin never sends a second one.

Framing
    One JSON object per frame, UTF-8, ended by a single b"\\n" (the encoders below escape every
    newline inside strings, so a frame never contains a raw one), at most MAX_FRAME_BYTES long
    including the newline. `FrameBuffer` splits a byte stream into frames; asyncio servers may use
    `StreamReader.readuntil(b"\\n")` with `limit=MAX_FRAME_BYTES` instead.

Request (version 1)
    {"v": 1, "id": "<1-64 chars>", "cmd": "add" | "del" | "check", "pod": POD}
    {"v": 1, "id": "...", "cmd": "gc", "attachments": [{"container_id": "...", "ifname": "eth0"}]}
    {"v": 1, "id": "...", "cmd": "status"}

    POD = {"container_id": str, "netns": str, "ifname": str, "namespace": str, "name": str,
           "uid": str, "interfaces": [{"name": str, "mac": str, "sandbox": str}],
           "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1" | "",
                    "interface": int | null}]}
    container_id and ifname are never empty. For add and check, netns, namespace and name are
    never empty either; for del any of them may be "" (the runtime may no longer know them).
    interfaces and ips are copied from the CNI prevResult (empty lists when there was none).

Reply (version 1)
    {"v": 1, "id": "<the request's id>", "status": "ok" | "error" | "retry",
     "message": str, "meshed": true | false | null}

    add    ok + meshed=true: nodemesh rules and listeners are in place in the pod's netns.
           ok + meshed=false: the agent decided the pod is not meshed; nothing was done.
           retry: the agent cannot decide yet (e.g. not synced): the plugin fails with CNI code
           11 so the runtime retries. error: enrolment failed; message says why.
    del    ok, also for a pod the agent never knew (idempotent). error is logged by the plugin.
    check  ok: rules and listeners are in place (meshed=true) or none are expected
           (meshed=false). error: something is missing; message says what.
    gc     ok once the agent has forgotten every pod not in `attachments`.
    status ok when the agent can serve add right now; retry or error otherwise.

Deadlines: the plugin waits up to its agentTimeoutSeconds (default 30 s) for an add reply and
5 s for the other commands, then treats the agent as unreachable (CNI code 11 for add and check).

A server that cannot decode a request answers status "error" with the request's id when it could
read one (`ProtocolError.request_id`), else with id "".

The records are plain slotted classes rather than dataclasses: the plugin imports this module for
every pod, and `dataclasses` pulls in `inspect`, which costs about 9 ms of interpreter start.
"""

from __future__ import annotations

import json
import os

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 4 * 1024 * 1024
COMMANDS = ("add", "del", "check", "gc", "status")
POD_COMMANDS = ("add", "del", "check")
STATUSES = ("ok", "error", "retry")
_MAX_ID_LENGTH = 64


class ProtocolError(ValueError):
    """A frame that does not follow this protocol; `request_id` is set when it could be read."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class _Record:
    """Equality and repr from __slots__, so records behave like frozen dataclasses."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(_hashable(getattr(self, f)) for f in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


class Interface(_Record):
    """An interface from the CNI result; `sandbox` is the netns path for in-pod interfaces."""

    __slots__ = ("name", "mac", "sandbox")
    name: str
    mac: str
    sandbox: str

    def __init__(self, *, name: str, mac: str = "", sandbox: str = "") -> None:
        self._init(name=name, mac=mac, sandbox=sandbox)


class PodIP(_Record):
    """An address from the CNI result, in CIDR form; `interface` indexes Pod.interfaces."""

    __slots__ = ("address", "gateway", "interface")
    address: str
    gateway: str
    interface: int | None

    def __init__(self, *, address: str, gateway: str = "", interface: int | None = None) -> None:
        self._init(address=address, gateway=gateway, interface=interface)

    @property
    def ip(self) -> str:
        """The address without its prefix length."""
        return self.address.split("/", 1)[0]


class Pod(_Record):
    """One pod attachment as the runtime described it to the plugin."""

    __slots__ = ("container_id", "netns", "ifname", "namespace", "name", "uid", "interfaces", "ips")
    container_id: str
    netns: str
    ifname: str
    namespace: str
    name: str
    uid: str
    interfaces: tuple[Interface, ...]
    ips: tuple[PodIP, ...]

    def __init__(
        self,
        *,
        container_id: str,
        netns: str,
        ifname: str,
        namespace: str,
        name: str,
        uid: str = "",
        interfaces: tuple[Interface, ...] = (),
        ips: tuple[PodIP, ...] = (),
    ) -> None:
        self._init(
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            namespace=namespace,
            name=name,
            uid=uid,
            interfaces=tuple(interfaces),
            ips=tuple(ips),
        )


class Attachment(_Record):
    """A (container id, interface) pair the runtime still considers valid; used by gc."""

    __slots__ = ("container_id", "ifname")
    container_id: str
    ifname: str

    def __init__(self, *, container_id: str, ifname: str) -> None:
        self._init(container_id=container_id, ifname=ifname)


class Request(_Record):
    """A command from the plugin; `pod` is set for add/del/check, `attachments` for gc."""

    __slots__ = ("id", "command", "pod", "attachments")
    id: str
    command: str
    pod: Pod | None
    attachments: tuple[Attachment, ...]

    def __init__(
        self,
        *,
        command: str,
        id: str | None = None,
        pod: Pod | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        if (pod is None) == (command in POD_COMMANDS):
            raise ValueError(f"command {command!r} {'needs' if pod is None else 'takes no'} pod")
        self._init(
            id=id or new_request_id(),
            command=command,
            pod=pod,
            attachments=tuple(attachments),
        )


class Reply(_Record):
    """The agent's answer to one request."""

    __slots__ = ("id", "status", "message", "meshed")
    id: str
    status: str
    message: str
    meshed: bool | None

    def __init__(
        self, *, id: str, status: str, message: str = "", meshed: bool | None = None
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._init(id=id, status=status, message=message, meshed=meshed)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def to(
        cls, request: Request, *, status: str, message: str = "", meshed: bool | None = None
    ) -> Reply:
        """The reply to `request` (copies its id)."""
        return cls(id=request.id, status=status, message=message, meshed=meshed)


def new_request_id() -> str:
    return os.urandom(8).hex()


# --- encoding ---------------------------------------------------------------------------------


def _frame(obj: dict[str, object]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return data


def _pod_to_json(pod: Pod) -> dict[str, object]:
    return {
        "container_id": pod.container_id,
        "netns": pod.netns,
        "ifname": pod.ifname,
        "namespace": pod.namespace,
        "name": pod.name,
        "uid": pod.uid,
        "interfaces": [
            {"name": i.name, "mac": i.mac, "sandbox": i.sandbox} for i in pod.interfaces
        ],
        "ips": [
            {"address": ip.address, "gateway": ip.gateway, "interface": ip.interface}
            for ip in pod.ips
        ],
    }


def encode_request(request: Request) -> bytes:
    """One frame (ending in a newline) carrying `request`."""
    obj: dict[str, object] = {"v": PROTOCOL_VERSION, "id": request.id, "cmd": request.command}
    if request.pod is not None:
        obj["pod"] = _pod_to_json(request.pod)
    if request.command == "gc":
        obj["attachments"] = [
            {"container_id": a.container_id, "ifname": a.ifname} for a in request.attachments
        ]
    return _frame(obj)


def encode_reply(reply: Reply) -> bytes:
    """One frame (ending in a newline) carrying `reply`."""
    return _frame(
        {
            "v": PROTOCOL_VERSION,
            "id": reply.id,
            "status": reply.status,
            "message": reply.message,
            "meshed": reply.meshed,
        }
    )


# --- decoding ---------------------------------------------------------------------------------


def _load(frame: bytes) -> dict[str, object]:
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    return obj


def _read_id(obj: dict[str, object]) -> str | None:
    value = obj.get("id")
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH:
        return value
    return None


def _check_header(obj: dict[str, object]) -> str:
    request_id = _read_id(obj)
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {obj.get('v')!r} (speaks {PROTOCOL_VERSION})",
            request_id=request_id,
        )
    if request_id is None:
        raise ProtocolError(f"id must be a string of 1-{_MAX_ID_LENGTH} characters")
    return request_id


def _field(obj: dict[str, object], key: str, kind: type, where: str, request_id: str) -> object:
    value = obj.get(key)
    # bool is an int subclass; an "interface": true must not pass for an index.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{where}.{key} must be {kind.__name__}", request_id=request_id)
    return value


def _string(obj: dict[str, object], key: str, where: str, rid: str, *, empty: bool) -> str:
    value = _field(obj, key, str, where, rid)
    assert isinstance(value, str)
    if not empty and not value:
        raise ProtocolError(f"{where}.{key} must not be empty", request_id=rid)
    return value


def _objects(obj: dict[str, object], key: str, where: str, rid: str) -> list[dict[str, object]]:
    items = _field(obj, key, list, where, rid)
    assert isinstance(items, list)
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"{where}.{key}[{n}] must be an object", request_id=rid)
    return items


def _decode_pod(obj: object, *, command: str, rid: str) -> Pod:
    if not isinstance(obj, dict):
        raise ProtocolError("pod must be an object", request_id=rid)
    loose = command == "del"
    interfaces = tuple(
        Interface(
            name=_string(i, "name", "pod.interfaces[]", rid, empty=False),
            mac=_string(i, "mac", "pod.interfaces[]", rid, empty=True),
            sandbox=_string(i, "sandbox", "pod.interfaces[]", rid, empty=True),
        )
        for i in _objects(obj, "interfaces", "pod", rid)
    )
    ips = []
    for item in _objects(obj, "ips", "pod", rid):
        index = item.get("interface")
        if index is not None and (
            isinstance(index, bool) or not isinstance(index, int) or index < 0
        ):
            raise ProtocolError("pod.ips[].interface must be a non-negative int", request_id=rid)
        ips.append(
            PodIP(
                address=_string(item, "address", "pod.ips[]", rid, empty=False),
                gateway=_string(item, "gateway", "pod.ips[]", rid, empty=True),
                interface=index,
            )
        )
    return Pod(
        container_id=_string(obj, "container_id", "pod", rid, empty=False),
        netns=_string(obj, "netns", "pod", rid, empty=loose),
        ifname=_string(obj, "ifname", "pod", rid, empty=False),
        namespace=_string(obj, "namespace", "pod", rid, empty=loose),
        name=_string(obj, "name", "pod", rid, empty=loose),
        uid=_string(obj, "uid", "pod", rid, empty=True),
        interfaces=interfaces,
        ips=tuple(ips),
    )


def decode_request(frame: bytes) -> Request:
    """The request in `frame` (with or without its newline); ProtocolError if malformed."""
    obj = _load(frame)
    rid = _check_header(obj)
    command = obj.get("cmd")
    if command not in COMMANDS:
        raise ProtocolError(f"unknown command {command!r}", request_id=rid)
    assert isinstance(command, str)
    if command in POD_COMMANDS:
        return Request(
            id=rid, command=command, pod=_decode_pod(obj.get("pod"), command=command, rid=rid)
        )
    attachments: tuple[Attachment, ...] = ()
    if command == "gc":
        attachments = tuple(
            Attachment(
                container_id=_string(a, "container_id", "attachments[]", rid, empty=False),
                ifname=_string(a, "ifname", "attachments[]", rid, empty=False),
            )
            for a in _objects(obj, "attachments", "request", rid)
        )
    return Request(id=rid, command=command, attachments=attachments)


def decode_reply(frame: bytes) -> Reply:
    """The reply in `frame` (with or without its newline); ProtocolError if malformed."""
    obj = _load(frame)
    rid = _check_header(obj)
    status = obj.get("status")
    if status not in STATUSES:
        raise ProtocolError(f"unknown status {status!r}", request_id=rid)
    message = obj.get("message", "")
    if not isinstance(message, str):
        raise ProtocolError("message must be a string", request_id=rid)
    meshed = obj.get("meshed")
    if meshed is not None and not isinstance(meshed, bool):
        raise ProtocolError("meshed must be true, false or null", request_id=rid)
    assert isinstance(status, str)
    return Reply(id=rid, status=status, message=message, meshed=meshed)


class FrameBuffer:
    """Splits a byte stream into frames; raises ProtocolError once a frame grows too long."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frames (without their newline) that `data` finished."""
        self._pending += data
        frames = []
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            frames.append(bytes(self._pending[:end]))
            del self._pending[: end + 1]
        if len(self._pending) >= MAX_FRAME_BYTES:
            raise ProtocolError(f"frame longer than {MAX_FRAME_BYTES} bytes")
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._pending)
