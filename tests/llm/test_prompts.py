"""Prompt construction and answer parsing of the LLM methods (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data.interactions import Interactions, Vocab
from recstack.llm.backends import render_chatml, render_plain
from recstack.llm.prompts import RATING_SYSTEM, parse_rating, rank_prefix_messages, rating_messages
from recstack.llm.weights import LLMError, resolve_model
from recstack.models.llm.rating import LLMRating


@pytest.mark.parametrize("text, expected", [
    ("4", 4), (" 5 stars", 5), ("Rating: 3.0", 3), ("I'd say 2/5", 2), ("1. The movie", 1),
    ("**4**", 4), ("0", None), ("6", None), ("45", None), ("4.5", None), ("", None), ("great movie", None),
])
def test_parse_rating_takes_the_first_rating_one_to_five(text, expected):
    assert parse_rating(text) == expected


def test_zero_shot_rating_prompt_lists_the_history_and_asks_for_the_target():
    messages = rating_messages(["Heat (1995)", "Fargo (1996)"], [4.0, 2.0], "Alien (1979)")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == RATING_SYSTEM
    assert "- Heat (1995): 4\n- Fargo (1996): 2" in messages[1]["content"]
    assert messages[1]["content"].endswith('How would this user rate "Alien (1979)"? Answer with one digit from 1 to 5.')


def test_few_shot_rating_prompt_answers_each_demonstration_then_asks_the_target():
    messages = rating_messages(["Heat (1995)"], [4.0], "Alien (1979)", shots=[("Fargo (1996)", 2.0), ("Up (2009)", 5.0)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert '"Fargo (1996)"' in messages[1]["content"] and messages[2]["content"] == "2"
    assert '"Up (2009)"' in messages[3]["content"] and messages[4]["content"] == "5"
    assert '"Alien (1979)"' in messages[5]["content"]


def test_renderers_end_with_the_assistant_turn_open():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_chatml(messages) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert render_plain(messages) == "S\n\nU\n"


def test_rank_prefix_lists_the_history_oldest_first():
    content = rank_prefix_messages(["A (1990)", "B (1991)"])[1]["content"]
    assert content.index("A (1990)") < content.index("B (1991)")
    assert "(nothing yet)" in rank_prefix_messages([])[1]["content"]


class _Recorder:
    """Renders messages as plain text and records them; the rating model's prompt logic only."""

    def render(self, messages):
        return render_plain(messages)


def _log():
    users, items = Vocab(["u0", "u1"]), Vocab([f"i{j}" for j in range(6)])
    return Interactions(np.array([0, 0, 0, 0, 1]), np.array([0, 1, 2, 3, 4]), users, items,
                        value=np.array([5, 4, 3, 2, 1], dtype=np.float32), timestamp=np.array([1, 2, 3, 4, 5]))


def test_rating_model_keeps_the_most_recent_history_and_takes_shots_before_it():
    titles = np.array(["T0", "T1", "T2", "T3", "T4", ""], dtype=object)
    model = LLMRating(_Recorder(), titles, shots=1, max_history=2)
    messages = model.messages(0, 5, _log())
    # the last rating (T3: 2) is the demonstration; the two before it are the listed history
    assert "- T1: 4\n- T2: 3" in messages[1]["content"] and "T0" not in messages[1]["content"]
    assert '"T3"' in messages[1]["content"] and messages[2]["content"] == "2"
    assert '"item 5"' in messages[3]["content"]  # an empty title is named by its index


def test_model_paths_are_checked_with_the_fix_in_the_message(tmp_path):
    with pytest.raises(LLMError, match="neither a named model"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(LLMError, match="not a GGUF file"):
        resolve_model(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match="not a causal language model"):
        resolve_model(tmp_path / "empty")


def test_listwise_answers_parse_to_distinct_candidates_in_order():
    from recstack.models.llm.listwise import parse_ranking

    assert parse_ranking("3, 1, 3, 7, 2.5, 12", n=5) == [2, 0]  # 3 repeated, 7 and 12 out of range, 2.5 no
    assert parse_ranking("Candidate 2 then 4", n=4) == [1, 3]
    assert parse_ranking("I cannot rank these", n=4) == []


def test_borda_merges_bootstrapped_answers_by_hand():
    from recstack.models.llm.listwise import borda

    orders = [np.array([0, 1, 2]), np.array([2, 0, 1]), np.array([1, 2, 0])]
    # prompt 1 names candidates 1 then 0 (2 left out); prompt 2 names its 3rd shown (candidate 1) only;
    # prompt 3 answered nothing usable
    points = borda(orders, [[1, 0], [2], []], n=3)
    # prompt 1: candidate 1 scores 3, candidate 0 scores 2, the unnamed candidate 2 scores 3 - 2 = 1;
    # prompt 2: candidate 1 scores 3, the two unnamed 3 - 1 = 2 each; so 4, 6, 3, plus the tie-breaks 3/4, 2/4, 1/4
    np.testing.assert_allclose(points, [4.75, 6.5, 3.25])
