"""Bad input, as a table: each case exits 2 with one `error:` line naming the place, no traceback,
and leaves no run directory that looks finished."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from finetune.cli import app
from tests.conftest import ROOT, write_jsonl

QA = {"instruction": "What is a bond?", "input": "", "output": "A loan to an issuer."}


PAIR = {"prompt": "Buy gold?", "chosen": "It depends on your goals.", "rejected": "Yes, it only goes up!"}
DPO = {"train": {"objective": "dpo"}}


def rows(n=20, **change):
    return [{**QA, "instruction": f"Q{i}?", **change} for i in range(n)]


def pairs(n=20, **change):
    return [{**PAIR, "prompt": f"Q{i}: buy gold?", **change} for i in range(n)]


def base_recipe(data_path) -> dict:
    return {
        "model": {"name": "builtin:tiny-llama"},
        "lora": {"r": 4},
        "data": {"path": str(data_path), "max_length": 256},
        "train": {"max_steps": 2, "micro_batch_size": 4, "gradient_accumulation": 1, "gradient_checkpointing": False},
    }


# 40 levels of mappings, each holding the previous one three times: 3**40 values once expanded
ALIAS_BOMB = "b0: &b0 {x: 1}\n" + "".join(
    f"b{i}: &b{i} {{x: *b{i - 1}, y: *b{i - 1}, z: *b{i - 1}}}\n" for i in range(1, 40)
)

# (case id, how to build it, text the error must contain)
CASES = [
    ("empty file", lambda t: ("data", b""), "the file is empty"),
    ("binary file", lambda t: ("data", b"\x89PNG\x00\x00\x01"), "looks like a binary file"),
    ("wrong encoding", lambda t: ("data", '{"text": "café"}\n'.encode("latin-1")), "not valid UTF-8"),
    ("broken jsonl line", lambda t: ("data", b'{"text": "a"}\n{"text": \n'), "d.jsonl:2: invalid JSON"),
    ("jsonl array line", lambda t: ("data", b"[1, 2]\n"), "d.jsonl:1: expected a JSON object"),
    ("unknown columns", lambda t: ("data", b'{"q": "a", "a": "b"}\n'), "cannot detect the data format"),
    (
        "chat without assistant",
        lambda t: ("rows", [{"messages": [{"role": "user", "content": "hi"}]}] * 5),
        "chat has no assistant turn",
    ),
    (
        "roles out of order",
        lambda t: ("rows", [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}] * 5),
        "roles out of order",
    ),
    ("unknown role", lambda t: ("rows", [{"messages": [{"role": "robot", "content": "a"}]}] * 5), "has role 'robot'"),
    ("empty messages", lambda t: ("rows", [{"messages": []}] * 5), "'messages' must be a non-empty list"),
    ("empty answer", lambda t: ("rows", rows(output="")), "missing or empty 'output'"),
    (
        "label not in set",
        lambda t: (
            "recipe",
            {"data": {"classification": {"labels": ["up", "down"]}}},
            [{"text": "x", "label": "sideways"}] * 5,
        ),
        "is not in the label set",
    ),
    ("every answer too long", lambda t: ("rows", rows(output="x" * 600)), "even with its prompt cut"),
    (
        "all rows too long, cut at the end",
        lambda t: ("recipe", {"data": {"truncation": "end"}}, rows(instruction="x" * 600)),
        "longer than data.max_length",
    ),
    (
        "split leaves no validation",
        lambda t: ("recipe", {"data": {"split": {"validation": 0.0}}}, rows()),
        "validation split is empty",
    ),
    (
        "split fractions sum to 1",
        lambda t: ("recipe", {"data": {"split": {"validation": 0.5, "test": 0.5}}}, rows()),
        "validation + test must be below 1",
    ),
    (
        "negative learning rate",
        lambda t: ("recipe", {"train": {"learning_rate": -1e-4}}, rows()),
        "train.learning_rate",
    ),
    ("epochs 0", lambda t: ("recipe", {"train": {"epochs": 0}}, rows()), "train.epochs"),
    ("micro batch 0", lambda t: ("recipe", {"train": {"micro_batch_size": 0}}, rows()), "train.micro_batch_size"),
    ("max_length 0", lambda t: ("recipe", {"data": {"max_length": 0}}, rows()), "data.max_length"),
    ("wrong type", lambda t: ("recipe", {"lora": {"r": "sixteen"}}, rows()), "lora.r"),
    ("unknown key", lambda t: ("recipe", {"train": {"epoch": 2}}, rows()), "did you mean 'epochs'"),
    ("unknown optimizer", lambda t: ("recipe", {"train": {"optimizer": "adam"}}, rows()), "train.optimizer"),
    (
        "lora target matches nothing",
        lambda t: ("recipe", {"lora": {"target_modules": ["qkv"]}}, rows()),
        "lora.target_modules",
    ),
    ("model dir without config", lambda t: ("model", {}), "no config.json"),
    (
        "pickle-only checkpoint",
        lambda t: ("model", {"config.json": "tiny", "pytorch_model.bin": b"x"}),
        "only pickle weights",
    ),
    (
        "unsupported architecture",
        lambda t: ("model", {"config.json": {"model_type": "made-up"}}),
        "unsupported architecture",
    ),
    (
        "unknown hub id offline",
        lambda t: ("recipe", {"model": {"name": "acme/no-such-model"}}, rows()),
        "unknown model id or the hub is unreachable",
    ),
    ("missing data file", lambda t: ("recipe", {"data": {"path": "nope.jsonl"}}, rows()), "data file not found"),
    (
        "unsupported data suffix",
        lambda t: ("recipe", {"data": {"path": str(ROOT / "README.md")}}, rows()),
        "unsupported file type",
    ),
    ("both path and train", lambda t: ("recipe", {"data": {"train": "x.jsonl"}}, rows()), "give either `path`"),
    ("malformed yaml", lambda t: ("yaml", "model:\n  name: a\n    b: c\n"), "mapping values are not allowed"),
    ("recipe not a mapping", lambda t: ("yaml", "- a\n- b\n"), "a recipe is a YAML mapping"),
    ("duplicate yaml key", lambda t: ("yaml_extra", "train:\n  epochs: 2\n"), "duplicate key 'train'"),
    ("yaml nested too deep", lambda t: ("yaml_extra", "deep: " + "[" * 60 + "]" * 60 + "\n"), "nested more than 50"),
    ("yaml alias bomb", lambda t: ("yaml_extra", ALIAS_BOMB), "YAML aliases expand this recipe"),
    ("infinite lora alpha", lambda t: ("recipe", {"lora": {"alpha": float("inf")}}, rows()), "lora.alpha"),
    ("nan learning rate", lambda t: ("recipe", {"train": {"learning_rate": float("nan")}}, rows()), "finite"),
    ("huge learning rate", lambda t: ("recipe", {"train": {"learning_rate": 1e9}}, rows()), "train.learning_rate"),
    ("epochs 1e300", lambda t: ("recipe", {"train": {"epochs": 1e300}}, rows()), "train.epochs"),
    ("negative seed", lambda t: ("recipe", {"train": {"seed": -1}}, rows()), "train.seed"),
    ("seed too large", lambda t: ("recipe", {"train": {"seed": 10**14}}, rows()), "train.seed"),
    ("max_length 1", lambda t: ("recipe", {"data": {"max_length": 1}}, rows()), "data.max_length"),
    (
        "classification template without text",
        lambda t: ("recipe", {"data": {"classification": {"template": "Classify: {labels}"}}}, rows()),
        "must contain {text}",
    ),
    ("output is a file", lambda t: ("output_file", None), "output path exists and is a file"),
    ("read-only output", lambda t: ("output", "/proc/finetune-cannot-write-here"), "cannot write to the output"),
    (
        "chat image part",
        lambda t: (
            "rows",
            [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 2
            + [
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ],
        ),
        "d.jsonl:3: messages[0].content has a 'image_url' part; finetune trains on text only: remove non-text parts",
    ),
    (
        "null chat content",
        lambda t: ("rows", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}]),
        "d.jsonl:1: messages[1].content must be a string or a list of text parts (got null)",
    ),
    ("output not a string", lambda t: ("rows", rows(output=42)), "d.jsonl:1: output must be a string (got int)"),
    ("input not a string", lambda t: ("rows", rows(input=[1, 2])), "d.jsonl:1: input must be a string or null"),
    (
        "label is an object",
        lambda t: ("rows", [{"text": "x", "label": {"name": "up"}}] * 5),
        "d.jsonl:1: label must be a label name or a number (got dict)",
    ),
    (
        "every answer empty",
        lambda t: (
            "rows",
            [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}] * 20,
        ),
        "every assistant answer in the train split (16 examples) is empty",
    ),
    (
        "template drops the answer",
        lambda t: (
            "recipe",
            {
                "data": {
                    "chat_template": "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"
                }
            },
            rows(),
        ),
        "the chat template does not render the assistant content",
    ),
    (
        "pair without rejected",
        lambda t: ("recipe", DPO, pairs(rejected=None)),
        "d.jsonl:1: missing or empty 'rejected'",
    ),
    ("pair with an empty answer", lambda t: ("recipe", DPO, pairs(chosen=" ")), "d.jsonl:1: missing or empty 'chosen'"),
    (
        "pair chosen = rejected",
        lambda t: ("recipe", DPO, pairs(rejected=PAIR["chosen"])),
        "d.jsonl:1: chosen and rejected are the same answer",
    ),
    (
        "pair answer not a string",
        lambda t: ("recipe", DPO, pairs(chosen={"text": "a"})),
        "d.jsonl:1: chosen must be a string (got dict)",
    ),
    ("pairs trained with sft", lambda t: ("rows", pairs()), "set train.objective: dpo or orpo"),
    ("dpo on chat rows", lambda t: ("recipe", DPO, rows()), "train.objective dpo needs preference rows"),
    (
        "every pair too long",
        lambda t: ("recipe", DPO, pairs(chosen="x" * 600)),
        "even with its prompt cut",
    ),
    (
        "adapter folder missing",
        lambda t: ("recipe", {**DPO, "model": {"adapter": str(t / "runs/nope/adapter")}}, pairs()),
        "is not a PEFT adapter folder",
    ),
    (
        "csv duplicate header",
        lambda t: (
            (t / "d.csv").write_text("instruction,output,instruction\nq,a,q2\n"),
            ("recipe", {"data": {"path": str(t / "d.csv")}}, rows()),
        )[1],
        "d.csv:1: the header has the column 'instruction' more than once",
    ),
]


@pytest.mark.parametrize("name, build, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, tiny_model_path, name, build, message):
    kind, *spec = build(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", rows())
    recipe = base_recipe(data)
    output = tmp_path / "run"
    if kind == "data":
        data.write_bytes(spec[0])
    elif kind == "rows":
        write_jsonl(data, spec[0])
    elif kind == "recipe":
        overrides, table = spec
        write_jsonl(data, table)
        for section, values in overrides.items():
            recipe.setdefault(section, {}).update(values)
    elif kind == "model":
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        for file, content in spec[0].items():
            if content == "tiny":
                content = (tiny_model_path / "config.json").read_text()
            elif isinstance(content, dict):
                content = json.dumps(content)
            (model_dir / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        recipe["model"]["name"] = str(model_dir)
    elif kind == "output_file":
        output.write_text("x")
    elif kind == "output":
        output = spec[0]
    path = tmp_path / "recipe.yaml"
    path.write_text(spec[0] if kind == "yaml" else yaml.safe_dump(recipe) + (spec[0] if kind == "yaml_extra" else ""))

    result = CliRunner().invoke(app, ["train", str(path), "-o", str(output), "-q"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    if kind != "output_file":
        assert not (tmp_path / "run" / "metrics.json").exists()


# Judged from the recipe file alone: `finetune validate` must catch each without loading a model.
RECIPE_LEVEL = [
    case
    for case in CASES
    if case[0]
    in {
        "split fractions sum to 1",
        "negative learning rate",
        "epochs 0",
        "micro batch 0",
        "max_length 0",
        "wrong type",
        "unknown key",
        "unknown optimizer",
        "malformed yaml",
        "recipe not a mapping",
        "duplicate yaml key",
        "yaml nested too deep",
        "yaml alias bomb",
        "infinite lora alpha",
        "nan learning rate",
        "huge learning rate",
        "epochs 1e300",
        "negative seed",
        "seed too large",
        "max_length 1",
        "classification template without text",
        "both path and train",
    }
]


@pytest.mark.parametrize("name, build, message", RECIPE_LEVEL, ids=[c[0] for c in RECIPE_LEVEL])
def test_validate_catches_recipe_errors_without_a_model(tmp_path, name, build, message):
    kind, *spec = build(tmp_path)
    recipe = base_recipe(write_jsonl(tmp_path / "d.jsonl", rows()))
    if kind == "recipe":
        for section, values in spec[0].items():
            recipe.setdefault(section, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(spec[0] if kind == "yaml" else yaml.safe_dump(recipe) + (spec[0] if kind == "yaml_extra" else ""))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "transformers" not in result.stderr  # the recipe is judged alone


def test_trl_without_its_loss_kernel_stops_before_loading_the_model(tmp_path, monkeypatch):
    """TRL 1.15 on a machine without Triton has no SFT loss (1.16 falls back to torch): exit 2, not a
    crash at the first step after the model is loaded."""
    from trl.trainer import utils

    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", None)  # what trl 1.15 leaves when Triton is missing
    result = CliRunner().invoke(
        app, ["train", str(ROOT / "recipes" / "quickstart.yaml"), "-o", str(tmp_path / "r"), "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "needs Triton (a CUDA GPU) for its SFT loss: pip install 'trl>=1.16'" in result.stderr
    assert not (tmp_path / "r").exists()
