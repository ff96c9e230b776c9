from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Emoji(_message.Message):
    __slots__ = ("unicode", "shortcode")
    UNICODE_FIELD_NUMBER: _ClassVar[int]
    SHORTCODE_FIELD_NUMBER: _ClassVar[int]
    unicode: str
    shortcode: str
    def __init__(self, unicode: _Optional[str] = ..., shortcode: _Optional[str] = ...) -> None: ...

class ListAllEmojiRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAllEmojiResponse(_message.Message):
    __slots__ = ("list",)
    LIST_FIELD_NUMBER: _ClassVar[int]
    list: _containers.RepeatedCompositeFieldContainer[Emoji]
    def __init__(self, list: _Optional[_Iterable[_Union[Emoji, _Mapping]]] = ...) -> None: ...

class FindByShortcodeRequest(_message.Message):
    __slots__ = ("shortcode",)
    SHORTCODE_FIELD_NUMBER: _ClassVar[int]
    shortcode: str
    def __init__(self, shortcode: _Optional[str] = ...) -> None: ...

class FindByShortcodeResponse(_message.Message):
    __slots__ = ("emoji",)
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    emoji: Emoji
    def __init__(self, emoji: _Optional[_Union[Emoji, _Mapping]] = ...) -> None: ...
