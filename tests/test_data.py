import jax
import numpy as np
import pytest

from hyperforget_jax import data
from hyperforget_jax.errors import DataError, ForgetRequestError


def test_mnist5k_is_real_balanced_and_shuffled():
    ds = data.load_mnist5k()
    assert ds.x.shape == (5000, 28, 28, 1) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y), [500] * 10)
    assert len(set(ds.y[:50].tolist())) > 5  # the file is sorted by label; we shuffle it
    np.testing.assert_array_equal(data.load_mnist5k().y, ds.y)  # fixed shuffle seed


def test_digits_source():
    ds = data.load_digits()
    assert ds.x.shape == (1797, 8, 8, 1) and 0.0 <= ds.x.min() and ds.x.max() == 1.0


def test_splits_are_deterministic_stratified_and_disjoint(mnist_splits):
    sp = mnist_splits
    assert (len(sp.train), len(sp.val), len(sp.test)) == (3500, 500, 1000)
    np.testing.assert_array_equal(np.bincount(sp.train.y), [350] * 10)
    np.testing.assert_array_equal(np.bincount(sp.test.y), [100] * 10)
    again = data.make_splits(data.load_mnist5k())
    np.testing.assert_array_equal(again.train.x, sp.train.x)
    other = data.make_splits(data.load_mnist5k(), seed=1)
    assert not np.array_equal(other.train.y, sp.train.y)
    rows = lambda d: {r.tobytes() for r in (d.x * 255).astype(np.uint8)}
    assert not rows(sp.train) & rows(sp.test)  # no exact duplicate images across splits


@pytest.mark.parametrize("req, n_forget", [
    (data.ForgetRequest(classes=(3,)), 350),
    (data.ForgetRequest(classes=(1, 7)), 700),
    (data.ForgetRequest(fraction=0.1, seed=4), 350),
    (data.ForgetRequest(indices=(0, 5, 9)), 3),
])
def test_forget_requests(mnist_splits, req, n_forget):
    fs = data.resolve_forget(mnist_splits.train, req)
    assert len(fs.forget) == n_forget and len(fs.retain) == 3500 - n_forget
    assert not set(fs.forget_idx) & set(fs.retain_idx)
    if req.classes:
        assert set(fs.forget.y.tolist()) == set(req.classes)
        assert not set(fs.retain.y.tolist()) & set(req.classes)
    assert data.ForgetRequest.from_json(req.to_json()) == req


def test_random_fraction_depends_on_seed(mnist_splits):
    a = data.resolve_forget(mnist_splits.train, data.ForgetRequest(fraction=0.3, seed=0))
    b = data.resolve_forget(mnist_splits.train, data.ForgetRequest(fraction=0.3, seed=0))
    c = data.resolve_forget(mnist_splits.train, data.ForgetRequest(fraction=0.3, seed=1))
    np.testing.assert_array_equal(a.forget_idx, b.forget_idx)
    assert not np.array_equal(a.forget_idx, c.forget_idx)


@pytest.mark.parametrize("kwargs, match", [
    (dict(classes=(10,)), "class 10 does not exist"),
    (dict(classes=(-1,)), "does not exist"),
    (dict(classes=tuple(range(10))), "whole training set"),
    (dict(indices=(0, 3500)), "out of range"),
    (dict(indices=(-1,)), "out of range"),
])
def test_bad_requests_resolve(mnist_splits, kwargs, match):
    with pytest.raises(ForgetRequestError, match=match):
        data.resolve_forget(mnist_splits.train, data.ForgetRequest(**kwargs))


@pytest.mark.parametrize("kwargs, match", [
    (dict(classes=()), "empty"),
    (dict(indices=()), "empty"),
    (dict(indices=(1, 1)), "duplicated"),
    (dict(classes=(2, 2)), "duplicated"),
    (dict(fraction=0.0), "between 0 and 1"),
    (dict(fraction=1.0), "between 0 and 1"),
    (dict(fraction=1.5), "between 0 and 1"),
    (dict(), "exactly one"),
    (dict(classes=(1,), fraction=0.1), "exactly one"),
])
def test_bad_requests_construct(kwargs, match):
    with pytest.raises(ForgetRequestError, match=match):
        data.ForgetRequest(**kwargs)


def test_errors_are_value_errors():
    assert issubclass(ForgetRequestError, ValueError) and issubclass(DataError, ValueError)


def test_batching_deterministic_given_seed():
    a = data.batch_indices(7, 3, 1000, 128)
    assert a.shape == (7, 128) and len(set(a.ravel())) == 7 * 128
    np.testing.assert_array_equal(a, data.batch_indices(7, 3, 1000, 128))
    assert not np.array_equal(a, data.batch_indices(7, 4, 1000, 128))
    assert not np.array_equal(a, data.batch_indices(8, 3, 1000, 128))
    assert data.batch_indices(0, 0, 10, 32).shape == (1, 32)  # small sets wrap


def test_bad_arrays_rejected():
    with pytest.raises(DataError, match="NaN"):
        data.from_arrays(np.full((4, 2, 2, 1), np.nan, np.float32), np.zeros(4))
    with pytest.raises(DataError, match=r"\(N, H, W, C\)"):
        data.from_arrays(np.zeros((4, 784), np.float32), np.zeros(4))
    with pytest.raises(DataError, match="labels"):
        data.from_arrays(np.zeros((4, 2, 2, 1), np.float32), np.zeros(3))
    with pytest.raises(DataError, match="unknown dataset"):
        data.load_dataset("imagenet")


def test_augment_affine_copies_are_seeded_transforms_of_the_images():
    rng = np.random.default_rng(0)
    x = np.zeros((6, 12, 12, 2), np.float32)
    x[:, 4:8, 3:9] = rng.random((6, 4, 6, 2))          # a blob away from the border
    ds = data.from_arrays(x, np.arange(6) % 3, num_classes=3)
    a = data.augment_affine(ds, copies=3, seed=1)
    assert a.x.shape == (18, 12, 12, 2) and a.y.tolist() == ds.y.tolist() * 3
    np.testing.assert_array_equal(a.x[:6], x)           # the first copy is the data itself
    np.testing.assert_array_equal(a.x, data.augment_affine(ds, copies=3, seed=1).x)
    assert not np.allclose(a.x[6:12], data.augment_affine(ds, copies=3, seed=2).x[6:12])
    assert not np.allclose(a.x[6:12], x)
    # Small rotations / zooms / shifts keep the blob's mass (bilinear, nothing pushed out).
    mass = a.x.reshape(3, 6, -1).sum(-1)
    np.testing.assert_allclose(mass[1:] / mass[0], 1.0, atol=0.3)
    # No transform at all reproduces the images (both channels alike).
    same = data.augment_affine(ds, copies=2, seed=1, rotate=0, shift=0, scale=0)
    np.testing.assert_allclose(same.x[6:], x, atol=1e-6)


@pytest.mark.parametrize("copies", [0, -1, 1.5, True])
def test_augment_affine_refuses_bad_copies(copies):
    ds = data.from_arrays(np.zeros((2, 4, 4, 1)), np.array([0, 1]))
    with pytest.raises(DataError, match="copies"):
        data.augment_affine(ds, copies=copies)


def test_requests_from_jax_arrays_and_json_round_trips():
    import jax.numpy as jnp

    assert data.ForgetRequest(classes=jnp.array([3, 5])).classes == (3, 5)
    assert data.ForgetRequest(indices=jnp.arange(3)).indices == (0, 1, 2)
    with pytest.raises(ForgetRequestError, match="must be a sequence"):
        data.ForgetRequest(classes=jnp.array(3))
    for req in (data.ForgetRequest(classes=(2, 6)), data.ForgetRequest(fraction=0.1, seed=4),
                data.ForgetRequest(indices=(9, 1))):
        back = data.ForgetRequest.from_json(req.to_json())
        assert back == req and hash(back) == hash(req)
        assert data.ForgetRequest.from_json(__import__("json").dumps(req.to_json())) == req


def test_from_arrays_keeps_whole_number_float_labels_and_scales_uint8():
    x = np.random.default_rng(0).random((6, 4, 4, 1)).astype(np.float32)
    ds = data.from_arrays(x, np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))
    assert ds.y.dtype == np.int32 and list(ds.y) == [0, 1, 2, 0, 1, 2]
    u8 = data.from_arrays((x * 255).astype(np.uint8), ds.y)
    assert u8.x.dtype == np.float32 and u8.x.max() <= 1.0
    import jax.numpy as jnp                     # JAX's bfloat16 is ml_dtypes', not np.floating
    bf = data.from_arrays(x.astype(jnp.bfloat16), ds.y)
    assert bf.x.dtype == np.float32 and np.allclose(bf.x, x, atol=1e-2)


def test_make_splits_of_a_fixed_split_honours_the_seed(digits_splits):
    """A tfds source arrives as Splits; make_splits returned it unchanged whatever the seed, so
    `--split-seed 1 --dataset mnist` silently trained on the split of seed 0."""
    fixed = data.Splits(*digits_splits)              # stands in for load_dataset("mnist")
    assert data.make_splits(fixed, seed=0) is fixed  # seed 0: load_dataset's own split
    with pytest.raises(DataError, match="val_frac / test_frac do not apply"):
        data.make_splits(fixed, val_frac=0.5)         # was ignored without a word
    s1, s2 = data.make_splits(fixed, seed=1), data.make_splits(fixed, seed=1)
    assert s1.test is fixed.test                      # the official test split is kept
    assert (s1.val.x == s2.val.x).all()               # deterministic
    assert len(s1.val) == len(fixed.val) and len(s1.train) == len(fixed.train)
    assert not np.array_equal(s1.val.x, fixed.val.x)  # another seed, another validation set
    pool = {a.tobytes() for d in (fixed.train, fixed.val) for a in d.x}
    tr, va = ({a.tobytes() for a in d.x} for d in (s1.train, s1.val))
    assert not tr & va and tr | va == pool            # a partition of the same images
    assert (np.bincount(s1.val.y, minlength=10)
            == np.bincount(fixed.val.y, minlength=10)).all()                  # stratified


def test_make_splits_of_small_classes_fills_every_split():
    """Every class rounded on its own: classes of 5 or 8 images gave each 0 validation images
    (round(0.7·n) = round(0.8·n)), so 50 and 80 images were refused "use more data" where 70 and
    90 split. The remainders are then carried from class to class; larger classes keep the
    library's splits."""
    rng = np.random.default_rng(0)
    for per in (3, 5, 8):
        y = np.repeat(np.arange(10), per)
        ds = data.from_arrays(rng.random((len(y), 4, 4, 1), np.float32), y, 10)
        s = data.make_splits(ds)
        n = len(y)
        assert [len(s.train), len(s.val), len(s.test)] == [round(0.7 * n), round(0.1 * n),
                                                           round(0.2 * n)]
        rows = np.concatenate([s.train.x, s.val.x, s.test.x]).reshape(n, -1)
        assert len(np.unique(rows, axis=0)) == n                   # disjoint, every row once
        for part in (s.train, s.val, s.test):                      # each class within one
            share = np.bincount(part.y, minlength=10)
            assert share.max() - share.min() <= 1 + (part is s.train) * per
    # Uneven classes and a small validation share carried a deficit below zero: a negative
    # count put one image in both the train and the test split.
    y = np.repeat(np.arange(6), [3, 8, 6, 5, 3, 5])
    x = rng.random((len(y), 4, 4, 1), np.float32)
    s = data.make_splits(data.from_arrays(x, y, 6), val_frac=0.02, test_frac=0.2)
    assert sum(map(len, s)) == len(y), [len(p) for p in s]
    rows = np.concatenate([s.train.x, s.val.x, s.test.x]).reshape(len(y), -1)
    assert len(np.unique(rows, axis=0)) == len(y)
    big = data.from_arrays(rng.random((200, 4, 4, 1), np.float32), np.repeat(np.arange(10), 20),
                           10)
    assert [len(p) for p in data.make_splits(big)] == [140, 20, 40]


def test_make_splits_refuses_labels_outside_num_classes():
    """A hand-built Dataset whose labels exceed num_classes lost those samples from every
    split without a word (classes are split by range(num_classes))."""
    x = np.zeros((60, 4, 4, 1), np.float32)
    ds = data.Dataset(x, np.repeat(np.arange(3, dtype=np.int32), 20), 2, "direct")
    with pytest.raises(DataError, match="20 labels outside the class ids 0..1"):
        data.make_splits(ds)


@pytest.mark.parametrize("labels, match", [
    (lambda y: np.eye(3, dtype=np.int32)[y], r"labels of shape \(60, 3\).*y.argmax\(-1\)"),
    (lambda y: y[:45], "60 images but 45 labels"),
    (lambda y: y.astype(np.float32), r"labels of dtype float32; .*y.astype\(np.int32\)"),
])
def test_hand_built_dataset_with_labels_of_another_layout_is_refused(labels, match):
    """A Dataset built directly with one-hot labels crashed make_splits and resolve_forget with
    numpy's IndexError (or picked wrong rows); with fewer labels than images, the images past
    the last label were dropped from every split and request without a word; float labels
    passed both and were refused only later, by fit or unlearn."""
    y = np.repeat(np.arange(3, dtype=np.int32), 20)
    if "images but" in match:     # refused by the Dataset itself since stop 62
        with pytest.raises(DataError, match=match):
            data.Dataset(np.zeros((60, 4, 4, 1), np.float32), labels(y), 3, "direct")
        return
    ds = data.Dataset(np.zeros((60, 4, 4, 1), np.float32), labels(y), 3, "direct")
    with pytest.raises(DataError, match=match):
        data.make_splits(ds)
    with pytest.raises(DataError, match=match):
        data.resolve_forget(ds, data.ForgetRequest(classes=(1,)))


def test_forget_fraction_is_a_plain_float():
    import json

    req = data.ForgetRequest(fraction=np.float32(0.25))
    assert type(req.fraction) is float
    assert json.loads(json.dumps(req.to_json()))["fraction"] == 0.25


def test_feature_vectors_are_told_how_to_fit_the_image_layout():
    x = np.random.default_rng(0).uniform(size=(6, 5)).astype(np.float32)
    with pytest.raises(DataError, match=r"feature vectors: x.reshape\(N, D, 1, 1\)"):
        data.from_arrays(x, np.arange(6) % 2, 2, "tab")
    assert data.from_arrays(x.reshape(6, 5, 1, 1), np.arange(6) % 2, 2, "tab").x.shape[1:] \
        == (5, 1, 1)


def test_wrapped_stream_is_its_passes_in_order():
    """``count`` batches are the first batches of consecutive passes, pass ``e`` shuffled by
    ``default_rng([seed, tag, e])`` (the plan keeps a running total: re-summing every pass made
    it O(passes²), 8.7 s for a 1-sample forget set's 16,000 passes)."""
    passes = [data.wrapped_batches(np.random.default_rng([3, 1, e]), 5, 2) for e in range(40)]
    want = np.concatenate(passes)
    for count in (1, 3, 7, 50):
        np.testing.assert_array_equal(data.wrapped_stream(3, 1, 5, 2, count), want[:count])


def test_from_arrays_scales_uint8_images_with_one_float32_copy():
    """uint8 → float32 in [0, 1] with one float32 copy at a time (a division into a second copy
    doubled the peak: 1.1 GB for CIFAR-10's training set), and the same values as x / 255."""
    import tracemalloc

    x = np.random.default_rng(0).integers(0, 256, (2000, 8, 8, 3)).astype(np.uint8)
    tracemalloc.start()
    ds = data.from_arrays(x, np.arange(2000) % 10, 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.6 * x.size * 4, peak / (x.size * 4)
    np.testing.assert_array_equal(ds.x, x.astype(np.float32) / 255.0)


def test_batch_plans_against_their_permutations():
    """batch_indices is the epoch's permutation, in order, its ragged tail dropped (a plan that
    dropped the head or reused another epoch's order trains on other batches);
    wrapped_batches is one pass in which every item appears, the last batch wrapping to the
    start of the pass (none dropped)."""
    for n, bs in ((1000, 128), (10, 3), (5, 5)):
        perm = data.epoch_permutation(7, 3, n)
        want = perm[:n // bs * bs].reshape(-1, bs)
        np.testing.assert_array_equal(data.batch_indices(7, 3, n, bs), want)
    np.testing.assert_array_equal(data.batch_indices(7, 3, 3, 8).ravel(),
                                  np.resize(data.epoch_permutation(7, 3, 3), 8))
    for n, bs in ((10, 3), (9, 3), (2, 5)):
        perm = np.random.default_rng(5).permutation(n)
        got = data.wrapped_batches(np.random.default_rng(5), n, bs)
        assert got.shape == (-(-n // bs), bs)
        np.testing.assert_array_equal(got.ravel()[:n], perm)
        np.testing.assert_array_equal(got.ravel()[n:], np.resize(perm, got.size - n))


def test_forget_fraction_rounds_to_the_nearest_count_and_seeds_redraw_validation(
        digits_splits):
    """A fraction forgets round(fraction · n) samples (0.29 of 10: 3, not the truncated 2);
    each split seed draws its own validation set from a fixed split (seeds 1 and 2 alike would
    make a seed sweep repeat one split)."""
    ds = data.from_arrays(np.zeros((10, 2, 2, 1), np.float32), np.arange(10) % 2, 2)
    for f, k in ((0.29, 3), (0.31, 3), (0.5, 5), (0.94, 9)):
        assert data.forget_mask(ds, data.ForgetRequest(fraction=f)).sum() == k
    fixed = data.Splits(*digits_splits)
    v1, v2 = (data.make_splits(fixed, seed=s).val for s in (1, 2))
    assert not np.array_equal(v1.x, v2.x)


def test_subset_refuses_indices_outside_the_dataset():
    """``subset([-1])`` gave the last example (NumPy's wrap-around) and a JAX array of images
    clamps past the end: both are refused with the valid range; a boolean mask still works."""
    ds = data.from_arrays(np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) / 5,
                          np.arange(5) % 2, 2)
    for idx in ([-1], [0, 5], np.array([-5])):
        with pytest.raises(DataError, match=r"has 5 examples \(indices 0\.\.4\)"):
            ds.subset(idx)
    with pytest.raises(DataError, match="1-D sequence of example indices"):
        ds.subset(np.array([[0, 1]]))
    jds = ds.replace(x=jax.numpy.asarray(ds.x))
    with pytest.raises(DataError, match="out of range"):
        jds.subset([5])
    assert ds.subset(ds.y == 1).y.tolist() == [1, 1] and len(ds.subset([])) == 0
    assert np.array_equal(ds.subset([4, 0]).x.ravel(), np.float32([0.8, 0.0]))


def test_shared_rows_refuse_a_split_that_names_one_row_twice():
    """A split whose index names one row for two different images cannot be a gather from one
    set of rows: shared_rows must give copies (None), not the second image twice."""
    ds = data.from_arrays(np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1) / 8,
                          np.arange(8) % 2, 2)
    split = lambda f, r, rows: data.ForgetSplit(ds.subset(rows), ds.subset(r), np.array(f),
                                                np.array(r))
    good = split([0, 1], [2, 3, 4, 5], [0, 1])
    dup = split([6, 6], [2, 3, 4, 5], [6, 7])          # row 6 named for images 6 and 7
    rows = data.shared_rows([good, dup])
    for k, sp in enumerate([good, dup]):
        assert rows is None or np.array_equal(rows.x[rows.forget[k]], sp.forget.x)


def test_from_arrays_checks_label_range_before_the_int32_cast():
    """An int64 (or uint64, float) label of 2**32 + 3 wrapped to class 3 in the int32 cast and
    passed the range check: a sample silently relabelled. 1-based labels are told the fix."""
    x = np.zeros((4, 2, 2, 1), np.float32)
    for y in (np.array([0, 1, 2, 2**32 + 3], np.int64), np.array([0, 1, 2, 2**63 + 3], np.uint64),
              np.array([0.0, 1.0, 2.0, 2.0**32 + 3])):
        with pytest.raises(DataError, match=r"lie in \[0, 10\), got \[0, \d{10,}\]"):
            data.from_arrays(x, y, 10)
    with pytest.raises(DataError, match=r"got \[1, 4\] \(1-based labels\? pass y - 1\)"):
        data.from_arrays(x, np.array([1, 2, 3, 4]), 4)
    assert data.from_arrays(x, np.array([0, 1, 2, 3], np.int64), 4).y.dtype == np.int32


def test_a_guessed_num_classes_with_empty_classes_is_refused():
    """Without num_classes, labels 1..4 read as 5 classes (an empty class 0) and {0, 2, 5} as
    6: every model got extra outputs, the per-class accuracy a NaN, ∇τ's τ the wrong K."""
    x = np.zeros((4, 2, 2, 1), np.float32)
    with pytest.raises(DataError, match=r"guessed as 5 .* 1 class id\(s\) below it have no "
                                        r"sample \(0\); 1-based labels\? pass y - 1; "):
        data.from_arrays(x, np.array([1, 2, 3, 4]))
    with pytest.raises(DataError, match=r"guessed as 6 .* \(1, 3, 4\); renumber .* pass "
                                        r"num_classes=6 if"):
        data.from_arrays(x, np.array([0, 2, 5, 5]))
    assert data.from_arrays(x, np.array([0, 2, 5, 5]), 6).num_classes == 6  # meant: allowed
    # Labels from 2 up are told the shift that makes them 0-based (y - 1 was refused again).
    with pytest.raises(DataError, match=r"\(0, 1\); labels numbered from 2\? pass y - 2; "):
        data.from_arrays(x, np.array([2, 3, 4, 4]))
    assert data.from_arrays(x, np.array([2, 3, 4, 4]) - 2).num_classes == 3
    # Over a million ids the missing ones are not listed: no empty "()".
    with pytest.raises(DataError, match=r"1999998 class id\(s\) below it have no sample; "):
        data.from_arrays(x, np.array([0, 1999999, 0, 0]))
    assert data.from_arrays(x, np.array([0, 1, 3, 2])).num_classes == 4


def test_hand_built_dataset_checks_num_classes_and_takes_lists():
    """hf.Dataset(x, y, None, ...) trained a 10-output model without a word (fit) and crashed
    make_splits with a TypeError; labels given as a list crashed with an AttributeError."""
    x = np.zeros((30, 2, 2, 1), np.float32)
    y = [0, 1, 2] * 10
    for k in (None, 3.0, True, 0):
        with pytest.raises(DataError, match="num_classes must be an integer >= 1"):
            data.Dataset(x, np.asarray(y), k, "direct")
    ds = data.Dataset(list(x), y, np.int64(3), "direct")
    assert type(ds.num_classes) is int and ds.y.shape == (30,) and len(ds) == 30
    assert len(data.make_splits(ds).train) == 21


def test_num_classes_as_a_jax_integer_is_taken_by_dataset_and_from_arrays():
    """``y.max() + 1`` of JAX labels (a 0-d JAX integer) was refused as "not an integer" by
    both checks, which were two copies of one rule; bools and JAX floats still are."""
    import jax.numpy as jnp

    x, y = np.zeros((6, 2, 2, 1), np.float32), np.array([0, 1, 2] * 2)
    for make in (lambda k: data.Dataset(x, y, k, "direct"),
                 lambda k: data.from_arrays(x, y, num_classes=k)):
        ds = make(jnp.asarray(y).max() + 1)
        assert type(ds.num_classes) is int and ds.num_classes == 3
        for bad in (jnp.bool_(True), jnp.float32(3), np.bool_(True)):
            with pytest.raises(DataError, match="num_classes must be an integer >= 1"):
                make(bad)


def test_forget_indices_given_as_a_boolean_mask_are_told_np_flatnonzero():
    import jax.numpy as jnp

    mask = np.zeros(10, bool)
    mask[[2, 5]] = True
    for m in (mask, jnp.asarray(mask)):
        with pytest.raises(ForgetRequestError, match=r"boolean mask of 10 entries.*"
                                                     r"indices=np.flatnonzero\(mask\)"):
            data.ForgetRequest(indices=m)
    assert data.ForgetRequest(indices=np.flatnonzero(mask)).indices == (2, 5)


def test_registered_models_tell_flat_or_channel_less_images_their_layout():
    from hyperforget_jax import models
    from hyperforget_jax.errors import ConfigError

    for shape in ((64,), (8, 8)):
        with pytest.raises(ConfigError, match=r"x\[\.\.\., None\].*x.reshape\(N, H, W, C\)"):
            models.make_architecture("mlp", shape, 10)


def test_a_class_missing_from_the_train_split_is_named_as_such():
    """A class with no training sample (here: labels 0..2 of a 4-class dataset) was refused
    with only "forget set for class 3 is empty", which names no cause or fix."""
    train = data.from_arrays(np.zeros((60, 2, 2, 1), np.float32), np.arange(60) % 3, 4)
    with pytest.raises(ForgetRequestError, match="no training sample has that class"):
        data.resolve_forget(train, data.ForgetRequest(classes=(3,)))


def test_a_class_request_with_one_class_missing_from_the_train_split_is_refused():
    """Classes (1, 3) with no training sample of 3 forgot class 1 alone, recorded as 1+3: the
    evaluation then counted class 3's test images (never trained on) as forgotten."""
    train = data.from_arrays(np.zeros((60, 2, 2, 1), np.float32), np.arange(60) % 3, 4)
    with pytest.raises(ForgetRequestError, match=r"class 1\+3 .*no training sample has that "
                                                 r"class \(3:"):
        data.forget_mask(train, data.ForgetRequest(classes=(1, 3)))
    assert data.forget_mask(train, data.ForgetRequest(classes=(1, 2))).sum() == 40


def test_row_hashes_of_a_subset_are_its_parent_s_and_survive_pickling():
    import pickle

    x = np.random.default_rng(0).random((50, 4, 4, 1)).astype(np.float32)
    ds = data.from_arrays(x, np.arange(50) % 5)
    sub = ds.subset(np.array([7, 3, 3, 40]))
    alone = data.row_hashes(data.from_arrays(sub.x.copy(), sub.y, 5))
    np.testing.assert_array_equal(data.row_hashes(sub), alone)       # from the parent's
    assert alone[1] == alone[2] and alone[0] != alone[1]
    back = pickle.loads(pickle.dumps(sub))      # the cache's weak reference is not pickled
    np.testing.assert_array_equal(data.row_hashes(back), alone)


def test_held_out_rows_equal_to_training_rows_are_refused_only_for_distinct_data():
    rng = np.random.default_rng(0)
    imgs = rng.random((120, 4, 4, 1)).astype(np.float32)
    train = data.from_arrays(imgs[:100], np.arange(100) % 5)
    with pytest.raises(DataError, match="20 of the 20 images of the check set are training"):
        data.refuse_training_rows(train.subset(np.arange(20)), "the check set", "fix", train)
    data.refuse_training_rows(data.from_arrays(imgs[100:], np.arange(20) % 5), "x", "f", train)
    # Binary features repeat within the training set itself: equal rows are no sign of the
    # wrong set (a made-up 10-feature set's validation split read "260 of 300").
    bits = rng.integers(0, 2, (400, 10, 1, 1)).astype(np.float32)
    binary = data.from_arrays(bits[:300], np.arange(300) % 2)
    data.refuse_training_rows(data.from_arrays(bits[300:], np.arange(100) % 2), "x", "f", binary)



def test_training_rows_in_another_float_dtype_are_still_training_rows():
    """A hand-built Dataset keeps its dtype: a float64 copy of training images hashed to other
    bytes and passed as unseen data; bfloat16 images failed in memoryview ("cannot include
    dtype 'E'") when hashed or fingerprinted."""
    import ml_dtypes

    from hyperforget_jax import rundir

    rng = np.random.default_rng(0)
    imgs = rng.random((60, 4, 4, 1)).astype(np.float32)
    train = data.from_arrays(imgs, np.arange(60) % 5)
    for dtype in (np.float64, np.float16, ml_dtypes.bfloat16):
        copy = data.Dataset(imgs[:20].astype(dtype), train.y[:20], 5, "copy")
        if dtype is np.float64:      # the same values: the same rows
            np.testing.assert_array_equal(data.row_hashes(copy), data.row_hashes(train)[:20])
        with pytest.raises(DataError, match="of the 20 images of the check set are training"):
            data.refuse_training_rows(copy, "the check set", "fix",
                                      data.Dataset(imgs.astype(dtype), train.y, 5, "t"))
        assert len(rundir.array_fingerprint(copy.x)) == 24
    # Float32 rows hash as before (the bytes hashed are the same).
    import hashlib
    want = int.from_bytes(hashlib.blake2b(imgs[0].tobytes(), digest_size=8).digest(), "little")
    assert int(data.row_hashes(train)[0]) == want


@pytest.mark.parametrize("kw", [{"rotate": float("nan")}, {"shift": float("inf")},
                                {"scale": 1.5}, {"rotate": -5}, {"rotate": "12"}])
def test_augment_affine_refuses_ranges_that_are_no_ranges(kw):
    # NaN / inf raised an OverflowError deep in numpy, -5 numpy's "high - low < 0", "12" a
    # TypeError.
    ds = data.from_arrays(np.zeros((2, 4, 4, 1), np.float32), np.arange(2))
    with pytest.raises(DataError, match=f"augment_affine: {next(iter(kw))}="):
        data.augment_affine(ds, 2, **kw)


def test_splits_scale_with_the_classes_present_not_num_classes():
    """make_splits looped over range(num_classes): 10**5 took seconds, 10**13 a MemoryError;
    the splits of the classes present are the same."""
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 2, 2, 1)).astype(np.float32), np.arange(200) % 10
    few = data.make_splits(data.from_arrays(x, y, 10), seed=3)
    many = data.make_splits(data.from_arrays(x, y, 10**13), seed=3)
    for a, b in zip(few, many):
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.x, b.x)


def test_images_only_hashes_an_array_once_and_forgets_it_with_the_array():
    """evaluate_gan wraps the same retain set once per run compared: each call hashed all of it
    again (0.25 s for 60,000 MNIST images)."""
    import gc

    x = np.random.default_rng(0).random((50, 4, 4, 1)).astype(np.float32)
    first = data.row_hashes(data.images_only(x, "a"))
    assert data.row_hashes(data.images_only(x, "b")) is first
    assert data.row_hashes(data.images_only(x.copy(), "c")) is not first   # another array
    key = id(x)
    del x
    gc.collect()
    assert key not in data._IMAGE_HASHES           # the array is not kept alive


def test_a_request_takes_jax_scalars_as_numpy_ones():
    """A JAX scalar fraction or class id was refused ("must be a number", "must be integers")
    where the NumPy one was taken (stop 64)."""
    import jax.numpy as jnp

    assert data.ForgetRequest(fraction=jnp.float32(0.25)) == data.ForgetRequest(fraction=0.25)
    assert data.ForgetRequest(classes=(jnp.int32(3), np.int64(4))).classes == (3, 4)
    assert data.ForgetRequest(indices=[jnp.int32(7), 2]).indices == (7, 2)
    with pytest.raises(ForgetRequestError, match="must be a number in"):
        data.ForgetRequest(fraction=jnp.bool_(True))
    with pytest.raises(ForgetRequestError, match="must be integers"):
        data.ForgetRequest(classes=(jnp.float32(2.5),))
