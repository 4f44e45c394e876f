"""`finetune generate` and `finetune chat`: the training chat template, streamed tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from finetune.data.truncate import shorten
from finetune.errors import UserError


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The conversation rendered exactly as in training, ending where the assistant's answer starts."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fitted_prompt_ids(tokenizer, messages: list[dict[str, str]], budget: int) -> list[int]:
    """prompt_ids, cut as training cuts a long prompt (data/truncate.py) to at most `budget` tokens, so a
    long document leaves room for the answer instead of overflowing the model's context."""
    ids = prompt_ids(tokenizer, messages)
    if len(ids) <= budget:
        return ids
    shorter = shorten(messages, lambda m: len(prompt_ids(tokenizer, m)), budget, tokenizer)
    if shorter is None:
        raise UserError(
            f"the prompt does not fit in {budget} tokens even cut down; shorten it or lower --max-new-tokens"
        )
    return prompt_ids(tokenizer, shorter)


def generate(
    model,
    tokenizer,
    messages: list[dict[str, str]],
    *,
    max_new_tokens: int,
    temperature: float,
    stream: TextIO | None,
    context_length: int | None = None,
) -> str:
    """One assistant reply; tokens are written to `stream` as they are produced. Greedy at temperature 0.

    With `context_length`, a longer prompt is cut as in training, leaving room for max_new_tokens."""
    import torch

    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be positive (got {max_new_tokens})")
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0 (got {temperature})")
    device = next(model.parameters()).device
    budget = max(1, context_length - max_new_tokens) if context_length else None
    ids = prompt_ids(tokenizer, messages) if budget is None else fitted_prompt_ids(tokenizer, messages, budget)
    ids = torch.tensor([ids], device=device)
    streamer = _Streamer(tokenizer, stream) if stream else None
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
            **sampling,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


class _Streamer:
    """transformers' TextStreamer, writing to any stream (it prints to stdout only)."""

    def __init__(self, tokenizer, stream: TextIO):
        from transformers import TextStreamer

        self.inner = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.inner.on_finalized_text = self._write
        self.stream = stream

    def _write(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()

    def put(self, value) -> None:
        self.inner.put(value)

    def end(self) -> None:
        self.inner.end()


def trim_history(tokenizer, messages: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop the oldest user/assistant exchanges until the prompt fits `budget` tokens (system kept)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while len(turns) > 1 and len(prompt_ids(tokenizer, system + turns)) > budget:
        turns = turns[2:]  # one user + one assistant message
    return system + turns


CHAT_HELP = "/help this list  /reset clear the conversation  /exit leave (or Ctrl-D)  Ctrl-C stop a reply"


def chat_loop(
    model,
    tokenizer,
    *,
    read: Callable[[str], str],
    stream: TextIO,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    context_length: int,
    phrase: Callable[[str], str] = lambda text: text,
) -> None:
    """Multi-turn chat that behaves like a REPL: Ctrl-C stops the reply being written (not the session),
    Ctrl-D or /exit leaves, /reset clears, /help lists the commands; an unknown /command is never sent
    to the model."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    stream.write(f"chat: {CHAT_HELP}\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:  # Ctrl-D: leave on a fresh line
            stream.write("\n")
            break
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a new prompt, as in a shell
            stream.write("\n")
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(start)
            stream.write("(conversation cleared)\n")
            continue
        if line == "/help":
            stream.write(f"{CHAT_HELP}\n")
            continue
        if line.startswith("/"):
            stream.write(f"unknown command {line.split()[0]}; {CHAT_HELP}\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": phrase(line)})  # a classification run's template
        messages = trim_history(tokenizer, messages, context_length - max_new_tokens)
        stream.write("model> ")
        try:
            reply = generate(
                model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature, stream=stream
            )
        except KeyboardInterrupt:
            messages.pop()  # the question goes too: the history holds only complete exchanges
            stream.write("\n(reply stopped)\n")
            continue
        messages.append({"role": "assistant", "content": reply})
