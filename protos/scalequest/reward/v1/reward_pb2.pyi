from scalequest.common.v1 import items_pb2 as _items_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreCandidatesRequest(_message.Message):
    __slots__ = ("question", "candidates", "rule", "min_agreement")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    question: str
    candidates: _containers.RepeatedCompositeFieldContainer[_items_pb2.Candidate]
    rule: str
    min_agreement: int
    def __init__(self, question: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[_items_pb2.Candidate, _Mapping]]] = ..., rule: _Optional[str] = ..., min_agreement: _Optional[int] = ...) -> None: ...

class ScoreCandidatesResponse(_message.Message):
    __slots__ = ("candidates", "selected", "reason", "difficulty")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[_items_pb2.Candidate]
    selected: int
    reason: str
    difficulty: float
    def __init__(self, candidates: _Optional[_Iterable[_Union[_items_pb2.Candidate, _Mapping]]] = ..., selected: _Optional[int] = ..., reason: _Optional[str] = ..., difficulty: _Optional[float] = ...) -> None: ...
