"""Where the final answer is: the extraction order for completions and golds (pure Python, no sympy).

Runs in the calling process before anything reaches the verifier pool, so every step is
linear-time and bounded on hostile input: a completion is cut to its last `MAX_COMPLETION_CHARS`
characters first (answers sit at the end), at most `MAX_BOX_TRIES` `\\boxed` openings are
brace-matched (from the last one backwards), math blocks are found by one left-to-right scan.

Extraction order (`extract`), the same in both modes up to step 3:

1. **Boxes** (marker): the last well-formed `\\boxed{...}` / `\\fbox{...}` (nested braces, `\\{ \\}`
   set braces, any whitespace before the brace: `\\boxed\\n{5}`), or the brace-less `\\boxed 5` /
   `\\boxed5` (the next whitespace- or `$`-delimited token). Boxes that follow each other with only
   separators between them (spaces, `$`, `,`, `;`, "and", "or", `\\quad`, `\\\\`, a separator line
   `++++++`) or a short conjunction ending in "and" (`\\boxed{1} papers and \\boxed{2} bins`:
   `_boxes_joined`) form one list answer: `$\\boxed{1}$ and $\\boxed{-2}$` -> `1, -2`
   (identical repeats collapse: `\\boxed{5} ... \\boxed{5}` adjacent -> `5`). A box separated from
   the previous one by other text stands alone: `\\boxed{60} ... so \\boxed{65}` -> `65`.
2. **Answer phrases** (marker): the last "final answer is/:", "the answer is", "Answer:" (markdown
   `**`/`__` emphasis removed first, so `**Answer: D**` and `Answer: **42**` work). What follows, to
   the end of its line: a leading math block (`$...$`, `\\(...\\)`, `\\[...\\]`, up to three filler
   words before it) is the answer; otherwise the text up to the end of the sentence or the start of
   an explanation (`, because`, ` since`, `; `, ...): `The answer is 13, because 6+7=13.` -> `13`.
   Blocks joined by separators form a list (`$12$ and $13$`); quotes around the answer are dropped.
   A sentence `<subject> is/are/equals <value>` whose subject has prose or a math block gives the
   value after its last verb: `Final Answer: The largest $n$ is 34.` -> `34` (never the subject `n`).
   A plain sentence with exactly one number and no qualifier or label word gives that number
   (`Final Answer: Jane started growing Sphere 3 hours ago.` -> `3`).
   A non-empty answer phrase *after* the last box replaces it (the later marker restates the final
   answer: `... = \\boxed{255} ... Final Answer: The final answer is $10,455$` -> `10,455`).
2b. **GSM8K final line** (marker): the last line starting with `####` (`#### 72`, `#### $1,234`):
   its value, read like an answer phrase's. A box or an answer phrase after it wins (later marker).
3. A completion with a marker is judged on it, even when the marker is empty or malformed
   (`\\boxed{}`, an unclosed `\\boxed{`): the fallback never rescues an answer the model did mark.
4. **Fallback** (`lenient` only, no marker anywhere): the last mathematical expression of the
   completion, as math-verify does: whichever ends later of the last math block and the last
   number after it. Math blocks joined only by separators form a list, as boxes do
   (`$x = 5$ or $x = -5$`). A number is the grammar of `rewards.numbers` (`NUMBER_RE`): its sign
   (U+2212 too), thousands groups (`1 000`, `1,234`), decimal comma (`2,74`), leading-point decimal
   (`.4`), fraction `a/b`, mixed number (`2 1/2`), scientific notation (`2 × 10^3`, `5e-3`), trailing
   percent (`28 percent`) and magnitude words (`1.5 million`) are never dropped. A number
   inside a LaTeX group (`\\frac{1}{4}`, `2^{10}`) is never the answer alone: the whitespace-delimited
   token around it is, when no operator touches it (`\\frac{1}{2} + \\frac{1}{3}` has none); a
   completion that is one bare LaTeX expression (a macro, no math block, no prose word) is read whole.

`strict` mode is steps 1-3 only (a completion without a marker is `no_answer`).

Golds (`normalize_gold`): GSM8K `... #### 42`; a `\\boxed` solution -> its boxed answer (boxes form
a list by the same rule: `There are \\boxed{3} cats and \\boxed{5} dogs` -> `3, 5`; an unclosed `\\boxed{` with no closed box is an error -> `bad_gold`); a worked
solution without a box (prose: an answer phrase, a line break or a sentence) -> the same
markers-then-fallback extraction; else the stripped string. No fixed length cut: a gold answer
is refused only past `MAX_GOLD_CHARS` (4096), a hostile-input guard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.normalize import QUALIFIER_WORDS
from rewards.numbers import NUMBER_RE, read_number, unify_signs

MAX_COMPLETION_CHARS = 16_000
MAX_ANSWER_CHARS = 1_024  # an extracted completion answer longer than this is `answer_too_long`
MAX_GOLD_CHARS = 4_096  # a gold answer (not a worked solution) longer than this is `bad_gold`
MAX_BOX_TRIES = 8

EXTRACTION_MODES = ("lenient", "strict")
MARKER, FALLBACK = "marker", "fallback"

BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
# Between two boxes that form one list answer: only these separators.
_BOX_GAP_RE = re.compile(
    r"(?:\s|[-+=*#~|_]{3,}|\\\\|\$|,|;|\.|\\[()\[\],;: ]|\\q?quad\b|\band\b|\bor\b|\\(?:text|mbox|textrm)\s*\{\s*(?:and|or|,)?\s*\})*"
)
_GAP_LABEL_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=\$?\s*$)|\\[()\[\]]|\$")  # `and \( y_2 = ` before a box
_GAP_STOP_WORDS_RE = re.compile(
    r"\b(?:so|hence|thus|therefore|then|answer|final|correct|actually|wait|but|not|or|instead|check|again|get|gives?|is|was)\b",
    re.IGNORECASE,
)
# In a one-number sentence, words that make the number something other than the answer (`none left
# after 5 days`, `step 2`, `option 3`).
_SENTENCE_STOP_WORDS = frozenset({
    "none", "zero", "never", "neither", "nor", "nothing", "nobody", "step", "part", "case", "question", "problem",
    "option", "choice", "equation", "line", "page", "figure", "per", "each", "every", "after", "before", "since",
})
_GAP_AND_END_RE = re.compile(r"\band\s*\}?\s*$")
_ANSWER_PHRASE_RE = re.compile(r"\b(?:final\s+answer|answer)\s*(?:is(?:\s+therefore)?\s*:?|:|=)[ \t]*", re.IGNORECASE)
_HASH_LINE_RE = re.compile(r"^[ \t]*####[ \t]*", re.MULTILINE)
_EMPHASIS_RE = re.compile(r"\*\*|__")
_EXPLANATION_RE = re.compile(
    r"(?<=\S)(?:\.(?=\s|$)|;|,?\s+(?:because|since|as|which|where|so|given|from|due|hence|thus|therefore|"
    r"when|if|but|with|by|for|i\.e\.|e\.g\.)\b|,\s+(?:the|this|that|we|it)\b)",
    re.IGNORECASE,
)
_FILLER_BEFORE_MATH_RE = re.compile(r"(?:[A-Za-z]+[ \t]+){0,3}")
_PERCENT_AFTER_RE = re.compile(r"\s*(?:\\?%|per\s?cent(?:age)?\b|pct\b)", re.IGNORECASE)
_GSM8K_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PROSE_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}\b")
# In an answer phrase's sentence, the verb joining a subject to its value (the last one counts).
_COPULA_RE = re.compile(r"\s(?:is|are|was|were|equals|=)\s+(?:equal\s+to\s+)?", re.IGNORECASE)
_OPERATORS = ("+", "-", "*", "/", "^", "_", "\\cdot", "\\times", "\\div", "\\pm")
# Right after an answer's math block, words that make it a bound or a sum, not the value.
_QUALIFIED_AFTER_RE = re.compile(
    r"[ \t]*(?:(?:or\s+(?:more|less|fewer|greater|higher|lower|larger|smaller|above|below|so|else|over|under)"
    r"|and\s+(?:up|above|below|more|less|over|under)|plus|minus|times|to\s+\$?-?\d)\b|[-+*/^=<>]|\\(?:times|cdot|pm))",
    re.IGNORECASE,
)
_QUOTES_RE = re.compile(r'^(?:\\?"|“|``)|(?:\\?"|”|\'\')(?=[.,;:!]?\s*$)')
_LATEX_MACRO_RE = re.compile(r"\\[a-zA-Z]{2,}")
_TEXT_ARG_RE = re.compile(r"\\(?:text|mbox|textrm|mathrm|textbf|operatorname|textnormal)\s*\{[^{}]*\}")


@dataclass(frozen=True)
class Extracted:
    """An extraction: `answer` (None when nothing was extracted) and which `path` decided it:
    "marker" (a box or an answer phrase), "fallback" (lenient mode's last expression), or None."""

    answer: str | None
    path: str | None


def check_extraction(extraction: str) -> str:
    """`extraction` if it is a known mode, else ValueError naming the fix."""
    if extraction not in EXTRACTION_MODES:
        raise ValueError(f"extraction={extraction!r} is not a mode. Fix: pass one of {EXTRACTION_MODES}")
    return extraction


def cap_completion(completion: str) -> str:
    """Keep the last `MAX_COMPLETION_CHARS` characters; the final answer is at the end."""
    return completion[-MAX_COMPLETION_CHARS:] if len(completion) > MAX_COMPLETION_CHARS else completion


def match_braces(text: str, open_idx: int) -> int | None:
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


def boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of the well-formed boxes among the last `MAX_BOX_TRIES` openings,
    in text order. `\\boxed 5` / `\\boxed5` take the next whitespace/`$`-delimited token."""
    out = []
    starts = [m for m in BOX_RE.finditer(text)][-MAX_BOX_TRIES:]
    for m in starts:
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        k = j
        while k < len(text) and text[k].isspace():
            k += 1
        if k < len(text) and text[k] == "{":  # `\boxed\n{5}`: any whitespace before the brace
            j = k
            end = match_braces(text, j)
            if end is not None:
                out.append((m.start(), end + 1, text[j + 1 : end]))
        else:
            tok = re.match(r"[^\s$]+", text[j : j + MAX_ANSWER_CHARS + 1])
            if tok:
                out.append((m.start(), j + tok.end(), tok.group(0).rstrip(".,;:")))
    # A box opened inside the previous box (`\boxed{\boxed{3}}`) replaces it: the innermost wins.
    kept: list[tuple[int, int, str]] = []
    for b in out:
        if kept and b[0] < kept[-1][1]:
            kept[-1] = b
        else:
            kept.append(b)
    return kept


def last_boxed(text: str) -> str | None:
    """The boxed answer of `text` (the last box, or the list formed by adjacent boxes), else None.
    An empty final box gives ""."""
    found = boxes(text)
    if not found:
        return None
    group = [found[-1]]
    for b in reversed(found[:-1]):
        if not _boxes_joined(text[b[1] : group[0][0]]):
            break
        group.insert(0, b)
    contents: list[str] = []
    for _, _, c in group:
        c = c.strip()
        if c and c not in contents:
            contents.append(c)
    return ", ".join(contents)


def _boxes_joined(gap: str) -> bool:
    """Two boxes form one list answer when only separators lie between them, or a short conjunction
    ending in "and" with no digit, sentence end or reasoning word (`\boxed{1} papers and \boxed{2}`,
    `\boxed{(3, 3)} \text{ for part (a) and } \boxed{(1, 1)}`, `y_1 = \boxed{A} and y_2 = \boxed{B}`)."""
    if gap.endswith("\\"):  # `\\boxed{4}`: a LaTeX line break before the box
        gap = gap[:-1]
    if _BOX_GAP_RE.fullmatch(gap):
        return True
    gap = _GAP_LABEL_RE.sub(" ", gap)
    if len(gap) > 60 or re.search(r"[\d.\n!?;]", gap) or _GAP_STOP_WORDS_RE.search(gap):
        return False
    return bool(_GAP_AND_END_RE.search(gap))


def math_blocks(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]` blocks, left to right.
    One scan; an opener without a closer is skipped (later ones of its kind cannot close either).
    Inline `$...$` does not span lines; `\\$` is a literal dollar."""
    out, i, n = [], 0, len(text)
    unclosed: set[str] = set()
    while i < n:
        c = text[i]
        if c == "\\":
            nx = text[i + 1] if i + 1 < n else ""
            if nx in ("(", "[") and nx not in unclosed:
                close = "\\)" if nx == "(" else "\\]"
                j = text.find(close, i + 2)
                if j >= 0:
                    out.append((i, j + 2, text[i + 2 : j]))
                    i = j + 2
                    continue
                unclosed.add(nx)
            i += 2
            continue
        if c == "$":
            if text.startswith("$$", i):
                j = text.find("$$", i + 2) if "$$" not in unclosed else -1
                if j >= 0:
                    out.append((i, j + 2, text[i + 2 : j]))
                    i = j + 2
                    continue
                unclosed.add("$$")
                i += 2
                continue
            j = i + 1
            while j < n and text[j] not in "$\n":
                j += 2 if text[j] == "\\" else 1
            if j < n and text[j] == "$" and j > i + 1:
                out.append((i, j + 1, text[i + 1 : j]))
                i = j + 1
                continue
            i = j if j > i + 1 else i + 1
            continue
        i += 1
    return out


def _with_percent(text: str, end: int, content: str) -> str:
    """`$28$ %` / `$28$ percent`: a percent sign right after a math block belongs to it."""
    m = _PERCENT_AFTER_RE.match(text, end)
    return content.strip() + "\\%" if m and not content.rstrip().endswith("%") else content.strip()


def _answer_phrase(text: str) -> str | None:
    """The answer after the last answer phrase (see module docstring), "" if it is empty, None if
    there is no phrase."""
    text = _EMPHASIS_RE.sub("", text)
    last = None
    for last in _ANSWER_PHRASE_RE.finditer(text):
        pass
    if last is None:
        return None
    line = text[last.end() : last.end() + 2 * MAX_ANSWER_CHARS].split("\n", 1)[0]
    line = line.strip().lstrip(":").strip()
    line = _QUOTES_RE.sub("", line).strip()  # `The final answer is \"$12$ and $13$\".`
    lead = _FILLER_BEFORE_MATH_RE.match(line)
    rest = line[lead.end() :] if lead else line
    if rest.startswith(("$", "\\(", "\\[")):
        blocks = math_blocks(rest)
        # ... unless the block is a subject: `The largest $n$ is 34` (its value follows the verb)
        if blocks and blocks[0][0] == 0 and not _COPULA_RE.match(" " + rest[blocks[0][1] :].lstrip()):
            group = [blocks[0]]  # blocks joined only by separators form a list: `$12$ and $13$`
            for b in blocks[1:]:
                if _BOX_GAP_RE.fullmatch(rest[group[-1][1] : b[0]]) is None or not b[2].strip():
                    break
                group.append(b)
            if not _QUALIFIED_AFTER_RE.match(rest, group[-1][1]):  # `$3$ or more` is not 3
                items = [_with_percent(rest, end, content) for _, end, content in group]
                return ", ".join(dict.fromkeys(items))
    m = _EXPLANATION_RE.search(line)
    ans = line[: m.start()] if m else line
    ans = ans.strip().rstrip(".,;:!").strip()
    cop = None
    for cop in _COPULA_RE.finditer(ans):
        pass
    subject = ans[: cop.start()] if cop is not None else ""
    if cop is not None and (_PROSE_WORD_RE.search(_strip_math(subject)) or math_blocks(subject)):
        # `Final Answer: The largest $n$ is 34.`: the answer is what the sentence says its subject is
        rest = ans[cop.end() :].strip()
        blocks = math_blocks(rest)
        if blocks and blocks[0][0] == 0 and not rest[blocks[0][1] :].strip():
            return _with_percent(rest, blocks[0][1], blocks[0][2])
        return rest
    return _number_of_sentence(ans)


def _number_of_sentence(ans: str) -> str:
    """`Final Answer: Jane started growing Sphere 3 hours ago.` -> `3`: a plain sentence (two or more
    prose words, no math) holding exactly one number and no qualifier (`or`, `not`, `at least`,
    `between`, ...: `rewards.normalize.QUALIFIER_WORDS`) nor a word that makes the number a label or a
    count of something else (`step 2`, `after 5 days`, `none`: `_SENTENCE_STOP_WORDS`) states that number. Anything else is kept whole."""
    if "$" in ans or "\\" in ans or len(_PROSE_WORD_RE.findall(ans)) < 2:
        return ans
    numbers = list(NUMBER_RE.finditer(ans))
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", ans)}
    if len(numbers) != 1 or words & (QUALIFIER_WORDS | _SENTENCE_STOP_WORDS) or re.search(r"[-+*/=^<>]", NUMBER_RE.sub(" ", ans)):
        return ans
    return numbers[0].group(0).strip()


def _hash_line(text: str) -> tuple[int, str] | None:
    """(start, answer) of the last GSM8K `#### N` line (answer read like an answer phrase's,
    "" when empty), or None when there is none."""
    last = None
    for last in _HASH_LINE_RE.finditer(text):
        pass
    if last is None:
        return None
    return last.start(), _answer_phrase("Answer: " + text[last.end():].split("\n", 1)[0]) or ""


def _strip_math(text: str) -> str:
    """`text` without its math blocks (what remains is the prose around them)."""
    for start, end, _ in reversed(math_blocks(text)):
        text = text[:start] + " " + text[end:]
    return text


def _latex_token(text: str, start: int, end: int) -> str | None:
    """The whitespace-delimited LaTeX token around text[start:end] (a number inside a macro's braces)
    when it stands alone: balanced braces, no operator right before or after it (`\frac{1}{2} +
    \frac{1}{3}` has no final value here: None, never a part). An `=` before it is fine (`x = \frac{10}{9}`)."""
    a = text.rfind(" ", 0, start) + 1
    a = max(a, text.rfind("\n", 0, start) + 1)
    b = len(text)
    for sep in (" ", "\n"):
        j = text.find(sep, end)
        if j >= 0:
            b = min(b, j)
    tok = text[a:b].rstrip(".,;:!?")
    if not tok or tok.count("{") != tok.count("}") or match_braces(tok, tok.find("{")) is None and "{" in tok:
        return None
    before, after = text[:a].rstrip(), text[a + len(tok):].lstrip()
    if before.endswith(_OPERATORS) or after.startswith(_OPERATORS + ("=",)) or tok.startswith(("^", "_", "{")):
        return None
    return tok


def _fallback(text: str) -> str | None:
    """Lenient fallback: the last math block or the last number after it, whichever ends later; a
    completion that is one bare LaTeX expression (a macro, no math block, no prose word) is whole."""
    blocks = math_blocks(text)
    if not blocks and _LATEX_MACRO_RE.search(text) and not _PROSE_WORD_RE.search(_TEXT_ARG_RE.sub(" ", text)):
        return text.strip()  # `\frac{10}{9}`: its last number (9) is only a part of it
    tail_start = blocks[-1][1] if blocks else 0
    last = None
    for last in NUMBER_RE.finditer(text, tail_start):  # the number grammar (`rewards.numbers`)
        pass
    if last is not None:
        if (last.start() > 0 and text[last.start() - 1] in "{^_") or text.startswith(("}", "^"), last.end()):
            return _latex_token(text, last.start(), last.end())  # `\frac{1}{4}`, `2^{10}`: not the number 4 or 2
        number = last.group(0).strip()
        if read_number(number) is None and " " in number:  # `2 3/2` is no mixed number: its last part is
            number = number.rsplit(" ", 1)[1]
        return number
    group: list[tuple[int, int, str]] = []
    for b in reversed(blocks):
        if not b[2].strip():
            continue
        if group and _BOX_GAP_RE.fullmatch(text[b[1] : group[0][0]]) is None:
            break
        group.insert(0, b)
    if not group:
        return None
    items = [_with_percent(text, end, content) for _, end, content in group]
    return ", ".join(dict.fromkeys(items))  # blocks joined only by `,`/and/or form a list


def extract(completion: str, extraction: str = "lenient") -> Extracted:
    """The final answer of a completion (not normalized) and the path that found it; see the
    module docstring for the order. Never raises on content; ValueError for an unknown mode."""
    check_extraction(extraction)
    if not isinstance(completion, str) or not completion:
        return Extracted(None, None)
    text = unify_signs(cap_completion(completion))  # `−7` is `-7` on every path
    boxed = last_boxed(text)
    if boxed is not None:
        # An answer phrase after the last box restates the final answer (`\boxed{255}` for a step,
        # then `Final Answer: The final answer is $10,455$`): the later marker wins when it is not empty.
        last_box_end = boxes(text)[-1][1]
        phrase_after = any(m.start() >= last_box_end for m in _ANSWER_PHRASE_RE.finditer(text, last_box_end))
        phrase = _answer_phrase(text[last_box_end:]) if phrase_after else None
        hashed = _hash_line(text[last_box_end:])
        if not phrase and hashed and hashed[1]:
            phrase = hashed[1]
        return Extracted(phrase or boxed or None, MARKER)
    phrase = _answer_phrase(text)
    hashed = _hash_line(text)
    if hashed is not None:
        phrase_after = _ANSWER_PHRASE_RE.search(text, hashed[0]) is not None
        if not (phrase_after and phrase):  # `#### 72` is the final answer unless a later answer phrase restates it
            return Extracted(hashed[1] or None, MARKER)
    if phrase is not None:
        return Extracted(phrase or None, MARKER)
    if BOX_RE.search(text):  # only unclosed/malformed boxes: marked, but nothing to read
        return Extracted(None, MARKER)
    if extraction == "strict":
        return Extracted(None, None)
    ans = _fallback(text)
    return Extracted(ans, FALLBACK if ans else None)


def extract_answer(completion: str, *, extraction: str = "lenient") -> str | None:
    """The final answer string of a completion (not normalized), or None if there is none."""
    return extract(completion, extraction).answer


def is_worked_solution(gold: str) -> bool:
    """A gold that reads as prose rather than an answer: an answer phrase, a line break, or a
    sentence (>= 3 words of 3+ letters outside LaTeX macros and `\\text{}`, and a sentence-ending
    period). `all real numbers except 2` is an answer; `Each box holds 6, so there are 18.` is prose.
    Pass gold_format="plain" to keep a gold verbatim."""
    if "\n" in gold.strip() or _ANSWER_PHRASE_RE.search(gold):
        return True
    bare = re.sub(r"\\(?:text|mbox|textrm|mathrm|textbf|operatorname)\s*\{[^{}]*\}", " ", gold[:MAX_GOLD_CHARS])
    words = len(_PROSE_WORD_RE.findall(bare))
    return words >= 3 and bool(re.search(r"\.(?:\s|$)", gold.strip()))


def normalize_gold(gold: str, fmt: str = "auto") -> str:
    """The gold answer as a bare string.

    fmt: "gsm8k" (`... #### 1,234` -> `1234`), "boxed" (a MATH solution -> its boxed answer),
    "plain" (stripped string), "auto" (gsm8k if `####` is present, else boxed if a `\\boxed`/`\\fbox`
    is present, else the final answer of a worked solution (see `is_worked_solution`; markers,
    then the last expression), else plain).

    Raises ValueError (naming the fix) for an unknown fmt, a None gold, a GSM8K gold without
    `####`, a boxed gold without a closed box, or a worked solution with no extractable answer.
    """
    if fmt not in ("auto", "plain", "gsm8k", "boxed"):
        raise ValueError(f"normalize_gold: unknown fmt {fmt!r}. Fix: use one of auto, plain, gsm8k, boxed")
    if gold is None:
        raise ValueError("normalize_gold: gold is None. Fix: drop rows without an answer or pick the right answer column")
    gold = str(gold)
    if fmt == "auto":
        if "####" in gold:
            fmt = "gsm8k"
        elif BOX_RE.search(gold):
            fmt = "boxed"
        else:
            ans = extract(gold, "lenient").answer if is_worked_solution(gold) else None
            if ans:  # a worked solution: its final answer; prose without one stays as written
                return ans.strip()
            fmt = "plain"
    if fmt == "gsm8k":
        if "####" not in gold:
            raise ValueError(f"normalize_gold: GSM8K gold has no '####': {gold[:80]!r}. Fix: use fmt='plain'")
        ans = gold.rsplit("####", 1)[1].strip()
        return ans.replace(",", "") if _GSM8K_THOUSANDS_RE.fullmatch(ans) else ans
    if fmt == "boxed":
        boxed = last_boxed(gold)  # `There are \boxed{3} cats and \boxed{5} dogs`: the list 3, 5
        if not boxed:
            raise ValueError(f"normalize_gold: no closed, non-empty \\boxed{{}} in gold {gold[:80]!r}. Fix: use fmt='plain'")
        return boxed.strip()
    return gold.strip()
