from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SchemaVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEMA_VERSION_UNSPECIFIED: _ClassVar[SchemaVersion]
    SCHEMA_VERSION_1: _ClassVar[SchemaVersion]

class GenerationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_MODE_UNSPECIFIED: _ClassVar[GenerationMode]
    GENERATION_MODE_SCRATCH: _ClassVar[GenerationMode]
    GENERATION_MODE_INSTRUCTED: _ClassVar[GenerationMode]

class RunType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_TYPE_UNSPECIFIED: _ClassVar[RunType]
    RUN_TYPE_SYNTHESIS: _ClassVar[RunType]
    RUN_TYPE_QPO: _ClassVar[RunType]

class RewriteGoal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWRITE_GOAL_UNSPECIFIED: _ClassVar[RewriteGoal]
    REWRITE_GOAL_SOLVABILITY: _ClassVar[RewriteGoal]
    REWRITE_GOAL_DIFFICULTY: _ClassVar[RewriteGoal]
SCHEMA_VERSION_UNSPECIFIED: SchemaVersion
SCHEMA_VERSION_1: SchemaVersion
GENERATION_MODE_UNSPECIFIED: GenerationMode
GENERATION_MODE_SCRATCH: GenerationMode
GENERATION_MODE_INSTRUCTED: GenerationMode
RUN_TYPE_UNSPECIFIED: RunType
RUN_TYPE_SYNTHESIS: RunType
RUN_TYPE_QPO: RunType
REWRITE_GOAL_UNSPECIFIED: RewriteGoal
REWRITE_GOAL_SOLVABILITY: RewriteGoal
REWRITE_GOAL_DIFFICULTY: RewriteGoal

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "max_tokens")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_tokens: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class RunConfig(_message.Message):
    __slots__ = ("target", "seed", "generator_model", "solver_model", "judge_model", "question_sampling", "solution_sampling", "n_candidates", "mode", "selection_rule", "min_agreement", "max_outstanding", "max_tasks", "shard_max_records", "shard_max_seconds", "judge_enabled", "difficulty_keep", "run_type", "optimizer_model", "optimizer_sampling")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_MODEL_FIELD_NUMBER: _ClassVar[int]
    SOLVER_MODEL_FIELD_NUMBER: _ClassVar[int]
    JUDGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    QUESTION_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SOLUTION_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    N_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_RULE_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    SHARD_MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SHARD_MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_KEEP_FIELD_NUMBER: _ClassVar[int]
    RUN_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    target: int
    seed: int
    generator_model: str
    solver_model: str
    judge_model: str
    question_sampling: Sampling
    solution_sampling: Sampling
    n_candidates: int
    mode: GenerationMode
    selection_rule: str
    min_agreement: int
    max_outstanding: int
    max_tasks: int
    shard_max_records: int
    shard_max_seconds: float
    judge_enabled: bool
    difficulty_keep: str
    run_type: RunType
    optimizer_model: str
    optimizer_sampling: Sampling
    def __init__(self, target: _Optional[int] = ..., seed: _Optional[int] = ..., generator_model: _Optional[str] = ..., solver_model: _Optional[str] = ..., judge_model: _Optional[str] = ..., question_sampling: _Optional[_Union[Sampling, _Mapping]] = ..., solution_sampling: _Optional[_Union[Sampling, _Mapping]] = ..., n_candidates: _Optional[int] = ..., mode: _Optional[_Union[GenerationMode, str]] = ..., selection_rule: _Optional[str] = ..., min_agreement: _Optional[int] = ..., max_outstanding: _Optional[int] = ..., max_tasks: _Optional[int] = ..., shard_max_records: _Optional[int] = ..., shard_max_seconds: _Optional[float] = ..., judge_enabled: _Optional[bool] = ..., difficulty_keep: _Optional[str] = ..., run_type: _Optional[_Union[RunType, str]] = ..., optimizer_model: _Optional[str] = ..., optimizer_sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class GenerateTask(_message.Message):
    __slots__ = ("schema_version", "run_id", "item_id", "index", "seed", "config")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    run_id: str
    item_id: str
    index: int
    seed: int
    config: RunConfig
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., run_id: _Optional[str] = ..., item_id: _Optional[str] = ..., index: _Optional[int] = ..., seed: _Optional[int] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ...) -> None: ...

class FilterVerdict(_message.Message):
    __slots__ = ("check", "passed", "reason", "detail")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    check: str
    passed: bool
    reason: str
    detail: str
    def __init__(self, check: _Optional[str] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Question(_message.Message):
    __slots__ = ("schema_version", "run_id", "item_id", "seed", "config", "text", "generator_model", "num_tokens", "verdicts", "predicted_difficulty")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    run_id: str
    item_id: str
    seed: int
    config: RunConfig
    text: str
    generator_model: str
    num_tokens: int
    verdicts: _containers.RepeatedCompositeFieldContainer[FilterVerdict]
    predicted_difficulty: float
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., run_id: _Optional[str] = ..., item_id: _Optional[str] = ..., seed: _Optional[int] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ..., text: _Optional[str] = ..., generator_model: _Optional[str] = ..., num_tokens: _Optional[int] = ..., verdicts: _Optional[_Iterable[_Union[FilterVerdict, _Mapping]]] = ..., predicted_difficulty: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("text", "answer", "num_tokens", "finish_reason", "judge_score", "agreement", "reward", "seed", "rm_score")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    JUDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RM_SCORE_FIELD_NUMBER: _ClassVar[int]
    text: str
    answer: str
    num_tokens: int
    finish_reason: str
    judge_score: float
    agreement: float
    reward: float
    seed: int
    rm_score: float
    def __init__(self, text: _Optional[str] = ..., answer: _Optional[str] = ..., num_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., judge_score: _Optional[float] = ..., agreement: _Optional[float] = ..., reward: _Optional[float] = ..., seed: _Optional[int] = ..., rm_score: _Optional[float] = ...) -> None: ...

class SolvedQuestion(_message.Message):
    __slots__ = ("schema_version", "question", "solver_model", "candidates", "dropped_candidates")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    SOLVER_MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    question: Question
    solver_model: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    dropped_candidates: int
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., question: _Optional[_Union[Question, _Mapping]] = ..., solver_model: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., dropped_candidates: _Optional[int] = ...) -> None: ...

class FinalRecord(_message.Message):
    __slots__ = ("schema_version", "solved", "selected", "selection_reason", "difficulty", "scorer", "answered", "distinct_answers")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOLVED_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    SELECTION_REASON_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    solved: SolvedQuestion
    selected: int
    selection_reason: str
    difficulty: float
    scorer: str
    answered: int
    distinct_answers: int
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., solved: _Optional[_Union[SolvedQuestion, _Mapping]] = ..., selected: _Optional[int] = ..., selection_reason: _Optional[str] = ..., difficulty: _Optional[float] = ..., scorer: _Optional[str] = ..., answered: _Optional[int] = ..., distinct_answers: _Optional[int] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("schema_version", "run_id", "item_id", "stage", "reason", "detail", "question")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    run_id: str
    item_id: str
    stage: str
    reason: str
    detail: str
    question: str
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., run_id: _Optional[str] = ..., item_id: _Optional[str] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., question: _Optional[str] = ...) -> None: ...

class PreferencePair(_message.Message):
    __slots__ = ("schema_version", "run_id", "item_id", "seed", "config", "prompt", "chosen", "rejected", "goal", "generator_model", "optimizer_model", "optimizer_output")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    run_id: str
    item_id: str
    seed: int
    config: RunConfig
    prompt: str
    chosen: str
    rejected: str
    goal: RewriteGoal
    generator_model: str
    optimizer_model: str
    optimizer_output: str
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., run_id: _Optional[str] = ..., item_id: _Optional[str] = ..., seed: _Optional[int] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ..., prompt: _Optional[str] = ..., chosen: _Optional[str] = ..., rejected: _Optional[str] = ..., goal: _Optional[_Union[RewriteGoal, str]] = ..., generator_model: _Optional[str] = ..., optimizer_model: _Optional[str] = ..., optimizer_output: _Optional[str] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("record", "rejection", "pair")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    record: FinalRecord
    rejection: Rejection
    pair: PreferencePair
    def __init__(self, record: _Optional[_Union[FinalRecord, _Mapping]] = ..., rejection: _Optional[_Union[Rejection, _Mapping]] = ..., pair: _Optional[_Union[PreferencePair, _Mapping]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("schema_version", "items", "item_msg_ids", "prior_deliveries", "not_before")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ITEM_MSG_IDS_FIELD_NUMBER: _ClassVar[int]
    PRIOR_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    schema_version: SchemaVersion
    items: _containers.RepeatedScalarFieldContainer[bytes]
    item_msg_ids: _containers.RepeatedScalarFieldContainer[str]
    prior_deliveries: int
    not_before: float
    def __init__(self, schema_version: _Optional[_Union[SchemaVersion, str]] = ..., items: _Optional[_Iterable[bytes]] = ..., item_msg_ids: _Optional[_Iterable[str]] = ..., prior_deliveries: _Optional[int] = ..., not_before: _Optional[float] = ...) -> None: ...

class ShardAnnouncement(_message.Message):
    __slots__ = ("run_id", "key", "records", "seq", "store")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    records: int
    seq: int
    store: str
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., records: _Optional[int] = ..., seq: _Optional[int] = ..., store: _Optional[str] = ...) -> None: ...

class RunEnd(_message.Message):
    __slots__ = ("run_id", "state", "accepted", "shards", "manifest_key")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_KEY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: str
    accepted: int
    shards: int
    manifest_key: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[str] = ..., accepted: _Optional[int] = ..., shards: _Optional[int] = ..., manifest_key: _Optional[str] = ...) -> None: ...
