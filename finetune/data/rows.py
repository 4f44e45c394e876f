"""One row of the user's data -> an Example: the format's fields checked, never str()-ed into text.

Formats (detected from the columns, or set with data.format):
  chat               {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
  alpaca             {"instruction": ..., "input": ..., "output": ...}
  prompt_completion  {"prompt": ..., "completion": ...}
  preference         {"prompt": ..., "chosen": ..., "rejected": ...}   (train.objective dpo / orpo)
  classification     {"text": ..., "label": ...}        (columns configurable)
  text               {"text": ...}                       (trained on every token)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from finetune.config import ClassificationSection, DataSection
from finetune.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One training example: a conversation (trained on the assistant turns) or raw text."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    label: str | None = None  # classification: the label name, also the last assistant turn
    # preference: `messages` ends with the chosen answer; this is the rejected one, for the same prompt
    rejected: str | None = None
    source: str = ""  # "file:line", for error messages


def detect_format(rows: list[tuple[str, dict[str, Any]]], classification: ClassificationSection) -> str:
    """The format of (location, row) pairs, from the columns of the first row that has a value; errors name it."""
    location, first = next(((loc, row) for loc, row in rows if not all(map(blank, row.values()))), rows[0])
    try:
        return _format_of(set(first), classification)
    except UserError as err:
        raise UserError(f"{location}: {err}") from None


def blank(value: Any) -> bool:
    """No value: null, whitespace, an empty list or mapping (a row of only these is an empty row)."""
    return value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})


def _format_of(columns: set[str], classification: ClassificationSection) -> str:
    if "messages" in columns:
        return "chat"
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if {"prompt", "chosen", "rejected"} <= columns:
        return "preference"
    if {"chosen", "rejected"} <= columns:
        raise UserError(
            "rows have chosen and rejected but no prompt column; preference rows are prompt + chosen + rejected"
        )
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if {classification.text_column, classification.label_column} <= columns:
        return "classification"
    if "text" in columns:
        return "text"
    raise UserError(
        f"cannot detect the data format from columns {sorted(columns)}; expected messages, instruction+output, "
        "prompt+completion, prompt+chosen+rejected, text+label or text (or set data.format)"
    )


def to_example(location: str, row: dict[str, Any], fmt: str, data: DataSection, labels: dict[str, str]) -> Example:
    """Turn one row into an Example, or raise UserError naming the row and what is wrong."""

    def need(key: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            found = ", ".join(sorted(row)) or "none"
            raise UserError(f"{location}: missing or empty '{key}' for format {fmt} (columns found: {found})")
        return _string(location, key, value)

    if fmt == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{location}: 'messages' must be a non-empty list of {{role, content}} objects")
        return Example(messages=_check_chat(location, messages, data.system_prompt), source=location)
    if fmt == "alpaca":
        prompt = need("instruction")
        extra = row.get("input")  # optional: missing, null or blank adds nothing
        if extra is not None and not isinstance(extra, str):
            raise UserError(
                f"{location}: input must be a string or null (got {_kind(extra)}); store it as text in the data file"
            )
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        return _qa(prompt, need("output"), data, location)
    if fmt == "prompt_completion":
        return _qa(need("prompt"), need("completion"), data, location)
    if fmt == "classification":
        spec = data.classification
        value = row.get(spec.label_column)
        if value is None or (isinstance(value, str) and not value.strip()):
            need(spec.label_column)  # raises: missing or empty
        raw = _label_key(value)
        if raw is None:
            raise UserError(
                f"{location}: {spec.label_column} must be a label name or a number (got {_kind(value)}); "
                "fix the row or data.classification.label_column"
            )
        if raw not in labels:
            known = ", ".join(sorted(labels))
            raise UserError(
                f"{location}: label '{raw}' is not in the label set ({known}); fix the row or data.classification.labels"
            )
        prompt = classification_prompt(spec, list(dict.fromkeys(labels.values())), need(spec.text_column))
        example = _qa(prompt, labels[raw], data, location)
        example.label = labels[raw]
        return example
    if fmt == "text":
        return Example(text=need("text"), source=location)
    if fmt == "preference":
        return _preference(location, row, data)
    raise UserError(f"data.format: unknown format '{fmt}'")


def _preference(location: str, row: dict[str, Any], data: DataSection) -> Example:
    """prompt (text, or system/user turns ending with a user turn) + chosen and rejected answers (text, or
    one assistant message). The pair must differ: identical answers carry no preference."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        if not prompt:
            raise UserError(f"{location}: 'prompt' is an empty list; give the prompt as text or user/system turns")
        messages = _check_chat(location, [*prompt, {"role": "assistant", "content": "x"}], data.system_prompt)[:-1]
        if not messages[-1]["content"].strip():
            raise UserError(f"{location}: the prompt's last user turn is empty; write the question")
    else:
        text = _side(location, "prompt", prompt)
        messages = [{"role": "user", "content": text}]
        if data.system_prompt:
            messages.insert(0, {"role": "system", "content": data.system_prompt})
    chosen, rejected = _side(location, "chosen", row.get("chosen")), _side(location, "rejected", row.get("rejected"))
    if chosen.strip() == rejected.strip():
        raise UserError(
            f"{location}: chosen and rejected are the same answer, so the pair teaches no preference; "
            "fix or remove the row"
        )
    return Example(messages=[*messages, {"role": "assistant", "content": chosen}], rejected=rejected, source=location)


def _side(location: str, field: str, value: Any) -> str:
    """The text of a prompt or an answer: a string, or (chosen/rejected) a list of one assistant message."""
    if isinstance(value, list) and field != "prompt":
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise UserError(
                f'{location}: {field} must be text or one assistant message [{{"role": "assistant", "content": ...}}]'
            )
        value = _content(location, 0, value[0].get("content"))
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{location}: missing or empty '{field}'; a preference row needs prompt, chosen and rejected")
    return _string(location, field, value)


def _kind(value: Any) -> str:
    """How an error names a value's type: null, NaN, or the (JSON-ish) type name."""
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return type(value).__name__


def _string(location: str, field: str, value: Any) -> str:
    """The value itself when it is a string; anything else is refused, never turned into text with str()."""
    if not isinstance(value, str):
        raise UserError(f"{location}: {field} must be a string (got {_kind(value)}); store it as text in the data file")
    return value


def _label_key(value: Any) -> str | None:
    """A raw label as the text its label set is keyed by: a string, or an integer, bool or finite float
    (written in its usual decimal form). None for a missing, blank or unusable value (a list, an object, NaN)."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return None


def _qa(prompt: str, answer: str, data: DataSection, location: str) -> Example:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if data.system_prompt:
        messages.insert(0, {"role": "system", "content": data.system_prompt})
    return Example(messages=messages, source=location)


def _check_chat(location: str, messages: list[Any], system_prompt: str | None) -> list[dict[str, str]]:
    """Roles must be system? then user/assistant alternating, ending with at least one assistant turn."""
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"{location}: messages[{i}] must be an object with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise UserError(f"{location}: messages[{i}] has role '{role}'; use system, user or assistant")
        clean.append({"role": role, "content": _content(location, i, message["content"])})
    body = clean[1:] if clean[0]["role"] == "system" else clean
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise UserError(
                f"{location}: roles out of order at turn {i + 1} ('{message['role']}' where '{expected}' was expected); "
                "a chat is an optional system message, then user and assistant turns alternating"
            )
    if not any(m["role"] == "assistant" for m in body):
        raise UserError(f"{location}: chat has no assistant turn, so there is nothing to learn from it")
    if system_prompt and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system_prompt})
    return clean


def _content(location: str, i: int, content: Any) -> str:
    """A message's text: a string, or OpenAI-style content parts whose text parts are joined (no separator)."""
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise UserError(
            f"{location}: {where} must be a string or a list of text parts (got {_kind(content)}); "
            'write the turn as text ("" for an empty turn)'
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise UserError(
                f'{location}: {where}[{j}] must be a content part like {{"type": "text", "text": "..."}} '
                f"(got {_kind(part)})"
            )
        if part["type"] != "text":
            raise UserError(
                f"{location}: {where} has a '{part['type']}' part; finetune trains on text only: remove non-text parts"
            )
        texts.append(_string(location, f"{where}[{j}].text", part.get("text")))
    return "".join(texts)


def empty_answer(example: Example) -> bool:
    """A conversation with an assistant turn that is empty or only whitespace (trained as: answer nothing)."""
    return any(m["role"] == "assistant" and not m["content"].strip() for m in example.messages or [])


def label_mapping(rows: list[tuple[str, dict[str, Any]]], spec: ClassificationSection) -> dict[str, str]:
    """raw label value (as text) -> label name. From the recipe, else the sorted distinct values."""
    if isinstance(spec.labels, dict):
        return dict(spec.labels)
    if isinstance(spec.labels, list):
        return {name: name for name in spec.labels}
    # unusable values (a list, an object, NaN, blank) are refused row by row in to_example
    keys = {_label_key(row.get(spec.label_column)) for _, row in rows}
    values = sorted(key for key in keys if key is not None)
    return {value: value for value in values}


def classification_prompt(spec: ClassificationSection, labels: list[str], text: str) -> str:
    """The user turn of a classification example: the template with the label names and the text."""
    return spec.template.replace("{labels}", ", ".join(labels)).replace("{text}", text)
