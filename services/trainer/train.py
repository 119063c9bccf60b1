"""Training Job entrypoints: QFT (SFTTrainer on bare questions), QPO (DPOTrainer on preference
pairs) and downstream SFT (SFTTrainer on accepted pairs, from files or streamed from a live run).

:func:`train` takes a :class:`TrainSpec` (what ``scalequest train`` builds from its flags), reads
the data (:mod:`services.trainer.data`), trains with TRL, and writes the model, tokenizer,
``training_config.json`` and ``metrics.json`` to ``models/<name>/`` in the object store
(:mod:`services.trainer.artifacts`). Checkpoints go to a local output directory and, by default,
to the store too; ``resume`` continues from the newest one (local first, then stored).

Defaults are the paper's (METHOD §1, §2, §6); every one can be overridden:

| | QFT | QPO | SFT |
|---|---|---|---|
| epochs | 1 | 1 | 3 |
| max length | 256 (packed) | 512 | 2048 |
| learning rate | 2e-5 | 5e-7 | 2e-5 |
| sequences (pairs) per step | 32 | 128 | 128 |
| schedule | cosine, warmup 3% | cosine, warmup 3% | cosine, warmup 3% |
| other | packing | beta 0.1, reference = frozen copy in the policy's dtype | loss on the completion only |

Precision ``auto`` is bf16 mixed precision where the device supports it (CUDA with bf16) and
fp32 elsewhere; weights are held in fp32 (master weights) in both cases, so tiny updates such
as QPO's 5e-7 steps are not lost to bf16 rounding.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from libs.errors import ConfigError

log = logging.getLogger("scalequest.trainer")

KINDS = ("qft", "qpo", "sft")

#: Per-kind defaults for the hyper-parameters a spec leaves as None (METHOD §1, §2, §6).
DEFAULTS: dict[str, dict[str, Any]] = {
    "qft": {"epochs": 1.0, "max_length": 256, "learning_rate": 2e-5, "batch_size": 32, "micro_batch_size": 4, "packing": True},
    "qpo": {"epochs": 1.0, "max_length": 512, "learning_rate": 5e-7, "batch_size": 128, "micro_batch_size": 2, "packing": False},
    "sft": {"epochs": 3.0, "max_length": 2048, "learning_rate": 2e-5, "batch_size": 128, "micro_batch_size": 4, "packing": False},
}


@dataclass
class TrainSpec:
    """Everything one training job needs; None = the kind's default (see :data:`DEFAULTS`)."""

    kind: str
    model: str = "default"
    data: list[str] = field(default_factory=list)
    run_id: str = ""
    store: str = "./scalequest-data"
    name: str = ""
    output_dir: str = ""
    limit: int | None = None
    # data format
    question_field: str | None = None
    solution_field: str = "solution"
    prompt_style: str = "solver"
    # optimization
    epochs: float | None = None
    max_steps: int = -1
    max_length: int | None = None
    learning_rate: float | None = None
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int | None = None
    micro_batch_size: int | None = None
    packing: bool | None = None
    beta: float = 0.1
    precision: str = "auto"
    gradient_checkpointing: str = "auto"
    save_dtype: str = "auto"
    seed: int = 42
    # LoRA
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    merge_lora: bool = True
    # checkpoints and logging
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    resume: bool = False
    store_checkpoints: bool = True
    # streaming SFT
    stream: bool = False
    nats_url: str = ""
    job_name: str = ""
    expected_records: int | None = None
    stream_fetch_timeout: float = 2.0

    def resolved(self) -> TrainSpec:
        """A copy with the kind's defaults filled in and the names derived; validates."""
        if self.kind not in KINDS:
            raise ConfigError(f"unknown training kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        d = asdict(self)
        for k, v in DEFAULTS[self.kind].items():
            if d.get(k) is None:
                d[k] = v
        if not d["name"]:
            d["name"] = f"{self.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not d["output_dir"]:
            d["output_dir"] = str(Path("scalequest-train") / d["name"])
        spec = TrainSpec(**d)
        from services.trainer.artifacts import check_name

        try:
            check_name(spec.name)
        except ValueError as e:
            raise ConfigError(f"--name: {e}") from None
        if spec.stream:
            if spec.kind != "sft":
                raise ConfigError("--stream follows a run's accepted pairs: only for `train sft`")
            if not spec.run_id or not spec.nats_url:
                raise ConfigError("--stream needs --run RUN_ID and --nats-url (or SQ_NATS_URL)")
            if spec.data:
                raise ConfigError("--stream reads the run only; drop --data")
        if spec.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {spec.precision!r}")
        if spec.gradient_checkpointing not in ("auto", "on", "off"):
            raise ConfigError("--gradient-checkpointing must be auto, on or off")
        if spec.save_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError("--save-dtype must be auto, float32, bfloat16 or float16")
        for name in ("batch_size", "micro_batch_size", "max_length", "save_steps", "logging_steps"):
            if getattr(spec, name) is not None and getattr(spec, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if spec.epochs is not None and spec.epochs <= 0:
            raise ConfigError("--epochs must be > 0")
        if not 0 <= spec.warmup_ratio < 1:
            raise ConfigError("--warmup-ratio must be in [0, 1)")
        return spec


@dataclass
class TrainResult:
    name: str
    model_uri: str
    local_dir: str
    metrics: dict[str, Any]


# --------------------------------------------------------------------------------------------
# device and batch


def device_precision(precision: str) -> str:
    """"bf16" or "fp32" for ``auto`` on this machine (bf16 needs CUDA with bf16 support)."""
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def batch_plan(batch_size: int, micro_batch_size: int) -> tuple[int, int, int]:
    """(per-device micro batch, gradient accumulation, effective global batch)."""
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    micro = max(1, min(micro_batch_size, math.ceil(batch_size / world)))
    accum = max(1, round(batch_size / (micro * world)))
    effective = micro * accum * world
    if effective != batch_size:
        log.warning("global batch %d is not a multiple of micro batch %d x %d devices; using %d",
                    batch_size, micro, world, effective)
    return micro, accum, effective


def _last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


# --------------------------------------------------------------------------------------------
# the job


def _load_model(model_dir: str, spec: TrainSpec):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 master weights; bf16 (if any) is autocast by the Trainer
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _peft_config(spec: TrainSpec):
    if not spec.lora:
        return None
    from peft import LoraConfig

    targets: Any = spec.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def _common_args(spec: TrainSpec, micro: int, accum: int, precision: str, on_cuda: bool) -> dict[str, Any]:
    gc = spec.gradient_checkpointing == "on" or (spec.gradient_checkpointing == "auto" and on_cuda)
    return {
        "output_dir": spec.output_dir,
        "num_train_epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": spec.lr_scheduler,
        "warmup_steps": spec.warmup_ratio,  # a float < 1 is a ratio of the total steps
        "weight_decay": spec.weight_decay,
        "max_grad_norm": spec.max_grad_norm,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "bf16": precision == "bf16",
        "fp16": False,
        "use_cpu": not on_cuda,
        "gradient_checkpointing": gc,
        "logging_steps": spec.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        "save_total_limit": spec.save_total_limit,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": spec.seed,
        "max_length": spec.max_length,
        "dataloader_num_workers": 0,
    }


def _build_trainer(spec: TrainSpec, model, tokenizer, train_dataset, args_kw: dict, callbacks: list, stream: bool):
    peft_config = _peft_config(spec)
    if spec.kind == "qpo":
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**args_kw, beta=spec.beta, include_num_input_tokens_seen="non_padding")
        # The frozen reference: a second copy of the starting weights in the policy's dtype.
        # With LoRA the adapter-disabled policy is the reference (no copy).
        ref = None
        if peft_config is None:
            ref = AutoModelForCausalLM.from_pretrained(model.config._name_or_path, dtype=model.dtype)
        return DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=train_dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)

    from trl import SFTConfig, SFTTrainer

    from services.trainer.data import answer_end, question_end

    kw: dict[str, Any] = dict(args_kw)
    if spec.kind == "qft":
        kw.update(packing=spec.packing, dataset_text_field="text", eos_token=question_end(tokenizer),
                  include_num_input_tokens_seen="all" if spec.packing else "non_padding")
    else:
        kw.update(packing=spec.packing, completion_only_loss=True, eos_token=answer_end(tokenizer),
                  include_num_input_tokens_seen="non_padding")
    if stream:
        # examples arrive tokenized (labels built, truncated); a resumed run takes new data
        # from the consumer's position instead of skipping batches
        kw.update(dataset_kwargs={"skip_prepare_dataset": True}, ignore_data_skip=True, packing=False)
    args = SFTConfig(**kw)
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=callbacks)


def _save_final(trainer, tokenizer, spec: TrainSpec, final_dir: Path) -> None:
    import torch

    if final_dir.exists():
        shutil.rmtree(final_dir)
    final_dir.mkdir(parents=True)
    model = trainer.model
    if spec.lora:
        model.save_pretrained(str(final_dir / "adapter"))
        if spec.merge_lora:
            model = model.merge_and_unload()
    if spec.save_dtype != "auto":
        model = model.to(getattr(torch, spec.save_dtype))
    if not spec.lora or spec.merge_lora:
        model.save_pretrained(str(final_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(final_dir))


def train(spec: TrainSpec) -> TrainResult:
    """Run one training job end to end (see the module docstring)."""
    spec = spec.resolved()
    import torch
    from transformers import AutoTokenizer

    from libs.models.resolve import resolve_model
    from libs.storage.objectstore import open_store
    from services.trainer import artifacts, data
    from services.trainer.callbacks import (
        ArmStreamCallback,
        ProgressCallback,
        StoreCheckpointCallback,
    )

    t_start = time.monotonic()
    store = open_store(spec.store)
    model_dir = resolve_model(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    on_cuda = torch.cuda.is_available()
    precision = device_precision(spec.precision)
    micro, accum, effective = batch_plan(spec.batch_size, spec.micro_batch_size)

    source = None
    stream = None
    if spec.stream:
        from libs.streaming import RunShardStream, consumer_name
        from services.trainer.streaming import StreamingSFTSource, estimate_max_steps

        consumer = consumer_name(spec.job_name or spec.name)
        stream = RunShardStream(spec.nats_url, spec.run_id, consumer, store=store,
                                fetch_timeout=spec.stream_fetch_timeout).start()
        source = StreamingSFTSource(stream, store, tokenizer, max_length=spec.max_length, epochs=math.ceil(spec.epochs),
                                    prompt_style=spec.prompt_style, question_field=spec.question_field,
                                    solution_field=spec.solution_field)
        if spec.max_steps <= 0:
            spec.max_steps = estimate_max_steps(store, spec.run_id, math.ceil(spec.epochs), effective,
                                                spec.expected_records)
        train_dataset = source.dataset()
        n_examples = None
        log.info("streaming run %s through consumer %s (max %d steps)", spec.run_id, consumer, spec.max_steps)
    else:
        import datasets

        rows = data.load_rows(spec.data, run_id=spec.run_id or None, store_url=spec.store, limit=spec.limit)
        if spec.kind == "qft":
            examples = data.qft_examples(rows, tokenizer, spec.question_field)
        elif spec.kind == "qpo":
            examples = data.qpo_examples(rows, tokenizer)
        else:
            examples = data.sft_examples(rows, tokenizer, style=spec.prompt_style, question_field=spec.question_field,
                                         solution_field=spec.solution_field)
        n_examples = len(examples)
        train_dataset = datasets.Dataset.from_list(examples)
        log.info("%s: %d examples from %d rows", spec.kind, n_examples, len(rows))

    output_dir = Path(spec.output_dir)
    resume_from = None
    if spec.resume:
        resume_from = _last_checkpoint(output_dir)
        if resume_from is None and spec.store_checkpoints:
            got = artifacts.download_latest_checkpoint(store, spec.name, output_dir)
            resume_from = str(got) if got else None
        if resume_from is None:
            log.warning("--resume: no checkpoint in %s or the store; starting from the beginning", output_dir)
        else:
            print(f"[{spec.kind}] resuming from {resume_from}", flush=True)
    elif _last_checkpoint(output_dir) is not None:
        raise ConfigError(f"{output_dir} already has checkpoints: pass --resume to continue, or another --output-dir/--name")

    model = _load_model(model_dir, spec)
    progress = ProgressCallback(spec.kind, effective)
    callbacks: list = [progress]
    if spec.store_checkpoints:
        callbacks.append(StoreCheckpointCallback(store, spec.name, spec.save_total_limit))
    if source is not None:
        callbacks.append(ArmStreamCallback(source))
    args_kw = _common_args(spec, micro, accum, precision, on_cuda)
    try:
        trainer = _build_trainer(spec, model, tokenizer, train_dataset, args_kw, callbacks, stream=source is not None)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # ProgressCallback prints the progress lines
        print(f"[{spec.kind}] {spec.name}: model {spec.model} | {n_examples if n_examples is not None else 'streamed'} examples"
              f" | batch {effective} = {micro} x {accum} accum | lr {spec.learning_rate:g} | max_length {spec.max_length}"
              f" | {precision} | {f'LoRA r={spec.lora_r}' if spec.lora else 'full fine-tuning'}", flush=True)
        out = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if stream is not None:
            stream.close()

    final_dir = output_dir / "final"
    _save_final(trainer, tokenizer, spec, final_dir)
    wall = time.monotonic() - t_start
    metrics = dict(out.metrics)
    state = trainer.state
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    runtime = float(metrics.get("train_runtime") or wall)
    metrics.update({
        "kind": spec.kind,
        "global_step": state.global_step,
        "final_loss": next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None),
        "train_tokens": tokens,
        "tokens_per_second": tokens / runtime if runtime else None,
        "examples": n_examples,
        "wall_seconds": wall,
        "progress": progress.history,
        "log_history": state.log_history,
    })
    if source is not None:
        metrics["stream"] = {"records": stream.progress.records, "examples": dict(source.counts),
                             "replays": source.replays, "received": stream.received}
    resolved = {"model_dir": model_dir, "precision": precision, "micro_batch_size": micro,
                "gradient_accumulation_steps": accum, "effective_batch_size": effective,
                "world_size": int(os.environ.get("WORLD_SIZE", "1")), "resumed_from": resume_from,
                "policy_dtype": str(model.dtype)}
    if spec.kind == "qpo":
        ref = getattr(trainer, "ref_model", None)
        resolved["reference_dtype"] = str(ref.dtype) if ref is not None else "policy with the adapter disabled"
    config = {**asdict(spec), "resolved": resolved, "versions": _versions()}
    (final_dir / "training_config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
    (final_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str) + "\n")
    uri = artifacts.publish_model(store, final_dir, spec.name, extra={"kind": spec.kind, "base_model": spec.model})
    print(f"[{spec.kind}] done: {state.global_step} steps in {runtime:.1f}s, final loss {metrics['final_loss']}, "
          f"model at {uri}", flush=True)
    return TrainResult(name=spec.name, model_uri=uri, local_dir=str(final_dir), metrics=metrics)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def spec_fields() -> list[str]:
    return [f.name for f in fields(TrainSpec)]
