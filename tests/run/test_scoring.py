"""Metrics and label ranking, on hand-computed cases and a model whose answer is forced."""

import pytest
import torch

from finetune.data.read import Example
from finetune.run.scoring import classification_metrics, match_label, rank_labels, sequence_logprobs


def test_metrics_match_a_hand_computed_confusion_matrix():
    gold = ["pos", "pos", "pos", "neg", "neg", "neu"]
    pred = ["pos", "neg", "pos", "neg", "pos", "neu"]
    m = classification_metrics(gold, pred, ["pos", "neg", "neu"])
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]  # rows: gold pos, neg, neu
    assert m["accuracy"] == pytest.approx(4 / 6)
    # pos: precision 2/3 (3 predicted pos, 2 right), recall 2/3; neg: 1/2, 1/2; neu: 1, 1
    assert m["per_label"]["pos"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_label"]["neg"]["precision"] == pytest.approx(0.5) and m["per_label"]["neg"]["support"] == 2
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_label_matching_normalises_free_text():
    labels = ["positive", "negative", "neutral"]
    assert match_label("  Positive.", labels) == "positive"
    assert match_label("negative - the outlook worsened", labels) == "negative"
    assert match_label("I cannot tell", labels) == "(other)"


class ForcedModel(torch.nn.Module):
    """Logits that put all mass on one token id at every position: the 'answer' is forced."""

    def __init__(self, vocab: int, favoured: list[int]):
        super().__init__()
        self.vocab, self.favoured = vocab, favoured
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, input_ids, attention_mask=None):
        logits = torch.full((*input_ids.shape, self.vocab), -20.0)
        logits[..., self.favoured] = 10.0
        return type("Out", (), {"logits": logits})()


def test_rank_labels_picks_the_forced_answer(tiny_tokenizer):
    a = tiny_tokenizer("a", add_special_tokens=False)["input_ids"][0]
    model = ForcedModel(len(tiny_tokenizer), [a, tiny_tokenizer.eos_token_id])
    examples = [Example(messages=[{"role": "user", "content": "pick"}, {"role": "assistant", "content": "x"}])]
    (scores,) = rank_labels(model, tiny_tokenizer, examples, ["bbb", "aaa", "ab"], max_length=128, batch_size=2)
    assert max(scores, key=scores.get) == "aaa"
    assert scores["aaa"] > scores["ab"] > scores["bbb"]


def test_sequence_logprobs_counts_only_labelled_positions():
    model = ForcedModel(10, [3])
    sums, counts = sequence_logprobs(model, [([1, 3, 3], [-100, 3, 3]), ([1, 3], [-100, -100])])
    assert counts == [2, 0]
    assert sums[1] == 0.0 and sums[0] == pytest.approx(
        2 * torch.log_softmax(torch.tensor([10.0] + [-20.0] * 9), 0)[0].item()
    )


def test_chat_is_a_repl_ctrl_c_stops_a_reply_and_commands_never_reach_the_model(tiny_tokenizer, monkeypatch):
    import io

    from finetune.run import generation

    sent = []

    def fake_generate(model, tokenizer, messages, **kwargs):
        sent.append([m["content"] for m in messages])
        if messages[-1]["content"] == "long question":
            raise KeyboardInterrupt  # Ctrl-C while the reply streams
        return "an answer"

    # typed lines; None is Ctrl-C at the prompt; after the last one, Ctrl-D
    lines = iter(["/help", "/wat", "long question", "short question", None, "again"])

    def read(prompt):
        line = next(lines, EOFError)
        if line is EOFError:
            raise EOFError
        if line is None:
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr(generation, "generate", fake_generate)
    out = io.StringIO()
    generation.chat_loop(
        None,
        tiny_tokenizer,
        read=read,
        stream=out,
        system=None,
        max_new_tokens=8,
        temperature=0.0,
        context_length=512,
    )
    text = out.getvalue()
    assert "/reset clear the conversation" in text and "unknown command /wat" in text
    assert "(reply stopped)" in text and text.endswith("\n")
    # the commands never reached the model; the stopped question left the history with its reply
    assert sent == [["long question"], ["short question"], ["short question", "an answer", "again"]]
