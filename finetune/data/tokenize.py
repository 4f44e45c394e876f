"""Examples -> token ids and labels: the chat template, loss masking, EOS and truncation.

We tokenize ourselves (instead of letting SFTTrainer do it) so that the masking is explicit and
tested: a label of -100 means "no loss here". The conversation is rendered with the tokenizer's
chat template turn by turn; each rendered piece is tokenized separately and marked trainable when
it is assistant output. The prompt boundary is therefore exactly where `generate` starts
(add_generation_prompt=True), so training and inference see the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.data.rows import Example, empty_answer
from finetune.data.truncate import shorten
from finetune.errors import UserError

IGNORE = -100  # label value PyTorch's cross-entropy skips
EMPTY_ANSWER_SOURCES = 5  # "file:line" of the first few examples with an empty answer, kept in the report

# Used when the tokenizer has no chat template (base models, the tiny test model). Plain-text
# markers work with any vocabulary; the assistant turn ends with EOS so the model learns to stop,
# and nothing follows EOS inside a turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    eos_appended: bool
    prompt_tokens_cut: int = 0  # data.truncation: prompt: tokens the cut removed from the prompt
    dropped: bool = False  # does not fit (data.truncation: drop, or an answer too long for max_length)


@dataclass
class EncodingReport:
    """What tokenization did to a split: shown before training and kept in metrics.json."""

    examples: int = 0
    truncated: int = 0
    dropped_no_target: int = 0  # truncated until no answer token was left
    eos_appended: int = 0  # the template did not end the answer with EOS, so we did
    tokens: int = 0
    target_tokens: int = 0
    notes: list[str] = field(default_factory=list)
    # Kept examples with an empty (or whitespace-only) assistant turn: trained to answer with nothing.
    # Defaults, so a report stored before these fields existed (token cache, metrics.json) still loads.
    empty_answers: int = 0
    empty_answer_sources: list[str] = field(default_factory=list)  # the first few, "file:line"
    prompts_cut: int = 0  # data.truncation: prompt: examples whose prompt was shortened to fit
    prompt_tokens_cut: int = 0  # the tokens those cuts removed
    dropped_too_long: int = 0  # data.truncation: drop, or prompt with an answer that alone does not fit


def ensure_chat_template(tokenizer: Any, override: str | None) -> None:
    """Give the tokenizer the recipe's template, or the default when it has none. Saved with the adapter."""
    if override:
        tokenizer.chat_template = override
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def render_pieces(messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant_output) pieces.

    Renders the conversation prefix after every turn; each prefix must extend the previous one
    (true of the Llama 3, Qwen2.5, Mistral, Gemma and default templates). Each assistant piece must
    contain its message's content (stripped: templates such as Llama 3's trim it); a template that
    leaves it out would train the answer as nothing but EOS.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    turn = 0
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
            _extend(pieces, done, prompt, trainable=False)
            done = prompt
        rendered = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        _extend(pieces, done, rendered, trainable=message["role"] == "assistant")
        if message["role"] == "assistant":
            turn += 1
            if message["content"].strip() not in rendered[len(done) :]:
                raise UserError(
                    f"the chat template does not render the assistant content (assistant turn {turn}), so the "
                    "answer would not be trained; set data.chat_template to a template that renders every "
                    "assistant message's content"
                )
        done = rendered
    return pieces


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # jinja raises TemplateError, or the template's own raise_exception
        raise UserError(f"the chat template cannot render this conversation ({err}); set data.chat_template") from err


def _extend(pieces: list[tuple[str, bool]], done: str, rendered: str, trainable: bool) -> None:
    if not rendered.startswith(done):
        raise UserError(
            "the chat template re-renders earlier turns differently as the conversation grows, so the answer "
            "tokens cannot be located; set data.chat_template to a template without that behaviour"
        )
    if len(rendered) > len(done):
        pieces.append((rendered[len(done) :], trainable))


def encode(
    example: Example, tokenizer: Any, max_length: int, completion_only_loss: bool, truncation: str = "prompt"
) -> Encoded:
    """Token ids and labels for one example; answer tokens keep their id as label, the rest get -100.

    Longer than max_length: `truncation` decides (data/truncate.py); plain text is cut at the end.
    """
    if example.text is not None:
        bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
        input_ids, labels, eos_appended = _tokens([(example.text, True)], bos, tokenizer, completion_only_loss)
    else:
        input_ids, labels, eos_appended = encode_messages(
            example, example.messages or [], tokenizer, completion_only_loss
        )
    if len(input_ids) <= max_length:
        return Encoded(input_ids, labels, False, eos_appended)
    if truncation == "drop":
        return Encoded([], [], True, eos_appended, dropped=True)
    if truncation == "start" and example.text is None:
        return Encoded(input_ids[-max_length:], labels[-max_length:], True, eos_appended)
    if truncation == "prompt" and example.text is None:
        messages = example.messages or []

        def size(candidate: list[dict[str, str]]) -> int:
            return len(encode_messages(example, candidate, tokenizer, completion_only_loss)[0])

        shorter = shorten(messages, size, max_length, tokenizer)
        if shorter is None:
            return Encoded([], [], True, eos_appended, dropped=True)
        ids, kept_labels, appended = encode_messages(example, shorter, tokenizer, completion_only_loss)
        return Encoded(ids, kept_labels, True, appended, prompt_tokens_cut=len(input_ids) - len(ids))
    return Encoded(input_ids[:max_length], labels[:max_length], True, eos_appended)


def encode_messages(
    example: Example, messages: list[dict[str, str]], tokenizer: Any, completion_only_loss: bool
) -> tuple[list[int], list[int], bool]:
    try:
        pieces = render_pieces(messages, tokenizer)
    except UserError as err:
        if not example.source:
            raise
        raise UserError(f"{example.source}: {err}") from err  # name the row
    return _tokens(pieces, [], tokenizer, completion_only_loss)


def _tokens(
    pieces: list[tuple[str, bool]], bos: list[int], tokenizer: Any, completion_only_loss: bool
) -> tuple[list[int], list[int], bool]:
    input_ids: list[int] = list(bos)
    labels: list[int] = [IGNORE] * len(bos)
    for text, trainable in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if (trainable or not completion_only_loss) else [IGNORE] * len(ids)
    eos = tokenizer.eos_token_id
    append_eos = eos not in _last_target_span(input_ids, labels)
    if append_eos:  # end every answer with EOS, trained, so generation learns to stop
        input_ids.append(eos)
        labels.append(eos)
    return input_ids, labels, append_eos


def _adds_bos(tokenizer: Any) -> bool:
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def _last_target_span(input_ids: list[int], labels: list[int]) -> list[int]:
    """Ids of the last run of trained positions (the final answer), where EOS must be."""
    return input_ids[slice(*answer_span(labels))]


def answer_span(labels: list[int]) -> tuple[int, int]:
    """(start, end) of the last run of trained labels: the final answer."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE:
        start -= 1
    return start, end


def encode_split(
    examples: list[Example], tokenizer: Any, max_length: int, completion_only_loss: bool, truncation: str = "prompt"
) -> tuple[dict[str, list[list[int]]], EncodingReport]:
    """Encode a split; examples that do not fit, or are cut to no answer token at all, are dropped and counted."""
    report = EncodingReport()
    columns: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    for example in examples:
        encoded = encode(example, tokenizer, max_length, completion_only_loss, truncation)
        report.examples += 1
        report.truncated += encoded.truncated
        report.eos_appended += encoded.eos_appended
        report.prompts_cut += encoded.prompt_tokens_cut > 0
        report.prompt_tokens_cut += encoded.prompt_tokens_cut
        if encoded.dropped:
            report.dropped_too_long += 1
            continue
        if all(label == IGNORE for label in encoded.labels):
            report.dropped_no_target += 1
            continue
        if empty_answer(example):
            report.empty_answers += 1
            if len(report.empty_answer_sources) < EMPTY_ANSWER_SOURCES:
                report.empty_answer_sources.append(example.source)
        columns["input_ids"].append(encoded.input_ids)
        columns["labels"].append(encoded.labels)
        report.tokens += len(encoded.input_ids)
        report.target_tokens += sum(label != IGNORE for label in encoded.labels)
    return columns, report


def check_special_tokens(tokenizer: Any) -> list[str]:
    """Make pad usable and say what we did about EOS/pad. Returns notes for the user."""
    notes = []
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token, so the model could never learn to stop; use another tokenizer")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token_id is not None else tokenizer.eos_token
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        notes.append(
            "pad token = EOS: handled, padding is masked by position (labels are padded with -100), "
            "so the real EOS at the end of every answer is still trained"
        )
    return notes


def special_token_notes(tokenizer: Any, splits: dict[str, list[Example]]) -> list[str]:
    """User text that spells a special token ("<|eot_id|>", "</s>") is encoded as that token, control and all:
    an answer holding "<|end_of_text|>" teaches the model to stop there. Said, not changed: the chat template
    is rendered to text and parsed the same way, so the tokenizer cannot tell the two apart."""
    import re

    specials = sorted({t for t in tokenizer.all_special_tokens if len(t) > 1}, key=len, reverse=True)
    if not specials:
        return []
    pattern = re.compile("|".join(map(re.escape, specials)))
    notes = []
    for name, examples in splits.items():
        found = [
            (example.source, match.group())
            for example in examples
            for text in [*(m["content"] for m in example.messages or []), example.text or "", example.rejected or ""]
            if (match := pattern.search(text))
        ]
        if found:
            where, token = found[0]
            notes.append(
                f"{len(found)} {name} texts spell a special token of the tokenizer (e.g. {token!r} at {where}); it is "
                "encoded as that token, so an answer holding it teaches the model to stop or switch turns there: "
                "remove it from the data"
            )
    return notes
