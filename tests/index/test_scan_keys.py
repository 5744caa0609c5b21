"""The small compiled helpers of the top-k candidate selection (``deepmetric.index._scan``), checked against
independent numpy / torch references: order keys of raw float bits, the value of a key, the threshold key of
a float64 bound, and the fixed float32 re-scoring arithmetic. bfloat16 is checked exhaustively (all 65536
bit patterns), float32 on a large random sample plus edge cases."""

import numba
import numpy as np
import pytest
import torch

from deepmetric.index._scan import _ceil_key, _key, _key_value, pair_score

MASK16, MASK32 = np.int16(0x7FFF), np.int32(0x7FFFFFFF)
SHIFT = {"bfloat16": 16, "float32": 0}
MIN_NORMAL = 2.0 ** -126  # the same for both formats (8 exponent bits)
MIN_SUBNORMAL = {"bfloat16": 2.0 ** -133, "float32": 2.0 ** -149}


# _key and pair_score are inline="always" helpers meant to be called from compiled code: the wrappers below
# call every helper the way the scan does, from a jitted loop
@numba.njit
def keys_of(bits, mask):
    out = np.empty(bits.shape[0], np.int64)
    for i in range(bits.shape[0]):
        out[i] = _key(bits[i], mask)
    return out


@numba.njit
def values_of(keys, shift):
    out = np.empty(keys.shape[0], np.float64)
    for i in range(keys.shape[0]):
        out[i] = _key_value(keys[i], shift)
    return out


@numba.njit
def ceil_keys_of(values, shift):
    out = np.empty(values.shape[0], np.int64)
    for i in range(values.shape[0]):
        out[i] = _ceil_key(values[i], shift)
    return out


@numba.njit
def scores_of(queries, items, euclidean):
    out = np.empty(queries.shape[0], np.float32)
    for i in range(queries.shape[0]):
        out[i] = pair_score(queries[i], items[i], euclidean)
    return out


@numba.njit
def one_score(query, item, euclidean):
    return pair_score(query, item, euclidean)


@pytest.fixture(scope="module")
def bfloat16_table():
    """Every non-NaN bfloat16: raw int16 bits and exact float64 values, in bit-pattern order."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(torch.bfloat16).to(torch.float64).numpy()
    keep = ~np.isnan(values)
    return bits.numpy()[keep], values[keep]


@pytest.fixture(scope="module")
def float32_sample():
    """Distinct non-NaN float32 bit patterns: uniformly random bits (every exponent, ~1/256 subnormal),
    normals of every magnitude, and ±0, ±inf, the powers of two, the extreme finite, normal and subnormal
    values with their float32 neighbours."""
    rng = np.random.default_rng(0)
    random_bits = rng.integers(-2 ** 31, 2 ** 31, size=1_000_000).astype(np.int32)
    with np.errstate(over="ignore", under="ignore"):
        spread = (rng.normal(size=200_000) * 10.0 ** rng.uniform(-46, 39, size=200_000)).astype(np.float32)
    f32 = np.finfo(np.float32)
    powers = 2.0 ** np.arange(-149, 128)  # with their neighbours below: all-ones mantissas
    edges = np.array([0.0, f32.max, f32.tiny, f32.smallest_subnormal, f32.tiny - f32.smallest_subnormal, 0.1, 3.0],
                     np.float32)
    edges = np.concatenate([edges, powers.astype(np.float32)])
    with np.errstate(over="ignore"):
        edges = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0))])
    edges = np.concatenate([edges, -edges, np.array([np.inf, -np.inf], np.float32)])
    bits = np.unique(np.concatenate([random_bits, spread.view(np.int32), edges.view(np.int32)]))
    values = bits.view(np.float32)
    keep = ~np.isnan(values)
    return bits[keep], values[keep].astype(np.float64)


def check_key_order(keys, values):
    """Keys of distinct bit patterns are distinct and order like the values, -0.0 (key -1) just below +0.0
    (key 0): sorted by key, the values strictly increase except from -0.0 to +0.0."""
    assert len(np.unique(keys)) == len(keys)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    steps = np.diff(values)
    assert (steps >= 0).all(), "a larger key has a smaller value"
    flat = np.flatnonzero(steps == 0)
    assert len(flat) == 1 and values[flat[0]] == 0.0, "only -0.0 and +0.0 may share a value"
    assert keys[flat[0]] == -1 and np.signbit(values[flat[0]]) and keys[flat[0] + 1] == 0
    assert not np.signbit(values[flat[0] + 1])


def test_key_bfloat16_exhaustive(bfloat16_table):
    bits, values = bfloat16_table
    keys = keys_of(bits, MASK16)
    check_key_order(keys, values)
    # the documented map: non-negative patterns are their own key, negative ones have their magnitude flipped
    np.testing.assert_array_equal(keys, np.where(bits >= 0, bits, bits ^ MASK16))
    # a direct (non-jitted) call agrees with the compiled one
    assert _key(np.int16(-32768), MASK16) == -1 and _key(np.int16(0), MASK16) == 0
    minus_one = np.flatnonzero(values == -1.0)[0]
    assert _key(bits[minus_one], MASK16) == keys[minus_one] == -1 - 0x3F80


def test_key_float32_sample(float32_sample):
    bits, values = float32_sample
    keys = keys_of(bits, MASK32)
    check_key_order(keys, values)
    np.testing.assert_array_equal(keys, np.where(bits >= 0, bits, bits ^ MASK32))
    assert np.isinf(values).sum() == 2 and (values == np.finfo(np.float32).max).any()


def test_key_value_bfloat16_exhaustive(bfloat16_table):
    bits, values = bfloat16_table
    keys = keys_of(bits, MASK16)
    for key_type in (np.int64, np.int16):  # the scan passes both int64 bucket keys and int16 lane keys
        decoded = values_of(keys.astype(key_type), 16)
        np.testing.assert_array_equal(decoded, values)  # ±0 -> 0.0 (== compares -0.0 and +0.0 equal)


def test_key_value_float32_sample(float32_sample):
    bits, values = float32_sample
    keys = keys_of(bits, MASK32)
    for key_type in (np.int64, np.int32):
        np.testing.assert_array_equal(values_of(keys.astype(key_type), 0), values)


def bound_sample(representable, rng):
    """float64 bounds: random in [-2, 2], the representable values, one float64 ulp either side of them, the
    midpoints between neighbours (and one ulp either side), tiny and huge values, zero."""
    finite = representable[np.isfinite(representable)]
    above = np.nextafter(finite, np.inf)
    below = np.nextafter(finite, -np.inf)
    ordered = np.unique(finite)
    midpoints = (ordered[:-1] + ordered[1:]) / 2  # exact: float64 holds the midpoint of two floats of 24 bits
    tiny = 10.0 ** rng.uniform(-330, -37, size=20_000) * rng.choice([-1.0, 1.0], size=20_000)
    huge = 10.0 ** rng.uniform(37, 308, size=20_000) * rng.choice([-1.0, 1.0], size=20_000)
    specials = np.array([0.0, -0.0, MIN_NORMAL, 2.0 ** 128, np.finfo(np.float64).max])
    with np.errstate(over="ignore"):
        specials = np.concatenate([specials, np.nextafter(specials, np.inf), np.nextafter(specials, -np.inf)])
    specials = np.concatenate([specials, -specials])
    values = np.concatenate([rng.uniform(-2, 2, size=200_000), finite, above, below, midpoints,
                             np.nextafter(midpoints, np.inf), np.nextafter(midpoints, -np.inf), tiny, huge,
                             specials])
    return values[np.isfinite(values)]


def float32_ceil_reference(values):
    """Smallest float32 order key whose value is >= each float64 ``value`` (with np.nextafter on float32)."""
    with np.errstate(over="ignore"):
        f = values.astype(np.float32)  # nearest: within one float32 ulp of the value
        low = f.astype(np.float64) < values
        f[low] = np.nextafter(f[low], np.float32(np.inf))
        assert (f.astype(np.float64) >= values).all()
        assert (np.nextafter(f, np.float32(-np.inf)).astype(np.float64) < values).all()
    bits = f.view(np.int32)
    keys = np.where(bits >= 0, bits, bits ^ MASK32).astype(np.int64)
    keys[f == 0] = -1  # -0.0 >= value too, and its key is below +0.0's
    return keys


def check_ceil_keys(fmt, values, result, reference):
    """Soundness everywhere: no key below the result has a value >= ``value`` (result <= the smallest key of
    value >= ``value``). Tightness except for 0 < value < 2^-126 (result: the key of -0.0) and values at or
    below -2^128 (result: the key of -inf, one below the key of the most negative finite value)."""
    assert (result <= reference).all(), values[result > reference][:10]
    tiny = (values > 0) & (values < MIN_NORMAL)
    huge_negative = values <= -2.0 ** 128
    assert tiny.sum() > 1000 and huge_negative.sum() > 1000  # the sample reaches both loose ranges
    tight = ~(tiny | huge_negative)
    np.testing.assert_array_equal(result[tight], reference[tight])
    assert (result[tiny] == -1).all()
    mantissa_bits = 23 - SHIFT[fmt]
    assert (result[huge_negative] == -1 - (255 << mantissa_bits)).all()
    # in the normal range the key's value is the bound itself (representable) or the next float above it
    normal = tight & (np.abs(values) > 1e-30) & (np.abs(values) < 1e30)
    assert normal.sum() > 100_000
    key_values = values_of(result[normal], SHIFT[fmt])
    below_values = values_of(result[normal] - 1, SHIFT[fmt])
    assert (key_values >= values[normal]).all() and (below_values < values[normal]).all()


def negative_subnormal_range(fmt, values):
    """Bounds in (-2^-126, 0) that some negative subnormal of the format reaches: checked on their own below."""
    return (values < 0) & (values > -MIN_NORMAL) & (values <= -MIN_SUBNORMAL[fmt])


def test_ceil_key_bfloat16(bfloat16_table):
    _, table_values = bfloat16_table
    values = bound_sample(table_values, np.random.default_rng(1))
    result = ceil_keys_of(values, 16)
    # reference: the first of all bfloat16 values, sorted by value, that is >= the bound (-0.0 stays before
    # +0.0: the table is in bit-pattern order and the sort is stable), and its key by the documented map
    bits = bfloat16_table[0]
    order = np.argsort(table_values, kind="stable")
    sorted_keys = np.where(bits >= 0, bits, bits ^ MASK16).astype(np.int64)[order]
    sorted_values = table_values[order]
    reference = sorted_keys[np.searchsorted(sorted_values, values, side="left")]
    check_ceil_keys("bfloat16", values, result, reference)


def test_ceil_key_float32(float32_sample):
    _, sample_values = float32_sample
    rng = np.random.default_rng(2)
    values = bound_sample(rng.choice(sample_values, size=300_000, replace=False), rng)
    check_ceil_keys("float32", values, ceil_keys_of(values, 0), float32_ceil_reference(values))


@pytest.mark.parametrize("fmt", ["bfloat16", "float32"])
def test_ceil_key_negative_subnormal_bounds(fmt):
    # -2^-127 is itself a (subnormal) value of both formats: the threshold key must not exceed its key
    bits = (np.array([-2.0 ** -127], np.float32).view(np.int32) >> SHIFT[fmt])
    key = np.where(bits >= 0, bits, bits ^ (MASK16 if fmt == "bfloat16" else MASK32))[0]
    values = np.array([-2.0 ** -127, -MIN_SUBNORMAL[fmt], -MIN_NORMAL * (1 - 2.0 ** -30)])
    result = ceil_keys_of(values, SHIFT[fmt])
    assert result[0] <= key
    assert (values_of(result - 1, SHIFT[fmt]) < values).all()


def reference_scores(queries, items, euclidean):
    """pair_score written independently in numpy, vectorised over pairs: eight float32 running sums over
    dimensions d = l (mod 8), each term rounded before it is added, a tail summed in order, then
    ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)) + tail, + 0; euclidean: minus the square root."""
    n, dim = queries.shape
    full = dim - dim % 8
    lanes = np.zeros((n, 8), np.float32)
    for d in range(0, full, 8):
        a, b = queries[:, d:d + 8], items[:, d:d + 8]
        lanes += (a - b) * (a - b) if euclidean else a * b
    tail = np.zeros(n, np.float32)
    for d in range(full, dim):
        a, b = queries[:, d], items[:, d]
        tail += (a - b) * (a - b) if euclidean else a * b
    s = lanes.T
    total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail
    return (-np.sqrt(total) if euclidean else total) + np.float32(0.0)


def score_data(dim, seed, n=300):
    """Pairs of plain normal vectors, and pairs with components of magnitudes 1e-25..1e15 (products from far
    below the smallest normal to 1e30; no overflow), some items close to the query (cancellation)."""
    rng = np.random.default_rng(seed)
    plain = rng.normal(size=(2, n, dim))
    mixed = rng.normal(size=(2, n, dim)) * 10.0 ** rng.uniform(-25, 15, size=(2, n, dim))
    near = mixed[0] * (1 + rng.normal(size=(n, dim)) * 1e-6)
    queries = np.concatenate([plain[0], mixed[0], mixed[0]]).astype(np.float32)
    items = np.concatenate([plain[1], mixed[1], near]).astype(np.float32)
    return queries, items


@pytest.mark.parametrize("euclidean", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 8, 13, 128, 130])
def test_pair_score_bit_exact(dim, euclidean):
    queries, items = score_data(dim, seed=dim)
    with np.errstate(under="ignore"):
        expected = reference_scores(queries, items, euclidean)
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(scores_of(queries, items, euclidean), expected)
    # +0 turns -0 into +0: a vector against itself (euclidean) or against zeros
    zero = scores_of(queries[:5], queries[:5] if euclidean else np.zeros_like(queries[:5]), euclidean)
    assert (zero == 0).all() and not np.signbit(zero).any()


def test_pair_score_order_matters():
    """The reference's summation order is not interchangeable with a plain one on this data, so the bit-exact
    comparison above tells the documented order from others."""
    queries, items = score_data(128, seed=128)
    products = queries * items
    sequential = np.zeros(len(queries), np.float32)
    for d in range(128):
        sequential += products[:, d]
    assert (sequential != reference_scores(queries, items, False)).sum() > 10


@pytest.mark.parametrize("dim", [3, 13, 130])
def test_pair_score_depends_only_on_the_two_vectors(dim):
    """Rows of wider arrays, strided views, Fortran-order rows, single pairs, reordered batches, swapped
    arguments: every way of passing the same two vectors gives the same bits."""
    queries, items = score_data(dim, seed=100 + dim, n=60)
    rng = np.random.default_rng(dim)
    for euclidean in (False, True):
        expected = reference_scores(queries, items, euclidean)
        wide_q = rng.normal(size=(len(queries), dim + 11)).astype(np.float32)
        wide_i = rng.normal(size=(len(items), dim + 11)).astype(np.float32)
        wide_q[:, 5:5 + dim], wide_i[:, 5:5 + dim] = queries, items
        strided_q = np.zeros((len(queries), 2 * dim), np.float32)
        strided_q[:, ::2] = queries
        np.testing.assert_array_equal(scores_of(wide_q[:, 5:5 + dim], wide_i[:, 5:5 + dim], euclidean), expected)
        np.testing.assert_array_equal(scores_of(strided_q[:, ::2], items, euclidean), expected)
        np.testing.assert_array_equal(scores_of(np.asfortranarray(queries), items, euclidean), expected)
        np.testing.assert_array_equal(scores_of(items, queries, euclidean), expected)
        order = rng.permutation(len(queries))
        np.testing.assert_array_equal(scores_of(queries[order], items[order], euclidean), expected[order])
        single = [one_score(queries[i].copy(), items[i].copy(), euclidean) for i in range(0, len(queries), 7)]
        np.testing.assert_array_equal(np.array(single, np.float32), expected[::7])
