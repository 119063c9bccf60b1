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


_INTEGER = re.compile(r"[+-]?\d{1,300}")


def _normalize_simple(ans: str) -> str:
    s = ans.strip().strip("$").replace(" ", "").replace("\\!", "").replace(",", "")
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = s.rstrip(".")
    return s


# --- guard against answers that make sympy compute astronomically large numbers ----------
# math-verify runs without its signal timeouts here (threads), and sympy evaluates e.g.
# 10^{10^{10}}, 99999999999! or \binom{10^9}{5*10^8} exactly: one such answer would hold a
# thread (and a CPU) forever. Such answers are compared as normalized strings only.
_MAX_SYMPY_CHARS = 256
_MAX_EXPONENT_PRODUCT = 100_000
_MAX_FACTORIAL_ARG = 1000
_BIG_OPS_RE = re.compile(r"\\(?:d|t)?binom|\\choose|\\gcd|\\lcm|\\prod|\\sum|\\operatorname")
_DIGITS_RE = re.compile(r"\d+")
# Symbolic answers: expanding (a+b+c+d)^{16} or a product of many sums is just as unbounded.
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_MAX_VARIABLES = 3
_MAX_SYMBOLIC_EXPONENT_PRODUCT = 16
_MAX_SYMBOLIC_GROUPS = 6


def _exponents(ans: str) -> list[str]:
    """The text of every exponent (after ``^`` or ``**``): a balanced ``{...}`` group or one token."""
    out = []
    for m in re.finditer(r"\^|\*\*", ans):
        i = m.end()
        while i < len(ans) and ans[i] == " ":
            i += 1
        if i < len(ans) and ans[i] in "{(":
            close = "}" if ans[i] == "{" else ")"
            depth, j = 0, i
            while j < len(ans):
                if ans[j] == ans[i]:
                    depth += 1
                elif ans[j] == close:
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(ans[i + 1 : j])
        else:
            tok = re.match(r"[-+]?\d+|\\?[A-Za-z]+|.", ans[i:])
            out.append(tok.group(0) if tok else "")
    return out


def sympy_safe(ans: str) -> bool:
    """Whether ``ans`` is small enough to hand to math-verify/sympy: short, exponents neither
    nested nor large (their product at most 100000; 16 with variables), factorials of small
    numbers only, no binomial/gcd/product/sum over big numbers, at most 3 variables and 6
    parenthesized groups. A heuristic: it bounds the known ways to make sympy run for hours
    with a short string; what it refuses is still compared as a normalized string."""
    if len(ans) > _MAX_SYMPY_CHARS:
        return False
    variables = set(re.findall(r"[A-Za-z]", _COMMAND_RE.sub(" ", ans))) - {"e", "i"}
    if variables and (len(variables) > _MAX_VARIABLES or ans.count("(") + ans.count("[") > _MAX_SYMBOLIC_GROUPS):
        return False
    limit = _MAX_SYMBOLIC_EXPONENT_PRODUCT if variables else _MAX_EXPONENT_PRODUCT
    product = 1
    for exp in _exponents(ans):
        if any(op in exp for op in ("^", "**", "!")) or _BIG_OPS_RE.search(exp):
            return False
        for digits in _DIGITS_RE.findall(exp):
            if len(digits) > 6:
                return False
            product *= max(1, int(digits))
        if product > limit:
            return False
    for m in re.finditer(r"!", ans):
        before = ans[: m.start()].rstrip()
        if before.endswith(("}", ")", "]", "!")):
            return False
        run = re.search(r"(\d+)$", before)
        if run and (len(run.group(1)) > 4 or int(run.group(1)) > _MAX_FACTORIAL_ARG):
            return False
    # binomials, gcd, products and sums are cheap only over small numbers
    return not (_BIG_OPS_RE.search(ans) and any(len(d) > 4 for d in _DIGITS_RE.findall(ans)))


@lru_cache(maxsize=65536)
def _parsed(ans: str):
    from math_verify import parse

    # Timeouts use signals, which only work on the main thread; stages may run in threads.
    return parse(f"${ans}$", parsing_timeout=None)


def equivalent(a: str, b: str) -> bool:
    """Whether two extracted answers are mathematically equivalent (math-verify)."""
    if not a or not b:
        return False
    na, nb = _normalize_simple(a), _normalize_simple(b)
    if na == nb:
        return True
    if _INTEGER.fullmatch(na) and _INTEGER.fullmatch(nb):
        return int(na) == int(nb)  # two integers (most grade-school answers): no parser needed
    if not (sympy_safe(a) and sympy_safe(b)):
        return False
    return _verified(a, b) if a <= b else _verified(b, a)


@lru_cache(maxsize=65536)
def _verified(a: str, b: str) -> bool:
    """math-verify's verdict on two answers (cached: a question's candidates repeat answers)."""
    try:
        from math_verify import verify

        pa, pb = _parsed(a), _parsed(b)
        if not pa or not pb:
            return False
        return bool(verify(pa, pb, timeout_seconds=None))
    except Exception as e:  # noqa: BLE001 - math-verify raises on exotic input; treat as not equivalent
        log.debug("math-verify failed on %r vs %r: %s", a, b, e)
        return False


def warm_up() -> None:
    """Import math-verify and sympy now (about a second of imports), not on the first item."""
    equivalent("1/2", "0.5")


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
