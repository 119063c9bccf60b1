"""Trainer callbacks: progress lines with throughput, checkpoints mirrored to the object store,
and the switch that lets a streamed dataset start moving once training begins."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from libs.storage.objectstore import ObjectStore
from services.trainer.artifacts import upload_checkpoint

log = logging.getLogger("scalequest.trainer")


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressCallback(TrainerCallback):
    """One line per logging step: step/max, loss, lr, tokens/s, samples/s, ETA.

    ``samples_per_step`` is the global batch (sequences, or pairs for DPO) of one optimizer
    step. Lines go to ``stream`` (stdout by default) and, with the same fields, to the
    ``scalequest.trainer`` logger at DEBUG. ``history`` keeps every line's numbers.
    """

    def __init__(self, kind: str, samples_per_step: int, stream=None) -> None:
        self.kind = kind
        self.samples_per_step = samples_per_step
        self.stream = stream if stream is not None else sys.stdout
        self.history: list[dict] = []
        self._t0 = 0.0
        self._step0 = 0
        self._tokens0 = 0

    def on_train_begin(self, args, state, control, **kw):
        self._t0 = time.monotonic()
        self._step0 = state.global_step
        self._tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if "loss" not in logs:  # the final summary log is reported by the trainer's metrics
            return
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        steps = state.global_step - self._step0
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens0
        tok_s = tokens / elapsed
        samples_s = steps * self.samples_per_step / elapsed
        eta = (state.max_steps - state.global_step) * elapsed / steps if steps and state.max_steps > 0 else float("nan")
        rec = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "loss": float(logs["loss"]),
            "lr": float(logs.get("learning_rate", float("nan"))),
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
            "tokens_per_s": tok_s,
            "samples_per_s": samples_s,
            "elapsed_s": elapsed,
            "at": time.monotonic(),
        }
        extra = ""
        if "rewards/accuracies" in logs:
            rec["reward_accuracy"] = float(logs["rewards/accuracies"])
            rec["reward_margin"] = float(logs.get("rewards/margins", float("nan")))
            extra = f" | acc {rec['reward_accuracy']:.2f} margin {rec['reward_margin']:+.3f}"
        self.history.append(rec)
        total = f"/{state.max_steps}" if state.max_steps > 0 else ""
        print(
            f"[{self.kind}] step {state.global_step}{total} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e}{extra}"
            f" | {tok_s:,.0f} tok/s | {samples_s:.2f} samples/s | epoch {rec['epoch']:.2f}"
            f" | elapsed {_fmt_duration(elapsed)} | eta {_fmt_duration(eta)}",
            file=self.stream,
            flush=True,
        )
        log.debug("train progress", extra=rec)


class StoreCheckpointCallback(TrainerCallback):
    """After each checkpoint save, mirror it to ``models/<name>/checkpoints/`` so a Job that
    restarts on another node (emptyDir gone) can ``--resume`` from the store."""

    def __init__(self, store: ObjectStore, name: str, keep: int | None) -> None:
        self.store = store
        self.name = name
        self.keep = keep

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            try:
                upload_checkpoint(self.store, self.name, ckpt, self.keep)
            except Exception as e:  # training goes on; the local checkpoint still exists
                log.warning("could not store checkpoint %s: %s", ckpt.name, e)


class ArmStreamCallback(TrainerCallback):
    """Lets a streamed dataset move only once training starts (trainers peek at the first
    example while they are built; see :class:`services.trainer.streaming.StreamingSFTSource`)."""

    def __init__(self, source) -> None:
        self.source = source

    def on_train_begin(self, args, state, control, **kw):
        self.source.armed = True
