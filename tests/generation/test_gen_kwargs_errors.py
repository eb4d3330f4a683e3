"""gen_kwargs values that are not numbers are one line naming the key, also from Python (not only through lm_eval)."""

from __future__ import annotations

import pytest
from scripted import make_word_tokenizer

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.generation.protocol import Sampling, parse_gen_kwargs


@pytest.mark.parametrize(
    "gen_kwargs,message",
    [
        ({"max_gen_toks": "abc"}, "gen_kwargs max_gen_toks='abc' must be a number"),
        ({"max_gen_toks": 0}, "gen_kwargs max_gen_toks=0 must be >= 1"),
        ({"max_tokens_thinking": 5, "thinking_n_ignore": "x"}, "gen_kwargs thinking_n_ignore='x' must be a number"),
        ({"max_tokens_thinking": "lots"}, "gen_kwargs max_tokens_thinking='lots' must be a number"),
        ({"max_tokens_thinking": 5, "seed": "abc"}, "gen_kwargs seed='abc' must be a number"),
        ({"max_tokens_thinking": 5, "thinking_n_ignore": -1}, "gen_kwargs thinking_n_ignore=-1 must be >= 0"),
    ],
)
def test_non_numbers_are_one_line(gen_kwargs, message):
    with pytest.raises(PruneConfigError, match=message.replace("(", r"\(")):
        parse_gen_kwargs(gen_kwargs, "</s>", 16, make_word_tokenizer())


def test_sampling_values_are_checked_when_built():
    with pytest.raises(PruneConfigError, match="gen_kwargs temperature='hot' must be a number"):
        Sampling.build(8, {"temperature": "hot"})
    assert Sampling.build(8, {"temperature": "0.5", "top_k": "-3"}).top_k == 0
