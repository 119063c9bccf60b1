from scalequest.common.v1 import items_pb2 as _items_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateQuestionsRequest(_message.Message):
    __slots__ = ("count", "mode", "sampling", "seed")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    count: int
    mode: _items_pb2.GenerationMode
    sampling: _items_pb2.Sampling
    seed: int
    def __init__(self, count: _Optional[int] = ..., mode: _Optional[_Union[_items_pb2.GenerationMode, str]] = ..., sampling: _Optional[_Union[_items_pb2.Sampling, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class GeneratedQuestion(_message.Message):
    __slots__ = ("text", "drop_reason", "num_tokens", "seed")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    text: str
    drop_reason: str
    num_tokens: int
    seed: int
    def __init__(self, text: _Optional[str] = ..., drop_reason: _Optional[str] = ..., num_tokens: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateQuestionsResponse(_message.Message):
    __slots__ = ("questions", "model")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    questions: _containers.RepeatedCompositeFieldContainer[GeneratedQuestion]
    model: str
    def __init__(self, questions: _Optional[_Iterable[_Union[GeneratedQuestion, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...

class RewriteQuestionsRequest(_message.Message):
    __slots__ = ("questions", "goal", "seed")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    questions: _containers.RepeatedScalarFieldContainer[str]
    goal: _items_pb2.RewriteGoal
    seed: int
    def __init__(self, questions: _Optional[_Iterable[str]] = ..., goal: _Optional[_Union[_items_pb2.RewriteGoal, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class Rewrite(_message.Message):
    __slots__ = ("original", "goal", "rewritten", "drop_reason", "output")
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    REWRITTEN_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    original: str
    goal: _items_pb2.RewriteGoal
    rewritten: str
    drop_reason: str
    output: str
    def __init__(self, original: _Optional[str] = ..., goal: _Optional[_Union[_items_pb2.RewriteGoal, str]] = ..., rewritten: _Optional[str] = ..., drop_reason: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class RewriteQuestionsResponse(_message.Message):
    __slots__ = ("rewrites", "model")
    REWRITES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    rewrites: _containers.RepeatedCompositeFieldContainer[Rewrite]
    model: str
    def __init__(self, rewrites: _Optional[_Iterable[_Union[Rewrite, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...
