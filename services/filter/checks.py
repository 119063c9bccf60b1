"""Question checks of the filter stage: language, exact duplicates, solvability verdict parsing.

Each check returns a ``FilterVerdict``-shaped tuple ``(passed, reason, detail)``; reasons are
stable machine-readable strings that the coordinator counts per run.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Non-ASCII characters ordinary in English math text.
MATH_TYPOGRAPHY = set("°π×÷≤≥–—’‘“”·√∞≈≠±²³½¼¾€£¥…−′″∠△□∑∏∫∈∉∪∩⊂⊆αβγδθλμσφωΔΣΩ")


def check_language(text: str) -> tuple[bool, str, str]:
    """Keep English math text: ASCII plus common math typography; reject other scripts.

    Letters outside ASCII (Chinese, Cyrillic, accented Latin words, ...) are rejected with
    ``non_english_script``; other unexpected symbols (emoji, control characters) with
    ``unexpected_characters``.
    """
    bad_letters: list[str] = []
    bad_other: list[str] = []
    for ch in text:
        if ch.isascii() or ch in MATH_TYPOGRAPHY:
            continue
        cat = unicodedata.category(ch)
        if cat.startswith("L"):
            bad_letters.append(ch)
        elif cat.startswith(("S", "C", "P")) and not cat == "Zs":
            bad_other.append(ch)
    if bad_letters:
        return False, "non_english_script", "".join(dict.fromkeys(bad_letters))[:32]
    if bad_other:
        return False, "unexpected_characters", "".join(dict.fromkeys(bad_other))[:32]
    return True, "", ""


_WS = re.compile(r"\s+")


def normalize_for_dedup(text: str) -> str:
    """Case-, whitespace- and trailing-punctuation-insensitive form for exact dedup."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _WS.sub(" ", t).strip()
    return t.rstrip(" .?!")


def dedup_key(text: str) -> str:
    return hashlib.sha256(normalize_for_dedup(text).encode()).hexdigest()[:32]


_VERDICT_RE = re.compile(
    r"(?:final\s+)?(?:verdict|answer|judg(?:e)?ment|conclusion)\s*(?:is)?\s*[:：\-]?\s*[\*_`\"'(\[]*\s*(yes|no)\b",
    re.IGNORECASE,
)
_BARE_RE = re.compile(r"^[\W_]*(yes|no)[\W_]*$", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*(yes|no)\s*\}?\s*\}", re.IGNORECASE)


def parse_verdict(output: str) -> bool | None:
    """The judge's FINAL Yes/No verdict, or None when there is none.

    Only the conclusion counts: the last "Verdict: Yes/No"-style statement, a boxed Yes/No,
    or a last non-empty line that is just Yes or No. A "yes" somewhere in the reasoning
    is not a verdict (the public ScaleQuest code's bug).
    """
    text = output.strip()
    if not text:
        return None
    candidates: list[tuple[int, str]] = []
    for rx in (_VERDICT_RE, _BOXED_RE):
        candidates += [(m.start(), m.group(1)) for m in rx.finditer(text)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    bare = _BARE_RE.match(last)
    if bare:
        candidates.append((len(text), bare.group(1)))
    if not candidates:
        return None
    # The explicit verdict must be in the conclusion: last one wins.
    _, word = max(candidates)
    return word.lower() == "yes"
