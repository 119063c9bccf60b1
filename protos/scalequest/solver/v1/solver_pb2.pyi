from scalequest.common.v1 import items_pb2 as _items_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SolveQuestionRequest(_message.Message):
    __slots__ = ("question", "n", "sampling", "seed")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    question: str
    n: int
    sampling: _items_pb2.Sampling
    seed: int
    def __init__(self, question: _Optional[str] = ..., n: _Optional[int] = ..., sampling: _Optional[_Union[_items_pb2.Sampling, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class SolveQuestionResponse(_message.Message):
    __slots__ = ("candidates", "model")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[_items_pb2.Candidate]
    model: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[_items_pb2.Candidate, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...
