"""Hostile (completion, gold) pairs for the verifier: size bombs, brace bombs, sympy bombs, bad bytes.

Used by tests/rewards/test_reward_pool.py and bench/bench_reward.py.
"""

from __future__ import annotations


def hostile_corpus() -> list[tuple[str, str]]:
    big = "x" * 1_000_000
    return [
        (big + r" \boxed{5}", "5"),  # 1 MB completion: only its tail is read
        (r"\boxed{" + big + "}", "5"),  # 1 MB answer: rejected by the size cap
        (r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1"),  # 10k nested braces
        (r"\boxed{" * 10_000, "1"),  # 10k unclosed boxes
        (r"The result: \boxed{5", "5"),  # unclosed \boxed{
        (r"\boxed{10^{10^{10^{10}}}}", "1"),
        (r"\boxed{9**9**9**9}", "1"),
        (r"\boxed{9^{9^{9^{9}}}}", "1"),
        (r"\boxed{100000!}", "1"),
        (r"\boxed{(10^{100})!}", "1"),
        ("\\boxed{5\x00}", "5"),  # NUL byte
        ("\\boxed{\udcff\ud800}", "1"),  # invalid unicode (lone surrogates)
        (r"\boxed{\int_0^{10^{10}} e^{x^{x^{x}}} dx}", "1"),
        (r"\boxed{\sum_{n=1}^{10^{12}} n^{n}}", "1"),
        (r"\boxed{\prod_{k=1}^{10^{9}} k}", "1"),
        (r"\boxed{\frac{\frac{\frac{\frac{1}{x}}{x}}{x}}{x}" + "^{x}" * 200 + "}", "1"),
        (r"\boxed{\begin{pmatrix}" + "&".join(["x"] * 60) + r"\end{pmatrix}^{100}}", "1"),
        (r"\boxed{1}", r"\frac{" * 5000),  # hostile gold
        ("$" * 100_000 + "5", "5"),  # lenient fallback: 100k unclosed math delimiters
        ("\\(" * 50_000 + "1 000 " * 20_000, "1000"),  # unclosed \( and 20k spaced thousands groups
        ("x " * 50_000 + "The answer is " + "1+" * 1000 + "1", "1"),  # a 2001-character answer: answer_too_long
    ]
