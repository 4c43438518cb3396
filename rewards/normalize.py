"""Answer extraction and string normalization around math-verify (pure Python, no sympy).

Everything here runs in the *calling* process before anything reaches the verifier pool, so it
must be linear-time and bounded on hostile input:

- a completion is cut to its last `MAX_COMPLETION_CHARS` characters first (answers sit at the end),
- at most `MAX_BOX_TRIES` `\\boxed{` openings are brace-matched (from the last one backwards),
- an extracted answer or gold longer than `MAX_ANSWER_CHARS` is rejected as unparseable.

Extraction order (`extract_answer`): the last well-formed `\\boxed{...}` / `\\fbox{...}` (nested
braces allowed, `\\boxed 5` too), else the last "the answer is X" / "Answer: X" phrase, else
(only when asked) the last number in the text.

Normalization (`canonical`) rewrites surface forms that plain math-verify treats differently or
that are cheap to settle without sympy: `\\dfrac`/`\\tfrac`, `\\left`/`\\right`, spacing macros,
`$` delimiters, trailing `\\text{units}` and unit words, degrees, currency `\\$` (percent signs are
left to math-verify, which equates `50\\%` with both `50` and `0.5`), thousands separators (`1,234` and `1{,}234`; only when every group
after the first has exactly 3 digits and there is no space, so a tuple `1, 234` is kept), `x = 3`
-> `3` when the gold is not an equation, and multiple-choice letters (`(B)`, `\\textbf{B}` -> `B`).
"""

from __future__ import annotations

import re

MAX_COMPLETION_CHARS = 16_000
MAX_ANSWER_CHARS = 512
MAX_BOX_TRIES = 8

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_PHRASE_RE = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_SCI_RE = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d{1,4})")
_LATEX_TOKEN_RE = re.compile(r"\\[a-zA-Z]+|\\.|\S")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_INT_RE = re.compile(r"-?\d{1,15}")  # <= 15 digits: exactly what math-verify's numeric compare resolves
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CHOICE_RE = re.compile(r"\(?([A-J])\)?[.:]?")
_TRAILING_TEXT_RE = re.compile(r"^(.*?\S)\s*\\(?:text|mbox|mathrm|textrm)\s*\{[^{}]*\}$", re.DOTALL)
_WHOLE_TEXT_RE = re.compile(r"^\\(?:text|textbf|mbox|mathrm|mathbf|textrm)\s*\{([^{}]*)\}$")
_UNIT_WORD_RE = re.compile(r"^(-?[\d.,/]+)\s*[a-zA-Z]{2,}(?:\^?\d)?(?:\s+[a-zA-Z]{2,})?$")
_EQUATION_LHS_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad\b")


def cap_completion(completion: str) -> str:
    """Keep the last `MAX_COMPLETION_CHARS` characters; the final answer is at the end."""
    return completion[-MAX_COMPLETION_CHARS:] if len(completion) > MAX_COMPLETION_CHARS else completion


def _match_braces(text: str, open_idx: int) -> int | None:
    """Index of the `}` closing the `{` at `open_idx`, or None if unclosed. Linear, no recursion.

    A backslash escapes the next character, so `\\{` / `\\}` (set braces) do not count.
    """
    depth, i, n = 0, open_idx, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`), else None."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for start in reversed(starts[-MAX_BOX_TRIES:]):
        j = start
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _match_braces(text, j)
            if end is not None:
                return text[j + 1 : end]
        elif j > start:  # `\boxed 5`: the next whitespace/`$`-delimited token
            m = re.match(r"[^\s$]+", text[j:])
            if m:
                return m.group(0)
    return None


def _answer_phrase(text: str) -> str | None:
    """The answer after the last "the answer is" / "Answer:" phrase, up to the end of its line."""
    last = None
    for last in _ANSWER_PHRASE_RE.finditer(text):
        pass
    if last is None:
        return None
    ans = text[last.end() : last.end() + 600].split("\n", 1)[0].strip()
    inline = re.search(r"\$([^$]+)\$|\\\((.+?)\\\)", ans)  # prefer an inline-math span if present
    if inline:
        return inline.group(1) or inline.group(2)
    ans = re.split(r"\.(?:\s|$)", ans)[0]  # cut at the end of the sentence
    return ans.strip() or None


def last_number(text: str) -> str | None:
    """The last number in the text (integers, decimals, `a/b`), or None."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return last.group(0) if last else None


def extract_answer(completion: str, *, last_number_fallback: bool = False) -> str | None:
    """The final answer string of a completion (not normalized), or None if there is none."""
    if not isinstance(completion, str) or not completion:
        return None
    text = cap_completion(completion)
    ans = last_boxed(text)
    if ans is None:
        ans = _answer_phrase(text)
    if ans is None and last_number_fallback:
        ans = last_number(text)
    if ans is None:
        return None
    ans = ans.strip()
    return ans or None


def canonical(ans: str, *, strip_equation: bool = True) -> str:
    """Rewrite surface forms (see module docstring) into one canonical string. Never raises."""
    s = ans.strip()
    # Delimiters: $...$, \(...\), \[...\]
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("{,}", ",")  # LaTeX thousands separator 1{,}234
    s = _SPACING_RE.sub("", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\$", "").strip()
    if s.startswith("$") and not s.endswith("$"):
        s = s[1:]  # currency: $18
    # Trailing \text{units} (repeatedly), then a whole \text{...}
    for _ in range(3):
        m = _TRAILING_TEXT_RE.match(s)
        if not m:
            break
        s = m.group(1).strip()
    m = _WHOLE_TEXT_RE.match(s)
    if m:
        s = m.group(1).strip()
    m = _UNIT_WORD_RE.match(s)
    if m:
        s = m.group(1)
    s = s.rstrip(".").strip()
    if strip_equation:
        m = _EQUATION_LHS_RE.match(s)
        if m:
            s = s[m.end() :].strip()
    m = _SCI_RE.fullmatch(s)
    if m:  # 1e3 -> 1\times 10^{3} (math-verify reads `1e3` as 1*e*3)
        s = f"{m.group(1)}\\times 10^{{{m.group(2)}}}"
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    m = _CHOICE_RE.fullmatch(s)
    if m:
        s = m.group(1)
    return s


def latex_tokens(s: str) -> tuple[str, ...]:
    """LaTeX tokens (macros, escaped chars, single non-space chars). Whitespace in math mode only
    ends macro names, so equal token sequences mean the same formula: `(1, 2]` == `(1,2]`."""
    return tuple(_LATEX_TOKEN_RE.findall(s))


def strip_percent(s: str) -> str:
    """`12.5\\%` -> `12.5` (used only when the gold has no percent sign)."""
    return re.sub(r"\s*\\?%$", "", s)


_DECIMAL_RE = re.compile(r"-?(?:\d{1,15}(?:\.\d{0,15})?|\.\d{1,15})")
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d{1,15})\}\{(\d{1,15})\}|(-?\d{1,15})/(\d{1,15})")


def exact_number(s: str):
    """`Fraction` for an integer, decimal, `a/b` or `\\frac{a}{b}` (<= 15 digits each), else None."""
    from fractions import Fraction

    if _DECIMAL_RE.fullmatch(s):
        return Fraction(s)
    m = _FRAC_RE.fullmatch(s)
    if m is None:
        return None
    if m.group(2) is not None:
        num, den, sign = int(m.group(2)), int(m.group(3)), -1 if m.group(1) else 1
    else:
        num, den, sign = int(m.group(4)), int(m.group(5)), 1
    return None if den == 0 else sign * Fraction(num, den)


def is_plain_int(s: str) -> bool:
    return _INT_RE.fullmatch(s) is not None


def is_choice_letter(s: str) -> bool:
    return len(s) == 1 and "A" <= s <= "J"


def normalize_gold(gold: str, fmt: str = "auto") -> str:
    """The gold answer as a bare string.

    fmt: "gsm8k" (`... #### 1,234` -> `1234`), "boxed" (a MATH solution -> content of its last
    `\\boxed{}`), "plain" (stripped string), "auto" (gsm8k if `####` is present, else boxed if a
    `\\boxed`/`\\fbox` is present, else plain).
    """
    if fmt not in ("auto", "plain", "gsm8k", "boxed"):
        raise ValueError(f"normalize_gold: unknown fmt {fmt!r}. Fix: use one of auto, plain, gsm8k, boxed")
    if gold is None:
        raise ValueError("normalize_gold: gold is None. Fix: drop rows without an answer or pick the right answer column")
    gold = str(gold)
    if fmt == "auto":
        fmt = "gsm8k" if "####" in gold else ("boxed" if _BOX_RE.search(gold) else "plain")
    if fmt == "gsm8k":
        if "####" not in gold:
            raise ValueError(f"normalize_gold: GSM8K gold has no '####': {gold[:80]!r}. Fix: use fmt='plain'")
        ans = gold.rsplit("####", 1)[1].strip()
        return ans.replace(",", "") if _THOUSANDS_RE.fullmatch(ans) else ans
    if fmt == "boxed":
        boxed = last_boxed(gold)
        if boxed is None:
            raise ValueError(f"normalize_gold: no closed \\boxed{{}} in gold {gold[:80]!r}. Fix: use fmt='plain'")
        return boxed.strip()
    return gold.strip()
