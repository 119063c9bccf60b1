"""Precision / recall / F1 of the filter's near-duplicate check on a labelled set of pairs.

Each line of the labelled JSONL is ``{"a": ..., "b": ..., "dup": true|false, "kind": ...}``.
A pair is predicted duplicate exactly as the filter decides it: the two MinHash signatures
share at least one LSH band (banding derived for that threshold) and their estimated Jaccard
is at least the threshold. The exact-Jaccard columns show what the feature set itself can
separate, without MinHash noise or LSH misses.

    .venv/bin/python scripts/eval_neardup.py [--data tests/fixtures/neardup_labelled.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.filter.neardup import MinHashConfig, features
from services.filter.settings import FilterSettings

THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def prf(pred: list[bool], gold: list[bool]) -> tuple[float, float, float]:
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def minhash_predict(pairs: list[dict], cfg: MinHashConfig) -> list[tuple[bool, float]]:
    out = []
    for p in pairs:
        sa, sb = cfg.signature(p["a"]), cfg.signature(p["b"])
        candidate = any(x == y for x, y in zip(cfg.band_hashes(sa), cfg.band_hashes(sb)))
        est = float((sa == sb).mean())
        out.append((candidate and est >= cfg.threshold, est))
    return out


def main(argv: list[str] | None = None) -> int:
    defaults = FilterSettings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / "tests/fixtures/neardup_labelled.jsonl"))
    ap.add_argument("--num-perm", type=int, default=defaults.neardup_num_perm)
    ap.add_argument("--shingle", type=int, default=defaults.neardup_shingle)
    ap.add_argument("--number-weight", type=int, default=defaults.neardup_number_weight)
    ap.add_argument("--errors", action="store_true", help="list the misclassified pairs at the default threshold")
    args = ap.parse_args(argv)

    pairs = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    gold = [bool(p["dup"]) for p in pairs]
    kinds = Counter((p["kind"], p["dup"]) for p in pairs)
    print(f"{len(pairs)} labelled pairs ({sum(gold)} duplicates): "
          + ", ".join(f"{k}={n}" for (k, _), n in sorted(kinds.items())))  # fmt: skip
    print(f"features: word {args.shingle}-grams + numbers/operators x{args.number_weight}; "
          f"MinHash num_perm={args.num_perm}\n")  # fmt: skip

    def feats(text: str, shingle: int = args.shingle, weight: int = args.number_weight) -> set[str]:
        return features(text, shingle, weight)

    exact = [jaccard(feats(p["a"]), feats(p["b"])) for p in pairs]
    print(f"{'threshold':>9} {'bands x rows':>12} | {'exact Jaccard P / R / F1':>26} | {'MinHash + LSH P / R / F1':>26}")
    print("-" * 82)
    for t in THRESHOLDS:
        cfg = MinHashConfig(threshold=t, num_perm=args.num_perm, shingle=args.shingle, number_weight=args.number_weight)
        b, r = cfg.banding
        pe = prf([s >= t for s in exact], gold)
        pm = prf([pred for pred, _ in minhash_predict(pairs, cfg)], gold)
        mark = "  <- default" if abs(t - defaults.neardup_threshold) < 1e-9 else ""
        cols = " ".join(f"{x:>8.2f}" for x in pe) + " | " + " ".join(f"{x:>8.2f}" for x in pm)
        print(f"{t:>9.2f} {f'{b} x {r}':>12} | {cols}{mark}")

    t = defaults.neardup_threshold
    cfg = MinHashConfig(threshold=t, num_perm=args.num_perm, shingle=args.shingle, number_weight=args.number_weight)
    preds = minhash_predict(pairs, cfg)
    b, r = cfg.banding
    print(f"\ndefault threshold {t} (SQ_NEARDUP_THRESHOLD), banding {b} x {r}; errors by kind:")
    by_kind: dict[str, list[int]] = {}
    for p, (pred, _) in zip(pairs, preds):
        c = by_kind.setdefault(p["kind"], [0, 0])
        c[0] += 1
        c[1] += pred != p["dup"]
    for kind, (n, wrong) in sorted(by_kind.items()):
        print(f"  {kind:<16} {wrong:>2} wrong of {n:>2}")
    print("\nfeature ablation (exact Jaccard, best threshold of the table's):")
    for shingle in (1, 2, 3):
        for weight in (0, args.number_weight):
            sims = [jaccard(feats(p["a"], shingle, weight), feats(p["b"], shingle, weight)) for p in pairs]
            f1, best_t = max((prf([s >= t for s in sims], gold)[2], t) for t in THRESHOLDS)
            print(f"  word {shingle}-grams, numbers/operators x{weight:<2}  F1 {f1:.2f} at {best_t:.2f}")
    if args.errors:
        print()
        for p, (pred, est), ex in zip(pairs, preds, exact):
            if pred != p["dup"]:
                print(f"  [{p['kind']}] est={est:.2f} exact={ex:.2f} predicted={'dup' if pred else 'distinct'}\n"
                      f"      a: {p['a']}\n      b: {p['b']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
