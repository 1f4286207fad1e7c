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


def test_the_parquet_folder_holds_the_generated_log_and_reads_back_in_chunks(tmp_path):
    from recstack.data.load import load_table
    from recstack.data.synthetic import write_power_law_parquet

    folder = write_power_law_parquet(tmp_path / "log", 200_000, parts=3, seed=4)
    assert sorted(p.name for p in folder.iterdir()) == [f"part-{i:05d}.parquet" for i in range(3)]
    read = load_table(folder).interactions
    made = power_law_interactions(200_000, seed=4)
    def pairs(log):
        return np.sort(log.users.ids[log.user].astype(np.int64) * 10**6 + log.items.ids[log.item])
    assert len(read) == 200_000 and np.array_equal(pairs(read), pairs(made))
    assert np.array_equal(np.sort(read.timestamp), np.sort(made.timestamp))
