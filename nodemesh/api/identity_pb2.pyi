from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CertifyRequest(_message.Message):
    __slots__ = ("csr", "spiffe_id")
    CSR_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    spiffe_id: str
    def __init__(self, csr: _Optional[bytes] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class CertifyResponse(_message.Message):
    __slots__ = ("certificate_chain_pem", "not_before_unix_ms", "not_after_unix_ms", "renew_at_unix_ms")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RENEW_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: str
    not_before_unix_ms: int
    not_after_unix_ms: int
    renew_at_unix_ms: int
    def __init__(self, certificate_chain_pem: _Optional[str] = ..., not_before_unix_ms: _Optional[int] = ..., not_after_unix_ms: _Optional[int] = ..., renew_at_unix_ms: _Optional[int] = ...) -> None: ...
