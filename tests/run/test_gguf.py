"""GGUF export: read the file back with gguf-py's reader and compare it with the Hugging Face model.

The tiny Llama stands in for a merged model; a tiny Qwen2 (biases, tied embeddings, no q/k
permutation) is built beside it. When llama-cpp-python is installed, llama.cpp itself loads the
f16 file and its logits are compared with transformers'.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed: pip install 'finetune[gguf]'")

from finetune.data.tokenize import DEFAULT_CHAT_TEMPLATE  # noqa: E402
from finetune.errors import UserError  # noqa: E402
from finetune.run.gguf import permute, quant_note, write_gguf, write_modelfile  # noqa: E402

QWEN_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
LLAMA_BLOCK = {
    "attn_norm": (64,),
    "attn_q": (64, 64),
    "attn_k": (32, 64),
    "attn_v": (32, 64),
    "attn_output": (64, 64),
    "ffn_norm": (64,),
    "ffn_gate": (128, 64),
    "ffn_up": (128, 64),
    "ffn_down": (64, 128),
}


@pytest.fixture(scope="module")
def llama_dir(tiny_model_path, tmp_path_factory) -> Path:
    """The tiny Llama as `finetune merge` leaves it: weights, tokenizer with its chat template."""
    from transformers import AutoTokenizer

    from finetune.data.tokenize import ensure_chat_template

    target = tmp_path_factory.mktemp("merged") / "tiny-llama"
    shutil.copytree(tiny_model_path, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    ensure_chat_template(tokenizer, None)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def qwen_dir(llama_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    target = tmp_path_factory.mktemp("merged") / "tiny-qwen2"
    config = Qwen2Config(
        vocab_size=261,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.chat_template = QWEN_TEMPLATE
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def llama_f16(llama_dir, tmp_path_factory) -> Path:
    return write_gguf(llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def hf_state(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(model_dir / "model.safetensors")


def field(reader, key: str):
    return reader.fields[key].contents()


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def values(tensor) -> np.ndarray:
    """A GGUF tensor as float32 in PyTorch's (rows, cols) layout."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return data.reshape(tuple(reversed([int(n) for n in tensor.shape])))


def test_llama_tensor_names_shapes_and_types(llama_f16):
    found = tensors(gguf.GGUFReader(llama_f16))
    expected = {"token_embd.weight": (261, 64), "output_norm.weight": (64,), "output.weight": (261, 64)}
    for block in range(2):
        expected |= {f"blk.{block}.{name}.weight": shape for name, shape in LLAMA_BLOCK.items()}
    assert {name: values(t).shape for name, t in found.items()} == expected
    for name, t in found.items():
        wanted = gguf.GGMLQuantizationType.F32 if len(t.shape) == 1 else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == wanted, name


def test_llama_metadata(llama_f16, llama_dir):
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(llama_f16)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == "tiny-llama"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    expected = {
        "context_length": 2048,
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 128,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.dimension_count": 16,
        "vocab_size": 261,
    }
    assert {key: field(reader, f"llama.{key}") for key in expected} == expected
    assert field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 261
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(261)))
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[:5] == [gguf.TokenType.CONTROL] * 5 and set(types[5:]) == {gguf.TokenType.NORMAL}
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.merges") == []  # byte-level vocabulary, but llama.cpp needs the key
    assert field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id == 2
    assert field(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id == 0
    assert field(reader, "tokenizer.chat_template") == tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE


def test_llama_f16_values_equal_the_hf_weights_after_the_rope_permutation(llama_f16, llama_dir):
    found = tensors(gguf.GGUFReader(llama_f16))
    hf = hf_state(llama_dir)
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(permute(q, 4), q)  # the permutation really moves rows
    for block in range(2):
        prefix = f"model.layers.{block}."
        pairs = {
            "attn_q": ("self_attn.q_proj", 4),
            "attn_k": ("self_attn.k_proj", 2),
            "attn_v": ("self_attn.v_proj", None),
            "attn_output": ("self_attn.o_proj", None),
            "ffn_gate": ("mlp.gate_proj", None),
            "ffn_up": ("mlp.up_proj", None),
            "ffn_down": ("mlp.down_proj", None),
            "attn_norm": ("input_layernorm", None),
            "ffn_norm": ("post_attention_layernorm", None),
        }
        for name, (hf_name, heads) in pairs.items():
            weight = hf[f"{prefix}{hf_name}.weight"]
            if heads:
                weight = permute(weight, heads)
            got = values(found[f"blk.{block}.{name}.weight"])
            want = weight.astype(np.float16).astype(np.float32) if weight.ndim == 2 else weight
            np.testing.assert_array_equal(got, want, err_msg=name)
    for name, hf_name in {"token_embd": "model.embed_tokens", "output": "lm_head", "output_norm": "model.norm"}.items():
        np.testing.assert_array_equal(
            values(found[f"{name}.weight"]), hf[f"{hf_name}.weight"].astype(np.float16).astype(np.float32)
        )


def test_llama_q8_0_is_quantized_and_close(llama_dir, tmp_path):
    out = write_gguf(llama_dir, tmp_path / "tiny-q8.gguf", "q8_0")
    reader = gguf.GGUFReader(out)
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    found = tensors(reader)
    hf = hf_state(llama_dir)
    assert found["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    for name, hf_name in {
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        "blk.1.attn_k.weight": "model.layers.1.self_attn.k_proj.weight",
        "token_embd.weight": "model.embed_tokens.weight",
        "output.weight": "lm_head.weight",
    }.items():
        assert found[name].tensor_type == gguf.GGMLQuantizationType.Q8_0, name
        want = hf[hf_name] if "attn_k" not in name else permute(hf[hf_name], 2)
        error = np.abs(values(found[name]) - want).max()
        assert error <= 1e-2 * np.abs(want).max(), name  # 8-bit blocks: error <= scale/2 = max/254 per block
    assert out.stat().st_size < 0.6 * write_gguf(llama_dir, tmp_path / "f16.gguf").stat().st_size


def test_qwen2_keeps_its_layout_biases_and_tied_embeddings(qwen_dir, tmp_path):
    reader = gguf.GGUFReader(write_gguf(qwen_dir, tmp_path / "tiny-qwen2.gguf"))
    assert field(reader, "general.architecture") == "qwen2"
    assert field(reader, "qwen2.block_count") == 2
    assert field(reader, "qwen2.attention.head_count_kv") == 2
    assert field(reader, "qwen2.context_length") == 512
    assert field(reader, "tokenizer.chat_template") == QWEN_TEMPLATE
    found = tensors(reader)
    assert "output.weight" not in found  # tied: llama.cpp reuses token_embd
    hf = hf_state(qwen_dir)
    for name in ("q", "k", "v"):  # qwen2 is not permuted: values equal the HF tensors as they are
        np.testing.assert_array_equal(
            values(found[f"blk.1.attn_{name}.bias"]), hf[f"model.layers.1.self_attn.{name}_proj.bias"]
        )
        np.testing.assert_array_equal(
            values(found[f"blk.1.attn_{name}.weight"]),
            hf[f"model.layers.1.self_attn.{name}_proj.weight"].astype(np.float16),
        )


def test_unsupported_architecture_is_a_one_line_user_error(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match=r"model_type 'gpt2'.*supported: llama, mistral, qwen2") as error:
        write_gguf(tmp_path / "gpt2", tmp_path / "out" / "x.gguf")
    assert "\n" not in str(error.value)


def test_bad_type_and_failures_leave_no_file(llama_dir, tmp_path):
    with pytest.raises(UserError, match="q4_k"):
        write_gguf(llama_dir, tmp_path / "x.gguf", "q4_k")
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    (broken / "model.safetensors").unlink()
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match="safetensors"):
        write_gguf(broken, out_dir / "x.gguf")
    assert list(out_dir.iterdir()) == []  # the temporary file is gone too


def test_modelfile_for_the_default_template(llama_f16, tmp_path):
    text = write_modelfile(llama_f16, DEFAULT_CHAT_TEMPLATE, tmp_path / "Modelfile").read_text()
    assert text.startswith("FROM ./tiny-llama.gguf\n")
    assert 'PARAMETER stop "<|end_of_text|>"' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # The same text the Jinja template renders, markers for markers (BOS written by the template,
    # since this GGUF does not ask llama.cpp to add it).
    assert template.startswith("<|begin_of_text|>{{ range .Messages }}")
    assert '{{ else if eq .Role "user" }}### User:\n{{ .Content }}\n\n' in template
    assert "### Assistant:\n{{ .Content }}<|end_of_text|>{{ end }}" in template
    assert template.endswith("{{ end }}### Assistant:\n")


def test_modelfile_for_a_model_template_defers_to_the_gguf(llama_f16, tmp_path):
    text = write_modelfile(llama_f16, QWEN_TEMPLATE, tmp_path / "Modelfile").read_text()
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "")
    assert "chat template embedded in the GGUF" in text


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_llama_cpp_logits_match_transformers(which, llama_f16, llama_dir, qwen_dir, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it compiles llama.cpp)")
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = llama_dir if which == "llama" else qwen_dir
    path = llama_f16 if which == "llama" else write_gguf(qwen_dir, tmp_path / "qwen2.gguf")
    ids = [1, *range(40, 70), 7, 99, 260, 5]
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():  # the GGUF holds fp16 weights: round the reference the same way
        for p in model.parameters():
            p.copy_(p.half().float())
        want = model(torch.tensor([ids])).logits[0].numpy()
    assert got.shape == want.shape
    # llama.cpp multiplies f16 weights with f16-rounded activations on the CPU; measured 5e-3 on logits
    # up to 3.4 for the tiny Llama, while a missing q/k permutation gives 3.5.
    assert np.abs(got - want).max() < 2e-2
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory) -> Path:
    """A byte-fallback BPE tokenizer laid out like a converted SentencePiece one (Mistral v0.x, Llama 2):
    <unk> <s> </s>, the 256 byte tokens, then the pieces in merge order."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    def metaspace(tokenizer):
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        return tokenizer

    text = (Path(__file__).resolve().parents[2] / "data" / "finance_qa.jsonl").read_text(encoding="utf-8")[:20000]
    trained = metaspace(Tokenizer(models.BPE()))
    trained.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))])}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    backend = metaspace(
        Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    target = tmp_path_factory.mktemp("merged") / "tiny-spm"
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_sentencepiece_style_tokenizer_is_written_as_llama_spm(spm_dir, tmp_path):
    from transformers import AutoTokenizer

    path = write_gguf(spm_dir, tmp_path / "spm.gguf")
    reader = gguf.GGUFReader(path)
    assert field(reader, "tokenizer.ggml.model") == "llama"
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and set(types[3:259]) == {gguf.TokenType.BYTE}
    scores = field(reader, "tokenizer.ggml.scores")
    assert all(
        a > b for a, b in zip(scores[259:], scores[260:], strict=False)
    )  # earlier merges win, as in SentencePiece

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it compiles llama.cpp)")
    tokenizer = AutoTokenizer.from_pretrained(spm_dir)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    # (Text starting with spaces differs: llama.cpp always adds the dummy prefix, HF's Metaspace
    # "first" does not when the text already starts with a space. Same for llama.cpp's own converter.)
    pieces = []
    for text in [
        "What is the interest rate on a savings account?",
        "EBITDA margin 12.5% in Q3\nnext line",
        "double  spaces, ünïcödé 日本 and an emoji 😀 fall back to bytes",
    ]:
        pieces.append(
            (
                llm.tokenize(text.encode(), add_bos=False, special=False),
                tokenizer.encode(text, add_special_tokens=False),
            )
        )
    llm.close()
    for ours, theirs in pieces:
        assert ours == theirs


def test_k_quants_need_llama_cpps_quantizer_or_say_so(llama_dir, tmp_path):
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"runs llama.cpp's quantizer: pip install 'finetune\[gguf-quant\]'"):
            write_gguf(llama_dir, tmp_path / "tiny-q4_k_m.gguf", "q4_k_m")
        assert not list(tmp_path.iterdir()), "nothing half-written"
        return
    pytest.skip("llama-cpp-python is installed: test_k_quants_are_written_by_llama_cpps_quantizer covers it")


@pytest.mark.parametrize("kind", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quants_are_written_by_llama_cpps_quantizer(kind, llama_f16, llama_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it compiles llama.cpp)")
    path = write_gguf(llama_dir, tmp_path / f"tiny-{kind}.gguf", kind)
    reader = gguf.GGUFReader(path)
    expected = {
        "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
        "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M,
        "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
    }[kind]
    assert field(reader, "general.file_type") == expected
    assert path.stat().st_size < llama_f16.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "the f16 intermediate is gone"
    # Rows of 64 and 128 do not split into 256-blocks: llama.cpp keeps every matrix in a legacy type,
    # and finetune says so in one line.
    types = {t.tensor_type.name.lower() for t in reader.tensors if len(t.shape) == 2}
    assert types <= {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"}, types
    note = quant_note(path, kind)
    assert note.startswith("16 of 16 weight matrices have rows of 64, 128 values") and "block of 256" in note
    # The file works: llama.cpp evaluates it close to the f16 file (f16 logits: std 0.8). Measured mean
    # |diff| 0.11 and top-1 agreement 86% for q4_k_m; without the q/k permutation 0.46 and 40%.
    ids = [1, *range(40, 70), 7, 99, 260, 5]
    want, got = llama_cpp_logits(llama_f16, ids, tmp_path), llama_cpp_logits(path, ids, tmp_path)
    assert np.abs(got - want).mean() < 0.25
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.6


# In a subprocess: on a CPU with AMX, ggml's AMX matmul (the repacked weights llama.cpp makes for q8_0 and
# the k-quant types) crashes llama-cpp-python 0.3.36 with SIGSEGV, whatever the model's shape
# (ggml-org/llama.cpp#20824; docs/gguf.md). So the weights are loaded unrepacked, as llama.cpp's
# --no-repack does, and a crash fails the test instead of ending the session.
LOGITS = """
import sys, numpy as np, llama_cpp, llama_cpp.llama
default = llama_cpp.llama.llama_cpp.llama_model_default_params
def unrepacked():
    params = default()
    params.use_extra_bufts = False
    return params
llama_cpp.llama.llama_cpp.llama_model_default_params = unrepacked
llm = llama_cpp.Llama(model_path=sys.argv[1], logits_all=True, n_ctx=64, verbose=False)
ids = [int(i) for i in sys.argv[3].split(",")]
llm.eval(ids)
np.save(sys.argv[2], np.array(llm.scores[: len(ids)], dtype=np.float32))
llm.close()
"""


def llama_cpp_logits(path: Path, ids: list[int], tmp_path: Path) -> np.ndarray:
    import subprocess
    import sys

    out = tmp_path / f"{path.name}.npy"
    done = subprocess.run(
        [sys.executable, "-c", LOGITS, str(path), str(out), ",".join(map(str, ids))], capture_output=True, text=True
    )
    assert done.returncode == 0, f"llama.cpp exited {done.returncode} on {path.name}: {done.stderr[-500:]}"
    return np.load(out)


def test_quant_note_names_the_matrices_whose_rows_do_not_fit_the_types_blocks(llama_f16, tmp_path):
    # the tiny model's rows (64, 128 values) split into q8_0's blocks of 32, not into a k-quant's 256
    assert quant_note(llama_f16, "f16") is None and quant_note(llama_f16, "q8_0") is None
    assert quant_note(llama_f16, "q6_k").startswith("16 of 16 weight matrices have rows of 64, 128 values")
    wide = tmp_path / "wide.gguf"
    writer = gguf.GGUFWriter(wide, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((8, 512), np.float32))  # rows of 512: fit
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 96), np.float32))  # rows of 96: 3 blocks of 32
    writer.add_tensor("blk.0.attn_norm.weight", np.zeros(96, np.float32))  # 1-D: never quantized
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert quant_note(wide, "q8_0") is None
    assert quant_note(wide, "q4_k_m") == (
        "1 of 2 weight matrices have rows of 96 values, not a multiple of q4_k_m's block of 256: "
        "they are stored as f32, so the file is larger than a full q4_k_m"
    )


def test_the_cli_offers_exactly_the_gguf_types_the_writer_knows():
    from finetune.cli.run import GGUF_TYPES  # kept in the CLI so `--help` does not import numpy
    from finetune.run.gguf import OUTTYPES

    assert GGUF_TYPES == OUTTYPES
