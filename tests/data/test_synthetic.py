import numpy as np

from recstack.data.synthetic import power_law_interactions


def test_sizes_are_exact_and_pairs_distinct():
    data = power_law_interactions(200_000, seed=3)
    assert len(data) == 200_000
    assert data.n_users == 2000 and data.n_items == 400
    keys = data.user.astype(np.int64) * data.n_items + data.item
    assert len(np.unique(keys)) == len(keys)


def test_seeded_and_seed_sensitive():
    a, b, c = (power_law_interactions(100_000, seed=s) for s in (1, 1, 2))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_item_popularity_is_heavy_tailed():
    data = power_law_interactions(200_000, seed=0)
    counts = np.sort(data.item_counts())[::-1]
    # rank^-0.8: the top 10% of items take far more than 10% of events, and popularity falls with rank
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.25
    assert counts[0] > 5 * counts[len(counts) // 2]
    # ids are permuted: the most popular item is not simply index 0
    assert np.argmax(data.item_counts()) != 0 or np.argmax(data.user_counts()) != 0
