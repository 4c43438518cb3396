"""Co-decoding throughput vs the same two models each running HF `generate` (with KV cache).

    python bench/bench_cross_sampling.py                       # tiny-world-sized random models
    python bench/bench_cross_sampling.py --base runs/tiny_base --rl runs/grpo/final --device cuda

Co-decoding runs both models every step (one cached forward each) plus the per-step JS, the
rule and the draw. The fair baseline is therefore the time of generating the same number of
tokens with *both* models separately:

    co tokens/s   = B·N / t_co
    pair tokens/s = B·N / (t_generate(base) + t_generate(rl))
    ratio         = co / pair          (target >= 0.8: co-decoding costs at most 25% over the pair)

Lengths are forced equal: co-decoding runs without EOS, `generate` with `min_new_tokens = N`.
Each timing is the best of `--repeats` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default=None, help="base model dir (default: random tiny-world-sized Llama)")
    p.add_argument("--rl", default=None, help="RL model dir (default: another random tiny-world-sized Llama)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    p.add_argument("--hidden-size", type=int, default=128, help="random models: hidden size (default 128)")
    p.add_argument("--layers", type=int, default=4, help="random models: layers (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    p.add_argument("--epsilon", type=float, default=0.1, help="js_threshold ε for the co-decoding run (default 0.1)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diagnostics.cross_sampling import co_decode, encode_prompts
    from diagnostics.switching import get_rule
    from rewards.tiny_task import generate_problems
    from train.tiny_world import build_tokenizer, default_corpus, random_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.base and args.rl:
        tok = AutoTokenizer.from_pretrained(args.base)
        models = [AutoModelForCausalLM.from_pretrained(p).to(device).eval() for p in (args.base, args.rl)]
    else:
        tok = build_tokenizer(default_corpus(n=300))
        models = [random_tiny_model(tok, seed=s, hidden_size=args.hidden_size, num_layers=args.layers,
                                    num_heads=4).to(device).eval() for s in (0, 1)]
    problems = generate_problems("test", args.batch_size, 0)
    prompts = [[{"role": "user", "content": p.text}] for p in problems]
    ids, mask = encode_prompts(tok, prompts, device)
    bsz, n = ids.shape[0], args.max_new_tokens
    rule = get_rule("js_threshold", epsilon=args.epsilon)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best, out

    def run_co():
        return co_decode(models[0], models[1], ids, mask, rule, seeds=list(range(bsz)), max_new_tokens=n,
                         temperature=1.0, top_p=1.0, eos_token_id=None, pad_token_id=tok.pad_token_id)

    def run_gen(model):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                  top_k=0, max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, use_cache=True)

    t_co, res = timed(run_co)
    assert res.tokens.shape == (bsz, n), res.tokens.shape
    t_gen = []
    for m in models:
        t, out = timed(lambda m=m: run_gen(m))
        assert out.shape[1] - ids.shape[1] == n, f"generate produced {out.shape[1] - ids.shape[1]} tokens, not {n}"
        t_gen.append(t)
    total = bsz * n
    co_tps, pair_tps = total / t_co, total / sum(t_gen)
    n_params = sum(p.numel() for p in models[0].parameters())
    print(f"device {device} (threads {torch.get_num_threads()}), models {n_params / 1e6:.2f}M params, "
          f"batch {bsz} x {n} new tokens, prompt length {ids.shape[1]}, best of {args.repeats}")
    print(f"  generate base       {t_gen[0]:7.3f} s   {total / t_gen[0]:9.1f} tok/s")
    print(f"  generate rl         {t_gen[1]:7.3f} s   {total / t_gen[1]:9.1f} tok/s")
    print(f"  generate both (sum) {sum(t_gen):7.3f} s   {pair_tps:9.1f} tok/s")
    print(f"  co-decode (JS>{args.epsilon:g}) {t_co:7.3f} s   {co_tps:9.1f} tok/s   "
          f"switched {100 * float(res.share_switched.mean()):.1f}% of tokens")
    print(f"  ratio co / both = {co_tps / pair_tps:.2f}x   (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
