"""``scalequest train qft|qpo|sft`` and ``scalequest eval``: flags, local runs, and Jobs.

Every :class:`~services.trainer.train.TrainSpec` / :class:`~services.trainer.evaluate.EvalSpec`
field is one flag (tables below); ``None`` defaults are the kind's paper defaults. With
``--dry-run`` the command prints the Kubernetes Job that would run it; with ``--submit`` it
creates that Job (:mod:`services.trainer.k8s`). The Job's arguments are rebuilt from the parsed
spec, so what runs in the cluster is exactly what was validated here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from libs.errors import ConfigError

# (spec field, flag, type, help); type "bool" = --flag/--no-flag, "flag" = store_true, "list" = repeatable
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("model", "--model", str, "base model: directory, s3://.../models/NAME, hub id, or 'default' (SmolLM2-135M-Instruct)"),
    ("data", "--data", "list", "training data: file, directory, s3:// URI, run:RUN_ID or dataset id (repeatable)"),
    ("run_id", "--run", str, "a run's shards as training data (in --store); with --stream, follow it live"),
    ("name", "--name", str, "model name: outputs go to models/NAME/ in the store (default: KIND-TIMESTAMP)"),
    ("output_dir", "--output-dir", str, "local directory for checkpoints (default ./scalequest-train/NAME)"),
    ("limit", "--limit", int, "use only the first N rows of the data"),
    ("question_field", "--question-field", str, "row field with the question (default: question/problem/input/text)"),
    ("solution_field", "--solution-field", str, "row field with the solution (sft)"),
    ("prompt_style", "--prompt-style", str, "sft prompt: solver (step by step + \\boxed{}, as eval asks) or plain"),
    ("epochs", "--epochs", float, "epochs (default qft 1, qpo 1, sft 3)"),
    ("max_steps", "--max-steps", int, "stop after N optimizer steps (overrides --epochs; -1 = off)"),
    ("max_length", "--max-length", int, "max tokens per sequence (default qft 256, qpo 512, sft 2048)"),
    ("learning_rate", "--lr", float, "peak learning rate (default qft 2e-5, qpo 5e-7, sft 2e-5)"),
    ("lr_scheduler", "--lr-scheduler", str, "learning-rate schedule (transformers name)"),
    ("warmup_ratio", "--warmup-ratio", float, "warmup share of the steps"),
    ("weight_decay", "--weight-decay", float, "AdamW weight decay"),
    ("max_grad_norm", "--max-grad-norm", float, "gradient clipping norm"),
    ("batch_size", "--batch-size", int, "global sequences (qpo: pairs) per optimizer step (default qft 32, qpo/sft 128)"),
    ("micro_batch_size", "--micro-batch-size", int, "per-device batch; the rest is gradient accumulation"),
    ("packing", "--packing", "bool", "pack sequences into max-length blocks (default on for qft)"),
    ("beta", "--beta", float, "DPO beta (qpo)"),
    ("precision", "--precision", str, "auto (bf16 where supported, else fp32), bf16 or fp32"),
    ("gradient_checkpointing", "--gradient-checkpointing", str, "auto (on with CUDA), on or off"),
    ("save_dtype", "--save-dtype", str, "dtype of the saved model: auto (as trained), float32, bfloat16, float16"),
    ("seed", "--seed", int, "random seed"),
    ("lora", "--lora", "flag", "train a LoRA adapter instead of all weights"),
    ("lora_r", "--lora-r", int, "LoRA rank"),
    ("lora_alpha", "--lora-alpha", int, "LoRA alpha"),
    ("lora_dropout", "--lora-dropout", float, "LoRA dropout"),
    ("lora_targets", "--lora-targets", str, "LoRA target modules: all-linear or a comma list"),
    ("merge_lora", "--merge-lora", "bool", "save the merged model (loadable by vLLM) besides the adapter"),
    ("logging_steps", "--logging-steps", int, "progress line every N steps"),
    ("save_steps", "--save-steps", int, "checkpoint every N steps"),
    ("save_total_limit", "--save-total-limit", int, "checkpoints kept (local and stored)"),
    ("resume", "--resume", "flag", "continue from the newest checkpoint in --output-dir, else in the store"),
    ("store_checkpoints", "--store-checkpoints", "bool", "mirror checkpoints to models/NAME/checkpoints/ in the store"),
    ("stream", "--stream", "flag", "sft: follow --run live over NATS, training on shards as they are written"),
    ("job_name", "--job-name", str, "job name (the stream's durable consumer is trainer-JOB; default --name)"),
    ("expected_records", "--expected-records", int, "--stream: records to plan the schedule for (default: the run's target)"),
]

EVAL_FLAGS: list[tuple[str, str, Any, str]] = [
    ("model", "--model", str, "model: directory, s3://.../models/NAME, hub id, or 'default'"),
    ("benches", "--bench", "list", "benchmark file as NAME=PATH or PATH (JSONL/Parquet; repeatable)"),
    ("limit", "--limit", int, "first N questions of each benchmark"),
    ("max_tokens", "--max-tokens", int, "generation budget per answer"),
    ("max_model_len", "--max-model-len", int, "engine context length"),
    ("prompt_style", "--prompt-style", str, "solver (step by step + \\boxed{}) or plain"),
    ("answer_fallback", "--answer-fallback", "flag", "also accept 'the answer is N' when there is no \\boxed{}"),
    ("concurrency", "--concurrency", int, "questions in flight"),
    ("out", "--out", str, "also write the full report (with samples) as JSON to this file"),
]


def _add_flags(p: argparse.ArgumentParser, table) -> None:
    for dest, flag, typ, help_ in table:
        if typ == "list":
            p.add_argument(flag, dest=dest, action="append", default=None, help=help_)
        elif typ == "bool":
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typ == "flag":
            p.add_argument(flag, dest=dest, action="store_true", default=None, help=help_)
        else:
            p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)


def _add_env_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get("SQ_STORE_URL", "./scalequest-data"),
                   help="object store: a directory or s3://BUCKET/PREFIX (endpoint: SQ_S3_ENDPOINT)")
    p.add_argument("--nats-url", default=os.environ.get("SQ_NATS_URL", ""), help="NATS URL (--stream)")


def _add_job_flags(p: argparse.ArgumentParser, gpus_default: int) -> None:
    g = p.add_argument_group("Kubernetes Job (--dry-run / --submit); defaults match the chart's training.defaults")
    g.add_argument("--submit", action="store_true", help="create a Kubernetes Job that runs this command")
    g.add_argument("--dry-run", action="store_true", help="print the Job manifest (YAML) instead of running")
    g.add_argument("--context", default=None, help="kube context (default: the current one)")
    g.add_argument("--namespace", default=os.environ.get("SQ_K8S_NAMESPACE", "default"))
    g.add_argument("--release", default=os.environ.get("SQ_RELEASE", "scalequest"),
                   help="Helm release of the pipeline (pod label app.kubernetes.io/instance, for its NetworkPolicies)")
    g.add_argument("--image", default=os.environ.get("SQ_TRAINER_IMAGE", ""),
                   help="container image (default SQ_TRAINER_IMAGE or ghcr.io/scalequest/scalequest-trainer:VERSION-gpu|cpu)")
    g.add_argument("--k8s-job-name", default="", help="Job name (default: sq-<cmd>-<name>)")
    g.add_argument("--gpus", type=int, default=gpus_default, help="nvidia.com/gpu per pod (0 = CPU-only Job)")
    g.add_argument("--cpu", default="8", help="CPU request")
    g.add_argument("--memory", default="64Gi", help="memory request")
    g.add_argument("--memory-limit", default="96Gi", help="memory limit")
    g.add_argument("--shm-size", default="32Gi", help="size of the memory-backed /dev/shm")
    g.add_argument("--scratch-size", default="200Gi", help="size of the /work scratch emptyDir (checkpoints)")
    g.add_argument("--cache-pvc", default="", help="PVC for the model cache (~/.cache); default an emptyDir")
    g.add_argument("--runtime-class", default=None, help="runtimeClassName (default nvidia with GPUs; '' = none)")
    g.add_argument("--priority-class", default="", help="priorityClassName (e.g. scalequest-training)")
    g.add_argument("--service-account", default="")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--backoff-limit", type=int, default=2)
    g.add_argument("--deadline", type=int, default=86400, help="activeDeadlineSeconds")
    g.add_argument("--ttl", type=int, default=604800, help="ttlSecondsAfterFinished")
    g.add_argument("--s3-secret", default=os.environ.get("SQ_S3_SECRET", "scalequest-s3"),
                   help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY ('' = none)")
    g.add_argument("--job-env", action="append", default=[], metavar="KEY=VALUE", help="extra container environment")


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="QFT / QPO / SFT with TRL (locally, or as a Kubernetes Job)",
                       description="Train a model: qft (question fine-tuning), qpo (question preference "
                                   "optimization, DPO) or sft (downstream SFT on accepted pairs).")
    p.add_argument("kind", choices=["qft", "qpo", "sft"])
    _add_env_flags(p)
    _add_flags(p, TRAIN_FLAGS)
    _add_job_flags(p, gpus_default=1)


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot greedy pass@1 of a model on benchmark files",
                       description="Zero-shot greedy pass@1 with one answer checker (math-verify).")
    _add_flags(p, EVAL_FLAGS)
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    _add_job_flags(p, gpus_default=1)


# --------------------------------------------------------------------------------------------
# args <-> specs


def _spec_from_args(cls, args, table, **extra):
    kw = {dest: getattr(args, dest) for dest, *_ in table if getattr(args, dest) is not None}
    names = {f.name for f in fields(cls)}
    kw.update({k: v for k, v in extra.items() if k in names})
    return cls(**kw)


def spec_to_argv(spec, table) -> list[str]:
    """The flags that rebuild ``spec`` (fields left at the dataclass default are omitted)."""
    defaults = type(spec)(**{f.name: getattr(spec, f.name) for f in fields(spec) if f.name in ("kind",)})
    out: list[str] = []
    for dest, flag, typ, _ in table:
        v = getattr(spec, dest)
        if v == getattr(defaults, dest):
            continue
        if typ == "list":
            for item in v:
                out += [flag, str(item)]
        elif typ == "bool":
            out.append(flag if v else "--no-" + flag[2:])
        elif typ == "flag":
            if v:
                out.append(flag)
        else:
            out += [flag, str(v)]
    return out


def _kv_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def k8s_job_name(args, cmd: str, name: str) -> str:
    from services.trainer.k8s import job_name

    return job_name(args.k8s_job_name) if args.k8s_job_name else job_name("sq", cmd, name)


def _job_config(args, name: str, cmd_args: list[str], component: str, k8s_name: str):
    from services.trainer.k8s import JobConfig

    return JobConfig(
        name=k8s_name,
        args=cmd_args,
        component=component,
        job=name,
        release=args.release,
        namespace=args.namespace,
        image=args.image,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        memory_limit=args.memory_limit,
        shm_size=args.shm_size,
        scratch_size=args.scratch_size,
        cache_pvc=args.cache_pvc,
        runtime_class=args.runtime_class,
        priority_class=args.priority_class,
        service_account=args.service_account,
        node_selector=_kv_pairs(args.node_selector, "--node-selector"),
        backoff_limit=args.backoff_limit,
        active_deadline_seconds=args.deadline,
        ttl_seconds_after_finished=args.ttl,
        store_url=getattr(args, "store", ""),
        nats_url=getattr(args, "nats_url", ""),
        s3_endpoint=os.environ.get("SQ_S3_ENDPOINT", ""),
        s3_secret=args.s3_secret,
        env=_kv_pairs(args.job_env, "--job-env"),
    )


def _local_paths(values: list[str]) -> list[str]:
    return [v for v in values if "://" not in v and not v.startswith("run:") and v != "default" and Path(v).exists()]


def _job(args, cmd_args: list[str], name: str, component: str, local: list[str], k8s_name: str) -> int:
    from services.trainer.k8s import render_job, submit_job, to_yaml

    if component == "trainer" and not args.store.startswith("s3://"):
        print(f"scalequest: warning: --store {args.store} is a local path; the Job's pod will not see it "
              "(use s3://BUCKET/PREFIX)", file=sys.stderr)
    for v in local:
        print(f"scalequest: warning: {v} is a local path; the Job's pod resolves it in its own filesystem",
              file=sys.stderr)
    manifest = render_job(_job_config(args, name, cmd_args, component, k8s_name))
    if args.dry_run:
        print(to_yaml(manifest), end="")
        return 0
    created = submit_job(manifest, context=args.context)
    meta = created.get("metadata", {})
    print(f"job.batch/{meta.get('name', manifest['metadata']['name'])} created in namespace "
          f"{meta.get('namespace', manifest['metadata']['namespace'])}")
    return 0


def cmd_train(args) -> int:
    from services.trainer.train import TrainSpec

    spec = _spec_from_args(TrainSpec, args, TRAIN_FLAGS, kind=args.kind, store=args.store, nats_url=args.nats_url)
    spec.data = list(spec.data or [])
    spec = spec.resolved()
    if args.dry_run or args.submit:
        k8s_name = k8s_job_name(args, "train", spec.name)
        if not spec.job_name:
            spec.job_name = k8s_name
        spec.output_dir = f"/work/train/{spec.name}"
        spec.resume = True  # a retried pod continues from the newest stored checkpoint
        argv = ["train", spec.kind, "--store", spec.store, *(["--nats-url", spec.nats_url] if spec.nats_url else []),
                *spec_to_argv(spec, TRAIN_FLAGS)]
        return _job(args, argv, spec.name, "trainer", _local_paths([spec.model, *spec.data]), k8s_name)
    from services.trainer.train import train

    train(spec)
    return 0


def cmd_eval(args) -> int:
    from services.trainer.evaluate import EvalSpec, report_json, results_table, run_eval

    spec = _spec_from_args(EvalSpec, args, EVAL_FLAGS)
    spec.benches = list(spec.benches or [])
    if args.dry_run or args.submit:
        name = Path(spec.model.rstrip("/")).name or "model"
        argv = ["eval", *spec_to_argv(spec, EVAL_FLAGS)] + (["--json"] if args.json else [])
        return _job(args, argv, name, "eval", _local_paths([spec.model, *spec.benches]), k8s_job_name(args, "eval", name))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # engine start-up chatter would bury the table
    results, model_name = asyncio.run(run_eval(spec))
    if args.json:
        report = report_json(results, spec, model_name)
        print(json.dumps({"model": model_name, "results": [r.to_dict() for r in results],
                          "average_pass@1": report["average_pass@1"]}))
    else:
        from rich.console import Console

        Console().print(results_table(results, model_name))
    return 0


def run_cli(args) -> int:
    """Dispatch for scalequest_cli.main (``train`` and ``eval``)."""
    if args.cmd == "train":
        return cmd_train(args)
    return cmd_eval(args)


def spec_dict(spec) -> dict[str, Any]:
    return asdict(spec)
