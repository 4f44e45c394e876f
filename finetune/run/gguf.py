"""A merged Hugging Face model directory -> one GGUF file for llama.cpp and Ollama, plus a Modelfile.

Follows llama.cpp's convert_hf_to_gguf.py (LlamaModel, Qwen2Model, TextModel.get_vocab_base), cut
down to the Llama family: llama and mistral (GGUF arch "llama") and qwen2 (arch "qwen2": the same
layout plus q/k/v biases). Anything else is refused with a UserError rather than written wrong.
Tensors are streamed (tensor infos first, then the data one tensor at a time), so memory stays
at about one tensor whatever the model size.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data.tokenize import DEFAULT_CHAT_TEMPLATE
from finetune.errors import UserError
from finetune.paths import umask_mode

try:
    import gguf  # llama.cpp's own gguf-py; an optional dependency: pip install 'finetune[gguf]'
except ImportError:  # pragma: no cover - exercised only without the extra
    gguf = None

ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # HF model_type -> GGUF arch
# k-quants (what Ollama users run) come from llama.cpp's own quantizer, llama_model_quantize, through
# llama-cpp-python (pip install 'finetune[gguf-quant]'), applied to the f16 GGUF written here.
K_QUANTS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
OUTTYPES = ("f16", "q8_0", *K_QUANTS)

# tokenizer.json's pre-tokenizer regex -> llama.cpp's tokenizer.ggml.pre (see llama-vocab.cpp).
# convert_hf_to_gguf.py recognises a pre-tokenizer by hashing its output on a test text; the regex
# is what that hash stands for, so we match it directly (no hash table to keep up to date).
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {_LLAMA3: "llama-bpe", _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"): "qwen2"}


def write_gguf(model_dir: Path, out_file: Path, outtype: str = "f16") -> Path:
    """Convert a merged model directory (safetensors + tokenizer) to `out_file`; returns its path.

    outtype "f16" keeps 2-D weights in float16, "q8_0" quantizes them to 8 bits (blocks of 32);
    1-D tensors (norms, biases) stay float32, as llama.cpp's converter does. A k-quant (q4_k_m, q5_k_m,
    q6_k) is llama.cpp's quantizer run on the f16 file.
    """
    from transformers import AutoConfig

    if gguf is None:
        raise UserError("--gguf needs the gguf package: pip install 'finetune[gguf]'")
    model_dir, out_file = Path(model_dir), Path(out_file)
    if outtype not in OUTTYPES:
        raise UserError(f"--gguf-type {outtype!r} is not supported; choose one of {', '.join(OUTTYPES)}")
    if outtype in K_QUANTS:
        return _k_quant(model_dir, out_file, outtype)
    config = AutoConfig.from_pretrained(model_dir)
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise UserError(
            f"GGUF export does not support model_type {config.model_type!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_file.name}.", suffix=".tmp", dir=out_file.parent)
    os.close(fd)
    writer = _writer(tmp_name, arch)
    try:
        _add_hparams(writer, config, out_file.stem, outtype)
        _add_tokenizer(writer, model_dir, config.vocab_size)
        tensors = _plan_tensors(model_dir, config, arch, outtype)
        for name, shape, qtype, _ in tensors:
            nbytes = math.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype))
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, qtype, load in tensors:
            writer.write_tensor_data(gguf.quants.quantize(load(), qtype))
        writer.close()
        os.chmod(tmp_name, umask_mode(directory=False))  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp_name, out_file)  # atomic: a crash never leaves half a GGUF under the real name
    except BaseException:
        writer.close()
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_file


def _k_quant(model_dir: Path, out_file: Path, outtype: str) -> Path:
    """The f16 GGUF, then llama.cpp's llama_model_quantize into `out_file` (atomically, like the rest)."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            f"--gguf-type {outtype} runs llama.cpp's quantizer: pip install 'finetune[gguf-quant]' "
            "(llama-cpp-python; it compiles llama.cpp, a few minutes), or use --gguf-type f16 or q8_0"
        ) from None
    f16 = out_file.with_name(f".{out_file.name}.f16.tmp")
    quantized = out_file.with_name(f".{out_file.name}.tmp")
    try:
        write_gguf(model_dir, f16, "f16")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, K_QUANTS[outtype])
        params.nthread = os.cpu_count() or 1
        with _llama_log() as log:  # a line per tensor and per fallback otherwise (quant_note sums them up)
            code = llama_cpp.llama_model_quantize(str(f16).encode(), str(quantized).encode(), params)
        if code != 0:
            raise RuntimeError(f"llama.cpp's quantizer failed with code {code} for {outtype}: {''.join(log[-3:])}")
        os.chmod(quantized, umask_mode(directory=False))
        os.replace(quantized, out_file)
    finally:
        f16.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    return out_file


@contextlib.contextmanager
def _llama_log():
    """Collect llama.cpp's log lines instead of printing them, then give llama-cpp-python its logger back.
    (Its logger's level cannot quiet them: it maps this llama.cpp's log levels one off, errors to debug.)"""
    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        own = getattr(getattr(llama_cpp, "_logger", None), "llama_log_callback", None)
        llama_cpp.llama_log_set(own, ctypes.c_void_p(0))  # None: llama.cpp's default, stderr


def quant_note(gguf_file: Path, outtype: str) -> str | None:
    """One line when some weight matrices could not take `outtype`: their rows (ne0) do not split into its
    blocks (256 for k-quants, 32 for q8_0), so llama.cpp kept them in another type (q5_0/q5_1/q8_0 for a
    k-quant, f16 for q8_0). The file is valid; it is only larger than the type's name promises. Small
    models hit it (Qwen2.5-0.5B's hidden 896, SmolLM2's 576, the tiny model's 64); None when all fit."""
    block = 256 if outtype in K_QUANTS else 32 if outtype == "q8_0" else None
    if block is None:
        return None
    matrices = [t for t in gguf.GGUFReader(gguf_file).tensors if len(t.shape) == 2]
    odd = [t for t in matrices if int(t.shape[0]) % block]
    if not odd:
        return None
    rows = ", ".join(str(n) for n in sorted({int(t.shape[0]) for t in odd}))
    kept = ", ".join(sorted({t.tensor_type.name.lower() for t in odd}))
    return (
        f"{len(odd)} of {len(matrices)} weight matrices have rows of {rows} values, not a multiple of {outtype}'s "
        f"block of {block}: they are stored as {kept}, so the file is larger than a full {outtype}"
    )


def write_modelfile(gguf_file: Path, chat_template: str | None, out: Path) -> Path:
    """An Ollama Modelfile beside the GGUF: FROM, the chat template, and stop tokens read from the GGUF."""

    meta = _read_tokenizer_meta(gguf_file)
    lines = [f"FROM ./{gguf_file.name}", ""]
    if chat_template == DEFAULT_CHAT_TEMPLATE:
        # The same text as the project's default Jinja template, in Ollama's Go template syntax.
        # BOS: Ollama adds it itself when the GGUF says add_bos_token; otherwise the template writes it.
        bos = "" if meta["add_bos"] or meta["bos"] is None else meta["bos"]
        eos = meta["eos"] or ""
        template = (
            f'{bos}{{{{ range .Messages }}}}{{{{ if eq .Role "system" }}}}{{{{ .Content }}}}\n\n'
            '{{ else if eq .Role "user" }}### User:\n{{ .Content }}\n\n'
            f"{{{{ else }}}}### Assistant:\n{{{{ .Content }}}}{eos}{{{{ end }}}}{{{{ end }}}}### Assistant:\n"
        )
        lines += [f'TEMPLATE """{template}"""', ""]
    else:
        lines += [
            "# No TEMPLATE here: Ollama reads the chat template embedded in the GGUF",
            "# (tokenizer.chat_template) and maps well-known templates to its own.",
            "",
        ]
    for stop in dict.fromkeys(t for t in (meta["eos"], meta["eot"]) if t):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    out = Path(out)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# --- internals ----------------------------------------------------------------------------------


def _writer(path: str, arch: str) -> Any:
    class Writer(gguf.GGUFWriter):
        """gguf-py refuses empty arrays, but the format allows them and llama.cpp insists on the
        merges key for a BPE vocabulary even when it has no merges (a byte-level-only vocabulary)."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch)


def _add_hparams(writer: Any, config: Any, name: str, outtype: str) -> None:
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":  # Qwen2.5 long-context configs (convert_hf_to_gguf Qwen2Model)
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind not in ("default", "llama3"):  # llama3 goes in a rope_freqs tensor instead
        raise UserError(f"GGUF export does not support rope scaling {kind!r} (supported: linear, yarn, llama3)")
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope(config: Any) -> dict:
    """transformers 5 keeps rope_theta and scaling in config.rope_parameters; older ones in two fields."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def _add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """Token list, types, merges or scores, special ids and chat template (TextModel.get_vocab_base)."""
    from transformers import AutoTokenizer

    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UserError(f"{model_dir}: no tokenizer.json; GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export supports BPE tokenizers only, not {model.get('type')!r}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"{model_dir}: the tokenizer has ids beyond the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder
    by_id = {i: token for token, i in vocab.items()}
    # byte_fallback BPE is SentencePiece converted to tokenizer.json (Llama 2, Mistral v0.x): llama.cpp
    # reads it as "llama" (SPM), which ranks merges by score; HF orders that vocabulary by SPM score,
    # so -id reproduces the ranking (convert_hf_to_gguf's tokenizer.json-only path writes -1000 for all).
    spm = bool(model.get("byte_fallback"))
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # the embedding matrix is padded beyond the tokenizer (Qwen2.5)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            byte = spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token)
            types.append(gguf.TokenType.BYTE if byte else gguf.TokenType.NORMAL)
        scores.append(-float(i) if types[-1] == gguf.TokenType.NORMAL else 0.0)
    if spm:
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(scores)
        metaspace = [p for p in _flatten(spec.get("pre_tokenizer")) if p.get("type") == "Metaspace"]
        writer.add_add_space_prefix(not metaspace or metaspace[0].get("prepend_scheme", "always") != "never")
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=bool(model.get("merges")) and not spm, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/unk/pad ids, add_bos, chat template
    jinja = model_dir / "chat_template.jinja"  # where transformers 5 saves it; gguf 0.17 reads only the json
    if special.chat_template is None and jinja.is_file():
        writer.add_chat_template(jinja.read_text(encoding="utf-8"))
    if not spm and not special.merges:
        writer.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)


def _flatten(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return [q for p in pre.get("pretokenizers", []) for q in _flatten(p)] if pre.get("type") == "Sequence" else [pre]


def _pre_tokenizer(spec: dict) -> str:
    parts = _flatten(spec.get("pre_tokenizer"))
    regexes = [p["pattern"]["Regex"] for p in parts if p.get("type") == "Split" and "Regex" in p.get("pattern", {})]
    kinds = [p.get("type") for p in parts]
    byte_level_regex = any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts)
    if len(regexes) == 1 and regexes[0] in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[regexes[0]]
    if not regexes and kinds == ["Digits", "ByteLevel"] and byte_level_regex:
        return "smollm"  # GPT-2 regex after splitting digits one by one (SmolLM2)
    if not regexes and kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    if not spec.get("model", {}).get("merges"):
        return "default"  # no merges: every byte is its own token however the text is split
    raise UserError(
        "GGUF export does not recognise this tokenizer's pre-tokenizer; "
        "convert with llama.cpp's convert_hf_to_gguf.py instead"
    )


def _plan_tensors(model_dir: Path, config: Any, arch: str, outtype: str) -> list[tuple]:
    """(gguf name, shape, type, loader) for every tensor, in file order; loaders read lazily."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no .safetensors files; expected a merged model directory")
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.TensorNameMap(model_arch, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    plan = []
    for file in files:
        with safe_open(file, framework="pt") as f:
            for hf_name in f.keys():  # noqa: SIM118 - safetensors' safe_open is not iterable
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed by llama.cpp
                if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: llama.cpp falls back to token_embd when output.weight is absent
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise UserError(f"GGUF export: no GGUF name for tensor {hf_name!r} of a {config.model_type} model")
                shape = tuple(f.get_slice(hf_name).get_shape())
                # llama.cpp's "llama" RoPE pairs adjacent dims, HF's pairs halves: permute q and k rows
                # (convert_hf_to_gguf LlamaModel.permute). qwen2 uses the NeoX RoPE in llama.cpp: no permute.
                heads = None
                if arch == "llama" and re.search(r"\.(q|k)_proj\.(weight|bias)$", hf_name):
                    heads = n_head if ".q_proj." in hf_name else n_kv
                plan.append((name, shape, _tensor_type(shape, outtype), _loader(file, hf_name, heads)))
    rope = _rope(config)
    if arch == "llama" and rope.get("rope_type") == "llama3":
        factors = _llama3_rope_factors(rope, getattr(config, "head_dim", None) or config.hidden_size // n_head)
        plan.append(("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32, lambda: factors))
    return plan


def _tensor_type(shape: tuple, outtype: str) -> Any:
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32  # norms and biases: tiny, and llama.cpp computes with them in f32
    if outtype == "q8_0" and shape[-1] % 32 == 0:
        return gguf.GGMLQuantizationType.Q8_0
    # convert_hf_to_gguf also falls back to f16 when rows don't split into 32-blocks
    return gguf.GGMLQuantizationType.F16


def _loader(file: Path, hf_name: str, heads: int | None):
    def load() -> np.ndarray:
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            weight = f.get_tensor(hf_name).float().numpy()  # via torch: numpy has no bfloat16
        if heads is not None:
            weight = permute(weight, heads)
        return weight

    return load


def permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: within each head, interleave the two rotary halves."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1+ frequency-dependent RoPE scaling as per-dimension factors (LlamaModel.generate_extra_tensors)."""
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _read_tokenizer_meta(gguf_file: Path) -> dict:
    reader = gguf.GGUFReader(gguf_file)
    tokens = reader.fields[gguf.Keys.Tokenizer.LIST].contents()

    def token(key: str) -> str | None:
        field = reader.fields.get(key)
        return tokens[field.contents()] if field is not None else None

    add_bos = reader.fields.get(gguf.Keys.Tokenizer.ADD_BOS)
    return {
        "bos": token(gguf.Keys.Tokenizer.BOS_ID),
        "eos": token(gguf.Keys.Tokenizer.EOS_ID),
        "eot": token(gguf.Keys.Tokenizer.EOT_ID),
        "add_bos": bool(add_bos and add_bos.contents()),
    }
