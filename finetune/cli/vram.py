"""`finetune vram-estimate`: the peak GPU memory of a run, before the run, and which GPUs it fits."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from finetune.cli.app import Debug, Overrides, app, emit_json, handle_errors, out, stdout_to_stderr
from finetune.errors import UserError


@app.command("vram-estimate")
@handle_errors
def vram_estimate(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe YAML or shipped recipe name (optional): estimate exactly this run.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Hub id, local directory or builtin:tiny-llama.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="full | lora | qlora")] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank.")] = None,
    lora_targets: Annotated[str | None, typer.Option("--lora-targets", help="all-linear or q_proj,v_proj,...")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Micro-batch size per GPU.")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per sequence (data.max_length).")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations.")
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="adamw_torch | adamw_8bit | paged_adamw_8bit | sgd")
    ] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Compute dtype: bf16 | fp16 | fp32.")] = None,
    loss_impl: Annotated[
        str | None,
        typer.Option("--loss-impl", help="fused (TRL, this tool) | full (materialised logits) | liger (Liger's loss)."),
    ] = None,
    kernels: Annotated[
        str | None, typer.Option("--kernels", help="liger | none: Liger's RMSNorm/SwiGLU/RoPE kernels (model.kernels).")
    ] = None,
    objective: Annotated[
        str | None, typer.Option("--objective", help="sft | dpo | orpo (train.objective): dpo/orpo run pairs.")
    ] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="Only this GPU, e.g. T4, A100 80GB.")] = None,
    gpu_memory: Annotated[float | None, typer.Option("--gpu-memory", help="Usable GiB of your GPU.")] = None,
    measure_steps: Annotated[
        bool, typer.Option("--measure", help="Also run real steps on the GPU and compare (CUDA only).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    set_: Overrides = None,
    debug: Debug = False,
) -> None:
    """Estimate the peak GPU memory of a training run, before the run, and say which GPUs it fits.

    Example: finetune vram-estimate --model meta-llama/Llama-3.2-1B --batch-size 4 --seq-len 2048 --gpu T4
    """
    from finetune.config import load_recipe
    from finetune.model.loading import quiet_libraries
    from finetune.paths import find_recipe
    from finetune.train.measure import compare, measure
    from finetune.train.preflight import decide_checkpointing, not_measured
    from finetune.vram import estimator, render
    from finetune.vram.architectures import load_spec

    if method is not None and method not in estimator.METHODS:
        raise UserError(f"--method must be one of {', '.join(estimator.METHODS)} (got {method!r})")
    loaded = None
    if recipe is not None:
        # Flags that have a recipe key become overrides, so --measure runs exactly what is estimated.
        as_keys = {
            "lora.r": lora_r,
            "train.micro_batch_size": batch_size,
            "data.max_length": seq_len,
            "train.gradient_checkpointing": gradient_checkpointing,
            "train.optimizer": optimizer,
            "model.dtype": dtype,
            "model.name": model,
            "model.kernels": kernels,
            "train.objective": objective,
            "quant.method": {"lora": "none", "qlora": "nf4"}.get(method or ""),
            "lora.target_modules": f"[{lora_targets}]"
            if lora_targets and lora_targets != "all-linear"
            else lora_targets,
        }
        flags = [f"{key}={value}" for key, value in as_keys.items() if value not in (None, "")]
        loaded = load_recipe(find_recipe(recipe), [*(set_ or []), *flags])
        setup, model_id = estimator.setup_from_recipe(loaded), loaded.model.name
        setup = dataclasses.replace(
            setup, **({"method": method} if method == "full" else {}), **({"loss_impl": loss_impl} if loss_impl else {})
        )
    else:
        if model is None:
            raise UserError("vram-estimate needs a RECIPE or --model (a hub id, local directory or builtin:tiny-llama)")
        flags = {
            "method": method,
            "lora_r": lora_r,
            "micro_batch_size": batch_size,
            "seq_len": seq_len,
            "gradient_checkpointing": gradient_checkpointing,
            "optimizer": optimizer,
            "dtype": dtype,
            "loss_impl": loss_impl,
            "kernels": kernels,
            "objective": objective,
            "lora_targets": tuple(t.strip() for t in lora_targets.split(","))
            if lora_targets and lora_targets != "all-linear"
            else lora_targets,
        }
        setup = dataclasses.replace(estimator.TrainingSetup(), **{k: v for k, v in flags.items() if v is not None})
        model_id = model
    setup.validate()
    spec = load_spec(model_id)
    # train.gradient_checkpointing: auto (the default) is on in the estimate; each GPU row says what auto picks there
    auto = gradient_checkpointing is None and setup.objective == "sft"
    if loaded is not None:  # where training would keep it on anyway (Unsloth: model.backend auto with it installed)
        backend = loaded.model.backend
        unsloth = backend == "unsloth" or (backend == "auto" and importlib.util.find_spec("unsloth") is not None)
        auto = auto and loaded.train.gradient_checkpointing == "auto"
        auto = auto and not_measured(loaded, "unsloth" if unsloth else "hf", loaded.train.fsdp, True) is None
    if measure_steps:
        if loaded is None or setup.method == "full" or setup.loss_impl != "fused" or setup.objective != "sft":
            raise UserError(
                "--measure needs a RECIPE and measures this tool's own sft path (lora/qlora, fused loss); "
                "dpo/orpo are estimated only"
            )
        loaded, why = decide_checkpointing(loaded, spec, "hf", setup.kernels)  # on this GPU, as training would
        setup, auto = dataclasses.replace(setup, gradient_checkpointing=loaded.train.gradient_checkpointing), False
        if why and not json_output:
            out.print(f"gradient checkpointing {'on' if setup.gradient_checkpointing else 'off'} (auto): {why}")
    result = estimator.estimate(spec, setup, model=model_id)
    unchecked = estimator.estimate(spec, dataclasses.replace(setup, gradient_checkpointing=False)) if auto else None
    comparison = None
    if measure_steps:
        quiet_libraries(verbose=False)
        with stdout_to_stderr():  # libraries that print while loading must not reach stdout (--json)
            comparison = compare(result, measure(loaded))
    gpus = select_gpus(gpu, gpu_memory)
    if json_output:
        emit_json({**result.to_json(gpus, unchecked), **({"measured": comparison} if comparison else {})})
        return
    render.render_table(result, out, gpus, unchecked)
    for name, gib in (gpus if (gpu or gpu_memory) else dict(list(estimator.GPUS.items())[:1])).items():
        for tip in estimator.advise(spec, setup, int(gib * estimator.GiB)):
            out.print(f"[yellow]to fit {name}:[/] {tip}")
    if comparison:
        table = Table(title="measured on this GPU")
        for column in ("", "estimate GiB", "measured GiB", "error %"):
            table.add_column(column, justify="right" if column else "left")
        for name, row in comparison.items():
            table.add_row(
                name,
                f"{row['estimate_bytes'] / estimator.GiB:.2f}",
                f"{row['measured_bytes'] / estimator.GiB:.2f}",
                f"{row['error_pct']:+.1f}",
            )
        out.print(table)


def select_gpus(name: str | None, memory_gib: float | None) -> dict[str, float]:
    from finetune.vram import estimator

    if memory_gib is not None:
        if not 0 < memory_gib < 1e6:  # also nan and inf
            raise UserError(f"--gpu-memory must be a positive number of GiB below 10^6 (got {memory_gib})")
        return {name or "your GPU": memory_gib}
    if name is None:
        return dict(estimator.GPUS)
    chosen = {k: v for k, v in estimator.GPUS.items() if name.lower().replace(" ", "") in k.lower().replace(" ", "")}
    if not chosen:
        raise UserError(f"--gpu {name!r}: unknown GPU; use one of {', '.join(estimator.GPUS)} or give --gpu-memory GIB")
    return chosen
