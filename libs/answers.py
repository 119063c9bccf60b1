"""Final-answer extraction and math equivalence, shared by solver, reward and evaluation.

Extraction takes the LAST balanced ``\\boxed{...}`` (or ``\\fbox{...}``) in a solution;
nested braces are honoured. Equivalence uses math-verify so that ``1/2``, ``0.5`` and
``\\frac{1}{2}`` agree.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

log = logging.getLogger("scalequest.answers")
# math-verify warns on every call that its signal timeouts are off (they cannot work off the main thread).
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{}`` in `text`, or None.

    An unbalanced (truncated) last box is skipped in favour of the previous balanced one.
    """
    found: str | None = None
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            i += 1
        if depth == 0:
            inner = text[m.end() : i - 1].strip()
            if inner:
                found = inner
    return found


_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|=|:)\s*\$?\s*([-+]?[0-9][0-9,]*(?:\.[0-9]+)?(?:/[0-9]+)?)", re.IGNORECASE
)


def extract_answer(text: str, fallback: bool = False) -> tuple[str, str]:
    """(answer, method). method is "boxed", "answer_is" (only with `fallback`) or "" when none."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    if fallback:
        matches = _ANSWER_IS_RE.findall(text)
        if matches:
            return matches[-1].replace(",", ""), "answer_is"
    return "", ""


def _normalize_simple(ans: str) -> str:
    s = ans.strip().strip("$").replace(" ", "").replace("\\!", "").replace(",", "")
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = s.rstrip(".")
    return s


@lru_cache(maxsize=65536)
def _parsed(ans: str):
    from math_verify import parse

    # Timeouts use signals, which only work on the main thread; stages may run in threads.
    return parse(f"${ans}$", parsing_timeout=None)


def equivalent(a: str, b: str) -> bool:
    """Whether two extracted answers are mathematically equivalent (math-verify)."""
    if not a or not b:
        return False
    if _normalize_simple(a) == _normalize_simple(b):
        return True
    try:
        from math_verify import verify

        pa, pb = _parsed(a), _parsed(b)
        if not pa or not pb:
            return False
        return bool(verify(pa, pb, timeout_seconds=None))
    except Exception as e:  # math-verify raises on exotic input; treat as not equivalent
        log.debug("math-verify failed on %r vs %r: %s", a, b, e)
        return False


def group_equivalent(answers: list[str]) -> list[int]:
    """Cluster label per answer (equivalence classes; empty answers get their own label -1)."""
    labels: list[int] = []
    reps: list[str] = []
    for a in answers:
        if not a:
            labels.append(-1)
            continue
        for k, r in enumerate(reps):
            if equivalent(a, r):
                labels.append(k)
                break
        else:
            reps.append(a)
            labels.append(len(reps) - 1)
    return labels
