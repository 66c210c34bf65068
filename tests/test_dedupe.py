"""The engine's two deduplication helpers: string columns to codes, and distinct rows."""
import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from dse.deploy.factorize import factorize
from dse.model import dedupe

words = st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
                 min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(vocab=words, picks=st.lists(st.integers(0, 7), min_size=1, max_size=300))
def test_factorize_matches_pandas(vocab, picks):
    arr = np.array([vocab[i % len(vocab)] for i in picks])
    codes, uniq = factorize(arr)
    ref_codes, ref_uniq = pd.factorize(arr)
    assert codes.tolist() == ref_codes.tolist()
    assert list(uniq) == [str(u) for u in ref_uniq]


def test_factorize_of_long_ascii_ids_and_other_dtypes():
    ids = np.array(["ascend_910c", "h100_sxm", "ascend_910c_hypothetical", "h100_sxm", "", "gaudi3"] * 3)
    codes, uniq = factorize(ids)
    assert list(uniq) == ["ascend_910c", "h100_sxm", "ascend_910c_hypothetical", "", "gaudi3"]
    assert (uniq[codes] == ids.astype(object)).all()
    codes, uniq = factorize(np.array(["a", "b", "a"], dtype=object))
    assert codes.tolist() == [0, 1, 0] and list(uniq) == ["a", "b"]


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 18), st.integers(1, 400), st.integers(0, 2**31))
def test_unique_rows_finds_exactly_the_distinct_rows(ncols, nrows, seed):
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, 4, nrows).astype(float) for _ in range(ncols)]
    first, inverse = dedupe.unique_rows(*cols)
    mat = np.stack(cols, axis=1)
    assert len(first) == len(np.unique(mat, axis=0))
    assert (mat[first][inverse] == mat).all()


def test_unique_rows_leaves_broadcast_scalars_out():
    """A column of one value (a broadcast scalar) changes no grouping: the same groups with it,
    and all rows one group when every column is one."""
    tp = np.array([8.0, 4.0, 8.0, 1.0, 4.0])
    one = np.broadcast_to(np.asarray(1.0), tp.shape)
    first, inverse = dedupe.unique_rows(tp, one, 0.0)
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2, 1]
    first, inverse = dedupe.unique_rows(one, 0.0)
    assert first.tolist() == [0] and inverse.tolist() == [0] * 5


def test_small_integer_columns_do_not_collide_in_the_hash():
    """Rows (1,0,0) and (0,1,1) must not share a key: weights with an integer relation
    between them (two of the old ones summed to 1) send the exact, slower path every time."""
    w = np.array(dedupe.KEY_WEIGHTS)
    grid = np.stack(np.meshgrid(*[np.arange(3.0)] * 4, indexing="ij"), -1).reshape(-1, 4)
    for cols in ([0, 1, 2, 3], [2, 3, 4, 5], [0, 5, 9, 17]):
        keys = grid @ w[cols]
        assert len(np.unique(keys)) == len(grid)


def test_call_memo_prices_each_key_once_across_chunks():
    """memo_rows: inside one call_memo a key priced in an earlier chunk is gathered, only the
    new keys are computed, and the values come back in the asking rows' order; outside a
    call_memo, or with a NaN key, it declines (None) and the caller prices its rows itself."""
    from dse.model.dedupe import call_memo, memo_rows
    priced = []

    def compute(keys):
        def values(sel):
            priced.append(len(sel))
            return {"v": keys[0][sel] * 10.0 + keys[1][sel]}
        return values

    a = [np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.25])]
    assert memo_rows(("t",), a, compute(a)) is None
    with call_memo():
        vals, pos = memo_rows(("t",), a, compute(a))
        assert np.array_equal(vals["v"][pos], [10.5, 20.5, 30.25]) and priced == [3]
        b = [np.array([3.0, 4.0, 1.0, 5.0]), np.array([0.25, 0.5, 0.5, 0.0])]
        vals, pos = memo_rows(("t",), b, compute(b))
        assert np.array_equal(vals["v"][pos], [30.25, 40.5, 10.5, 50.0]) and priced == [3, 2]
        c = [np.array([3.0, np.nan]), np.array([0.25, 0.0])]
        vals, pos = memo_rows(("t",), c, compute(c))          # a NaN key: priced, never kept
        assert vals["v"][pos][0] == 30.25 and np.isnan(vals["v"][pos][1]) and priced == [3, 2, 1]
        vals, pos = memo_rows(("other",), a, compute(a))      # another tag: its own table
        assert priced == [3, 2, 1, 3]
    assert memo_rows(("t",), a, compute(a)) is None
