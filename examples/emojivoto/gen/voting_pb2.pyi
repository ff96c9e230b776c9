from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VoteRequest(_message.Message):
    __slots__ = ("shortcode",)
    SHORTCODE_FIELD_NUMBER: _ClassVar[int]
    shortcode: str
    def __init__(self, shortcode: _Optional[str] = ...) -> None: ...

class VoteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VotingResult(_message.Message):
    __slots__ = ("shortcode", "votes")
    SHORTCODE_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    shortcode: str
    votes: int
    def __init__(self, shortcode: _Optional[str] = ..., votes: _Optional[int] = ...) -> None: ...

class ResultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResultsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VotingResult]
    def __init__(self, results: _Optional[_Iterable[_Union[VotingResult, _Mapping]]] = ...) -> None: ...
