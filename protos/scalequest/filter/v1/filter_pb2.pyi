from scalequest.common.v1 import items_pb2 as _items_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JudgeQuestionsRequest(_message.Message):
    __slots__ = ("questions", "dedup_scope", "judge")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_SCOPE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    questions: _containers.RepeatedScalarFieldContainer[str]
    dedup_scope: str
    judge: bool
    def __init__(self, questions: _Optional[_Iterable[str]] = ..., dedup_scope: _Optional[str] = ..., judge: _Optional[bool] = ...) -> None: ...

class QuestionJudgement(_message.Message):
    __slots__ = ("accepted", "reason", "verdicts")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    verdicts: _containers.RepeatedCompositeFieldContainer[_items_pb2.FilterVerdict]
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., verdicts: _Optional[_Iterable[_Union[_items_pb2.FilterVerdict, _Mapping]]] = ...) -> None: ...

class JudgeQuestionsResponse(_message.Message):
    __slots__ = ("judgements",)
    JUDGEMENTS_FIELD_NUMBER: _ClassVar[int]
    judgements: _containers.RepeatedCompositeFieldContainer[QuestionJudgement]
    def __init__(self, judgements: _Optional[_Iterable[_Union[QuestionJudgement, _Mapping]]] = ...) -> None: ...
