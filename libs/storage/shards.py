"""Parquet shards of accepted records, and the per-run manifest.

Layout in the object store::

    runs/<run_id>/manifest.json
    runs/<run_id>/shards/<writer>-<seq:06d>.parquet

One row per accepted question/solution pair with its provenance (models, sampling parameters,
filter verdicts, every candidate with its answer and scores, the selection reason). Shards are
zstd-compressed Parquet with the explicit :data:`RECORD_SCHEMA`, readable by
``datasets.load_dataset("parquet", data_files=...)``, pandas, polars, DuckDB...

A shard is written in one atomic ``put_bytes`` and never modified afterwards. The sink rebuilds
its dedup set after a restart with :func:`existing_item_ids` and resumes numbering with
:func:`next_seq` (or :meth:`ShardWriter.resume`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from libs.storage.objectstore import ObjectNotFound, ObjectStore, StoreError

__all__ = [
    "CANDIDATE_TYPE",
    "FILTER_VERDICT_TYPE",
    "OPTIONAL_FIELDS",
    "RECORD_SCHEMA",
    "REQUIRED_FIELDS",
    "SAMPLING_TYPE",
    "SCHEMA_VERSION",
    "Manifest",
    "ShardInfo",
    "ShardWriter",
    "existing_item_ids",
    "list_shards",
    "manifest_key",
    "next_seq",
    "parquet_to_records",
    "read_manifest",
    "read_shard",
    "reconcile_manifest",
    "records_to_parquet",
    "shard_item_ids",
    "shard_key",
    "shards_prefix",
    "write_manifest",
]

SCHEMA_VERSION = "1"

SAMPLING_TYPE = pa.struct(
    [
        pa.field("temperature", pa.float32()),
        pa.field("top_p", pa.float32()),
        pa.field("max_tokens", pa.int32()),
    ]
)

FILTER_VERDICT_TYPE = pa.struct(
    [
        pa.field("check", pa.string()),
        pa.field("passed", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)

CANDIDATE_TYPE = pa.struct(
    [
        pa.field("text", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("num_tokens", pa.int32()),
        pa.field("finish_reason", pa.string()),
        pa.field("judge_score", pa.float32()),
        pa.field("agreement", pa.float32()),
        pa.field("reward", pa.float32()),
        pa.field("seed", pa.int64()),
        # reward-model score in [0, 1] (null when no reward model scored the candidate)
        pa.field("rm_score", pa.float32()),
    ]
)

RECORD_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("solution", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("difficulty", pa.float32()),
        # candidates with a final answer, and distinct (math-verify) answers among them
        pa.field("answered", pa.int32()),
        pa.field("distinct_answers", pa.int32()),
        # the filter's learned difficulty score (null when no scorer ran)
        pa.field("predicted_difficulty", pa.float32()),
        pa.field("agreement", pa.float32()),
        pa.field("selection_reason", pa.string()),
        pa.field("scorer", pa.string()),
        pa.field("selected", pa.int32()),
        pa.field("generator_model", pa.string()),
        pa.field("solver_model", pa.string()),
        pa.field("judge_model", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("question_sampling", SAMPLING_TYPE),
        pa.field("solution_sampling", SAMPLING_TYPE),
        pa.field("filter_verdicts", pa.list_(FILTER_VERDICT_TYPE)),
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
        pa.field("created_at", pa.float64()),
    ],
    metadata={"scalequest.schema_version": SCHEMA_VERSION},
)

#: QPO preference pairs (METHOD §2), DPO-ready: a trainer reads prompt/chosen/rejected directly.
PAIR_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("goal", pa.string(), nullable=False),
        pa.field("generator_model", pa.string()),
        pa.field("optimizer_model", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("question_sampling", SAMPLING_TYPE),
        pa.field("optimizer_sampling", SAMPLING_TYPE),
        pa.field("optimizer_output", pa.string()),
        pa.field("created_at", pa.float64()),
    ],
    metadata={"scalequest.schema_version": SCHEMA_VERSION, "scalequest.kind": "preference_pairs"},
)

#: Every record passed to :func:`records_to_parquet` must have these keys (value may be None
#: only where the column is nullable). ``created_at`` may be omitted: it defaults to now.
#: Columns added after the first release: absent keys are written as null, so records built
#: by older producers (and hand-made ones) still load.
OPTIONAL_FIELDS = frozenset({"created_at", "answered", "distinct_answers", "predicted_difficulty"})
REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_SCHEMA if f.name not in OPTIONAL_FIELDS)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHARD_RE = re.compile(r"(?P<writer>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<seq>\d{6,})\.parquet")


# --------------------------------------------------------------------------------------------
# records <-> parquet


_SCHEMA_KEYS: dict[int, tuple] = {}


def _schema_keys(schema: pa.Schema) -> tuple[tuple[str, ...], frozenset[str], frozenset[str], tuple[str, ...]]:
    """(required, non-null, all, list-typed defaulting to []) key names of a shard schema, looked
    up by identity: a shard checks every record, and both ``schema.names`` and hashing a schema
    cost more than the check itself."""
    hit = _SCHEMA_KEYS.get(id(schema))
    if hit is None or hit[0] is not schema:
        if len(_SCHEMA_KEYS) > 16:
            _SCHEMA_KEYS.clear()
        names = schema.names
        hit = _SCHEMA_KEYS[id(schema)] = (
            schema,  # kept, so its id is not reused while the entry lives
            tuple(f.name for f in schema if f.name not in OPTIONAL_FIELDS),
            frozenset(f.name for f in schema if not f.nullable),
            frozenset(names),
            tuple(n for n in ("filter_verdicts", "candidates") if n in names),
        )
    return hit[1:]


def _check_record(i: int, rec: Any, now: float, schema: pa.Schema = RECORD_SCHEMA) -> dict[str, Any]:
    if not isinstance(rec, Mapping):
        raise ValueError(f"record {i} is a {type(rec).__name__}, expected a dict")  # noqa: TRY004
    required, non_null, names, lists = _schema_keys(schema)

    def where() -> str:
        ident = rec.get("item_id")
        return f"record {i}" + (f" (item_id={ident!r})" if isinstance(ident, str) else "")

    for name in required:
        if name not in rec:
            raise ValueError(f"{where()} is missing required key {name!r}")
    for name in non_null:
        v = rec[name]
        if not isinstance(v, str):
            raise ValueError(f"{where()}: key {name!r} must be a str, got {type(v).__name__}")  # noqa: TRY004
    if not rec["item_id"]:
        raise ValueError(f"{where()}: key 'item_id' must not be empty")
    if not names.issuperset(rec):
        unknown = set(rec) - names
        raise ValueError(f"{where()} has unknown key(s) {sorted(unknown)}; the shard schema has {schema.names}")
    out = dict(rec)
    if out.get("created_at") is None:
        out["created_at"] = now
    for name in lists:
        if out.get(name) is None:
            out[name] = []
    return out


def warm_up() -> None:
    """Do the imports of the first shard write now: pyarrow's from_pylist imports pandas on its
    first call (a quarter of a second, measured inside the first shard write of a run)."""
    pa.Table.from_pylist([{"x": 1}])


def records_to_parquet(records: Iterable[Mapping[str, Any]], schema: pa.Schema = RECORD_SCHEMA) -> bytes:
    """Serialize records to zstd-compressed Parquet bytes with ``schema`` (:data:`RECORD_SCHEMA`
    for question-solution records, :data:`PAIR_SCHEMA` for QPO pairs).

    Raises ``ValueError`` naming the record and key when a required key is missing, a key is
    not in the schema, or a value has the wrong type.
    """
    now = time.time()
    rows = [_check_record(i, r, now, schema) for i, r in enumerate(records)]
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
        # find the offending record for a useful message
        for i, row in enumerate(rows):
            try:
                pa.Table.from_pylist([row], schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e1:
                raise ValueError(f"record {i} (item_id={row.get('item_id')!r}) does not match the shard schema: {e1}") from e
        raise ValueError(f"records do not match the shard schema: {e}") from e
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def parquet_to_records(data: bytes) -> list[dict[str, Any]]:
    """Read Parquet bytes (as written by :func:`records_to_parquet`) back into record dicts."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"not a readable Parquet shard: {e}") from e
    return table.to_pylist()


# --------------------------------------------------------------------------------------------
# keys


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid {kind} {value!r}: 1-128 chars of letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return value


def shards_prefix(run_id: str) -> str:
    """``runs/<run_id>/shards/``"""
    return f"runs/{_check_name('run_id', run_id)}/shards/"


def shard_key(run_id: str, seq: int, writer: str = "w0") -> str:
    """``runs/<run_id>/shards/<writer>-<seq:06d>.parquet``"""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"shard seq must be a non-negative int, got {seq!r}")
    return f"{shards_prefix(run_id)}{_check_name('writer', writer)}-{seq:06d}.parquet"


def manifest_key(run_id: str) -> str:
    """``runs/<run_id>/manifest.json``"""
    return f"runs/{_check_name('run_id', run_id)}/manifest.json"


# --------------------------------------------------------------------------------------------
# manifest


@dataclass
class ShardInfo:
    key: str
    records: int
    seq: int
    sha256: str
    created_at: float
    size: int = 0  # bytes
    writer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Manifest:
    run_id: str
    state: str = "running"
    config: dict[str, Any] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    accepted: int = 0
    updated_at: float = field(default_factory=time.time)

    def add_shard(self, info: ShardInfo) -> None:
        """Record a shard (replacing an entry with the same key) and recount ``accepted``."""
        self.shards = [s for s in self.shards if s.key != info.key]
        self.shards.append(info)
        self.shards.sort(key=lambda s: s.key)
        self.accepted = sum(s.records for s in self.shards)
        self.updated_at = time.time()

    def to_json(self) -> str:
        d = asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        return json.dumps(d, indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"manifest is not valid JSON: {e}") from e
        if not isinstance(d, dict) or not isinstance(d.get("run_id"), str):
            raise ValueError("manifest must be a JSON object with a string 'run_id'")  # noqa: TRY004
        shards = [ShardInfo.from_dict(s) for s in d.get("shards") or []]
        return cls(
            run_id=d["run_id"],
            state=d.get("state", "running"),
            config=dict(d.get("config") or {}),
            shards=shards,
            accepted=int(d.get("accepted", sum(s.records for s in shards))),
            updated_at=float(d.get("updated_at", 0.0)),
        )


def write_manifest(store: ObjectStore, manifest: Manifest, *, touch: bool = True) -> None:
    """Write ``runs/<run_id>/manifest.json`` atomically (sets ``updated_at`` to now unless
    ``touch=False``)."""
    if touch:
        manifest.updated_at = time.time()
    if not math.isfinite(manifest.updated_at):
        raise ValueError("manifest.updated_at must be finite")
    store.put_bytes(manifest_key(manifest.run_id), manifest.to_json().encode(), content_type="application/json")


def read_manifest(store: ObjectStore, run_id: str) -> Manifest | None:
    """The run's manifest, or None if it has none yet."""
    key = manifest_key(run_id)
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return None
    try:
        return Manifest.from_json(data)
    except (ValueError, TypeError) as e:
        raise StoreError(f"corrupt manifest at {store.uri(key)}: {e}") from e


# --------------------------------------------------------------------------------------------
# shards


def list_shards(store: ObjectStore, run_id: str, writer: str | None = None) -> list[str]:
    """Sorted shard keys of a run (of one writer if given)."""
    prefix = shards_prefix(run_id)
    if writer is not None:
        prefix += f"{_check_name('writer', writer)}-"
    out = []
    for key in store.list(prefix):
        m = _SHARD_RE.fullmatch(key.rsplit("/", 1)[-1])
        if m and (writer is None or m.group("writer") == writer):
            out.append(key)
    return out


def read_shard(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    """All records of one shard."""
    data = store.get_bytes(key)
    try:
        return parquet_to_records(data)
    except ValueError as e:
        raise StoreError(f"unreadable shard {store.uri(key)}: {e}") from e


def existing_item_ids(store: ObjectStore, run_id: str) -> set[str]:
    """Item ids of every record already in the run's shards (reads only the item_id column)."""
    ids: set[str] = set()
    for key in list_shards(store, run_id):
        try:
            data = store.get_bytes(key)
        except ObjectNotFound:  # deleted between list and get
            continue
        ids.update(_item_ids_of(data, store.uri(key)))
    return ids


def reconcile_manifest(store: ObjectStore, manifest: Manifest) -> list[str]:
    """Add to ``manifest`` every shard of its run that exists but is not listed (a crash or a
    store outage between a shard write and the manifest write); returns the keys added."""
    listed = {s.key for s in manifest.shards}
    added = []
    for key in list_shards(store, manifest.run_id):
        if key in listed:
            continue
        data = store.get_bytes(key)
        m = _SHARD_RE.fullmatch(key.rsplit("/", 1)[-1])
        manifest.add_shard(ShardInfo(
            key=key, records=len(_item_ids_of(data, store.uri(key))), seq=int(m.group("seq")) if m else 0,
            sha256=hashlib.sha256(data).hexdigest(), created_at=time.time(), size=len(data),
            writer=m.group("writer") if m else "",
        ))  # fmt: skip
        added.append(key)
    return added


def shard_item_ids(store: ObjectStore, key: str) -> list[str]:
    """Item ids of one shard, in row order (duplicates kept: audits look for them)."""
    return _item_ids_of(store.get_bytes(key), store.uri(key))


def _item_ids_of(data: bytes, where: str) -> list[str]:
    try:
        col = pq.read_table(io.BytesIO(data), columns=["item_id"]).column("item_id")
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise StoreError(f"unreadable shard {where}: {e}") from e
    return [v for v in col.to_pylist() if v is not None]


def next_seq(store: ObjectStore, run_id: str, writer: str = "w0") -> int:
    """1 + the highest shard number ``writer`` has written in the run, or 0."""
    seqs = [
        int(_SHARD_RE.fullmatch(k.rsplit("/", 1)[-1]).group("seq"))  # type: ignore[union-attr]
        for k in list_shards(store, run_id, writer)
    ]
    return max(seqs) + 1 if seqs else 0


class ShardWriter:
    """Writes numbered shards ``<writer>-<seq>.parquet`` for one run.

    ``writer`` must be unique among processes writing the same run at the same time (e.g. the
    replica name). Each :meth:`write` is one atomic object write; ``seq`` only advances once it
    has succeeded, so a failed write can simply be retried. An existing shard with different
    content is never overwritten: the writer skips to the next free number.
    """

    def __init__(
        self, store: ObjectStore, run_id: str, writer: str = "w0", start_seq: int = 0, schema: pa.Schema = RECORD_SCHEMA
    ) -> None:
        _check_name("run_id", run_id)
        _check_name("writer", writer)
        if isinstance(start_seq, bool) or not isinstance(start_seq, int) or start_seq < 0:
            raise ValueError(f"start_seq must be a non-negative int, got {start_seq!r}")
        self.store = store
        self.run_id = run_id
        self.writer = writer
        self.seq = start_seq
        self.schema = schema

    @classmethod
    def resume(cls, store: ObjectStore, run_id: str, writer: str = "w0", schema: pa.Schema = RECORD_SCHEMA) -> ShardWriter:
        """A writer that continues after the last shard ``writer`` left in the store."""
        return cls(store, run_id, writer, start_seq=next_seq(store, run_id, writer), schema=schema)

    # also reachable as ShardWriter.existing_item_ids(...) / ShardWriter.next_seq(...)
    existing_item_ids = staticmethod(existing_item_ids)
    next_seq = staticmethod(next_seq)

    def write(self, records: list[Mapping[str, Any]]) -> ShardInfo:
        """Write ``records`` as the next shard; returns its info once it is durable."""
        records = list(records)
        if not records:
            raise ValueError("refusing to write an empty shard")
        for r in records:
            if isinstance(r, Mapping) and r.get("run_id") not in (None, self.run_id):
                raise ValueError(
                    f"record {r.get('item_id')!r} has run_id {r.get('run_id')!r}, writer is for run {self.run_id!r}"
                )
        data = records_to_parquet(records, self.schema)
        ids = sorted(str(r["item_id"]) for r in records)
        while True:
            key = shard_key(self.run_id, self.seq, self.writer)
            try:
                existing = self.store.get_bytes(key)
            except ObjectNotFound:
                break
            # A shard is already there: an earlier incarnation of this writer, or a retry of a
            # write whose success was not reported. Same items -> the write already happened.
            if sorted(_item_ids_of(existing, self.store.uri(key))) == ids:
                info = self._info(key, existing, len(records))
                self.seq += 1
                return info
            self.seq += 1  # different content: never overwrite, take the next number
        self.store.put_bytes(key, data, content_type="application/vnd.apache.parquet")
        info = self._info(key, data, len(records))
        self.seq += 1
        return info

    def _info(self, key: str, data: bytes, n: int) -> ShardInfo:
        return ShardInfo(
            key=key,
            records=n,
            seq=self.seq,
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=time.time(),
            size=len(data),
            writer=self.writer,
        )
