"""Exact-duplicate index shared by every filter replica (NATS KV), with an in-memory twin for tests.

A question claims its normalized hash within a scope (the run id). The claim stores the item
id, so a redelivered item that already claimed its hash is not mistaken for a duplicate.
"""

from __future__ import annotations

import asyncio

from nats.js.errors import KeyWrongLastSequenceError


class MemoryDedupIndex:
    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def claim(self, scope: str, key: str, item_id: str) -> bool:
        """True when `item_id` owns the key (first claimant), False for a duplicate."""
        async with self._lock:
            owner = self._seen.setdefault(f"{scope}.{key}", item_id)
            return owner == item_id


class KVDedupIndex:
    def __init__(self, kv) -> None:
        self.kv = kv

    async def claim(self, scope: str, key: str, item_id: str) -> bool:
        k = f"dedup.{scope}.{key}"
        try:
            await self.kv.create(k, item_id.encode())
            return True
        except KeyWrongLastSequenceError:
            entry = await self.kv.get(k)
            return entry.value.decode() == item_id
