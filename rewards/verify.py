"""The sympy half of the reward: is a canonical prediction equivalent to a canonical gold?

`verify_prepared(pred, gold)` runs in the verifier pool's worker processes (`rewards.pool`) and
in `rewards.math.compute_score`. It imports math-verify/latex2sympy/sympy lazily, so the process
that only extracts and normalizes (the trainer) never pays for sympy.

Parsing (`parse_latex`) never judges an answer on a part of it:

- latex2sympy is called on the whole string, directly: not through `math_verify.parse`, whose
  regex ladder can pick a substring (a number inside a failed formula) and whose parse fallback
  re-reads only the text after the last `=`. latex2sympy's grammar ends in EOF and its error
  listener raises, so a string it cannot read entirely is an error, never a prefix.
- math-verify's LaTeX normalization runs without its unit stripper (`units=False`): that stripper
  reads `\\mathrm{i}`, `\\mathrm{e}`, `thousand` as units and removes them, which is how
  `1 + \\frac{1}{\\mathrm{e}}` became `1 + \\frac{1}{` and then `1`. Units are dropped earlier, under
  our rules (`rewards.normalize`). Whatever normalization remains must keep every digit and
  every letter outside macro names (`content_kept`); otherwise the answer is not parsed.
- digits separated by spaces that are not thousands groups (`1 9 9`, `2 3`) are not a number
  (latex2sympy would read `2 3` as 5): not parsed.

Comparison: two numbers (numeric expressions without free symbols) are compared by `numeric_eq`
alone (below); anything else by math-verify's `verify(gold, pred)` (relations, intervals, sets, tuples, matrices,
symbolic simplification; `allow_set_relation_comp=True`, so `-3 < x < 3` equals `(-3, 3)`) with
one replacement: its numeric comparison (`sympy_numeric_eq`, which
rounds floats to 6 decimals and chops `evalf` differences below 1e-15 in absolute value, so
`\\frac{1}{2^{98}}` == `\\frac{1}{2^{99}}`) is swapped, for the duration of our call only, for
`numeric_eq`: exact values compare exactly (sympy's exact `is_zero` on the difference; only when
sympy cannot decide, a 50-digit evaluation within 1e-40 relative), values written with a decimal
point compare within the relative tolerance `rewards.normalize.DECIMAL_RTOL`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import threading
from collections import Counter

from rewards.normalize import DECIMAL_RTOL

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds of wall clock per item in the pool (hard kill past it)
_EVAL_DIGITS = 50
_EXACT_RTOL = 10.0 ** -40
# Digits separated only by spacing (`1 9 9`, `3 \\, 2`), not after `_`/`^`/a letter (`\\log_2 8`).
_SPACED_DIGITS_RE = re.compile(r"(?<![\d_^a-zA-Z])\d+(?:\s|(?<!\\)\\[,;:! ]|~)+\d")
_MACRO_RE = re.compile(r"\\[a-zA-Z]+")
_PATCH_LOCK = threading.RLock()


class Unparseable(ValueError):
    """The string cannot be read as one whole mathematical object."""


def content_kept(before: str, after: str) -> bool:
    """True if `after` keeps every digit and every letter outside macro names of `before`
    (as a multiset). Normalization may add (`\\frac12` -> `\\frac{1}{2}`), never delete content."""
    def content(s: str) -> Counter:
        return Counter(ch for ch in _MACRO_RE.sub(" ", s) if ch.isalnum())

    return not (content(before) - content(after))


@functools.lru_cache(maxsize=1)
def _normalization_config():
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig

    return NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=False, boxed="none",
                               equations=False)


def parse_latex(s: str):
    """sympy object of the whole of `s` (see module docstring); raises `Unparseable`."""
    from latex2sympy2_extended.latex2sympy2 import latex2sympy, normalize_latex
    from math_verify.grader import should_treat_as_complex

    if _SPACED_DIGITS_RE.search(s):
        raise Unparseable(f"digits separated by spaces: {s[:80]!r}")
    norm = normalize_latex(s, _normalization_config()).strip()
    if not norm or not content_kept(s, norm):
        raise Unparseable(f"normalization dropped content: {s[:80]!r} -> {norm[:80]!r}")
    try:
        expr = latex2sympy(norm, is_real=not should_treat_as_complex(norm), convert_degrees=False,
                           normalization_config=None)
    except RecursionError as e:
        raise Unparseable(f"too deep: {s[:80]!r}") from e
    except Exception as e:  # latex2sympy raises bare Exceptions for syntax errors
        raise Unparseable(f"{type(e).__name__}: {str(e)[:120]}") from e
    return _imaginary_unit(expr, norm)


def _imaginary_unit(expr, latex: str):
    """latex2sympy reads `i` as a plain symbol; a free `i` (no sum/product index) is the
    imaginary unit, so `e^{i\\pi}` is -1 and `i^2` is -1 (gold and prediction alike)."""
    from sympy import I

    i_syms = [x for x in getattr(expr, "free_symbols", ()) if getattr(x, "name", None) == "i"]
    if not i_syms or any(k in latex for k in ("\\sum", "\\prod", "_{i", "_i")):
        return expr
    try:
        return expr.subs(i_syms[0], I)
    except Exception:  # sympy raises anything from subs(); keep the symbol
        return expr


def _is_pct(expr) -> bool:
    from sympy import Mul, Rational, UnevaluatedExpr

    return isinstance(expr, Mul) and len(expr.args) == 2 and expr.args[1] == UnevaluatedExpr(Rational(1, 100))


def numeric_eq(a, b, float_rounding: int = 6, numeric_precision: int = 15) -> bool:
    """Drop-in for math-verify's `grader.sympy_numeric_eq` (same signature; the two precision
    arguments are ignored). Matrices compare entrywise. Numeric values (no free symbols): exact
    ones must have an exactly zero difference (when sympy cannot tell: 50 digits, 1e-40
    relative); if a Float (a written decimal) is involved, they must agree to `DECIMAL_RTOL`
    relative. `x%` against a non-percent also tries `x` (math-verify's `9% == 9`). Expressions with free symbols return False (math-verify then tries symbolic equality)."""
    from sympy import MatrixBase, MatrixExpr

    if isinstance(a, (MatrixBase, MatrixExpr)) and isinstance(b, (MatrixBase, MatrixExpr)):
        a, b = _doit(a), _doit(b)
        if isinstance(a, MatrixBase) and isinstance(b, MatrixBase) and a.shape == b.shape:
            return all(numeric_eq(x, y) for x, y in zip(a.flat(), b.flat()))
        return False
    if _is_pct(a) != _is_pct(b):
        pct, other = (a, b) if _is_pct(a) else (b, a)
        if _values_close(pct.args[0], other) or _values_close(_doit(pct), other):
            return True
        return False
    return _values_close(_doit(a), _doit(b))


def _both_numbers(a, b) -> bool:
    """Both are numeric sympy expressions (no free symbols; not sets, tuples, matrices or
    relations): `numeric_eq` is then the whole comparison, as it is inside math-verify."""
    from sympy import Expr

    return isinstance(a, Expr) and isinstance(b, Expr) and bool(a.is_number) and bool(b.is_number)


def _doit(x):
    try:
        return x.doit()
    except Exception:  # sympy raises anything from doit(); the unevaluated form is still comparable
        return x


def _values_close(a, b) -> bool:
    from sympy import Basic, Float

    if not (isinstance(a, Basic) and isinstance(b, Basic)) or a.free_symbols or b.free_symbols:
        return False
    try:
        if a.has(Float) or b.has(Float):  # a written decimal: relative tolerance, double precision is enough
            x, y = complex(a.evalf(_EVAL_DIGITS)), complex(b.evalf(_EVAL_DIGITS))
            if not all(map(math.isfinite, (x.real, x.imag, y.real, y.imag))) or (x.imag == 0) != (y.imag == 0):
                return False  # infinities, or a real value against a complex one (`1.2 + i` is not 1.2)
            return abs(x - y) <= float(DECIMAL_RTOL) * max(abs(x), abs(y))
        if a == b:
            return True
        zero = (a - b).is_zero  # exact arithmetic: rationals, powers, radicals decide here
        if zero is not None:
            return bool(zero)
        diff = abs((a - b).evalf(_EVAL_DIGITS))
        scale = max(abs(a.evalf(_EVAL_DIGITS)), abs(b.evalf(_EVAL_DIGITS)))
        if not (diff.is_finite and scale.is_finite):  # oo vs -oo: infinities are never "close"
            return False
        return bool(diff <= _EXACT_RTOL * scale)
    except (TypeError, ValueError, OverflowError, AttributeError):  # nan, oo, non-numeric: not decided here
        return False


@contextlib.contextmanager
def relative_tolerance():
    """Within this block math-verify compares numbers with `numeric_eq` (see module docstring).
    Restored on exit; a lock keeps threads in this process from interleaving the swap."""
    from math_verify import grader

    with _PATCH_LOCK:
        original = grader.sympy_numeric_eq
        grader.sympy_numeric_eq = numeric_eq
        try:
            yield
        finally:
            grader.sympy_numeric_eq = original


def _soft_timeout(seconds: float | None) -> int | None:
    """math-verify's own timeout (signal.alarm, whole seconds) only works on the main thread."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, int(seconds))


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str):
    """Cached gold parse: (sympy object, None) or (None, reason)."""
    try:
        return parse_latex(gold), None
    except Unparseable as e:
        return None, str(e)


def verify_prepared(pred: str, gold: str, soft_timeout: float | None = DEFAULT_TIMEOUT) -> tuple[float, str]:
    """Equivalence of two canonical strings -> (score, status): (1.0, "ok") / (0.0, "ok") when
    both parse, (0.0, "bad_gold") when the gold does not parse whole, (0.0, "no_answer") when the
    prediction does not, (0.0, "timeout") past math-verify's soft timeout, (0.0, "error") when
    sympy raises. Never raises (math-verify's TimeoutException, a BaseException, is caught too)."""
    from math_verify import verify
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout

    soft = _soft_timeout(soft_timeout)
    try:
        gold_expr, why = timeout(timeout_seconds=soft)(_parse_gold)(gold)
        if gold_expr is None:
            logger.debug("gold not parseable: %s", why)
            return 0.0, "bad_gold"
        try:
            pred_expr = timeout(timeout_seconds=soft)(parse_latex)(pred)
        except Unparseable as e:
            logger.debug("prediction not parseable: %s", e)
            return 0.0, "no_answer"
        if _both_numbers(gold_expr, pred_expr):  # decided here: no simplify() of a difference of numbers
            ok = timeout(timeout_seconds=soft)(numeric_eq)(gold_expr, pred_expr)
            return float(bool(ok)), "ok"
        with relative_tolerance():
            ok = verify(gold_expr, pred_expr, timeout_seconds=soft, raise_on_error=True, allow_set_relation_comp=True)
        return float(bool(ok)), "ok"
    except TimeoutException:
        return 0.0, "timeout"
    except (Exception, RecursionError) as e:  # sympy raises anything; counted, not hidden
        logger.debug("verify failed on pred=%r gold=%r: %s: %s", pred[:80], gold[:80], type(e).__name__, e)
        return 0.0, "error"


# One pair of each kind the reward meets, verified by each pool worker before it reports ready:
# latex2sympy's parser builds its prediction cache per process, so a fresh worker's first parses
# of each construct are several times slower than later ones.
WARMUP_PAIRS = (
    ("1/2", "0.5"), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"), ("(1, 2]", r"[0,\infty)"), (r"\{1, 2\}", "1, 2"),
    (r"x \geq 5", r"5 \leq x"), ("y = 2x + 1", "2x+1"), (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{bmatrix} 1 \\ 2 \end{bmatrix}"),
    (r"28\%", "0.28"), (r"3\pi", r"\frac{\pi}{4}"), ("x^2+2x+1", "(x+1)^2"), ("1+i", r"e^{i\pi}"), ("(3, 4)", "3, 4"),
    (r"-\sqrt{5}", r"\pm 2"), (r"2^{10}", r"\binom{5}{2}"), (r"(-\infty,1)\cup(2,\infty)", r"\{-1, 1\}"),
)


def warm_up() -> None:
    """Verify `WARMUP_PAIRS` once (about a second; the pool worker does it before reporting ready)."""
    for pred, gold in WARMUP_PAIRS:
        verify_prepared(pred, gold, DEFAULT_TIMEOUT)

