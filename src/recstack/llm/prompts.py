"""Prompts of the LLM methods, and the parsing of their answers. Pure functions, unit-tested on their own.

Every prompt is a list of chat messages with an explicit system message (so a chat template adds no
default one of its own, and the local and HTTP backends render the same text). Item names are the
dataset's titles; a title that is missing falls back to "item <id>".
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

RATING_OPTIONS = ("1", "2", "3", "4", "5")
RATING_SYSTEM = "You predict how a user will rate movies on a scale from 1 (lowest) to 5 (highest)."
RANK_SYSTEM = "You recommend movies. Given what a user watched, you name the movie they will watch next."


def titles_array(titles) -> np.ndarray:
    """The items' titles as an object array of str (what the LLM methods read)."""
    return np.asarray([str(t) for t in titles], dtype=object)


def title_of(titles: np.ndarray, item: int) -> str:
    """An item's title; a missing or empty one is named by its index ("item 12")."""
    return str(titles[item]) if 0 <= item < len(titles) and titles[item] else f"item {item}"


def _history_lines(titles: Sequence[str], ratings: Sequence[float] | None) -> str:
    if ratings is None:
        return "\n".join(f"- {title}" for title in titles)
    return "\n".join(f"- {title}: {int(round(r))}" for title, r in zip(titles, ratings))


def rating_question(title: str) -> str:
    return f'How would this user rate "{title}"? Answer with one digit from 1 to 5.'


def rating_messages(history_titles: Sequence[str], history_ratings: Sequence[float], target_title: str,
                    shots: Sequence[tuple[str, float]] = ()) -> list[dict[str, str]]:
    """Kang et al. (2023), "Do LLMs Understand User Preferences?": the user's rated history, then the question.

    `shots` (few-shot): demonstrations as earlier question/answer turns, each a (title, rating) of the
    same user that is not in the listed history.
    """
    listed = _history_lines(history_titles, history_ratings) or "- (no ratings yet)"
    messages = [{"role": "system", "content": RATING_SYSTEM},
                {"role": "user", "content": f"Movies this user rated:\n{listed}\n\n"
                                            + rating_question(shots[0][0] if shots else target_title)}]
    for position, (title, rating) in enumerate(shots):
        messages.append({"role": "assistant", "content": str(int(round(rating)))})
        following = shots[position + 1][0] if position + 1 < len(shots) else target_title
        messages.append({"role": "user", "content": rating_question(following)})
    return messages


_DIGIT = re.compile(r"(?<![0-9.])([1-5])(?:\.0+)?(?![0-9]|\.[0-9])")  # "4", "4.0"; not "45", "4.5"


def parse_rating(text: str) -> int | None:
    """The first rating 1..5 in an answer ("4", "4 stars", "Rating: 4.0"); None when there is none."""
    found = _DIGIT.search(text)
    return int(found.group(1)) if found else None


def rank_prefix_messages(history_titles: Sequence[str]) -> list[dict[str, str]]:
    """Pointwise ranking by likelihood: the history, then the request; a candidate's title is the answer."""
    listed = _history_lines(history_titles, None) or "- (nothing yet)"
    return [{"role": "system", "content": RANK_SYSTEM},
            {"role": "user", "content": f"Movies this user watched, oldest first:\n{listed}\n\n"
                                        "Name one movie the user will watch next."}]
