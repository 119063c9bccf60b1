"""Run lifecycle, admission control and the sink.

- ``start_run`` records the run in the KV bucket and starts its admission loop, which keeps at
  most ``max_outstanding`` generation tasks in flight (admitted but without an outcome) and
  admits only as many as the observed acceptance rate says are still needed, so backpressure
  reaches the generator and a run stops close to its target.
- The sink consumes ``Outcome`` messages (``scalequest.work.sink``): exactly one per task.
  Rejections are counted per (stage, reason) and recorded in the ledger, one entry per batch
  (``libs/queue/ledger.py``), before their message is acked; records are buffered and written
  as Parquet shards (at most ``shard_max_records`` rows or ``shard_max_seconds`` old). A
  record's input message is acked only after the shard holding it is durable, and item ids
  are deduplicated against the shards and the ledger, so a crash (of any process, NATS or the
  object store) loses nothing and counts or writes nothing twice. A shard or manifest write
  that fails is retried in place until the store is back; admission publishes are retried too.
- Each durable shard is announced on ``scalequest.events.<run>.shard``; the end of a run on
  ``scalequest.events.<run>.end``. State and counters live in KV (``run.<id>.state``) and in
  ``runs/<id>/status.json`` beside the manifest, so they outlive the NATS server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from scalequest.common.v1 import items_pb2 as pb

from libs.aio import gather_eager
from libs.errors import InvalidArgument, NotFound, TransientError
from libs.items import DEAD_LETTER_PREFIX, SCHEMA, item_ids, task_seed
from libs.queue import envelope, ledger, subjects
from libs.queue.kv import kv_get_json, kv_keys, kv_latest_json, kv_put_json, kv_update_json
from libs.queue.worker import Publish, envelope_bytes
from libs.runstate import CLOSED_STATES, config_key, state_key
from libs.storage.objectstore import ObjectStore
from libs.storage.shards import (
    PAIR_SCHEMA,
    RECORD_SCHEMA,
    Manifest,
    ShardWriter,
    existing_item_ids,
    read_manifest,
    reconcile_manifest,
    write_manifest,
)
from services.coordinator.records import pair_row, record_row
from services.coordinator.settings import CoordinatorSettings
from services.reward.difficulty import parse_keep

log = logging.getLogger("scalequest.coordinator")

STAGE = "coordinator"
#: Seconds without a new outcome after which buffered records are written (every sink fetch
#: loop may be waiting for them, so waiting for more records would only stall the run).
SINK_IDLE_FLUSH = 0.3
RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
STAGES = ("questiongen", "filter", "solver", "reward")


#: State of a run between its end condition and its last shard + manifest being durable.
FINISHING = "finishing"

#: Seconds after a run's end at which status.json is written again with the stages' last
#: counter flushes (they flush every second).
STATUS_RESAVE_DELAY = 2.5


def status_key(run_id: str) -> str:
    return f"runs/{run_id}/status.json"


@dataclass
class Run:
    run_id: str
    config: pb.RunConfig
    state: str = "running"
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0
    admitted: int = 0
    finished: int = 0
    accepted: int = 0
    shards: int = 0
    rejections: Counter = field(default_factory=Counter)  # (stage, reason) -> n
    seen: set = field(default_factory=set)  # items with a terminal outcome (shards + ledger)
    dead: dict = field(default_factory=dict)  # item_id -> (stage, reason) of dead-lettered items
    recording: set = field(default_factory=set)  # items whose ledger write is in flight
    buffer: list = field(default_factory=list)  # (row, future)
    buffer_since: float = 0.0
    flush_failures: int = 0  # shard writes failed in a row (store unavailable)
    retry_at: float = 0.0  # monotonic time of the next shard write attempt after a failure
    manifest_dirty: bool = False  # the manifest lacks a durable shard (its write failed)
    writer: ShardWriter | None = None
    manifest: Manifest | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list = field(default_factory=list)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def outstanding(self) -> int:
        return self.admitted - self.finished

    def state_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "admitted": self.admitted,
            "finished": self.finished,
            "accepted": self.accepted,
            "shards": self.shards,
            "rejections": {f"{s}/{r}": n for (s, r), n in sorted(self.rejections.items()) if n},
        }


def shard_schema(cfg: pb.RunConfig):
    """QPO runs write preference pairs; every other run writes question-solution records."""
    return PAIR_SCHEMA if cfg.run_type == pb.RUN_TYPE_QPO else RECORD_SCHEMA


def config_to_dict(cfg: pb.RunConfig) -> dict:
    return MessageToDict(cfg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class RunManager:
    def __init__(self, settings: CoordinatorSettings, js, kv, store: ObjectStore, ledger_kv=None) -> None:
        self.settings = settings
        self.js = js
        self.kv = kv
        self.store = store
        self._ledger = ledger_kv
        # Records in the buffer hold their sink messages un-acked: once the whole fetch window
        # is waiting on the buffer, nothing new can arrive, so the shard is written then:
        # when it holds sink_capacity records, or when every fetch loop has handed over its
        # batch (``_sink_busy``), however small the batches were (a stage upstream is slower).
        self.sink_loops = max(1, int(settings.worker_concurrency))
        self.sink_capacity = max(1, int(settings.batch_size) * self.sink_loops)
        self._sink_busy = 0
        self._last_outcome = time.monotonic()
        self._late_saves: dict[str, asyncio.Task] = {}
        self._late_ledgers: dict[str, asyncio.Future[set[str]]] = {}
        self._ledger_batch = ledger.BatchRecorder(self.ledger_kv)
        self.runs: dict[str, Run] = {}
        self._closing = False
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ configuration
    def resolve_config(self, cfg: pb.RunConfig) -> pb.RunConfig:
        """Fill zero fields from the coordinator defaults and validate."""
        s = self.settings
        out = pb.RunConfig()
        out.CopyFrom(cfg)
        out.target = out.target or s.run_target
        out.seed = out.seed or s.run_seed
        out.generator_model = out.generator_model or s.generator_model
        out.solver_model = out.solver_model or s.solver_model
        out.judge_model = out.judge_model or s.judge_model
        qs, ss = out.question_sampling, out.solution_sampling
        qs.temperature = qs.temperature or s.run_question_temperature
        qs.top_p = qs.top_p or s.run_question_top_p
        qs.max_tokens = qs.max_tokens or s.run_question_max_tokens
        ss.temperature = ss.temperature or s.run_solution_temperature
        ss.top_p = ss.top_p or s.run_solution_top_p
        ss.max_tokens = ss.max_tokens or s.run_solution_max_tokens
        out.n_candidates = out.n_candidates or s.run_n_candidates
        out.mode = out.mode or (
            pb.GENERATION_MODE_INSTRUCTED if s.run_mode == "instructed" else pb.GENERATION_MODE_SCRATCH
        )
        out.selection_rule = out.selection_rule or s.run_selection_rule
        out.min_agreement = out.min_agreement or s.run_min_agreement
        out.max_outstanding = out.max_outstanding or s.max_outstanding
        out.max_tasks = out.max_tasks or out.target * s.max_tasks_factor
        out.shard_max_records = out.shard_max_records or s.shard_max_records
        out.shard_max_seconds = out.shard_max_seconds or s.shard_max_seconds
        if not cfg.HasField("judge_enabled"):
            out.judge_enabled = s.run_judge_enabled
        out.run_type = out.run_type or (pb.RUN_TYPE_QPO if s.run_type == "qpo" else pb.RUN_TYPE_SYNTHESIS)
        out.optimizer_model = out.optimizer_model or s.optimizer_model or out.generator_model
        os_ = out.optimizer_sampling
        if not os_.max_tokens:  # unset: the service defaults (temperature 0 is a real value, so set all three)
            os_.temperature = s.run_optimizer_temperature
            os_.top_p = 1.0
            os_.max_tokens = s.run_optimizer_max_tokens
        os_.top_p = os_.top_p or 1.0
        problems = []
        if out.target < 1:
            problems.append("target must be >= 1")
        if not 1 <= out.n_candidates <= 64:
            problems.append("n_candidates must be in [1, 64]")
        try:
            parse_keep(out.difficulty_keep)
        except ValueError as e:
            problems.append(f"difficulty_keep: {e}")
        if out.run_type not in (pb.RUN_TYPE_SYNTHESIS, pb.RUN_TYPE_QPO):
            problems.append(f"unknown run_type {out.run_type}")
        for name, sp in (("question_sampling", qs), ("solution_sampling", ss), ("optimizer_sampling", os_)):
            if not 0 <= sp.temperature <= 5 or not 0 < sp.top_p <= 1 or not 0 < sp.max_tokens <= 32768:
                problems.append(f"{name} out of range (temperature [0,5], top_p (0,1], max_tokens [1,32768])")
        if out.selection_rule not in ("top_reward", "majority_then_reward", "require_agreement"):
            problems.append(f"unknown selection_rule {out.selection_rule!r}")
        if out.min_agreement > out.n_candidates and out.selection_rule == "require_agreement":
            problems.append("min_agreement cannot exceed n_candidates")
        if out.max_outstanding < 1 or out.shard_max_records < 1 or out.shard_max_seconds <= 0:
            problems.append("max_outstanding, shard_max_records and shard_max_seconds must be positive")
        if problems:
            raise InvalidArgument("invalid run config: " + "; ".join(problems))
        return out

    # ------------------------------------------------------------------ lifecycle
    async def start_run(self, cfg: pb.RunConfig, run_id: str = "") -> str:
        config = self.resolve_config(cfg)
        if run_id:
            if not RUN_ID_RE.fullmatch(run_id):
                raise InvalidArgument("run_id must match [a-z0-9][a-z0-9-]{0,47}")
            if run_id in self.runs or await kv_get_json(self.kv, state_key(run_id)):
                raise InvalidArgument(f"run {run_id} already exists")
        else:
            run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        run = Run(run_id=run_id, config=config)
        run.writer = ShardWriter(self.store, run_id, writer=self.settings.writer_id, schema=shard_schema(config))
        run.manifest = Manifest(run_id=run_id, config=config_to_dict(config))
        self.runs[run_id] = run
        await kv_put_json(self.kv, config_key(run_id), config_to_dict(config))
        await self._save_state(run)
        await asyncio.to_thread(write_manifest, self.store, run.manifest)
        self._launch(run)
        log.info("run started", extra={"run_id": run_id, "target": config.target})
        return run_id

    def _launch(self, run: Run) -> None:
        run.tasks = [
            asyncio.create_task(self._admission_loop(run), name=f"admit-{run.run_id}"),
            asyncio.create_task(self._flush_loop(run), name=f"flush-{run.run_id}"),
            asyncio.create_task(self._state_loop(run), name=f"state-{run.run_id}"),
        ]

    async def resume_runs(self) -> list[str]:
        """Take over runs left 'running' in KV (coordinator restart): rebuild the dedup set
        from the shards already written and continue admission from the saved counters."""
        resumed = []
        for key in await kv_keys(self.kv, "run."):
            if not key.endswith(".state"):
                continue
            st = await kv_get_json(self.kv, key)
            # a run whose coordinator died while finishing is taken over and finished again
            run_id = (st or {}).get("run_id") or key.split(".")[1]
            if not st or st.get("state") not in ("running", FINISHING) or run_id in self.runs:
                continue
            cfg_d = await kv_get_json(self.kv, config_key(run_id))
            if cfg_d is None:
                continue
            config = ParseDict(cfg_d, pb.RunConfig())
            run = Run(run_id=run_id, config=config, started_at=st.get("started_at", time.time()))
            run.admitted = int(st.get("admitted", 0))
            run.rejections = Counter({tuple(k.split("/", 1)): v for k, v in st.get("rejections", {}).items()})
            run.writer = await asyncio.to_thread(
                ShardWriter.resume, self.store, run_id, self.settings.writer_id, shard_schema(run.config)
            )
            run.manifest = await asyncio.to_thread(read_manifest, self.store, run_id) or Manifest(
                run_id=run_id, config=cfg_d
            )
            added = await asyncio.to_thread(reconcile_manifest, self.store, run.manifest)
            if added:
                log.info("manifest reconciled with %d unlisted shard(s)", len(added), extra={"run_id": run_id})
                await asyncio.to_thread(write_manifest, self.store, run.manifest)
            await self._rebuild_accounting(run)
            run.shards = len(run.manifest.shards)
            self.runs[run_id] = run
            self._launch(run)
            resumed.append(run_id)
            log.info("run resumed", extra={"run_id": run_id, "accepted": run.accepted})
        return resumed

    async def ledger_kv(self):
        if self._ledger is None:
            self._ledger = await ledger.ledger_kv(self.js, getattr(self.settings, "nats_replicas", 1))
        return self._ledger

    async def _rebuild_accounting(self, run: Run) -> None:
        """Counters of a resumed run from what is durable: accepted = the shards' item ids,
        rejections = the ledger (counters saved in KV may be up to a second stale)."""
        accepted = await asyncio.to_thread(existing_item_ids, self.store, run.run_id)
        lk = await self.ledger_kv()
        entries = await ledger.entries(lk, run.run_id)
        for item_id in accepted & entries.keys():  # replayed dead letter accepted; entry not yet dropped
            await ledger.forget(lk, run.run_id, item_id)
            del entries[item_id]
        run.seen = accepted | entries.keys()
        run.accepted = len(accepted)
        run.rejections = Counter(entries.values())
        run.dead = {i: k for i, k in entries.items() if k[1].startswith(DEAD_LETTER_PREFIX)}
        run.finished = len(run.seen)

    async def cancel_run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            st = await kv_get_json(self.kv, state_key(run_id))
            if st is None:
                raise NotFound(f"run {run_id} not found")
            raise InvalidArgument(f"run {run_id} is {st.get('state')} and not owned by this coordinator")
        if run.state == "running":
            await self._finish(run, "cancelled")
        return run

    async def wait(self, run_id: str, timeout: float | None = None) -> Run:
        run = self.runs[run_id]
        await asyncio.wait_for(run.ended.wait(), timeout)
        return run

    # ------------------------------------------------------------------ admission
    def _tasks_wanted(self, run: Run) -> int:
        cfg = run.config
        needed = cfg.target - run.accepted
        if needed <= 0:
            return 0
        # Acceptance rate so far, with a weak prior of 1/2 so the first tasks go out.
        rate = (run.accepted + 1) / (run.finished + 2)
        expected = run.outstanding * rate
        want = math.ceil((needed - expected) / max(rate, 1e-3))
        room = cfg.max_outstanding - run.outstanding
        left = cfg.max_tasks - run.admitted
        return max(0, min(want, room, left))

    async def _admission_loop(self, run: Run) -> None:
        try:
            while run.state == "running":
                if run.accepted >= run.config.target:
                    await self._finish(run, "completed")
                    return
                if run.admitted >= run.config.max_tasks and run.outstanding <= 0:
                    await self._finish(run, "exhausted")
                    return
                n = self._tasks_wanted(run)
                if n:
                    await self._admit(run, n)
                run.wake.clear()
                try:
                    await asyncio.wait_for(run.wake.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admission loop failed", extra={"run_id": run.run_id})
            await self._finish(run, "failed")

    async def _admit(self, run: Run, n: int) -> None:
        """Publish tasks ``admitted .. admitted+n-1``; ``admitted`` moves only when all are stored.

        A failed publish (NATS restarting) is retried under the same msg ids until it is stored,
        so no admitted index is ever skipped and none is generated twice."""
        ids: list[str] = []
        payloads: list[bytes] = []
        for index in range(run.admitted, run.admitted + n):
            item_id = f"{run.run_id}-{index:07d}"
            task = pb.GenerateTask(
                schema_version=SCHEMA,
                run_id=run.run_id,
                item_id=item_id,
                index=index,
                seed=task_seed(run.config.seed, index),
                config=run.config,
            )
            ids.append(f"{item_id}.task")
            payloads.append(task.SerializeToString())
        # Tasks go out in envelopes (libs/queue/envelope.py) whose ids hash the task ids: the
        # same packing on a retry, so a stored envelope is deduplicated.
        packs = envelope.messages(payloads, ids, max_items=self.settings.envelope_max_items,
                                  max_bytes=envelope_bytes(self.settings.queue_max_message_bytes))  # fmt: skip
        pending = {pk.msg_id: pk for pk in packs}
        delay = 0.2
        while pending:
            keys = list(pending)
            results = await asyncio.gather(
                *(self.js.publish(subjects.GENERATE.subject, pending[k].payload, headers=pending[k].headers)
                  for k in keys),
                return_exceptions=True,
            )  # fmt: skip
            failed = [r for r in results if isinstance(r, BaseException)]
            for k, r in zip(keys, results):
                if not isinstance(r, BaseException):
                    del pending[k]
            if pending:
                if self._closing:
                    raise RuntimeError(f"coordinator closing with {len(pending)} task message(s) not admitted")
                log.warning("admission: %d task message(s) of %d task(s) not stored (%s); retrying in %.1fs",
                            len(pending), n, failed[0], delay, extra={"run_id": run.run_id})  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        run.admitted += n

    # ------------------------------------------------------------------ sink
    async def handle_outcomes(self, outcomes: list[pb.Outcome]) -> list[list[Publish] | BaseException]:
        """Sink adapter entry: returns once each record is durable (then the worker acks).

        A batch is handled phase by phase: every outcome is classified and accounted (records
        go into their run's shard buffer) in one pass, then the batch's rejections are stored
        as one ledger entry per run, while the records wait for their shard. Only outcomes of
        a run not loaded here and replayed dead letters take the per-item path."""
        self._sink_busy += 1
        try:
            return await self._outcomes(outcomes)
        finally:
            self._sink_busy -= 1

    async def _outcomes(self, outcomes: list[pb.Outcome]) -> list[list[Publish] | BaseException]:
        self._last_outcome = now = time.monotonic()
        results: list[list[Publish] | BaseException] = [[] for _ in outcomes]
        single: list[tuple[int, Coroutine[Any, Any, list[Publish]]]] = []  # the per-item path
        rejected: dict[str, tuple[Run, list[tuple[int, str, tuple[str, str], bool]]]] = {}
        waits: list[tuple[int, asyncio.Future]] = []
        filled: dict[str, Run] = {}
        for k, o in enumerate(outcomes):
            try:
                run_id, item_id = item_ids(o)
                run = self.runs.get(run_id)
                if run is None:
                    single.append((k, self._unloaded_outcome(run_id, item_id, o)))
                    continue
                if item_id in run.dead:
                    single.append((k, self._replace_dead(run, item_id, o)))
                    continue
                if item_id in run.seen or item_id in run.recording:
                    continue  # redelivered outcome: already counted / written (or being recorded now)
                key = self._end_key(run, o)
                if key is None:
                    waits.append((k, self._buffer_record(run, item_id, o, now)))
                    filled[run_id] = run
                    continue
            except Exception as e:  # noqa: BLE001 -- this outcome's error; the batch goes on
                results[k] = e
                continue
            # Durable before the ack: a redelivery after a crash finds the entry.
            run.recording.add(item_id)
            dead = key[1].startswith(DEAD_LETTER_PREFIX)
            rejected.setdefault(run_id, (run, []))[1].append((k, item_id, key, dead))
        for run in filled.values():
            run.wake.set()
            self._maybe_flush(run)

        async def record(run: Run, entries: list[tuple[int, str, tuple[str, str], bool]]) -> None:
            try:
                await self._ledger_batch.record_many(run.run_id, [(item_id, *key) for _, item_id, key, _ in entries])
            except Exception as e:  # noqa: BLE001 -- these items are retried
                for k, item_id, _, _ in entries:
                    run.recording.discard(item_id)
                    results[k] = e
                return
            for _, item_id, key, dead in entries:  # ``seen`` keeps the counts exact
                run.recording.discard(item_id)
                run.seen.add(item_id)
                run.finished += 1
                run.rejections[key] += 1
                if dead:
                    run.dead[item_id] = key
            run.wake.set()
            if run.state in CLOSED_STATES:
                self._schedule_late_save(run)

        async def one_by_one() -> None:
            done = await gather_eager((c for _, c in single), return_exceptions=True)
            for (k, _), r in zip(single, done):
                results[k] = r

        async def stored() -> None:
            done = await asyncio.gather(*(f for _, f in waits), return_exceptions=True)
            for (k, _), r in zip(waits, done):
                if isinstance(r, BaseException):
                    results[k] = r

        phases = [record(run, entries) for run, entries in rejected.values()]
        if single:
            phases.append(one_by_one())
        if waits:
            phases.append(stored())
        await gather_eager(phases)
        return results

    @staticmethod
    def _end_key(run: Run, o: pb.Outcome) -> tuple[str, str] | None:
        """The (stage, reason) an outcome ends its item with; None for a record to write."""
        if o.WhichOneof("kind") == "rejection":
            return (o.rejection.stage, o.rejection.reason)
        if run.state != "running" or run.accepted >= run.config.target:
            return (STAGE, "over_target")
        return None

    def _buffer_record(self, run: Run, item_id: str, o: pb.Outcome, now: float) -> asyncio.Future:
        """Count an accepted record and queue it for the run's next shard; the future resolves
        once the shard is durable. (The caller wakes the run and decides on flushing.)"""
        row = pair_row(o.pair) if o.WhichOneof("kind") == "pair" else record_row(o.record)
        run.seen.add(item_id)
        run.finished += 1
        run.accepted += 1
        fut = asyncio.get_running_loop().create_future()
        if not run.buffer:
            run.buffer_since = now
        run.buffer.append((row, item_id, fut))
        return fut

    async def _unloaded_outcome(self, run_id: str, item_id: str, o: pb.Outcome) -> list[Publish]:
        """An outcome of a run not loaded here: retried while another coordinator owns the run,
        accounted in the ledger and KV counters when the run has ended."""
        st = await kv_get_json(self.kv, state_key(run_id))
        if st and st.get("state") in ("running", FINISHING):
            # Owned by a coordinator that is starting up or by another replica: retry later.
            raise TransientError(f"run {run_id} not loaded here yet", delay=2.0)
        if st is None:
            return []  # an unknown run: nothing to account
        return await self._late_outcome(run_id, item_id, o)

    async def _replace_dead(self, run: Run, item_id: str, o: pb.Outcome) -> list[Publish]:
        """A replayed dead letter of a loaded run that now ended for real: its ledger entry is
        replaced (a rejection) or forgotten once its record is in a shard."""
        replacing = run.dead.get(item_id)
        dead = o.WhichOneof("kind") == "rejection" and o.rejection.reason.startswith(DEAD_LETTER_PREFIX)
        if replacing is None or dead or item_id in run.recording:
            return []  # replaced meanwhile (a copy in the same batch), the dead letter again, or being recorded
        key = self._end_key(run, o)
        if key is not None:
            run.recording.add(item_id)
            try:
                stored = await ledger.record(await self.ledger_kv(), run.run_id, item_id, *key, replace=True)
            finally:
                run.recording.discard(item_id)
            self._undo_dead(run, item_id, replacing)
            run.seen.add(item_id)
            if stored:
                run.finished += 1
                run.rejections[key] += 1
            run.wake.set()
            if run.state in CLOSED_STATES:
                self._schedule_late_save(run)
            return []
        self._undo_dead(run, item_id, replacing)
        fut = self._buffer_record(run, item_id, o, time.monotonic())
        run.wake.set()
        self._maybe_flush(run)
        await fut
        await ledger.forget(await self.ledger_kv(), run.run_id, item_id)  # the shard is its record now
        return []

    def _maybe_flush(self, run: Run) -> None:
        """Write the run's buffer now when it is full enough or nothing else will come soon."""
        if (
            len(run.buffer) >= min(run.config.shard_max_records, self.sink_capacity)
            or run.accepted >= run.config.target
            or self._sink_busy >= self.sink_loops  # every fetch loop waits on this buffer
        ):
            asyncio.create_task(self._flush(run))

    async def on_dead_letter(self, o: pb.Outcome, reason: str, detail: str) -> list[Publish]:
        """The sink worker's dead-letter hook: an outcome the sink could not process still ends
        its item, as a ``dlq_<reason>`` rejection of the coordinator stage."""
        run_id, item_id = item_ids(o)
        if not run_id or not item_id:
            return []
        dead = pb.Outcome(rejection=pb.Rejection(
            schema_version=SCHEMA, run_id=run_id, item_id=item_id, stage=STAGE,
            reason=DEAD_LETTER_PREFIX + reason, detail=detail[:1000],
        ))  # fmt: skip
        got = (await self._outcomes([dead]))[0]
        if isinstance(got, BaseException):
            raise got
        return got

    @staticmethod
    def _undo_dead(run: Run, item_id: str, key: tuple[str, str]) -> None:
        del run.dead[item_id]
        run.seen.discard(item_id)
        run.rejections[key] -= 1
        run.finished -= 1

    async def _late_outcome(self, run_id: str, item_id: str, o: pb.Outcome) -> list[Publish]:
        """An outcome of a run that ended before this coordinator started: ledger + KV counters."""
        if o.WhichOneof("kind") == "rejection":
            key = (o.rejection.stage, o.rejection.reason)
        else:
            key = (STAGE, "over_target")
        recorded = await self._late_recorded(run_id)
        if item_id in recorded or not await ledger.record(await self.ledger_kv(), run_id, item_id, *key, same_ok=False):
            return []
        recorded.add(item_id)

        def add(st):
            if st is None:
                return st
            rej = st.setdefault("rejections", {})
            rej[f"{key[0]}/{key[1]}"] = rej.get(f"{key[0]}/{key[1]}", 0) + 1
            st["finished"] = int(st.get("finished", 0)) + 1
            return st

        await kv_update_json(self.kv, state_key(run_id), add)
        return []

    async def _late_recorded(self, run_id: str) -> set[str]:
        """Items of an ended run that the ledger has, batch entries included (loaded once per
        run, for the few runs that still get outcomes): a redelivered late outcome whose first
        delivery a batch entry recorded must not count twice."""
        loading = self._late_ledgers.get(run_id)
        if loading is None:  # single flight: a batch of late outcomes shares one scan
            loading = self._late_ledgers[run_id] = asyncio.ensure_future(self._load_late(run_id))
            while len(self._late_ledgers) > 4:
                self._late_ledgers.pop(next(iter(self._late_ledgers)))
        try:
            return await asyncio.shield(loading)
        except Exception:
            if self._late_ledgers.get(run_id) is loading:
                del self._late_ledgers[run_id]  # the next outcome tries again
            raise

    async def _load_late(self, run_id: str) -> set[str]:
        return set(await ledger.entries(await self.ledger_kv(), run_id))

    def _schedule_late_save(self, run: Run) -> None:
        """Outcomes still arrive after a run ended (work in flight): save the counters again."""
        if run.run_id in self._late_saves:
            return

        async def save() -> None:
            try:
                await asyncio.sleep(1.0)
                self._late_saves.pop(run.run_id, None)
                await self._save_state(run)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next late outcome schedules another save
                log.warning("late state save failed: %s", e, extra={"run_id": run.run_id})

        t = asyncio.create_task(save(), name=f"late-save-{run.run_id}")
        self._late_saves[run.run_id] = t
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _flush_loop(self, run: Run) -> None:
        while run.state == "running":
            await asyncio.sleep(0.2)
            if run.manifest_dirty and not run.write_lock.locked() and time.monotonic() >= run.retry_at:
                async with run.write_lock:
                    if not await self._write_manifest(run):
                        run.retry_at = time.monotonic() + 2.0
            if not run.buffer or time.monotonic() < run.retry_at:
                continue
            now = time.monotonic()
            if (
                run.flush_failures
                or now - run.buffer_since >= run.config.shard_max_seconds
                or now - self._last_outcome >= SINK_IDLE_FLUSH  # the sink waits on this buffer
            ):
                await self._flush(run)

    async def _flush(self, run: Run) -> None:
        """Write the buffered records as one shard; on failure undo their accounting and nak."""
        async with run.write_lock:
            if not run.buffer:
                return
            cap = run.config.shard_max_records
            batch, run.buffer = run.buffer[:cap], run.buffer[cap:]
            run.buffer_since = time.monotonic()
            rows = [row for row, _, _ in batch]
            try:
                info = await asyncio.to_thread(run.writer.write, rows)
            except Exception as e:
                # Keep the records (their messages stay un-acked, kept alive by the worker's
                # heartbeat) and retry: the store may be restarting. The writer makes a retry of
                # a write that did land a no-op.
                run.buffer[:0] = batch
                run.flush_failures += 1
                run.retry_at = time.monotonic() + min(0.5 * 2 ** min(run.flush_failures, 4), 8.0)
                log.warning("shard write failed (%d in a row), retrying: %s", run.flush_failures, e,
                            extra={"run_id": run.run_id})  # fmt: skip
                return
            run.flush_failures = 0
            # The shard is durable: its records count as written even if the manifest write
            # fails now (retrying the shard would write them twice). A restart reconciles the
            # manifest with the listed shards; the flush loop and the run's end rewrite it.
            run.manifest.add_shard(info)
            run.shards += 1
            await self._write_manifest(run)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            if run.buffer:  # records after this shard's: full, or every fetch loop still waits on them
                self._maybe_flush(run)
        ann = pb.ShardAnnouncement(
            run_id=run.run_id, key=info.key, records=info.records, seq=info.seq, store=self.store.url
        )
        try:
            await self.js.publish(
                subjects.shard_subject(run.run_id),
                ann.SerializeToString(),
                headers={"Nats-Msg-Id": f"{run.run_id}.shard.{info.key}"},
            )
        except Exception as e:  # the shard is durable and in the manifest; subscribers can list
            log.warning("shard announcement failed: %s", e, extra={"run_id": run.run_id})
        log.info("shard written", extra={"run_id": run.run_id, "key": info.key, "records": info.records})

    async def _finish(self, run: Run, state: str) -> None:
        if run.state != "running":
            return
        # "finishing": admission stops and outcomes that still arrive count as over_target, but the
        # run is not reported as ended until every accepted record is in a durable shard and the
        # manifest says so (a reader that sees "completed" must find all the records).
        run.state = FINISHING
        while True:
            await self._flush(run)  # takes the write lock: also waits for a flush in progress
            if not run.buffer and not run.write_lock.locked():
                break
            await asyncio.sleep(max(0.5, run.retry_at - time.monotonic()))
        run.ended_at = time.time()
        run.manifest.state = state
        await self._until_stored("manifest", run, lambda: asyncio.to_thread(write_manifest, self.store, run.manifest))
        run.state = state
        await self._until_stored("state", run, lambda: self._save_state(run))
        end = pb.RunEnd(
            run_id=run.run_id,
            state=state,
            accepted=run.accepted,
            shards=run.shards,
            manifest_key=f"runs/{run.run_id}/manifest.json",
        )
        await self._until_stored("run end announcement", run, lambda: self.js.publish(
            subjects.run_end_subject(run.run_id), end.SerializeToString(), headers={"Nats-Msg-Id": f"{run.run_id}.end"}
        ))  # fmt: skip
        run.ended.set()
        for t in run.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        # Stage replicas flush their counters about once a second, so the status.json written
        # just now may miss the last second of work: write it again once they have flushed.
        resave = asyncio.create_task(self._resave_status(run), name=f"resave-{run.run_id}")
        self._background.add(resave)
        resave.add_done_callback(self._background.discard)
        log.info("run ended", extra={"run_id": run.run_id, "state": state, "accepted": run.accepted})

    async def _write_manifest(self, run: Run) -> bool:
        try:
            await asyncio.to_thread(write_manifest, self.store, run.manifest)
        except Exception as e:
            run.manifest_dirty = True
            log.warning("manifest write failed (shards are durable; retrying): %s", e, extra={"run_id": run.run_id})
            return False
        run.manifest_dirty = False
        return True

    async def _until_stored(self, what: str, run: Run, write) -> None:
        """Retry a write the end of a run depends on (store or NATS restarting) until it lands."""
        delay = 0.5
        while True:
            try:
                await write()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._closing:
                    raise
                log.warning("%s not stored (%s); retrying in %.1fs", what, e, delay, extra={"run_id": run.run_id})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    # ------------------------------------------------------------------ state
    async def _state_loop(self, run: Run) -> None:
        while run.state == "running":
            await asyncio.sleep(1.0)
            try:
                await self._save_state(run)
            except Exception as e:
                log.warning("state save failed: %s", e, extra={"run_id": run.run_id})

    async def _resave_status(self, run: Run, delay: float = STATUS_RESAVE_DELAY) -> None:
        try:
            await asyncio.sleep(delay)
            await self._save_state(run)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the first status.json stands; only late counters are missing
            log.warning("final status re-save failed: %s", e, extra={"run_id": run.run_id})

    async def _save_state(self, run: Run) -> None:
        st = run.state_dict()
        await kv_put_json(self.kv, state_key(run.run_id), st)
        if run.state in CLOSED_STATES:
            full = await self.status(run.run_id)
            await asyncio.to_thread(
                self.store.put_bytes, status_key(run.run_id), json.dumps(full).encode(), "application/json"
            )

    async def status(self, run_id: str) -> dict:
        """Run state + summed per-stage counters, as a plain dict (RunStatus fields)."""
        run = self.runs.get(run_id)
        st = run.state_dict() if run else await kv_get_json(self.kv, state_key(run_id))
        if st is None:
            raise NotFound(f"run {run_id} not found")
        cfg = config_to_dict(run.config) if run else (await kv_get_json(self.kv, config_key(run_id)) or {})
        processed: Counter = Counter()
        tokens: Counter = Counter()
        for key, d in (await kv_latest_json(self.kv, f"run.{run_id}.stage.>")).items():
            stage = key.split(".")[3]
            d = d or {}
            processed[stage] += int(d.get("processed", 0))
            tokens[stage] += int(d.get("tokens", 0))
        st = dict(st)
        st["processed"] = dict(processed)
        st["tokens"] = dict(tokens)
        st["target"] = int(cfg.get("target", 0))
        st["config"] = cfg
        return st

    async def list_runs(self) -> list[dict]:
        out = []
        for key in await kv_keys(self.kv, "run."):
            if key.endswith(".state"):
                out.append(await self.status(key.split(".")[1]))
        return sorted(out, key=lambda s: -s.get("started_at", 0))

    async def close(self) -> None:
        self._closing = True
        for t in list(self._background):
            t.cancel()
        for run in self.runs.values():
            for t in run.tasks:
                t.cancel()
            try:
                await self._save_state(run)
            except Exception:
                pass


def status_to_proto(st: dict):
    from scalequest.coordinator.v1 import coordinator_pb2 as api

    msg = api.RunStatus(
        run_id=st["run_id"],
        state=st["state"],
        target=int(st.get("target", 0)),
        admitted=int(st.get("admitted", 0)),
        finished=int(st.get("finished", 0)),
        accepted=int(st.get("accepted", 0)),
        shards=int(st.get("shards", 0)),
        started_at=float(st.get("started_at", 0)),
        ended_at=float(st.get("ended_at", 0)),
    )
    msg.processed.update(st.get("processed", {}))
    msg.tokens.update(st.get("tokens", {}))
    for k, n in sorted(st.get("rejections", {}).items()):
        stage, reason = k.split("/", 1)
        msg.rejections.add(stage=stage, reason=reason, count=n)
    if st.get("config"):
        ParseDict(st["config"], msg.config, ignore_unknown_fields=True)
    return msg
