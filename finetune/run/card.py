"""finetune's model card: RUN/adapter/README.md (and the merged model's), replacing peft's template.

Hub metadata in the YAML header (base_model, library_name, tags, datasets when the data came from the
hub), then: the data, the key settings, the results, time and versions, how to load it, and its
intended use and limits. Written from the resolved recipe and metrics.json, so it says what happened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from finetune.config import TINY_MODEL, Recipe
from finetune.paths import looks_like_path
from finetune.run import run_dir

CARD = "README.md"


def write_card(run: Path, recipe: Recipe, metrics: dict[str, Any], target: Path, merged: bool = False) -> Path:
    """Write the card into `target` (the adapter folder, or a merged model's folder)."""
    path = target / CARD
    run_dir.write_atomic(path, render(run, recipe, metrics, merged))
    return path


def render(run: Path, recipe: Recipe, metrics: dict[str, Any], merged: bool = False) -> str:
    base = recipe.model.name
    data = recipe.data
    hub_data = [p for p in (data.path, data.train) if p and not Path(p).exists() and not looks_like_path(p)]
    header = {
        "base_model": base if base != TINY_MODEL else None,
        "library_name": "transformers" if merged else "peft",
        "pipeline_tag": "text-generation",
        "tags": ["finetune", "lora", "qlora" if recipe.quant.method != "none" else "lora-16bit", "sft"],
        **({"datasets": hub_data} if hub_data else {}),
    }
    header = {k: v for k, v in header.items() if v is not None}
    name = run.name
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}" + (" (merged)" if merged else ""),
        "",
        f"A {'merged model' if merged else 'LoRA adapter'} for `{base}`, fine-tuned with finetune from one "
        "YAML recipe (`recipe.yaml` in the run directory).",
        "",
        *_data(recipe, metrics),
        *_settings(recipe, metrics),
        *_results(run, metrics),
        *_provenance(metrics),
        *_usage(base, merged),
        "## Intended use and limits",
        "",
        "Trained for the task and data described above and scored only on their held-out split. It inherits "
        "the base model's limits and licence; check its outputs before relying on them, especially for "
        "financial figures, which it can state confidently and wrongly.",
        "",
    ]
    return "\n".join(lines)


def _data(recipe: Recipe, metrics: dict[str, Any]) -> list[str]:
    data = recipe.data
    sources = [
        f"`{Path(p).name if Path(p).exists() else p}`" for p in (data.path, data.train, data.validation, data.test) if p
    ]
    splits = metrics.get("splits", {})
    rows = ["## Data", "", f"- source: {', '.join(sources)} (format: {metrics.get('data_format', data.format)})"]
    rows.append(f"- data hash: `{metrics.get('data_hash', '?')}`")
    rows.append("- rows: " + ", ".join(f"{name} {count}" for name, count in splits.items()))
    for name, report in metrics.get("tokenization", {}).items():
        dropped = report.get("dropped_too_long", 0) + report.get("dropped_no_target", 0)
        rows.append(
            f"- {name}: {report.get('prompts_cut', 0)} prompts cut to fit max_length {data.max_length} "
            f"({report.get('prompt_tokens_cut', 0)} tokens), {dropped} rows dropped, "
            f"{report.get('truncated', 0)} over the limit (data.truncation: {data.truncation})"
        )
    return [*rows, ""]


def _settings(recipe: Recipe, metrics: dict[str, Any]) -> list[str]:
    t, lora = recipe.train, recipe.lora
    quant = f"4-bit {recipe.quant.method}" if recipe.quant.method != "none" else "16/32-bit"
    return [
        "## Settings",
        "",
        f"- base weights: {quant}; LoRA r={lora.r}, alpha={lora.alpha:g}, dropout={lora.dropout:g}, "
        f"targets {lora.target_modules}",
        f"- learning rate {t.learning_rate:g} ({t.lr_scheduler}), {t.optimizer}, effective batch "
        f"{metrics.get('effective_batch_size', '?')}, max_length {recipe.data.max_length}, epochs {t.epochs:g}"
        + (f", max_steps {t.max_steps}" if t.max_steps else ""),
        f"- early stopping: {'patience ' + str(recipe.early_stopping.patience) if recipe.early_stopping.enabled else 'off'}",
        f"- recipe hash: `{metrics.get('recipe_hash', '?')}`",
        "",
    ]


def _results(run: Path, metrics: dict[str, Any]) -> list[str]:
    rows = ["## Results", ""]
    base, best = metrics.get("base_eval_loss"), metrics.get("best_eval_loss")
    if best is not None:
        start = f"{base:.4f} (base) -> " if base is not None else ""
        rows.append(f"- validation loss: {start}{best:.4f} at step {metrics.get('best_step')}")
    if metrics.get("improved") is False:
        rows.append("- **not improved**: the best adapter is no better than the base model on the validation split")
    if metrics.get("test_perplexity") is not None:
        rows.append(f"- test loss {metrics['test_loss']:.4f}, perplexity {metrics['test_perplexity']:.2f}")
    elif metrics.get("test_loss") is not None:  # dpo/orpo: the preference loss
        rows.append(f"- test preference loss {metrics['test_loss']:.4f}")
    if metrics.get("test_preference_accuracy") is not None:
        base = metrics.get("test_base_preference_accuracy")
        versus = f" (base {base:.4f})" if base is not None else ""
        rows.append(f"- test preference accuracy: {metrics['test_preference_accuracy']:.4f}{versus}")
    for key in ("test_accuracy", "test_macro_f1", "test_reward_accuracy", "test_reward_margin"):
        if metrics.get(key) is not None:
            rows.append(f"- {key.replace('_', ' ')}: {metrics[key]:.4f}")
    rows.append(
        f"- {metrics.get('global_step')} steps, {metrics.get('epochs_completed')} epochs"
        + (", stopped early" if metrics.get("stopped_early") else "")
    )
    evaluated = run / "eval" / "metrics.json"
    if evaluated.is_file():
        scores = json.loads(evaluated.read_text(encoding="utf-8"))
        tuned = scores.get("finetuned", {})
        shown = {k: v for k, v in tuned.items() if isinstance(v, (int, float)) and k in _EVAL_KEYS}
        base_scores = scores.get("base", {})
        for key, value in shown.items():
            versus = f" (base {base_scores[key]:.4f})" if isinstance(base_scores.get(key), (int, float)) else ""
            rows.append(f"- `finetune eval` on {scores.get('source', '?')}: {key} {value:.4f}{versus}")
    return [*rows, ""]


_EVAL_KEYS = ("loss", "perplexity", "accuracy", "macro_f1", "preference_accuracy", "reward_accuracy", "reward_margin")


def _provenance(metrics: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in metrics.get("versions", {}).items())
    seconds = metrics.get("timings", {}).get("total_s")
    return [
        "## Training run",
        "",
        f"- {seconds:.0f} s on {metrics.get('device', '?')} ({metrics.get('world_size', 1)} process(es), "
        f"{metrics.get('backend', 'hf')} backend, {metrics.get('compute_dtype', '?')})"
        if seconds is not None
        else f"- on {metrics.get('device', '?')}",
        f"- versions: {versions}",
        "",
    ]


def _usage(base: str, merged: bool) -> list[str]:
    if merged:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("REPO_OR_FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("REPO_OR_FOLDER")  # with the training chat template',
        ]
    else:
        code = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            f'model = AutoPeftModelForCausalLM.from_pretrained("REPO_OR_FOLDER")  # loads {base} + this adapter',
            'tokenizer = AutoTokenizer.from_pretrained("REPO_OR_FOLDER")  # with the training chat template',
        ]
    return [
        "## How to use",
        "",
        "```python",
        *code,
        "```",
        "",
        'Or with finetune: `finetune generate RUN "question"`, `finetune chat RUN`.',
        "",
    ]
