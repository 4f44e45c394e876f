"""Preference pairs -> token ids: one prompt, two answers, each answer masked and ended as in SFT.

    prompt_ids   the conversation up to where the answer starts (add_generation_prompt=True), so the
                 pair is scored on exactly the tokens that `generate` would continue from
    chosen_ids   the chosen answer's tokens, the template's end of turn and a trained EOS
    rejected_ids the same for the rejected answer

These are the columns TRL's DPOTrainer collates (prompt + answer, loss on the answer only); ORPO
gets the same tokens (train/trainer.py). Each side is rendered through the chat template like an SFT
example (tokenize.render_pieces), so masking, EOS and truncation follow one set of rules.

Longer than data.max_length (prompt + the longer answer), data.truncation decides:
  prompt  cut the prompt (truncate.shorten: earlier exchanges, then the middle of the longest user turn)
  end     cut the answers' ends (what TRL does); a pair whose prompt alone fills max_length is dropped
  start   cut the prompt's first tokens; a pair whose longer answer alone does not fit is dropped
  drop    drop the pair
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.data.rows import Example
from finetune.data.tokenize import EncodingReport, answer_span, encode_messages
from finetune.data.truncate import shorten

COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass
class Pair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False
    eos_appended: int = 0  # sides whose template did not end the answer with EOS, so we did
    prompt_tokens_cut: int = 0
    dropped: bool = False

    @property
    def length(self) -> int:
        """Tokens of the longer sequence (prompt + answer): what must fit in max_length."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def encode_pair(example: Example, tokenizer: Any, max_length: int, truncation: str = "prompt") -> Pair:
    prompt = (example.messages or [])[:-1]
    chosen, rejected = example.messages[-1]["content"], example.rejected or ""

    def render(turns: list[dict[str, str]]) -> Pair:
        sides = []
        for answer in (chosen, rejected):
            ids, labels, appended = encode_messages(
                example, [*turns, {"role": "assistant", "content": answer}], tokenizer, True
            )
            sides.append((ids, answer_span(labels)[0], appended))
        (chosen_ids, start, appended_c), (rejected_ids, start_r, appended_r) = sides
        # Both sides render the same prompt (it ends before the answer): the shorter start is the prompt.
        start = min(start, start_r)
        return Pair(chosen_ids[:start], chosen_ids[start:], rejected_ids[start:], eos_appended=appended_c + appended_r)

    pair = render(prompt)
    if pair.length <= max_length:
        return pair
    if truncation == "drop":
        return Pair([], [], [], truncated=True, dropped=True)
    if truncation == "end":
        room = max_length - len(pair.prompt_ids)
        if room <= 0:
            return Pair([], [], [], truncated=True, dropped=True)
        return Pair(pair.prompt_ids, pair.chosen_ids[:room], pair.rejected_ids[:room], truncated=True)
    answer = max(len(pair.chosen_ids), len(pair.rejected_ids))
    if truncation == "start":
        if answer >= max_length:
            return Pair([], [], [], truncated=True, dropped=True)
        cut = len(pair.prompt_ids) - (max_length - answer)
        return Pair(pair.prompt_ids[cut:], pair.chosen_ids, pair.rejected_ids, truncated=True, prompt_tokens_cut=cut)
    # prompt: shorten the prompt's text and render again; the longer answer sets the size
    longer = chosen if len(pair.chosen_ids) >= len(pair.rejected_ids) else rejected

    def size(turns: list[dict[str, str]]) -> int:
        if turns and turns[-1]["role"] == "assistant":  # shorten() passes the prompt + answer we give it
            turns = turns[:-1]
        return render(turns).length

    shorter = shorten([*prompt, {"role": "assistant", "content": longer}], size, max_length, tokenizer)
    if shorter is None:
        return Pair([], [], [], truncated=True, dropped=True)
    cut = render(shorter[:-1])
    cut.truncated, cut.prompt_tokens_cut = True, len(pair.prompt_ids) - len(cut.prompt_ids)
    return cut


def encode_pairs(
    examples: list[Example], tokenizer: Any, max_length: int, truncation: str = "prompt"
) -> tuple[dict[str, list[list[int]]], EncodingReport]:
    """A split of pairs as DPO columns, and the same report as SFT (tokens count both sides)."""
    report = EncodingReport()
    columns: dict[str, list[list[int]]] = {name: [] for name in COLUMNS}
    for example in examples:
        pair = encode_pair(example, tokenizer, max_length, truncation)
        report.examples += 1
        report.truncated += pair.truncated
        report.eos_appended += pair.eos_appended > 0
        report.prompts_cut += pair.prompt_tokens_cut > 0
        report.prompt_tokens_cut += pair.prompt_tokens_cut
        if pair.dropped:
            report.dropped_too_long += 1
            continue
        for name in COLUMNS:
            columns[name].append(getattr(pair, name))
        report.tokens += 2 * len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
        report.target_tokens += len(pair.chosen_ids) + len(pair.rejected_ids)
    return columns, report
