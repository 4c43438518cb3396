"""One self-contained HTML report of a shift analysis: works offline, no CDN, no JavaScript.

    from diagnostics.report import write_report
    write_report("out/report.html", table, summary, images=paths, prompts={0: "..."}, token_text=decode)

Contents: the headline numbers, sample completions with every token's background coloured by its
JS divergence (log scale from 1e-4 to ln 2; a red outline marks JS > high_divergence_threshold), a hover box per
token (pure CSS `:hover`) with JS / KL / entropies / the emitted token's probabilities and, when
the table was built with `keep_topk=True`, base and policy top-5 with probabilities; then the
summary tables and the PNGs embedded as base64 data URIs.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics.summary import high_divergence_threshold_of

LN2 = math.log(2.0)
JS_COLOR_LO = 1e-4  # JS at or below this is drawn white

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table.t { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
table.t td, table.t th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.t th { background: #f4f4f4; }
.seq { font-family: Menlo, Consolas, monospace; font-size: 14px; line-height: 1.9; white-space: pre-wrap;
       border: 1px solid #ddd; padding: 8px; margin: 8px 0 16px; background: #fff; }
.prompt { color: #888; }
.tok { position: relative; border-radius: 2px; cursor: default; }
.tok.high { outline: 1.5px solid #8b0000; }
.tok .tip { display: none; position: absolute; left: 0; top: 1.7em; z-index: 10; background: #fffff4;
            border: 1px solid #999; padding: 6px; font-size: 12px; line-height: 1.3; white-space: nowrap;
            box-shadow: 2px 2px 6px rgba(0,0,0,.25); color: #222; }
.tok:hover .tip { display: block; }
.tip table td { padding: 0 6px; } .tip .chosen { font-weight: bold; }
.legend span { display: inline-block; padding: 2px 8px; font-family: monospace; font-size: 12px; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
.meta { color: #555; font-size: 13px; }
"""


def js_alpha(js: float) -> float:
    """Colour intensity in [0, 1]: log-scaled JS, 0 at <= 1e-4, 1 at ln 2."""
    if not js > JS_COLOR_LO:
        return 0.0
    return float(min(1.0, math.log(js / JS_COLOR_LO) / math.log(LN2 / JS_COLOR_LO)))


def _show(text: str) -> str:
    """Escape a token for HTML, making whitespace visible where it would vanish."""
    if text == "":
        return "∅"
    return html.escape(text).replace("\n", "↵\n").replace("\t", "→\t")


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}"


def _kv_table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_num(v) if not isinstance(v, str) else html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f'<table class="t">{body}</table>'


def _rows_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = ""
    for r in rows:
        cells = "".join(f"<td>{html.escape(str(r[k])) if isinstance(r[k], str) else _num(r[k])}</td>"
                        for k, _ in columns)
        body += f"<tr>{cells}</tr>"
    return f'<table class="t"><tr>{head}</tr>{body}</table>'


def _tooltip(row, token_text: Callable[[int], str]) -> str:
    lines = [
        f"pos {int(row.position)} (rel {row.rel_position:.2f}) &nbsp; id {int(row.token_id)}",
        f"JS {row.js:.4g} &nbsp; KL(b‖p) {row.kl_forward:.4g} &nbsp; KL(p‖b) {row.kl_reverse:.4g}",
        f"H base {row.entropy_base:.3g} &nbsp; H policy {row.entropy_policy:.3g}",
        f"p_base(tok) {math.exp(row.logp_base_token):.4g} &nbsp; p_policy(tok) {math.exp(row.logp_policy_token):.4g}",
    ]
    tip = "<br>".join(lines)
    if hasattr(row, "base_top5_ids"):
        tok = int(row.token_id)
        cells = ""
        for j in range(len(row.base_top5_ids)):
            bi, pi = int(row.base_top5_ids[j]), int(row.policy_top5_ids[j])
            bc, pc = (' class="chosen"' if bi == tok else ""), (' class="chosen"' if pi == tok else "")
            cells += (f"<tr><td{bc}>{_show(token_text(bi))}</td><td>{row.base_top5_probs[j]:.3f}</td>"
                      f"<td{pc}>{_show(token_text(pi))}</td><td>{row.policy_top5_probs[j]:.3f}</td></tr>")
        tip += ("<table><tr><th>base top-5</th><th>p</th><th>policy top-5</th><th>p</th></tr>"
                f"{cells}</table>")
    return f'<span class="tip">{tip}</span>'


def _sequence_html(seq: pd.DataFrame, prompt: str | None, token_text, high_divergence_threshold: float) -> str:
    parts = []
    if prompt:
        parts.append(f'<span class="prompt">{_show(prompt)}</span>')
    for row in seq.itertuples(index=False):
        a = js_alpha(float(row.js))
        cls = "tok high" if row.js > high_divergence_threshold else "tok"
        parts.append(f'<span class="{cls}" style="background: rgba(220,40,30,{a:.3f})">'
                     f"{_show(str(row.token))}{_tooltip(row, token_text)}</span>")
    return f'<div class="seq">{"".join(parts)}</div>'


def _legend() -> str:
    stops = [1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.4, LN2]
    spans = "".join(f'<span style="background: rgba(220,40,30,{js_alpha(s * 1.0000001):.3f})">{s:.3g}</span>'
                    for s in stops)
    return f'<div class="legend">JS colour scale: {spans} &nbsp; (outlined: JS &gt; high-divergence cut-off)</div>'


def _image_tag(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def render_report(
    table: pd.DataFrame,
    summary: dict,
    *,
    images: Mapping[str, str | Path] | None = None,
    prompts: Mapping[int, str] | None = None,
    token_text: Callable[[int], str] | None = None,
    title: str = "Token-level shift: base vs policy",
    meta: Mapping[str, object] | None = None,
    max_sequences: int = 20,
) -> str:
    """The report as one HTML string (see module docstring).

    Args:
        table: `analyze(...)` output; with `keep_topk=True` the hover shows the top-5s.
        summary: `summarize(table)`.
        images: name -> PNG path, embedded as base64.
        prompts: seq_id -> prompt text shown (greyed) before each completion.
        token_text: id -> display string for the top-5 entries (default: the table's own tokens,
            else "#id").
        meta: key -> value lines shown under the title (models, data, settings).
        max_sequences: show the first N sequences (by seq_id).
    """
    if token_text is None:
        known = dict(zip(table["token_id"].astype(int), table["token"].astype(str))) if len(table) else {}
        token_text = lambda i: known.get(int(i), f"#{int(i)}")  # noqa: E731
    high_divergence_threshold = high_divergence_threshold_of(summary)
    sp, re = summary["sparsity"], summary["reallocation"]
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if meta:
        out.append('<div class="meta">' + "<br>".join(f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}"
                                                      for k, v in meta.items()) + "</div>")

    out.append("<h2>Headline</h2>")
    head = [("tokens", summary["n_tokens"]), ("sequences", summary.get("n_sequences")),
            ("mean JS", sp["js_mean"]), ("Gini of JS mass", sp["gini"])]
    head += [(f"fraction JS > {t}", v) for t, v in sp["frac_js_gt"].items()]
    head += [(f"fraction JS ≤ {t} (near zero)", v) for t, v in sp["frac_js_le"].items()][:1]
    head += [(f"JS {k}", v) for k, v in sp["js_quantiles"].items()]
    head += [(f"share of total JS in top {k} of tokens", v) for k, v in sp["top_share"].items()
             if k in ("1%", "5%", "10%")]
    out.append(_kv_table(head))

    seq_ids = sorted(table["seq_id"].unique())[:max_sequences] if len(table) else []
    out.append(f"<h2>Sample completions ({len(seq_ids)} of {summary.get('n_sequences') or 0})</h2>")
    out.append(_legend())
    out.append("<p class=\"meta\">Hover over a token for its numbers and both models' top-5. Each token is "
               "coloured by the divergence of the distributions that predicted it.</p>")
    for sid in seq_ids:
        seq = table[table["seq_id"] == sid]
        out.append(f"<div class=\"meta\">sequence {int(sid)} — {len(seq)} tokens, max JS {seq['js'].max():.3g}, "
                   f"{int((seq['js'] > high_divergence_threshold).sum())} above {high_divergence_threshold:g}</div>")
        out.append(_sequence_html(seq, (prompts or {}).get(int(sid)), token_text, high_divergence_threshold))

    out.append(f"<h2>Probability-mass reallocation at JS &gt; {high_divergence_threshold:g}</h2>")
    out.append(_kv_table([
        ("high-JS tokens", re["n_high"]),
        ("policy top-1 = base top-1", re["frac_top1_equal"]),
        ("policy top-1 in base top-3", re["frac_policy_top1_in_base_top3"]),
        ("base prob of policy top-1 < 0.01", re["frac_base_prob_lt_0.01"]),
        *[(f"top-{k} overlap (high / all)", f"{_num(v)} / {_num(re['topk_overlap_all'].get(k))}")
          for k, v in re["topk_overlap_high"].items()],
    ]))
    out.append("<h2>Entropy per JS bin</h2>")
    out.append(_rows_table(summary["entropy_vs_js"], [
        ("js_lo", "JS from"), ("js_hi", "JS to"), ("count", "tokens"), ("share", "share"),
        ("entropy_base_mean", "base H mean"), ("entropy_policy_mean", "policy H mean"),
        ("entropy_base_median", "base H median"), ("entropy_policy_median", "policy H median")]))
    out.append("<h2>Position profile (relative-position deciles)</h2>")
    out.append(_rows_table(summary["position"], [
        ("decile", "decile"), ("count", "tokens"), ("js_mean", "mean JS"), ("js_median", "median JS"),
        ("js_p95", "p95 JS"), ("frac_high", f"frac JS > {high_divergence_threshold:g}")]))
    ident = summary["token_identity"]
    out.append("<h2>Token identity vs context</h2>")
    out.append(f"<p class=\"meta\">Share of high-JS positions whose token is high-JS in under half of its "
               f"occurrences: {_num(ident['frac_high_in_mostly_low_types'])}</p>")
    rows = [{**t, "token": repr(t["token"])} for t in ident["tokens"]]  # repr: whitespace stays visible
    out.append(_rows_table(rows, [("token", "token"), ("n_high", "high-JS count"),
                                  ("share_of_high_set", "share of high set"), ("n_total", "occurrences"),
                                  ("frac_of_occurrences_high", "share of occurrences high")]))
    if images:
        out.append("<h2>Plots</h2>")
        out += [_image_tag(Path(p)) for p in images.values()]
    out.append("</body></html>")
    return "\n".join(out)


def write_report(path: str | Path, table: pd.DataFrame, summary: dict, **kwargs) -> Path:
    """`render_report(...)` written to `path` (UTF-8). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(table, summary, **kwargs), encoding="utf-8")
    return path
