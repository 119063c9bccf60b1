"""Streaming SFT data: train on a run's accepted pairs while the run is still writing them.

:class:`StreamingSFTSource` turns a :class:`libs.streaming.RunShardStream` into the tokenized
examples SFT trains on, as a ``datasets.IterableDataset`` (see :meth:`dataset`). Each pass the
Trainer makes over it (one "epoch" of an iterable dataset):

1. the first pass follows the run live, shard by shard, until the run's end;
2. the next ``epochs - 1`` passes replay the whole run from the store (METHOD §6: 3 epochs);
3. the pass after that is empty, which ends training (Trainer stops on an empty epoch).

Before training starts (``armed`` false, set by :class:`ArmStreamCallback`), a pass yields only
the first pending example without moving the stream: TRL peeks at the dataset while building
the trainer. On a restart with the same job name the live pass continues at the consumer's
committed position; records consumed before the last checkpoint are not trained twice (the
Trainer is told not to skip batches: ``ignore_data_skip``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from libs.errors import ConfigError
from libs.storage.objectstore import ObjectStore
from libs.storage.shards import read_manifest
from libs.streaming import RunShardStream
from services.trainer.data import answer_end, run_records, sft_example, tokenize_sft

log = logging.getLogger("scalequest.trainer")


class StreamingSFTSource:
    def __init__(
        self,
        stream: RunShardStream,
        store: ObjectStore,
        tokenizer: Any,
        *,
        max_length: int | None,
        epochs: int = 1,
        prompt_style: str = "solver",
        question_field: str | None = None,
        solution_field: str = "solution",
    ) -> None:
        self.stream = stream
        self.store = store
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.epochs = max(1, int(epochs))
        self.prompt_style = prompt_style
        self.question_field = question_field
        self.solution_field = solution_field
        self._end = answer_end(tokenizer)
        self.armed = False
        self.replays = 0
        #: Examples yielded per pass kind, for reporting.
        self.counts = {"live": 0, "replay": 0, "skipped": 0}

    def _example(self, row: dict[str, Any]) -> dict[str, list[int]] | None:
        ex = sft_example(row, self.tokenizer, style=self.prompt_style, end=self._end,
                         question_field=self.question_field, solution_field=self.solution_field)
        if ex is None:
            self.counts["skipped"] += 1
            return None
        tok = tokenize_sft(ex, self.tokenizer, self.max_length)
        if all(label == -100 for label in tok["labels"]):  # the prompt alone fills max_length
            self.counts["skipped"] += 1
            return None
        return tok

    def examples(self) -> Iterator[dict[str, list[int]]]:
        """One pass (see the module docstring)."""
        if not self.armed:
            row = self.stream.peek()
            if row is None:  # the live pass is over: peek at the replay instead
                row = next(run_records(self.store, self.stream.run_id), None)
            ex = self._example(row) if row is not None else None
            if ex is not None:
                yield ex
            return
        if not self.stream.ended:
            for row in self.stream:
                ex = self._example(row)
                if ex is not None:
                    self.counts["live"] += 1
                    yield ex
            return
        if self.replays < self.epochs - 1:
            n = 0
            for row in run_records(self.store, self.stream.run_id):
                ex = self._example(row)
                if ex is not None:
                    n += 1
                    self.counts["replay"] += 1
                    yield ex
            self.replays += 1  # counted once the pass is complete
            log.info("replay pass %d/%d of run %s: %d examples", self.replays, self.epochs - 1, self.stream.run_id, n)

    def dataset(self):
        """The source as a ``datasets.IterableDataset`` of ``input_ids`` / ``labels``."""
        import datasets

        features = datasets.Features({
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int64")),
        })
        # `from_generator` fingerprints its generator by pickling it; the source holds a live
        # NATS connection, so the generator is a module function that looks the source up.
        token = f"{id(self):x}"
        _SOURCES[token] = self
        return datasets.IterableDataset.from_generator(_examples, features=features, gen_kwargs={"source": token})


_SOURCES: dict[str, StreamingSFTSource] = {}


def _examples(source: str) -> Iterator[dict[str, list[int]]]:
    yield from _SOURCES[source].examples()


def estimate_max_steps(store: ObjectStore, run_id: str, epochs: int, samples_per_step: int,
                       expected_records: int | None = None) -> int:
    """Optimizer steps for ``epochs`` passes over a run that may still be growing: from
    ``expected_records`` or else the run's target in its manifest."""
    n = expected_records
    if not n:
        manifest = read_manifest(store, run_id)
        if manifest is None:
            raise ConfigError(f"run {run_id!r} has no manifest in {store.url}; pass --max-steps or --expected-records")
        n = int(manifest.config.get("target") or 0) if manifest.state == "running" else manifest.accepted
        if not n:
            raise ConfigError(f"run {run_id!r} records no target; pass --max-steps or --expected-records")
    return max(1, math.ceil(n * epochs / samples_per_step))
