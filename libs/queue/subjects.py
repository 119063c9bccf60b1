"""NATS names: streams, subjects, consumers and KV buckets, in one place.

Subjects are lowercase and dotted, broad to narrow. Each hand-off between stages is one
work-queue stream with one durable pull consumer named after the consuming service.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "scalequest"


@dataclass(frozen=True)
class WorkQueue:
    """One hand-off: the stream, its subject and the consuming service (= durable name)."""

    stream: str
    subject: str
    consumer: str


GENERATE = WorkQueue("SQ_GENERATE", f"{PREFIX}.work.generate", "questiongen")
FILTER = WorkQueue("SQ_FILTER", f"{PREFIX}.work.filter", "filter")
SOLVE = WorkQueue("SQ_SOLVE", f"{PREFIX}.work.solve", "solver")
SCORE = WorkQueue("SQ_SCORE", f"{PREFIX}.work.score", "reward")
SINK = WorkQueue("SQ_SINK", f"{PREFIX}.work.sink", "coordinator")
WORK_QUEUES = (GENERATE, FILTER, SOLVE, SCORE, SINK)
BY_CONSUMER = {q.consumer: q for q in WORK_QUEUES}

# Events (limits retention, replayable): shard announcements and run ends.
EVENTS_STREAM = "SQ_EVENTS"
EVENTS_SUBJECTS = f"{PREFIX}.events.>"

# Dead letters, one subject per stage; limits retention so they can be listed and replayed.
DLQ_STREAM = "SQ_DLQ"
DLQ_SUBJECTS = f"{PREFIX}.dlq.>"

# KV bucket with run configs, states and counters.
RUNS_BUCKET = "sq-runs"


def shard_subject(run_id: str) -> str:
    return f"{PREFIX}.events.{run_id}.shard"


def run_end_subject(run_id: str) -> str:
    return f"{PREFIX}.events.{run_id}.end"


def dlq_subject(stage: str) -> str:
    return f"{PREFIX}.dlq.{stage}"


# Headers on dead-lettered messages.
H_REASON = "Sq-Reason"
H_DETAIL = "Sq-Detail"
H_STAGE = "Sq-Stage"
H_SUBJECT = "Sq-Original-Subject"
H_DELIVERIES = "Sq-Deliveries"
