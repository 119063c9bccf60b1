"""Few-step QFT, QPO and SFT runs on CPU with a tiny Llama (TRL for real, no mocks): finite
losses, the paper defaults recorded, outputs under models/<name>/ in a local store and in S3,
resumable checkpoints, LoRA, streaming SFT that follows a live pipeline run, and a trained model
loading in questiongen's vLLM engine."""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from scalequest.common.v1 import items_pb2 as pb
from scalequest.coordinator.v1 import coordinator_pb2 as capi
from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

from libs.models.resolve import MODEL_MANIFEST, resolve_model
from libs.storage.objectstore import LocalStore, open_store
from libs.storage.shards import PAIR_SCHEMA, ShardWriter
from services.trainer.train import TrainSpec, train
from tests.trainer.conftest import write_jsonl

TINY = {"max_steps": 2, "batch_size": 4, "micro_batch_size": 2, "max_length": 64, "logging_steps": 1}
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "training_config.json", "metrics.json", MODEL_MANIFEST}


def questions(n: int = 24) -> list[dict]:
    return [{"question": f"Ann has {i + 2} pens and buys {i} more. How many pens does she have?", "answer": f"#### {2 * i + 2}"}
            for i in range(n)]


def stored_files(store, name: str) -> set[str]:
    prefix = f"models/{name}/"
    return {k[len(prefix):] for k in store.list(prefix) if not k[len(prefix):].startswith("checkpoints/")}


def test_qft_defaults_outputs_and_resume(tiny_model, tmp_path, one_thread, capsys):
    data = write_jsonl(tmp_path / "gsm8k" / "train.jsonl", questions())
    store_dir = tmp_path / "store"
    spec = TrainSpec(kind="qft", model=str(tiny_model), data=[str(data)], store=str(store_dir), name="qft-tiny",
                     output_dir=str(tmp_path / "out"), save_steps=2, **TINY)
    res = train(spec)
    assert math.isfinite(res.metrics["final_loss"]) and res.metrics["global_step"] == 2
    store = LocalStore(store_dir)
    assert MODEL_FILES <= stored_files(store, "qft-tiny")
    cfg = json.loads(store.get_bytes("models/qft-tiny/training_config.json"))
    # paper defaults (METHOD §1) unless overridden: 1 epoch, lr 2e-5 cosine, warmup 3%, packing
    assert cfg["epochs"] == 1.0 and cfg["learning_rate"] == 2e-5 and cfg["lr_scheduler"] == "cosine"
    assert cfg["warmup_ratio"] == 0.03 and cfg["packing"] is True
    assert cfg["resolved"]["precision"] == "fp32"  # CPU: no bf16 autocast by default
    assert cfg["resolved"]["effective_batch_size"] == 4 and cfg["resolved"]["gradient_accumulation_steps"] == 2
    metrics = json.loads(store.get_bytes("models/qft-tiny/metrics.json"))
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0
    out = capsys.readouterr().out
    assert "[qft] step 1/2 | loss" in out and "tok/s" in out and "samples/s" in out
    assert "{'loss'" not in out  # one progress line per log, not the Trainer's dict as well
    # the checkpoint is mirrored to the store for Jobs that restart elsewhere
    assert store.exists("models/qft-tiny/checkpoints/checkpoint-2/.complete")
    # the training text: template prefix + question + end-of-turn, nothing else
    from transformers import AutoTokenizer

    from services.trainer.data import qft_examples

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    text = qft_examples(questions(1), tok)[0]["text"]
    assert text.startswith("<|im_start|>system\n") and text.endswith("How many pens does she have?<|im_end|>")
    assert "<|im_start|>assistant" not in text

    # a second run in the same output dir must be explicit about resuming...
    from libs.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(TrainSpec(**{**spec.__dict__, "max_steps": 3}))
    # ...and then continues at step 2
    res2 = train(TrainSpec(**{**spec.__dict__, "max_steps": 3, "resume": True}))
    assert res2.metrics["global_step"] == 3
    cfg2 = json.loads(store.get_bytes("models/qft-tiny/training_config.json"))
    assert cfg2["resolved"]["resumed_from"].endswith("checkpoint-2")


def test_qft_resume_from_the_store_when_the_local_dir_is_gone(tiny_model, tmp_path, one_thread):
    data = write_jsonl(tmp_path / "q.jsonl", questions(12))
    store_dir = tmp_path / "store"
    base = dict(kind="qft", model=str(tiny_model), data=[str(data)], store=str(store_dir), name="qft-r", save_steps=1,
                **{**TINY, "max_steps": 1})
    train(TrainSpec(output_dir=str(tmp_path / "pod1"), **base))
    # a new pod: empty local dir, --resume finds the stored checkpoint
    res = train(TrainSpec(output_dir=str(tmp_path / "pod2"), resume=True, **{**base, "max_steps": 2}))
    assert res.metrics["global_step"] == 2
    assert (tmp_path / "pod2" / "checkpoint-1").is_dir()


def test_qpo_from_a_run_of_preference_pairs(tiny_model, tmp_path, one_thread):
    store_dir = tmp_path / "store"
    store = LocalStore(store_dir)
    w = ShardWriter(store, "qpo-run", schema=PAIR_SCHEMA)
    pairs = [{"item_id": f"qpo-run-{i}", "run_id": "qpo-run", "prompt": "<|im_start|>user\n",
              "chosen": f"A farmer has {i + 3} cows and buys {i} more; each gives 2 liters of milk. How much milk?",
              "rejected": f"cows {i}?", "goal": "solvability", "generator_model": "m", "optimizer_model": "m",
              "seed": i, "question_sampling": None, "optimizer_sampling": None, "optimizer_output": ""}
             for i in range(8)]
    w.write(pairs[:4])
    w.write(pairs[4:])
    res = train(TrainSpec(kind="qpo", model=str(tiny_model), run_id="qpo-run", store=str(store_dir), name="qpo-tiny",
                          output_dir=str(tmp_path / "out"), **TINY))
    loss = res.metrics["final_loss"]
    assert math.isfinite(loss) and abs(loss - math.log(2)) < 0.05  # DPO starts at log 2
    cfg = json.loads(store.get_bytes("models/qpo-tiny/training_config.json"))
    assert cfg["beta"] == 0.1 and cfg["learning_rate"] == 5e-7
    assert cfg["resolved"]["reference_dtype"] == cfg["resolved"]["policy_dtype"] == "torch.float32"
    assert MODEL_FILES <= stored_files(store, "qpo-tiny")
    # chosen/rejected carry the end-of-turn marker so the tuned generator learns to stop
    from transformers import AutoTokenizer

    from services.trainer.data import qpo_examples

    ex = qpo_examples(pairs[:1], AutoTokenizer.from_pretrained(str(tiny_model)))[0]
    assert ex["prompt"].endswith("<|im_start|>user\n") and ex["prompt"].startswith("<|im_start|>system")
    assert ex["chosen"].endswith("How much milk?<|im_end|>") and ex["rejected"] == "cows 0?<|im_end|>"


@pytest.mark.s3
def test_sft_lora_to_s3_and_resolve(tiny_model, tmp_path, one_thread, sft_rows, s3_store_url):
    data = write_jsonl(tmp_path / "pairs.jsonl", sft_rows)
    res = train(TrainSpec(kind="sft", model=str(tiny_model), data=[str(data)], store=s3_store_url, name="sft-lora",
                          output_dir=str(tmp_path / "out"), lora=True, lora_r=4, lora_alpha=8, **TINY))
    assert math.isfinite(res.metrics["final_loss"])
    assert res.model_uri == f"{s3_store_url}/models/sft-lora"
    store = open_store(s3_store_url)
    files = stored_files(store, "sft-lora")
    assert MODEL_FILES <= files and "adapter/adapter_config.json" in files
    cfg = json.loads(store.get_bytes("models/sft-lora/training_config.json"))
    assert cfg["epochs"] == 3.0 and cfg["lora"] is True
    # the stored model comes back as a local directory, once
    cache = tmp_path / "cache"
    local = Path(resolve_model(res.model_uri, cache_dir=cache))
    assert (local / "model.safetensors").is_file() and (local / "training_config.json").is_file()
    assert not any(p.name.startswith("checkpoint") for p in local.rglob("*"))
    mtime = (local / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(res.model_uri, cache_dir=cache) == str(local)
    assert (local / "model.safetensors").stat().st_mtime_ns == mtime  # not downloaded again
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(local))  # merged weights load without peft


def test_cli_train_runs_locally(tiny_model, tmp_path, one_thread, sft_rows, capsys):
    from scalequest_cli.main import main

    data = write_jsonl(tmp_path / "pairs.jsonl", sft_rows)
    rc = main(["train", "sft", "--model", str(tiny_model), "--data", str(data), "--store", str(tmp_path / "store"),
               "--name", "cli-sft", "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2",
               "--micro-batch-size", "2", "--max-length", "128", "--no-store-checkpoints"])
    assert rc == 0 and "[sft] done: 1 steps" in capsys.readouterr().out
    assert MODEL_FILES <= stored_files(LocalStore(tmp_path / "store"), "cli-sft")
    assert not LocalStore(tmp_path / "store").list("models/cli-sft/checkpoints/")


def test_sft_learns_only_the_solution(tiny_model, sft_rows):
    from transformers import AutoTokenizer

    from services.trainer.data import sft_examples, tokenize_sft

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    ex = sft_examples(sft_rows[:1], tok)[0]
    assert ex["prompt"].endswith("<|im_start|>assistant\n") and "\\boxed{}" in ex["prompt"]
    assert ex["completion"].endswith("\\boxed{1}.<|im_end|>")
    t = tokenize_sft(ex, tok, max_length=None)
    learned = tok.decode([i for i, lab in zip(t["input_ids"], t["labels"]) if lab != -100])
    assert learned == ex["completion"]


async def test_streaming_sft_follows_a_pipeline_run(nats_server, tiny_model, tmp_path, one_thread):
    """An SFT job started with a run trains on its shards as they appear, replays the run for
    the second epoch, and stops after that (no max-steps given: planned from the run's target)."""
    from libs.engines.scripted import math_engine
    from scalequest_cli.embedded import start_pipeline
    from tests.services.test_pipeline_fake import OVERRIDES

    store_url = str(tmp_path / "store")
    # A run of ten seconds or more: the trainer's first step (model load, first shard, one
    # optimizer step) has to come before its end, which a slow machine missed by 0.1 s at 0.3 s.
    engine = math_engine(delay=0.6)
    await engine.start()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=nats_server.url, store_url=store_url, overrides=OVERRIDES, stack=stack,
                                    engine=engine)
        # the job starts first (as a Job submitted with the run would) and waits for the run's shards
        spec = TrainSpec(kind="sft", model=str(tiny_model), run_id="sft-live", store=store_url, name="sft-stream",
                         output_dir=str(tmp_path / "out"), stream=True, nats_url=nats_server.url, epochs=2,
                         expected_records=12, batch_size=4, micro_batch_size=2, max_length=128, logging_steps=1,
                         save_steps=100, stream_fetch_timeout=0.3)
        job = asyncio.create_task(asyncio.to_thread(train, spec))
        await asyncio.sleep(2.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{pipe.port('coordinator')}") as ch:
            stub = capi_grpc.CoordinatorServiceStub(ch)
            config = pb.RunConfig(target=12, seed=7, n_candidates=4, max_outstanding=4, shard_max_records=4,
                                  shard_max_seconds=0.5)
            run_id = (await stub.StartRun(capi.StartRunRequest(config=config, run_id="sft-live"))).run_id
            async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=run_id, interval_seconds=0.2)):
                pass
            assert st.state == "completed"
            t_done = time.monotonic()
            res = await asyncio.wait_for(job, 300)
    s = res.metrics["stream"]
    assert s["records"] == 12 and s["examples"]["live"] == 12 and s["examples"]["replay"] == 12 and s["replays"] == 1
    assert res.metrics["global_step"] == 6  # 12 records x 2 epochs / 4 per step
    assert s["received"][0][0] < t_done, "the trainer saw no shard before the run ended"
    assert res.metrics["progress"][0]["at"] < t_done, "no training step happened while the run was going"
    assert math.isfinite(res.metrics["final_loss"])
    assert MODEL_FILES <= stored_files(LocalStore(store_url), "sft-stream")


@pytest.mark.model
async def test_trained_model_generates_in_questiongen(tiny_model, tmp_path):
    """A QFT-trained model from the store loads in questiongen's vLLM engine and samples from
    scratch (the prompt is its template prefix; it stops at the template's end-of-turn)."""
    import torch

    from libs.engines.registry import EngineSpec, close_all, get_engine
    from services.questiongen.stage import QuestionGenStage

    torch.set_num_threads(1)
    data = write_jsonl(tmp_path / "q.jsonl", questions(8))
    res = train(TrainSpec(kind="qft", model=str(tiny_model), data=[str(data)], store=str(tmp_path / "store"),
                          name="qft-gen", output_dir=str(tmp_path / "out"), **{**TINY, "max_steps": 1}))
    model_dir = resolve_model(res.model_uri)
    engine = await get_engine(EngineSpec(kind="vllm", model=model_dir,
                                         options=(("max_model_len", 256), ("enable_chunked_prefill", False))))
    try:
        stage = QuestionGenStage(engine)
        assert stage.prompt(pb.GENERATION_MODE_SCRATCH).endswith("<|im_start|>user\n")
        s = await stage.sample(pb.GENERATION_MODE_SCRATCH, pb.Sampling(temperature=1.0, top_p=0.99, max_tokens=16), seed=3)
        assert s.num_tokens > 0 and engine.model_name == "qft-gen"
    finally:
        await close_all()
