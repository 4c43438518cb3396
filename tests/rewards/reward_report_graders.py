"""Score the reward on math-verify's own test suite (a public grader suite nobody on the team wrote).

Run (the suite is read from a local copy of https://github.com/huggingface/Math-Verify; nothing is
vendored: the cases are read from that copy each time):

    git clone https://github.com/huggingface/Math-Verify /tmp/Math-Verify   # commit 5d148cf... was scored
    python tests/rewards/reward_report_graders.py /tmp/Math-Verify            # table + every disagreement
    python tests/rewards/reward_report_graders.py /tmp/Math-Verify --git-dir  # a bare mirror: read HEAD's tree

How the cases are read (`suite_cases`): every `@pytest.mark.parametrize` table of `tests/*.py`,
parsed with `ast` (never imported or executed; `ast.literal_eval`, and for the one f-string table
an `eval` without builtins and only `math`), whose argument names contain `gold`, `pred` and
`expected` (or `result`). Each row is one (completion=pred, gold, label) pair: the pred is scored
as the completion as written (bare numbers, `$...$`, boxes, whole model outputs). Rows that set a
non-default setting are skipped and counted: `precision` other than 6, `allow_set_relation_comp=True`,
`strict=False`. The parse-only tests (`test_string_extraction.py`) and non-parametrized API tests
have no gold/pred/expected table and are not read.

Scorers: ours (`rewards.math.score_batch_detailed`, lenient and strict, timeout 10 s) and plain
math-verify (`reward_report_accuracy.plain_math_verify`: `verify(parse(gold), parse(pred))`, defaults).
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Rows whose label records math-verify's output under the test's own extraction settings rather than
# whether the pred equals the gold; scored "vs the truth" with these values (docs/rewards.md).
# (gold, pred) -> (truth, why)
LABEL_NOT_TRUTH = {
    ("$9$", "Answer $ \n 9 \n $"): (1.0, "the answer is 9; the label 0 is the test's LaTeX-only rule that $...$ does not span lines"),
    ("$9$", "Answer \\( \n 9 \n \\)"): (1.0, "the same, with \\( \\)"),
    ("$x \\in [-2,7]$", "$-2 \\\\le x \\\\le 7$"): (1.0, "the same set; label 0 only without allow_set_relation_comp"),
    ("$1 - \\frac{1}{\\mathrm{e}}$", "$1 + \\frac{1}{\\mathrm{e}}$"): (0.0, "1 - 1/e != 1 + 1/e; the label records math-verify's output"),
}
SKIP_SETTINGS = {"precision": 6, "allow_set_relation_comp": False, "strict": True}  # rows kept only with these


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except ValueError:  # an f-string table: evaluate with `math` only, no builtins
        return eval(compile(ast.Expression(node), "<table>", "eval"), {"__builtins__": {}, "math": math})  # noqa: S307


def _tables(source: str, filename: str):
    """(test name, argnames, rows) of each parametrize table with gold/pred/expected columns."""
    for fn in ast.walk(ast.parse(source, filename)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize" and len(dec.args) >= 2):
                continue
            names = _literal(dec.args[0])
            names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
            if {"gold", "pred"} <= set(names) and ({"expected"} & set(names) or {"result"} & set(names)):
                yield fn.name, names, _literal(dec.args[1])


def read_sources(root: Path, git_dir: bool) -> dict[str, str]:
    """{file name: source} of the suite's `tests/*.py` (a work tree, or HEAD of a bare git dir)."""
    if not git_dir:
        return {p.name: p.read_text() for p in sorted((root / "tests").glob("test_*.py"))}
    names = subprocess.run(["git", "-C", str(root), "ls-tree", "--name-only", "HEAD", "tests/"],
                           check=True, capture_output=True, text=True).stdout.split()
    return {Path(n).name: subprocess.run(["git", "-C", str(root), "show", f"HEAD:{n}"], check=True,
                                         capture_output=True, text=True).stdout
            for n in names if Path(n).name.startswith("test_") and n.endswith(".py")}


def suite_cases(sources: dict[str, str]) -> tuple[list[dict], dict[str, int]]:
    """(cases, skipped counts by setting). A case: file, test, gold, pred, expected (0/1)."""
    cases, skipped = [], {}
    for fname, src in sources.items():
        for test, names, rows in _tables(src, fname):
            for row in rows:
                r = dict(zip(names, row))
                bad = [k for k, v in SKIP_SETTINGS.items() if k in r and r[k] != v]
                if bad:
                    skipped[f"{bad[0]}={r[bad[0]]}"] = skipped.get(f"{bad[0]}={r[bad[0]]}", 0) + 1
                    continue
                label = r.get("expected", r.get("result"))
                truth = LABEL_NOT_TRUTH.get((r["gold"], r["pred"]), (float(bool(label)), ""))
                cases.append({"file": fname, "test": test, "gold": r["gold"], "pred": r["pred"],
                              "expected": float(bool(label)), "truth": truth[0], "why": truth[1]})
    return cases, skipped


def score(cases: list[dict], plain: bool = True) -> dict[str, list]:
    from reward_report_accuracy import plain_math_verify
    from rewards.math import score_batch_detailed

    preds, golds = [c["pred"] for c in cases], [c["gold"] for c in cases]
    out = {m: score_batch_detailed(preds, golds, extraction=m, timeout=10.0) for m in ("lenient", "strict")}
    if plain:
        out["plain"] = [plain_math_verify(p, g) for p, g in zip(preds, golds)]
    return out


def report(cases: list[dict], skipped: dict[str, int], scores: dict[str, list]) -> str:
    n = len(cases)
    fixed = sum(c["truth"] != c["expected"] for c in cases)
    lines = [f"{n} cases ({sum(c['expected'] == 1 for c in cases)} equivalent / {sum(c['expected'] == 0 for c in cases)} not); "
             f"skipped (non-default settings): {skipped}; {fixed} labels that are not the truth (`LABEL_NOT_TRUTH`)", "",
             "| scorer | vs their labels | vs the truth | false negatives (truth) | false positives (truth) |",
             "|---|---|---|---|---|"]
    for m in scores:
        got = [s.score if hasattr(s, "score") else s for s in scores[m]]
        ok = sum(g == c["expected"] for g, c in zip(got, cases))
        ok_t = sum(g == c["truth"] for g, c in zip(got, cases))
        fn = sum(g == 0 and c["truth"] == 1 for g, c in zip(got, cases))
        fp = sum(g == 1 and c["truth"] == 0 for g, c in zip(got, cases))
        lines.append(f"| {m} | {ok / n:.1%} ({ok}/{n}) | {ok_t / n:.1%} ({ok_t}/{n}) | {fn} | {fp} |")
    lines += ["", "Every case where lenient disagrees with their label or with plain math-verify:", "",
              "| file | gold | pred | label | truth | lenient (status, path) | strict | plain |", "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(cases):
        le, st = scores["lenient"][i], scores["strict"][i]
        pl = scores["plain"][i] if "plain" in scores else le.score
        if le.score != c["expected"] or le.score != pl or le.score != c["truth"]:
            cell = lambda s: "`" + s.replace("|", "\\|").replace("\n", "\\n")[:70] + "`"  # noqa: E731
            lines.append(f"| {c['file']} | {cell(c['gold'])} | {cell(c['pred'])} | {c['expected']:.0f} | {c['truth']:.0f} | "
                         f"{le.score:.0f} ({le.status}, {le.path}) | {st.score:.0f} | {pl:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path, help="a local copy of huggingface/Math-Verify (work tree, or a bare git dir)")
    parser.add_argument("--git-dir", action="store_true", help="read tests/ from HEAD of a bare git directory")
    parser.add_argument("--no-plain", action="store_true", help="skip plain math-verify (faster)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # math-verify warns per unparseable string
    cases, skipped = suite_cases(read_sources(args.suite, args.git_dir))
    if not cases:
        raise SystemExit(f"reward_report_graders: error: no gold/pred/expected tables under {args.suite}/tests. "
                         "Fix: pass the root of a Math-Verify checkout (or --git-dir for a bare mirror)")
    print(report(cases, skipped, score(cases, plain=not args.no_plain)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
