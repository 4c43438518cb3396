"""ShiftDiagnosticsCallback with 2 processes on CPU: DDP (gloo) and DeepSpeed ZeRO-3.

The test launches this same file as the training script:

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml tests/diagnostics/test_callback_distributed.py \
        --model-dir DIR --probe FILE --output-dir OUT
    DS_ACCELERATOR=cpu accelerate launch --config_file accelerate_configs/cpu_zero3.yaml \
        tests/diagnostics/test_callback_distributed.py \
        --model-dir DIR --probe FILE --output-dir OUT --snapshot-base

Under ZeRO-3 the base is the snapshot of the policy's partitioned weights (gathered at train begin),
and the last in-training measurement must equal an offline `evolution` analysis of the saved final
checkpoint against the base model folder.

Each rank runs the forwards of every evaluation (required under ZeRO-3, where parameters are gathered
inside forward) and writes how many it ran to `OUT/rank{R}.json`; only rank 0 writes the JSONL
records and checkpoint summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"ddp": REPO / "accelerate_configs" / "cpu_ddp.yaml",  # the repository's verified CPU configs
           "zero3": REPO / "accelerate_configs" / "cpu_zero3.yaml"}


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero3"])
def test_two_process_run_writes_one_set_of_records(backend, tiny_model_dir, tiny_tokenizer, tmp_path):
    from diagnostics.callbacks import CHECKPOINT_SUMMARY_NAME, JSONL_NAME
    from diagnostics.jsonl import read_jsonl
    from diagnostics.probe import build_probe_set
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [[{"role": "user", "content": f"Compute {a}+{b}."}] for a, b in ((12, 3), (40, 7))]
    probe = build_probe_set(base, tiny_tokenizer, prompts, max_new_tokens=8, seed=0, progress=False)
    probe_path = probe.save(tmp_path / "probe.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    launch = ["--config_file", str(CONFIGS[backend])]
    extra = ["--snapshot-base"] if backend == "zero3" else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port", str(_free_port()),
           __file__, "--model-dir", str(tiny_model_dir), "--probe", str(probe_path), "--output-dir", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # one record per evaluated step, written once (not once per rank)
    records = read_jsonl(out / JSONL_NAME)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["probe_fingerprint"] == probe.fingerprint() for r in records)
    # both ranks ran the same number of evaluations (the forwards every rank must join)
    counts = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert counts[0]["evaluations"] == counts[1]["evaluations"] == 3
    # and measured the same thing (DDP keeps the replicas equal)
    assert counts[0]["js_mean"] == pytest.approx(counts[1]["js_mean"], rel=1e-5)
    for step in (2, 3):  # save_steps=2 and the final save
        assert (out / f"checkpoint-{step}" / CHECKPOINT_SUMMARY_NAME).exists()
    if backend == "zero3":
        assert counts[0]["zero3"] and counts[1]["zero3"]  # the parameters really were partitioned
        # the gathered step-0 snapshot is the base: in-training JS == offline JS of the saved checkpoint
        from diagnostics.evolution import build_parser, run_evolution

        res = run_evolution(build_parser().parse_args([
            "--policy", str(out), "--base", str(tiny_model_dir), "--output-dir", str(tmp_path / "evo"),
            "--probe", str(probe_path), "--device", "cpu", "--no-plots", "--no-progress"]))
        final = res.frame.set_index("step").loc[3, "js_mean"]
        # DeepSpeed's consolidated "16-bit" save stores the fp32 weights as bfloat16, so the offline
        # number differs by the rounding (measured: rel. 1e-5 to 3e-4). A wrong base is far outside 1%:
        # the current weights give JS = 0; another random init of this model gives ~0.0017 vs ~0.001 here.
        assert final == pytest.approx(records[-1]["metrics"]["js_mean"], rel=1e-2)


def _main() -> None:
    parser = argparse.ArgumentParser(description="2-process GRPO run with ShiftDiagnosticsCallback (test helper)")
    parser.add_argument("--model-dir", required=True, help="tiny model folder (base and initial policy)")
    parser.add_argument("--probe", required=True, help="probe set JSONL")
    parser.add_argument("--output-dir", required=True, help="training output_dir")
    parser.add_argument("--snapshot-base", action="store_true",
                        help="base_model=None: snapshot the policy at train begin instead of loading --model-dir")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from test_callbacks import run_grpo  # the same tiny GRPO run as the single-process test

    trainer, cb = run_grpo(args.model_dir, args.output_dir, args.probe, max_steps=3, per_device_batch=2,
                           base_model=None if args.snapshot_base else args.model_dir, every_n_steps=1)
    rank = trainer.accelerator.process_index
    last = cb._results[max(cb._results)]["metrics"]["js_mean"]
    zero3 = any(hasattr(p, "ds_id") for p in trainer.model.parameters())
    Path(args.output_dir, f"rank{rank}.json").write_text(json.dumps({"evaluations": cb.num_evaluations,
                                                                     "js_mean": last, "zero3": zero3}))


if __name__ == "__main__":
    _main()
