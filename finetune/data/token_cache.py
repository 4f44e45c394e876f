"""Tokenised splits cached on disk, so a rerun, a resume or a sweep over training settings skips tokenising.

    columns, report = cached_encode(examples, tokenizer, max_length, completion_only_loss, data_hash, truncation)

One Parquet file per split under $FINETUNE_HOME/token-cache/<key>.parquet, with the EncodingReport as
JSON in the file's metadata (one file, written to a temporary name and renamed: a crash or a
concurrent run never leaves half an entry). The key is a sha256 over everything the tokens depend
on: the data hash, the split's examples, the tokenizer (its full backend definition and special
tokens), the chat template, max_length, completion_only_loss, the code of tokenize.py and the
library versions. Any change gives a new key; an unreadable file counts as a miss and is rewritten.
After each write the least recently used entries are deleted until the folder is under
$FINETUNE_TOKEN_CACHE_GB (default 5; a hit counts as a use). `rm -r $FINETUNE_HOME/token-cache` is
always safe.

Large splits are tokenised by several forked processes (PARALLEL_MIN_ROWS below, measured).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune.data import preference, tokenize, truncate
from finetune.data.preference import encode_pairs
from finetune.data.rows import Example
from finetune.data.tokenize import EncodingReport, encode_split
from finetune.errors import UserError
from finetune.paths import cache_home

FORMAT_VERSION = "2"  # bump when the stored layout changes
REPORT_KEY = b"finetune.encoding_report"

# Below this many examples one process is as fast: forking workers and sending the token lists back
# (pickled, ~30 MB per 20,000 rows) eats the gain. Measured on 2 idle cores with the finance rows
# (serial ~5,000 rows/s): 2 workers give 1.0x at 500 rows, 1.26x at 1,000, 1.42x at 2,000 and
# 1.61x at 20,000; on cores busy with other work they are ~15% slower instead. See docs/design.md.
PARALLEL_MIN_ROWS = 2000
MAX_WORKERS = 8
DEFAULT_MAX_GB = 5.0  # ~4 GB holds 1M rows of 1,000 tokens; few users tokenise more than that and keep it


def cache_dir_default() -> Path:

    return cache_home() / "token-cache"


def cached_encode(
    examples: list[Example],
    tokenizer: Any,
    max_length: int,
    completion_only_loss: bool,
    data_hash: str,
    truncation: str = "prompt",
    cache_dir: Path | str | None = None,
) -> tuple[dict[str, list[list[int]]], EncodingReport]:
    """encode_split (encode_pairs for preference pairs), read from the cache when the same split was
    tokenised the same way before."""
    directory = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    max_bytes = max_cache_bytes()  # a bad setting fails before the work, not after it
    key = cache_key(examples, tokenizer, max_length, completion_only_loss, data_hash, truncation)
    path = directory / f"{key}.parquet"
    hit = read_entry(path)
    if hit is not None:
        _touch(path)  # recently used: pruned last
        return hit
    columns, report = encode_parallel(examples, tokenizer, max_length, completion_only_loss, truncation=truncation)
    try:
        write_entry(path, columns, report)
        prune(directory, max_bytes, keep=path)
    except OSError:  # a read-only or full disk costs the cache, not the run
        pass
    return columns, report


def prune(directory: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used entries until the folder fits max_bytes; returns what was deleted."""
    entries = []
    for entry in directory.glob("[!.]*.parquet"):  # not the .tmp- files of a write in progress
        try:
            stat = entry.stat()
        except FileNotFoundError:  # pruned by a concurrent run
            continue
        entries.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    deleted = []
    for _, size, entry in sorted(entries, key=lambda e: e[0]):  # oldest use first
        if total <= max_bytes:
            break
        if entry == keep:  # the entry this run just wrote stays, however large
            continue
        entry.unlink(missing_ok=True)
        total -= size
        deleted.append(entry)
    return deleted


def max_cache_bytes() -> int:
    value = os.environ.get("FINETUNE_TOKEN_CACHE_GB", str(DEFAULT_MAX_GB))
    try:
        gigabytes = float(value)
    except ValueError:
        gigabytes = math.nan
    if not (math.isfinite(gigabytes) and gigabytes >= 0):
        raise UserError(f"FINETUNE_TOKEN_CACHE_GB={value}: not a number of gigabytes (e.g. 5)")
    return int(gigabytes * 1e9)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # read-only cache: still usable, just not reordered
        os.utime(path)


# --------------------------------------------------------------------------------------------
# The key


def cache_key(
    examples: list[Example],
    tokenizer: Any,
    max_length: int,
    completion_only_loss: bool,
    data_hash: str,
    truncation: str = "prompt",
) -> str:
    import tokenizers
    import transformers

    h = hashlib.sha256()
    for part in (
        f"format {FORMAT_VERSION}",
        f"data {data_hash}",
        f"max_length {max_length}",
        f"completion_only_loss {completion_only_loss}",
        f"truncation {truncation}",
        f"tokenizer {tokenizer_fingerprint(tokenizer)}",
        f"template {json.dumps(getattr(tokenizer, 'chat_template', None), sort_keys=True)}",
        # a fix in the masking code must not be hidden by old cached labels
        *(
            f"code {hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()}"
            for m in (tokenize, truncate, preference)
        ),
        f"versions {transformers.__version__} {tokenizers.__version__}",
    ):
        h.update(part.encode() + b"\0")
    # The split's own rows: the same file split differently is a different entry.
    for example in examples:
        h.update(json.dumps([example.messages, example.text, example.rejected], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides the ids: the backend definition (vocab, merges, normalizer, ...) and special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # transient call settings, not part of the tokenizer: they change after a padded call
        definition.pop("truncation", None)
        definition.pop("padding", None)
        h.update(json.dumps(definition, sort_keys=True).encode())
    else:  # a slow (Python) tokenizer: its vocabulary is what we can see
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    h.update(json.dumps([specials, sorted(map(str, tokenizer.all_special_tokens))], sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Encoding, in parallel for large splits

_shared: dict[str, Any] = {}  # set before forking: workers inherit it instead of unpickling a tokenizer


def encode_parallel(
    examples: list[Example],
    tokenizer: Any,
    max_length: int,
    completion_only_loss: bool,
    workers: int | None = None,
    truncation: str = "prompt",
) -> tuple[dict[str, list[list[int]]], EncodingReport]:
    """encode_split over contiguous chunks in forked workers; the same result as one process, in order."""
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS) if len(examples) >= PARALLEL_MIN_ROWS else 1
    import multiprocessing

    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return encode_any(examples, tokenizer, max_length, completion_only_loss, truncation)
    _shared.update(
        examples=examples,
        tokenizer=tokenizer,
        max_length=max_length,
        completion_only_loss=completion_only_loss,
        truncation=truncation,
    )
    bounds = [len(examples) * i // workers for i in range(workers + 1)]
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_encode_chunk, zip(bounds, bounds[1:], strict=False)))
    finally:
        _shared.clear()
    columns: dict[str, list[list[int]]] = {name: [] for name in parts[0][0]}
    report = EncodingReport()
    for part_columns, part_report in parts:
        for name in columns:
            columns[name] += part_columns[name]
        for name, value in asdict(part_report).items():
            setattr(report, name, getattr(report, name) + value)  # counts add up, notes concatenate
    return columns, report


def _encode_chunk(bounds: tuple[int, int]):
    start, end = bounds
    s = _shared
    return encode_any(
        s["examples"][start:end], s["tokenizer"], s["max_length"], s["completion_only_loss"], s["truncation"]
    )


def encode_any(
    examples: list[Example], tokenizer: Any, max_length: int, completion_only_loss: bool, truncation: str
) -> tuple[dict[str, list[list[int]]], EncodingReport]:
    """Preference pairs (prompt/chosen/rejected ids) or everything else (input_ids/labels)."""
    if examples and examples[0].rejected is not None:
        return encode_pairs(examples, tokenizer, max_length, truncation)
    return encode_split(examples, tokenizer, max_length, completion_only_loss, truncation)


# --------------------------------------------------------------------------------------------
# Storage


def read_entry(path: Path) -> tuple[dict[str, list[list[int]]], EncodingReport] | None:
    """The cached entry, or None when it is missing or unreadable (then it is rewritten)."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        report = EncodingReport(**json.loads(table.schema.metadata[REPORT_KEY]))
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    except Exception:  # truncated, corrupt, or another layout: recompute
        return None
    return columns, report


def write_entry(path: Path, columns: dict[str, list[list[int]]], report: EncodingReport) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    ids = pa.list_(pa.int32())  # vocabularies fit in int32; labels use -100 for "no loss"
    table = pa.table({name: pa.array(values, type=ids) for name, values in columns.items()})
    table = table.replace_schema_metadata({REPORT_KEY: json.dumps(asdict(report)).encode()})
    fd, staging = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, staging)
        os.replace(staging, path)  # atomic: readers see the old entry or the whole new one
    finally:
        Path(staging).unlink(missing_ok=True)
