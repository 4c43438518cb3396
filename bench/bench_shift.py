"""Benchmark of the two-model shift analysis (`diagnostics.shift.analyze`).

    python bench/bench_shift.py                                  # CPU defaults: hidden 1024, 8 layers, vocab 32k (~4 min on 2 cores)
    python bench/bench_shift.py --device cuda --hidden 2048 --layers 16 --vocab 151936 --dtype bfloat16 \
        --num-seqs 64 --batch-size 16 --completion-len 480     # a ~1.5B-shaped random model on a GPU

1. Throughput: completion tokens per second of `analyze(base, policy, ...)` vs two plain
   teacher-forced forward passes of the same models on the same padded batches (what any analysis
   must pay at least). Ratio = analyze tok/s ÷ plain tok/s (target ≥ 0.85).
2. Memory: for each (batch size, chunk size) configuration, in a fresh subprocess, the peak
   memory of the plain forwards and of `analyze` above what the models and inputs hold. `analyze`
   must keep both models' `(B, T, V)` logits at once (2·B·T·V·bytes); everything above that
   ("temporaries") is the divergence math, which works on `(chunk, V)` float32 row chunks. On CUDA: `torch.cuda.max_memory_allocated`; on CPU: the peak resident set
   size above the phase's starting RSS, sampled every 0.2 ms from /proc/self/statm by a thread.
   The temporaries should follow `chunk_size · V` (not B) and stay far below `B · T · V · 4` bytes.

Random Llama models with a big vocabulary stand in for real ones (nothing downloads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_models(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=4096,
                      tie_word_embeddings=False, pad_token_id=0)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(LlamaForCausalLM(cfg).to(dtype=getattr(torch, args.dtype), device=args.device).eval())
    return models


class _Tok:
    """The bits of a tokenizer `analyze` uses, for id-only records."""

    pad_token_id = 0
    eos_token_id = 1

    def batch_decode(self, seqs, skip_special_tokens=False):
        return [f"<{s[0]}>" for s in seqs]


def make_records(args):
    g = torch.Generator().manual_seed(0)
    return [{"prompt_ids": torch.randint(2, args.vocab, (args.prompt_len,), generator=g).tolist(),
             "completion_ids": torch.randint(2, args.vocab, (args.completion_len,), generator=g).tolist()}
            for _ in range(args.num_seqs)]


def plain_forwards(models, records, batch_size, device):
    """Two teacher-forced forwards per batch, same padding as analyze; logits discarded."""
    from diagnostics.shift import _pad_right, records_to_ids

    pairs = records_to_ids(_Tok(), records)
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            ids, mask = _pad_right(pairs[s: s + batch_size], 0)
            ids, mask = ids.to(device), mask.to(device)
            for m in models:
                m(input_ids=ids, attention_mask=mask).logits.sum().item()  # .item(): wait for the device


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(args) -> dict:
    from diagnostics.shift import analyze

    base, policy = build_models(args)
    records = make_records(args)
    n_tok = args.num_seqs * args.completion_len
    plain_forwards((base, policy), records[: args.batch_size], args.batch_size, args.device)  # warm-up
    analyze(base, policy, _Tok(), records[: args.batch_size], batch_size=args.batch_size, progress=False)
    t_plain, t_an = [], []
    for _ in range(args.repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        plain_forwards((base, policy), records, args.batch_size, args.device)
        _sync(args.device)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        analyze(base, policy, _Tok(), records, chunk_size=args.chunk_size, batch_size=args.batch_size,
                progress=False)
        _sync(args.device)
        t_an.append(time.perf_counter() - t0)
    tp, ta = statistics.median(t_plain), statistics.median(t_an)
    return {"completion_tokens": n_tok, "plain_tok_per_s": n_tok / tp, "analyze_tok_per_s": n_tok / ta,
            "ratio": tp / ta, "plain_s": tp, "analyze_s": ta}


class PeakRSS:
    """Context manager: peak RSS (bytes) above the RSS at entry, polled from /proc/self/statm."""

    def __enter__(self):
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.0002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.start


def memory_child(args) -> dict:
    """Run in a fresh process: extra peak memory of analyze over the plain forwards."""
    from diagnostics.shift import analyze

    base, policy = build_models(args)
    records = make_records(args)[: args.batch_size]  # one batch: B sequences of length T
    cuda = args.device.startswith("cuda")
    plain_forwards((base, policy), records[:1], 1, args.device)  # warm-up (kernels), one short sequence
    if cuda:
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        plain_forwards((base, policy), records, args.batch_size, args.device)
        peak_plain = torch.cuda.max_memory_allocated() - start
        torch.cuda.reset_peak_memory_stats()
        analyze(base, policy, _Tok(), records, chunk_size=args.chunk_size, batch_size=args.batch_size, progress=False)
        peak_an = torch.cuda.max_memory_allocated() - start
    else:
        with PeakRSS() as m_plain:
            plain_forwards((base, policy), records, args.batch_size, args.device)
        with PeakRSS() as m_an:
            analyze(base, policy, _Tok(), records, chunk_size=args.chunk_size, batch_size=args.batch_size,
                    progress=False)
        peak_plain, peak_an = m_plain.extra, m_an.extra
    t = args.prompt_len + args.completion_len
    elt = torch.finfo(getattr(torch, args.dtype)).bits // 8
    pair = 2 * args.batch_size * t * args.vocab * elt  # both models' (B, T, V) logits, held together by analyze
    # peaks are above the memory held before each phase (models, inputs): what the phase itself needs
    return {"batch_size": args.batch_size, "chunk_size": args.chunk_size, "peak_plain_MiB": peak_plain / 2**20,
            "peak_analyze_MiB": peak_an / 2**20, "logits_pair_MiB": pair / 2**20,
            "temporaries_MiB": (peak_an - pair) / 2**20,
            "chunk_V_f32_MiB": args.chunk_size * args.vocab * 4 / 2**20,
            "BTV_f32_MiB": args.batch_size * t * args.vocab * 4 / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size of the random models")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024: the vocabulary math is a fixed per-token cost, so the ratio depends on model size; at hidden 256 x 4 layers it is ~0.4)")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    p.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--num-seqs", type=int, default=16, help="sequences in the throughput run")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per sequence")
    p.add_argument("--completion-len", type=int, default=224, help="completion tokens per sequence")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward (throughput run)")
    p.add_argument("--chunk-size", type=int, default=512, help="chunk size for the throughput run")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--memory-configs", default="4:32,4:224,8:32",
                   help="comma list of batch:chunk for the memory runs (each in a fresh subprocess)")
    p.add_argument("--skip-throughput", action="store_true", help="only the memory runs")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"# device={args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, "
          f"{torch.get_num_threads()} threads), vocab={args.vocab}, hidden={args.hidden}, layers={args.layers}, "
          f"dtype={args.dtype}, T={args.prompt_len}+{args.completion_len}")
    if not args.skip_throughput:
        r = throughput(args)
        print(f"throughput  plain 2x forward: {r['plain_tok_per_s']:.0f} tok/s   analyze: {r['analyze_tok_per_s']:.0f} "
              f"tok/s   ratio {r['ratio']:.3f} (target >= 0.85)   [{r['completion_tokens']} completion tokens, "
              f"batch {args.batch_size}, chunk {args.chunk_size}, median of {args.repeats}]")
    print("memory (peak above the models+inputs, fresh process each; temporaries = analyze peak - both logits):")
    print(f"{'batch':>6} {'chunk':>6} {'plain pk MiB':>12} {'analyze pk MiB':>14} {'2 logits MiB':>12} "
          f"{'temporaries':>11} {'chunk*V*4 MiB':>14} {'B*T*V*4 MiB':>12}")
    for cfg in args.memory_configs.split(","):
        b, c = (int(x) for x in cfg.split(":"))
        child = [sys.executable, os.path.abspath(__file__), "--memory-child", "--vocab", str(args.vocab),
                 "--hidden", str(args.hidden), "--layers", str(args.layers), "--dtype", args.dtype, "--device",
                 args.device, "--prompt-len", str(args.prompt_len), "--completion-len", str(args.completion_len),
                 "--batch-size", str(b), "--chunk-size", str(c), "--num-seqs", str(b)]
        # every big CPU allocation mmapped and unmapped on free: RSS then tracks live tensors, not the
        # allocator's cache (glibc's adaptive threshold would keep freed logits resident)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        res = subprocess.run(child, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"  batch {b} chunk {c}: child failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        m = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{b:>6} {c:>6} {m['peak_plain_MiB']:>12.1f} {m['peak_analyze_MiB']:>14.1f} "
              f"{m['logits_pair_MiB']:>12.1f} {m['temporaries_MiB']:>11.1f} {m['chunk_V_f32_MiB']:>14.1f} "
              f"{m['BTV_f32_MiB']:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
