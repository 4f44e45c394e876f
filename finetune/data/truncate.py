"""Fitting a long example into data.max_length without losing its answer.

Finance rows are long: a report table or a filing, then a question, then a short answer. Cutting the
end of the token sequence (what most trainers do) cuts exactly the answer. data.truncation chooses:

  prompt (default)  cut the prompt, never the answer: first drop the earliest exchanges of a multi-turn
                    chat (the last answer is the one kept), then cut the middle out of the longest user
                    turn, keeping its beginning and its end (where the question usually sits) around a
                    marker. The text is cut and the conversation re-rendered through the chat template,
                    so the system prompt, headers and special tokens stay intact. An example is dropped
                    only when its answer does not fit even with an empty prompt.
  end               keep the first max_length tokens (the usual behaviour; the answer may be lost)
  start             keep the last max_length tokens (the answer stays; the template's start is lost)
  drop              drop every example longer than max_length
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

CUT_MARKER = "\n[...]\n"  # where the middle of a turn was cut: the model sees a discontinuity, not a seam
MIN_KEEP = 16  # characters of a user turn always kept (a turn this short is not cut further)
ATTEMPTS = 12  # re-renderings per example at most; each one removes at least what the estimate says


def shorten(
    messages: list[dict[str, str]], size: Callable[[list[dict[str, str]]], int], max_length: int, tokenizer: Any
) -> list[dict[str, str]] | None:
    """A shorter copy of `messages` whose encoded size (`size`) is at most max_length, or None."""
    messages = [dict(message) for message in messages]
    first = 1 if messages and messages[0]["role"] == "system" else 0  # the system prompt always stays
    length = size(messages)
    # 1. Earlier exchanges go first, while there is one: an answer before the last message (in training the last
    # message is the answer, kept; in a prompt for generation it is the user's turn).
    while length > max_length and any(m["role"] == "assistant" for m in messages[:-1]):
        answer = next(i for i in range(first, len(messages)) if messages[i]["role"] == "assistant")
        del messages[first : answer + 1]
        length = size(messages)
    # 2. Then the middle of the longest user turn, estimated from its characters per token.
    spent: set[int] = set()  # turns already cut down to MIN_KEEP at both ends
    for _ in range(ATTEMPTS):
        if length <= max_length:
            return messages
        users = [
            i
            for i, m in enumerate(messages)
            if m["role"] == "user" and len(m["content"]) > 2 * MIN_KEEP + len(CUT_MARKER) and i not in spent
        ]
        if not users:
            return None
        i = max(users, key=lambda j: len(messages[j]["content"]))
        text = messages[i]["content"]
        tokens = max(1, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        per_token = len(text) / tokens
        # The excess in characters, plus the marker; a tokenizer whose cut region packs fewer characters
        # per token than the turn's average leaves a small excess, which the next attempt removes.
        remove = math.ceil((length - max_length) * per_token) + len(CUT_MARKER) + 2
        keep = max(2 * MIN_KEEP, len(text) - remove)
        if keep == 2 * MIN_KEEP:
            spent.add(i)
        head = keep // 2
        messages[i]["content"] = text[:head] + CUT_MARKER + text[len(text) - (keep - head) :]
        length = size(messages)
    return messages if length <= max_length else None
