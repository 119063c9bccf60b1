"""Helpers shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scalequest.common.v1 import items_pb2 as pb

from libs.queue import subjects
from libs.storage.objectstore import ObjectStore
from libs.storage.shards import Manifest, ShardWriter, write_manifest


def make_tiny_model(directory: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from libs.models.default_model import ensure_default_model

    tok = AutoTokenizer.from_pretrained(str(ensure_default_model()))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def make_record(run_id: str, i: int) -> dict[str, Any]:
    """A minimal accepted pair as the coordinator writes it (nullable provenance left empty)."""
    return {
        "item_id": f"{run_id}-{i:07d}", "run_id": run_id,
        "question": f"What is {i} + 1?", "solution": f"{i} + 1 = {i + 1}. The final answer is \\boxed{{{i + 1}}}.",
        "answer": str(i + 1), "difficulty": 0.0, "agreement": 1.0, "selection_reason": "test", "scorer": "test",
        "selected": 0, "generator_model": "m", "solver_model": "m", "judge_model": "m", "seed": i,
        "question_sampling": None, "solution_sampling": None, "filter_verdicts": [], "candidates": [],
    }


class FakeRun:
    """Writes a run's shards and manifest like the coordinator and announces them on JetStream."""

    def __init__(self, js, store: ObjectStore, run_id: str, target: int = 0) -> None:
        self.js, self.store, self.run_id = js, store, run_id
        self.writer = ShardWriter(store, run_id)
        self.manifest = Manifest(run_id=run_id, config={"target": target})
        self.n = 0
        write_manifest(store, self.manifest)

    async def shard(self, size: int, announce: bool = True) -> list[str]:
        rows = [make_record(self.run_id, self.n + i) for i in range(size)]
        self.n += size
        info = self.writer.write(rows)
        self.manifest.add_shard(info)
        write_manifest(self.store, self.manifest)
        if announce:
            ann = pb.ShardAnnouncement(run_id=self.run_id, key=info.key, records=info.records, seq=info.seq,
                                       store=self.store.url)
            await self.js.publish(subjects.shard_subject(self.run_id), ann.SerializeToString(),
                                  headers={"Nats-Msg-Id": f"{self.run_id}.shard.{info.key}"})
        return [r["item_id"] for r in rows]

    async def end(self, announce: bool = True, state: str = "completed", accepted: int | None = None) -> None:
        self.manifest.state = state
        write_manifest(self.store, self.manifest)
        if announce:
            end = pb.RunEnd(run_id=self.run_id, state=state,
                            accepted=self.manifest.accepted if accepted is None else accepted,
                            shards=len(self.manifest.shards), manifest_key=f"runs/{self.run_id}/manifest.json")
            await self.js.publish(subjects.run_end_subject(self.run_id), end.SerializeToString(),
                                  headers={"Nats-Msg-Id": f"{self.run_id}.end"})
