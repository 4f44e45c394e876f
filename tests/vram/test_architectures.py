"""Architecture specs: exact parameter counts against transformers/peft on the meta device, and bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch

from finetune.errors import UserError
from finetune.vram import architectures
from finetune.vram.architectures import TINY_LLAMA_CONFIG, load_spec, lora_params, spec_from_config
from finetune.vram.catalogue import ALIASES, CATALOGUE, lookup


def meta_model(config: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))


def peft_trainable(config: dict, r: int, targets) -> int:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(meta_model(config), LoraConfig(r=r, target_modules=targets, lora_dropout=0.0))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def attention_pair(config: dict) -> list[str]:
    return ["qkv_proj", "o_proj"] if config["model_type"] == "phi3" else ["q_proj", "v_proj"]


@pytest.mark.parametrize("model_id", sorted(CATALOGUE))
def test_catalogue_counts_match_transformers_and_peft(model_id):
    config = CATALOGUE[model_id]
    spec = spec_from_config(config)
    model = meta_model(config)
    assert spec.total_params() == model.num_parameters(), "total parameters"
    linear = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    assert spec.linear_numel() == linear, "parameters in quantizable nn.Linear modules"
    assert spec.lm_head_numel() == (0 if config.get("tie_word_embeddings") else model.lm_head.weight.numel())
    assert lora_params(spec, 16, "all-linear") == peft_trainable(config, 16, "all-linear")
    pair = attention_pair(config)
    assert lora_params(spec, 16, pair) == peft_trainable(config, 16, pair)


def test_known_totals():
    # Published parameter counts (model cards / num_parameters()).
    assert load_spec("meta-llama/Llama-3.2-1B").total_params() == 1_235_814_400
    assert load_spec("Qwen/Qwen2.5-0.5B").total_params() == 494_032_768
    assert load_spec("mistralai/Mixtral-8x7B-v0.1").total_params() == 46_702_792_704
    assert lora_params(load_spec("meta-llama/Llama-3.2-1B"), 16, "all-linear") == 11_272_192


def test_aliases_and_case_insensitive_lookup():
    for alias, base in ALIASES.items():
        assert lookup(alias) == CATALOGUE[base]
    assert load_spec("qwen/qwen2.5-0.5b-instruct") == load_spec("Qwen/Qwen2.5-0.5B")


def test_tiny_llama_is_the_project_test_model():
    spec = load_spec("builtin:tiny-llama")
    assert (spec.vocab_size, spec.hidden_size, spec.num_layers, spec.num_kv_heads) == (261, 64, 2, 2)
    assert spec.total_params() == meta_model(TINY_LLAMA_CONFIG).num_parameters()


def test_local_directory_with_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CATALOGUE["HuggingFaceTB/SmolLM2-135M"]))
    assert load_spec(str(tmp_path)).total_params() == 134_515_008


def test_unsupported_model_type_is_one_line_user_error():
    with pytest.raises(UserError) as err:
        spec_from_config({"model_type": "gpt2", "n_embd": 768})
    message = str(err.value)
    assert "'gpt2'" in message and "llama" in message and "mixtral" in message and "\n" not in message


def test_unknown_id_offline_is_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(UserError, match="unknown model id 'nobody/not-a-model' and the hub is unreachable"):
        load_spec("nobody/not-a-model")
    assert time.time() - start < 20


def test_unknown_id_when_hub_download_fails(monkeypatch):
    monkeypatch.setattr(architectures, "_fetch_hub_config", lambda model, timeout_s=5.0: None)
    with pytest.raises(UserError, match="meta-llama/Llama-3.2-1B"):  # the message lists the catalogue
        load_spec("someone/else")


def test_bad_local_inputs(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_spec(str(tmp_path))
    with pytest.raises(UserError, match="no such directory"):
        load_spec("./does/not/exist")
    bad = dict(CATALOGUE["Qwen/Qwen2.5-0.5B"], num_hidden_layers=0)
    with pytest.raises(UserError, match="num_layers must be positive"):
        spec_from_config(bad)
    with pytest.raises(UserError, match="lacks or has a bad"):
        spec_from_config({"model_type": "llama", "hidden_size": 64})


def test_lora_target_errors():
    spec = load_spec("builtin:tiny-llama")
    with pytest.raises(UserError, match="match no linear layer"):
        lora_params(spec, 8, ["qkv_proj"])
    with pytest.raises(UserError, match="r must be positive"):
        lora_params(spec, 0, "all-linear")
