"""Difficulty of a solved question from its candidates, and the target difficulty mix.

The solver's n candidates are a free difficulty signal (METHOD §4): the *fail rate* is the share
of candidates whose answer is not equivalent to the selected one (a candidate without an answer
counts as failing), so 0 = every candidate agreed (easy), close to 1 = almost nothing agreed.

A target mix is a list of bins ``UPPER:KEEP``: a record whose difficulty is <= UPPER (first
matching bin, bins sorted by UPPER) is kept with probability KEEP; difficulties above every bin
are kept. ``"0:0.5"`` drops half of the questions every candidate agreed on; ``"0:0,0.25:0.5"``
drops all of those and half of the next easiest. The draw is a pure function of the item id, so a
redelivered item gets the same decision and a rerun with the same seed keeps the same records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class KeepBin:
    upper: float
    keep: float


def parse_keep(spec: str) -> tuple[KeepBin, ...]:
    """Parse ``"UPPER:KEEP,..."``; raises ValueError naming the bad part."""
    bins: list[KeepBin] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        upper_s, sep, keep_s = part.partition(":")
        try:
            if not sep:
                raise ValueError
            upper, keep = float(upper_s), float(keep_s)
        except ValueError:
            raise ValueError(f"difficulty bin {part!r} is not UPPER:KEEP (two numbers)") from None
        if not 0 <= upper <= 1 or not 0 <= keep <= 1:
            raise ValueError(f"difficulty bin {part!r}: UPPER and KEEP must both be in [0, 1]")
        bins.append(KeepBin(upper, keep))
    uppers = [b.upper for b in bins]
    if len(set(uppers)) != len(uppers):
        raise ValueError(f"difficulty bins repeat an upper bound: {spec!r}")
    return tuple(sorted(bins, key=lambda b: b.upper))


def keep_probability(difficulty: float, bins: tuple[KeepBin, ...]) -> float:
    for b in bins:
        if difficulty <= b.upper + 1e-9:
            return b.keep
    return 1.0


def unit_draw(item_id: str) -> float:
    """A uniform number in [0, 1) determined by the item id."""
    return int.from_bytes(hashlib.sha256(f"difficulty-mix:{item_id}".encode()).digest()[:8], "big") / 2**64


def keep_for_mix(item_id: str, difficulty: float, bins: tuple[KeepBin, ...]) -> bool:
    return not bins or unit_draw(item_id) < keep_probability(difficulty, bins)


def fail_rate(labels: list[int], selected: int) -> float:
    """Share of candidates not equivalent to the selected one (-1 labels = no answer)."""
    if not labels or selected < 0:
        return 1.0
    lab = labels[selected]
    return 1.0 - sum(1 for x in labels if x == lab) / len(labels)
