"""RLMRec's profiles (Ren et al., WWW 2024): an LLM says what kind of user would enjoy each item, and
what kind of items each user enjoys, from the user's training items; a sentence encoder embeds both.

Our own prompts after the authors' instructions (generation/ in HKUDS/RLMRec), for small local models:
plain text instead of the authors' JSON answer (a 135M model breaks JSON more often than it writes a
useful summary), and no reviews (recstack's datasets carry none). An item prompt holds the item's text
("Title (year). Genres: ..."); a user prompt lists at most `n_items` of the user's training items, each
with its item profile, as the authors list each interacted business with its description.

`lm=None` is the text-only ablation (no LLM): an item's profile is its own text and a user's profile is
the list of the sampled items' texts, i.e. what the prompts would have shown the LLM.

Every answer goes through the caller's LM, usually a `CachedLM`; prompts are sent in blocks, so an
interrupted run keeps the answers of the finished blocks and a re-run asks only what is missing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recstack.data.interactions import Interactions

ITEM_SYSTEM = ("You write short profiles of items for a recommender system. Given an item's information, "
               "say in two or three sentences what kind of user would enjoy it, and why.")
USER_SYSTEM = ("You write short profiles of users for a recommender system. Given items a user enjoyed, "
               "say in two or three sentences what kind of items this user likes.")
BLOCK = 64  # prompts per generation call: what an interrupted run can lose


def item_profile_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": ITEM_SYSTEM},
            {"role": "user", "content": f"Item: {text}\n\nWhat kind of user would enjoy this item?"}]


def user_profile_messages(item_texts: Sequence[str], item_profiles: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The user's sampled items, each followed by its item profile when there is one."""
    if item_profiles is None:
        lines = [f"- {text}" for text in item_texts]
    else:
        lines = [f"- {text} Enjoyed by: {profile.strip()}" for text, profile in zip(item_texts, item_profiles)]
    return [{"role": "system", "content": USER_SYSTEM},
            {"role": "user", "content": "Items this user enjoyed:\n" + "\n".join(lines)
                                        + "\n\nWhat kind of items does this user like?"}]


def sample_user_items(train: Interactions, n_items: int, seed: int) -> list[np.ndarray]:
    """Per user, at most `n_items` of the user's distinct TRAINING items, drawn uniformly (seeded), kept in
    log order. Only `train` is read: no validation or test event can reach a profile."""
    rng = np.random.default_rng(seed)
    out = []
    for user in range(train.n_users):
        items = train.item[train.indptr[user]:train.indptr[user + 1]]
        _, first = np.unique(items, return_index=True)
        items = items[np.sort(first)]  # a repeated event is one item of the profile
        if len(items) > n_items:
            items = items[np.sort(rng.choice(len(items), n_items, replace=False))]
        out.append(items)
    return out


def generate_texts(lm, messages: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    """Greedy answers, in blocks so that an interrupted run keeps the cached answers of finished blocks."""
    prompts = [lm.render(m) for m in messages]
    texts: list[str] = []
    for start in range(0, len(prompts), BLOCK):
        texts += [g.text.strip() for g in lm.generate(prompts[start:start + BLOCK], max_new_tokens)]
    return texts


def item_profiles(lm, texts: Sequence[str], max_new_tokens: int) -> list[str]:
    """One profile per item text (the text itself when `lm` is None)."""
    texts = [str(t) for t in texts]
    if lm is None:
        return texts
    return generate_texts(lm, [item_profile_messages(t) for t in texts], max_new_tokens)


def user_profiles(lm, samples: Sequence[np.ndarray], item_texts: Sequence[str], item_profile_texts: Sequence[str],
                  max_new_tokens: int) -> list[str]:
    """One profile per user from that user's sampled items (`sample_user_items`); "" for a user with none.
    With `lm` None: the sampled items' texts, one per line."""
    if lm is None:
        return ["\n".join(item_texts[i] for i in items) for items in samples]
    asked = [u for u, items in enumerate(samples) if len(items)]
    messages = [user_profile_messages([item_texts[i] for i in samples[u]], [item_profile_texts[i] for i in samples[u]])
                for u in asked]
    out = [""] * len(samples)
    for user, text in zip(asked, generate_texts(lm, messages, max_new_tokens)):
        out[user] = text
    return out
