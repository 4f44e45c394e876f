"""run/answers.py without a model: which eval rows get an answer, and how a long prompt is cut to fit."""

import pytest

from finetune.data.read import Example
from finetune.errors import UserError
from finetune.run.answers import fit_prompt, new_tokens, pick
from finetune.run.generation import fitted_prompt_ids, prompt_ids
from tests.conftest import ROOT

LONG = "The filing says revenue grew while costs fell in every region. " * 8 + "By how much did revenue grow?"


def qa(question: str, answer: str = "Seven percent.") -> Example:
    return Example(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_pick_answers_the_first_scored_rows_with_a_prompt():
    examples = [qa("a"), qa("b"), Example(text="plain text, no prompt"), qa("c"), qa("d"), qa("e")]
    rows = [{"loss": 1.0}, {"dropped": "does not fit max_length"}, {"loss": 1.0}, {"loss": 1.0}, {}, {}]
    assert pick("lm", examples, rows, None) == [0, 3, 4]  # the first 3: row 1 was not scored, row 2 has no prompt
    assert pick("lm", examples, rows, True) == [0, 3, 4, 5]
    assert pick("lm", examples, rows, False) == [] and pick("classification", examples, rows, True) == []


def test_new_tokens_default_to_the_recipe_and_refuse_classification():
    from finetune.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert new_tokens("lm", None, None, recipe) == recipe.train.sample_max_new_tokens == 24
    assert new_tokens("lm", True, 5, recipe) == 5
    assert new_tokens("classification", False, None, recipe) == 0
    for generate, tokens in [(True, None), (None, 7)]:
        with pytest.raises(UserError, match="apply to lm eval"):
            new_tokens("classification", generate, tokens, recipe)
    with pytest.raises(UserError, match="--max-new-tokens must be positive"):
        new_tokens("lm", None, 0, recipe)


def test_a_long_prompt_is_cut_as_data_truncation_says(tiny_tokenizer):
    messages = [{"role": "user", "content": LONG}]
    full = prompt_ids(tiny_tokenizer, messages)
    budget = len(full) // 2
    assert fit_prompt(tiny_tokenizer, messages, len(full), "prompt") == full  # fits: untouched
    # prompt (and end, drop): the middle of the user turn goes; the question and the answer header stay
    cut = fit_prompt(tiny_tokenizer, messages, budget, "prompt")
    assert cut == fitted_prompt_ids(tiny_tokenizer, messages, budget)
    assert fit_prompt(tiny_tokenizer, messages, budget, "end") == cut
    assert len(cut) <= budget and "[...]" in tiny_tokenizer.decode(cut) and cut[-20:] == full[-20:]
    # start: the prompt's last tokens, as training keeps an example's last tokens
    assert fit_prompt(tiny_tokenizer, messages, budget, "start") == full[-budget:]
    # a system prompt too long to cut around: the last tokens, never an error
    long_system = [{"role": "system", "content": LONG * 3}, {"role": "user", "content": "Why?"}]
    assert fit_prompt(tiny_tokenizer, long_system, 40, "prompt") == prompt_ids(tiny_tokenizer, long_system)[-40:]
