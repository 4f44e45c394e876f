from pathlib import Path

import pytest

from finetune.config import Recipe, load_recipe, validate_recipe
from finetune.errors import UserError
from finetune.paths import shipped_recipes_dir

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled(write_recipe):
    recipe = load_recipe(write_recipe())
    assert recipe.quant.method == "nf4" and recipe.quant.double_quant
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.early_stopping.enabled and recipe.early_stopping.patience == 3
    assert recipe.data.split.validation == 0.1 and recipe.data.split.test == 0.1
    assert recipe.data.completion_only_loss is True


def test_unknown_key_names_line_and_suggests(write_recipe):
    text = "model:\n  name: builtin:tiny-llama\ndata:\n  path: x.jsonl\ntrain:\n  epochs: 1\n  lerning_rate: 0.1\n"
    with pytest.raises(UserError) as err:
        load_recipe(write_recipe(text=text))
    message = str(err.value)
    assert "recipe.yaml:7" in message
    assert "train.lerning_rate" in message and "did you mean 'learning_rate'" in message


def test_unknown_section_suggests(write_recipe):
    text = "model:\n  name: m\ndata:\n  path: x.jsonl\nearly_stoping:\n  patience: 2\n"
    with pytest.raises(UserError, match="did you mean 'early_stopping'"):
        load_recipe(write_recipe(text=text))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"train": {"learning_rate": -1}}, "train.learning_rate"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"micro_batch_size": "four"}}, "train.micro_batch_size"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"data": {"split": {"validation": 0.6, "test": 0.5}}}, "validation + test must be below 1"),
        ({"data": {"max_length": -5}}, "data.max_length"),
        ({"quant": {"method": "int3"}}, "quant.method"),
        ({"train": {"optimizer": "adam"}}, "train.optimizer"),
        ({"train": {"eval_steps": 0}}, "train.eval_steps"),
    ],
)
def test_bad_values_are_one_line_errors(write_recipe, overrides, fragment):
    with pytest.raises(UserError) as err:
        load_recipe(write_recipe(overrides))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_quant_shorthand(write_recipe):
    recipe = load_recipe(write_recipe({"quant": "none"}))
    assert recipe.quant.method == "none"


def test_overrides_are_typed_and_validated(write_recipe):
    path = write_recipe()
    recipe = load_recipe(path, ["train.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]", "quant=none"])
    assert recipe.train.learning_rate == pytest.approx(1e-4)
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.quant.method == "none"
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        load_recipe(path, ["train.epoch=2"])
    with pytest.raises(UserError, match="expected key.path=value"):
        load_recipe(path, ["train.epochs"])


def test_relative_data_paths_follow_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.jsonl").write_text('{"text": "a"}\n')
    recipe_path = tmp_path / "sub" / "r.yaml"
    recipe_path.write_text("model: {name: builtin:tiny-llama}\ndata: {path: rows.jsonl}\n")
    assert load_recipe(recipe_path).data.path == str(tmp_path / "sub" / "rows.jsonl")


def test_missing_and_malformed_recipe(tmp_path, write_recipe):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="recipe.yaml:3: mapping values are not allowed"):
        load_recipe(write_recipe(text="model:\n  name: a\n    b: c\n"))
    with pytest.raises(UserError, match="missing required key 'model'"):
        load_recipe(write_recipe(text="data: {path: x.jsonl}\n"))


def test_fingerprint_ignores_output_dir(write_recipe):
    a = load_recipe(write_recipe())
    b = load_recipe(write_recipe(), ["output.dir=elsewhere"])
    c = load_recipe(write_recipe(), ["train.seed=1"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize(
    "raw, message",
    [  # fields that take one of several types: pydantic reports each member; the user gets one line
        (
            {"train": {"gradient_checkpointing": "maybe"}},
            "train.gradient_checkpointing: must be true/false or 'auto' (got 'maybe')",
        ),
        (
            {"train": {"gradient_checkpointing": None}},
            "train.gradient_checkpointing: must be true/false or 'auto' (got null)",
        ),
        ({"train": {"eval_steps": "often"}}, "train.eval_steps: must be an integer or 'auto' (got 'often')"),
        ({"lora": {"target_modules": 5}}, "lora.target_modules: must be a string or a list (got 5)"),
        ({"lora": {"target_modules": ["q_proj", 1]}}, "lora.target_modules.1: Input should be a valid string (got 1)"),
        ({"data": {"classification": {"labels": 7}}}, "data.classification.labels: must be a dict or a list (got 7)"),
        ({"train": {"int": 3}}, "unknown key 'train.int'"),  # a key named like a member's tag is still unknown
        ({"str": 1}, "unknown key 'str'"),
    ],
)
def test_union_fields_get_one_error_naming_the_choices(raw, message):
    check_error(raw, message)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"lora": {"r": True}}, "lora.r: must be a number, not true/false (got true)"),  # pydantic would read 1
        ({"train": {"max_steps": True}}, "train.max_steps: must be a number, not true/false"),
        ({"train": {"eval_steps": False}}, "train.eval_steps: must be a number, not true/false (got false)"),
        ({"train": {"learning_rate": True}}, "train.learning_rate: must be a number, not true/false"),
        ({"spike_guard": {"window": 10**20}}, "spike_guard.window: Input should be less than or equal to 1000000"),
        ({"train": {"eval_steps": 10**20}}, "train.eval_steps: must be a positive integer (at most 10^8) or 'auto'"),
        ({"train": {"logging_steps": 10**20}}, "train.logging_steps: Input should be less than or equal to"),
        (
            {"data": {"classification": {"labels": {0: "neg", 1: ["neutral"]}}}},
            "the name of 1 must be text (got a list)",
        ),
        ({"data": {"classification": {"labels": {0: "neg", 2: None}}}}, "the name of 2 must be text (got null)"),
        ({"data": {"classification": {"labels": []}}}, "labels: needs at least two label names"),
        ({"data": {"classification": {"labels": ["up", "up"]}}}, "labels: names a label twice ('up')"),
        ({"data": {"classification": {"labels": ["up", " "]}}}, "labels: a label name is empty"),
    ],
)
def test_values_of_the_wrong_kind_are_refused_not_coerced(raw, message):
    check_error(raw, message)
    assert validate_recipe(  # what they protect stays valid: booleans where booleans go, {true: yes} label maps
        {
            "model": {"name": "builtin:tiny-llama"},
            "data": {"path": "x.jsonl", "classification": {"labels": {True: "yes", False: "no"}}},
            "train": {"gradient_checkpointing": True, "fsdp": False},
        }
    ).data.classification.labels == {"True": "yes", "False": "no"}


def test_a_bad_set_value_is_blamed_on_set_not_on_a_line_of_the_file(write_recipe):
    path = write_recipe()
    with pytest.raises(UserError) as err:
        load_recipe(path, ["train.gradient_checkpointing=Auto"])
    assert str(err.value).startswith(f"{path} (--set): train.gradient_checkpointing: must be true/false or 'auto'")
    with pytest.raises(UserError) as err:
        load_recipe(write_recipe({"train": {"epochs": 0}}))
    assert str(err.value).startswith(f"{path}:") and "(--set)" not in str(err.value)


def check_error(raw: dict, message: str) -> None:
    base = {"model": {"name": "builtin:tiny-llama"}, "data": {"path": "x.jsonl"}}
    for section, values in raw.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    with pytest.raises(UserError) as err:
        validate_recipe(base)
    assert message in str(err.value)


@pytest.mark.parametrize("path", sorted(shipped_recipes_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.description, "finetune recipes shows the description"
    assert path.read_text().startswith("# finetune train recipes/"), "recipes start with the command to run"


def test_duplicate_keys_name_both_lines(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: builtin:tiny-llama\ndata:\n  path: d.jsonl\n  max_length: 64\n  max_length: 128\n")
    with pytest.raises(UserError, match=r"r.yaml:6: duplicate key 'data.max_length' \(first at line 5\)"):
        load_recipe(path)


def test_alias_bombs_and_deep_nesting_fail_fast(tmp_path):
    """A 900-byte recipe must not expand into billions of values (3**40 here), and recipe loading stays
    under a second for any file under 1 MB."""
    import time

    bomb = "b0: &b0 {x: 1}\n" + "".join(
        f"b{i}: &b{i} {{x: *b{i - 1}, y: *b{i - 1}, z: *b{i - 1}}}\n" for i in range(1, 40)
    )
    merges = "m0: &m0 {x: 1}\n" + "".join(f"m{i}: &m{i}\n  <<: [*m{i - 1}, *m{i - 1}]\n" for i in range(1, 40))
    deep = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    big = "model: {name: builtin:tiny-llama}\ndata: {path: d.jsonl}\ndescription: " + "x" * 900_000 + "\n"
    for name, text, error in [
        ("bomb", bomb, "aliases expand"),
        ("merges", merges, "aliases expand"),
        ("deep", deep, "nest"),
        ("big", big, None),
    ]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        start = time.perf_counter()
        if error:
            with pytest.raises(UserError, match=error):
                load_recipe(path)
        else:
            assert load_recipe(path).description.startswith("xxx")
        assert time.perf_counter() - start < 1.0, name


def test_numbers_are_finite_and_in_range_at_validate_time():
    base = {"model": {"name": "builtin:tiny-llama"}, "data": {"path": "d.jsonl"}}
    for section, key, value in [
        ("lora", "alpha", float("inf")),
        ("train", "learning_rate", float("nan")),
        ("train", "epochs", 1e300),
        ("train", "seed", -1),
        ("train", "seed", 10**14),
        ("train", "learning_rate", 1e9),
        ("data", "max_length", 1),
    ]:
        raw = {**base, section: {**base.get(section, {}), key: value}}
        with pytest.raises(UserError, match=f"{section}.{key}"):
            validate_recipe(raw)


GPU_TIERS_GB = (4, 6, 8, 12, 16, 24, 32, 40, 48, 80)  # common card sizes, decimal GB as sold


@pytest.mark.parametrize("path", sorted(shipped_recipes_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_a_recipes_stated_gpu_size_is_the_smallest_card_the_estimate_fits(path):
    import re

    from finetune.vram import estimator
    from finetune.vram.architectures import load_spec

    recipe = load_recipe(path)
    claim = re.search(r"one (\d+) GB\+ GPU", recipe.description or "")
    if recipe.model.name.startswith("builtin:"):
        assert claim is None  # the CPU recipes claim no GPU
        return
    assert claim, f"{path.name}: the description states the GPU it needs"
    need = estimator.estimate(load_spec(recipe.model.name), estimator.setup_from_recipe(recipe)).total_bytes
    stated = int(claim.group(1))
    smaller = [gb for gb in GPU_TIERS_GB if gb < stated]
    assert stated * 1e9 >= need, f"{path.name}: {need / 2**30:.2f} GiB does not fit {stated} GB"
    assert not smaller or smaller[-1] * 1e9 < need, f"{path.name}: a {smaller[-1]} GB card already fits"
    assert f"{need / 2**30:.2f} GiB" in path.read_text(), "the header quotes the estimate"


def test_data_paths_are_stored_absolute_and_normalised(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text("model: {name: builtin:tiny-llama}\ndata: {path: ../data/./rows.jsonl}\n")
    assert load_recipe(path).data.path == str(tmp_path / "data" / "rows.jsonl")


def test_the_runs_recipe_yaml_names_the_data_files_absolute_and_normalised(tmp_path):
    """RUN/recipe.yaml (written as the training loop writes it) names the very files the run read, so it
    loads from the run directory, and --resume compares it, whatever folder it is read from."""
    import yaml

    from finetune.run import run_dir

    (tmp_path / "data").mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / "data" / name).write_text('{"text": "x"}\n')
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text("model: {name: builtin:tiny-llama}\ndata: {train: ../data/./train.jsonl}\n")
    recipe = load_recipe(path, ["data.validation=../recipes/../data//val.jsonl"])
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    run_dir.write_recipe(run, recipe.resolved_dict())
    stored = yaml.safe_load((run / "recipe.yaml").read_text())["data"]
    assert stored["train"] == str(tmp_path / "data" / "train.jsonl")
    assert stored["validation"] == str(tmp_path / "data" / "val.jsonl")
    assert load_recipe(run / "recipe.yaml").data.train == stored["train"]  # read back from another folder


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"objective": "ppo"}}, "train.objective: must be 'sft', 'dpo' or 'orpo'"),
        ({"train": {"objective": "dpo"}, "data": {"path": "x.jsonl", "format": "chat"}}, "set data.format: preference"),
        ({"data": {"path": "x.jsonl", "format": "preference"}}, "needs train.objective: dpo or orpo"),
        (
            {"train": {"objective": "orpo"}, "preference": {"loss_type": "ipo"}},
            "preference.loss_type applies to dpo only",
        ),
        ({"train": {"objective": "dpo"}, "model": {"name": "m", "backend": "unsloth"}}, "runs on the hf backend"),
        ({"train": {"objective": "dpo"}, "preference": {"beta": 0}}, "preference.beta"),
        ({"train": {"objective": "dpo"}, "preference": {"loss_type": "kto"}}, "preference.loss_type"),
        ({"train": {"objective": "dpo", "fsdp": True}}, "train.fsdp is not supported"),
        ({"train": {"objective": "dpo"}, "data": {"path": "x.jsonl", "completion_only_loss": False}}, "applies to sft"),
    ],
)
def test_preference_settings_are_checked(raw, message):
    base = {"model": {"name": "builtin:tiny-llama"}, "data": {"path": "x.jsonl"}}
    merged = {**base, **{k: {**base.get(k, {}), **v} for k, v in raw.items()}}
    with pytest.raises(UserError, match=message):
        validate_recipe(merged)


def test_model_adapter_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    path = recipe_dir / "dpo.yaml"
    path.write_text("model: {name: builtin:tiny-llama, adapter: runs/sft/../sft/adapter}\ndata: {path: x.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    assert load_recipe(path).model.adapter == str(tmp_path / "runs" / "sft" / "adapter")
