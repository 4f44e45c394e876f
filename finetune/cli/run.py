"""Commands on a finished run: eval, generate, chat, merge."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from finetune.cli.app import Debug, app, console, emit_json, handle_errors, out, stdout_to_stderr
from finetune.errors import UserError

Run = Annotated[Path, typer.Argument(help="A run directory written by `finetune train`.")]
MaxNew = Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 = greedy; higher = more varied.")]
GGUF_TYPES = ("f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")  # finetune/run/gguf.py OUTTYPES (imported only for --gguf)
System = Annotated[str | None, typer.Option("--system", help="System message (default: the recipe's system_prompt).")]


@app.command("eval")
@handle_errors
def eval_command(
    run: Run,
    data: Annotated[str | None, typer.Option("--data", help="Score this file instead of the run's test split.")] = None,
    split: Annotated[str, typer.Option("--split", help="train | validation | test (of the run's own data).")] = "test",
    task: Annotated[str, typer.Option("--task", help="auto | lm | classification")] = "auto",
    labels: Annotated[str | None, typer.Option("--labels", help="Label set for classification: a,b,c")] = None,
    method: Annotated[str, typer.Option("--method", help="classification: rank (log-likelihood) | generate")] = "rank",
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Also score the base model, side by side.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Score the first N examples only.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per forward pass.")] = None,
    generate: Annotated[
        bool | None,
        typer.Option(
            "--generate/--no-generate",
            help="lm: a greedy answer beside the reference for every row of predictions.jsonl "
            "(default: the first 3 rows; --no-generate: none).",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", help="lm: tokens per answer at most (default train.sample_max_new_tokens)."),
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write (default RUN/eval).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    debug: Debug = False,
) -> None:
    """Score the fine-tune on held-out data: loss/perplexity, accuracy/precision/recall/F1, or (DPO/ORPO runs)
    preference accuracy, reward accuracy and margin.

    Example: finetune eval runs/quickstart --compare-base
    """
    from finetune.model.loading import quiet_libraries
    from finetune.run.evaluate import evaluate_run
    from finetune.run.inference import open_run

    check_counts({"--limit": limit, "--batch-size": batch_size, "--max-new-tokens": max_new_tokens})
    if task not in ("auto", "lm", "classification", "preference"):
        raise UserError(f"--task must be auto, lm, classification or preference (got {task!r})")
    trained = open_run(run)
    quiet_libraries(verbose=False)
    label_list = [label.strip() for label in labels.split(",") if label.strip()] if labels else None

    with stdout_to_stderr():  # libraries that print while loading must not reach stdout (--json)
        results = evaluate_run(
            trained,
            data=data,
            split=split,
            task=task,
            labels=label_list,
            compare_base=compare_base,
            limit=limit,
            batch_size=batch_size,
            method=method,
            out_dir=output or run / "eval",
            console=console,
            progress=not json_output,
            generate=generate,
            max_new_tokens=max_new_tokens,
        )
    if json_output:
        emit_json(results)
        return
    print_eval(results)
    console.print(f"written to {output or run / 'eval'}")
    if results.get("answers", {}).get("rows"):
        more = "" if generate else "; --generate: every row"
        rows = results["answers"]["rows"]
        console.print(f"predictions.jsonl: greedy answers beside the references in {rows} rows{more}")


def print_eval(results: dict) -> None:
    base = results.get("base")
    table = Table(title=f"{results['task']} evaluation: {results['examples']} examples from {results['source']}")
    table.add_column("metric")
    table.add_column("fine-tuned", justify="right")
    if base:
        table.add_column("base", justify="right")
        table.add_column("difference", justify="right")
    if results["task"] == "lm":
        names = [("loss", "loss"), ("perplexity", "perplexity")]
        get = lambda r, key: r[key]  # noqa: E731
    elif results["task"] == "preference":  # the base has no reward against itself: its row shows accuracy only
        names = [("preference accuracy", "preference_accuracy")]
        get = lambda r, key: r[key]  # noqa: E731
    else:
        names = [("accuracy", "accuracy")] + [(f"macro {m}", m) for m in ("precision", "recall", "f1")]
        get = lambda r, key: r["accuracy"] if key == "accuracy" else r["macro"][key]  # noqa: E731
    for title, key in names:
        row = [title, f"{get(results['finetuned'], key):.4f}"]
        if base:
            row += [f"{get(base, key):.4f}", f"{get(results['finetuned'], key) - get(base, key):+.4f}"]
        table.add_row(*row)
    if results["task"] == "preference":
        tuned, blank = results["finetuned"], ["", ""] if base else []
        table.add_row("reward accuracy", f"{tuned['reward_accuracy']:.4f}", *blank)
        table.add_row(f"reward margin (reference: {results['reference']})", f"{tuned['reward_margin']:.4f}", *blank)
    out.print(table)
    if results["task"] == "classification":
        metrics = results["finetuned"]
        per_label = Table(title="per label (fine-tuned)")
        for column in ("label", "precision", "recall", "f1", "support"):
            per_label.add_column(column, justify="left" if column == "label" else "right")
        for label, m in metrics["per_label"].items():
            per_label.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
        out.print(per_label)
        confusion = Table(title="confusion matrix (rows: true label, columns: predicted)")
        confusion.add_column("")
        for label in metrics["labels"]:
            confusion.add_column(label, justify="right")
        for label, row in zip(metrics["labels"], metrics["confusion_matrix"], strict=False):
            confusion.add_row(label, *map(str, row))
        out.print(confusion)


@app.command()
@handle_errors
def generate(
    run: Run,
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    system: System = None,
    debug: Debug = False,
) -> None:
    """Answer one prompt with the fine-tuned model, streaming tokens, using the training chat template.

    Example: finetune generate runs/quickstart "What is compound interest?"
    """
    from finetune.model.loading import quiet_libraries
    from finetune.run.generation import generate as run_generate
    from finetune.run.inference import load_model, open_run, prompt_builder

    check_sampling(max_new_tokens, temperature)
    trained = open_run(run)
    quiet_libraries(verbose=False)
    model, tokenizer = load_model(trained)
    system = system if system is not None else trained.recipe.data.system_prompt
    user = prompt_builder(trained)(prompt)  # a classification run: its template, as in training
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    context = min(trained.recipe.data.max_length, getattr(model.config, "max_position_embeddings", 10**9))
    run_generate(
        model,
        tokenizer,
        messages,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        stream=sys.stdout,
        context_length=max(context, max_new_tokens + 16),
    )


@app.command()
@handle_errors
def chat(
    run: Run,
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.7,
    system: System = None,
    debug: Debug = False,
) -> None:
    """Talk to the fine-tuned model: multi-turn, streamed; /help, /reset, /exit; Ctrl-C stops a reply.

    Example: finetune chat runs/quickstart
    """
    from finetune.model.loading import quiet_libraries
    from finetune.run.generation import chat_loop
    from finetune.run.inference import load_model, open_run, prompt_builder

    check_sampling(max_new_tokens, temperature)
    trained = open_run(run)
    quiet_libraries(verbose=False)
    console.print(f"loading {trained.recipe.model.name} with the adapter in {run / 'adapter'} ...")
    model, tokenizer = load_model(trained)
    context = min(trained.recipe.data.max_length, getattr(model.config, "max_position_embeddings", 10**9))
    chat_loop(
        model,
        tokenizer,
        read=input,
        stream=sys.stdout,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        system=system if system is not None else trained.recipe.data.system_prompt,
        context_length=max(context, max_new_tokens + 16),
        phrase=prompt_builder(trained),
    )


@app.command()
@handle_errors
def merge(
    run: Run,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the merged model.")],
    dtype: Annotated[str, typer.Option("--dtype", help="bf16 | fp16 | fp32")] = "bf16",
    gguf: Annotated[
        bool, typer.Option("--gguf", help="Also write a GGUF file (llama.cpp, Ollama) + Modelfile.")
    ] = False,
    gguf_type: Annotated[
        str, typer.Option("--gguf-type", help="f16 | q8_0 | q4_k_m | q5_k_m | q6_k (k-quants: the gguf-quant extra)")
    ] = "f16",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
    debug: Debug = False,
) -> None:
    """Merge the adapter into the base model and save a standalone model (safetensors).

    Example: finetune merge runs/quickstart -o merged/quickstart --gguf
    """
    from finetune.model.loading import quiet_libraries
    from finetune.run.inference import open_run
    from finetune.run.merge import merge as run_merge

    trained = open_run(run)
    if gguf and gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)} (got {gguf_type!r})")
    quiet_libraries(verbose=False)
    merged = run_merge(trained, output, dtype, overwrite)
    console.print(f"merged model written to {merged}")
    if gguf:
        from finetune.run.gguf import quant_note, write_gguf, write_modelfile  # numpy, gguf-py: only for --gguf

        gguf_file = write_gguf(merged, merged / f"{merged.name}-{gguf_type}.gguf", gguf_type)
        write_modelfile(gguf_file, _chat_template(merged), merged / "Modelfile")
        console.print(f"GGUF written to {gguf_file} (+ Modelfile for `ollama create`)")
        if note := quant_note(gguf_file, gguf_type):  # small models: some rows do not fit the type's blocks
            console.print(f"[yellow]note:[/] {note}")


def _chat_template(directory: Path) -> str | None:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory).chat_template


def check_counts(flags: dict[str, int | None]) -> None:
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} must be positive (got {value})")


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    check_counts({"--max-new-tokens": max_new_tokens})
    if not (math.isfinite(temperature) and 0 <= temperature <= 100):
        raise UserError(f"--temperature must be between 0 (greedy) and 100 (got {temperature})")


@app.command()
@handle_errors
def push(
    run: Run,
    repo: Annotated[str, typer.Option("--repo", help="Hub repository: NAME or OWNER/NAME.")],
    private: Annotated[
        bool, typer.Option("--private/--public", help="Repository visibility (private by default).")
    ] = True,
    merged: Annotated[
        Path | None, typer.Option("--merged", help="Upload this `finetune merge` output instead of the adapter.")
    ] = None,
    gguf: Annotated[bool, typer.Option("--gguf", help="Upload the GGUF (+ Modelfile) in --merged DIR.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List exactly what would be uploaded; upload nothing.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    debug: Debug = False,
) -> None:
    """Upload the adapter (or the merged model, or its GGUF) with finetune's model card to the Hugging Face Hub.

    Example: finetune push runs/quickstart --repo me/finance-adapter --dry-run
    """
    from finetune.run.inference import open_run
    from finetune.run.push import push as upload

    result = upload(open_run(run), repo, private=private, merged=merged, gguf=gguf, dry_run=dry_run)
    if json_output:
        emit_json(result)
        return
    verb = "would upload" if dry_run else "uploaded"
    console.print(f"{verb} to {result['repo']} ({'private' if private else 'public'}) from {result['folder']}:")
    for name in result["files"]:
        out.print(f"  {name}")
    if not dry_run:
        console.print(f"[green]done:[/] {result['url']}")
