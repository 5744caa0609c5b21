"""Compiled candidate selection for the exact top-k search (numba): one pass over each block of fast scores.

Fast scores arrive as raw bits, int16 for bfloat16 and int32 for float32, and are compared as order keys:
a non-negative bit pattern is its own key, a negative one has its magnitude bits flipped, so keys order
like the values (-0.0 just below +0.0). Every query row owns

- a min-heap of the k best keys it has been offered (distinct items, so the heap's minimum is a lower
  bound on the row's k-th best fast score, ``kth``),
- a threshold key, the smallest key of value >= ``kth - margin - 3 unit (|kth| + margin)`` (``margin`` is
  twice the row's proven error bound, ``unit`` the relative rounding of the fast scores' output; see
  ``topk._FastPass``), raised whenever the heap's minimum rises,
- a bounded list of (key, gallery id) candidates: every item offered whose key reached the threshold.

A full list is compacted to the candidates still at or above the threshold; a row whose list stays 3/4
full (thousands of tied scores) is flagged to be re-done exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

GROUPS = 16  # a block row's columns form 16 strided groups; a group is read item by item only if its maximum passes
ROW_GROUP = 16  # the transposed use tests groups of 16 block rows per column
COLUMN_SPAN = 256  # columns per thread task in the transposed use
ACCEPT_ALL = np.int32(-(1 << 31))  # threshold key before a row has a bound on its k-th best
ACCEPT_NONE = np.int32((1 << 31) - 1)  # threshold key of an overflowed row


@njit(inline="always")
def _key(bits, mask):
    """Order key of a float's bit pattern: itself when non-negative, else its magnitude bits flipped."""
    return bits ^ mask if bits < 0 else bits


@njit(cache=True)
def _key_value(key, shift):
    """float64 value of the order key of a float with 23 - shift mantissa bits (the top bits of a float32)."""
    magnitude = np.int64(key) if key >= 0 else -1 - np.int64(key)
    bits = magnitude << shift
    exponent, mantissa = bits >> 23, bits & 0x7FFFFF
    if exponent == 0:
        value = math.ldexp(float(mantissa), -149)
    elif exponent == 255:
        value = math.inf
    else:
        value = math.ldexp(float(mantissa + (1 << 23)), int(exponent) - 150)
    return value if key >= 0 else -value


@njit(cache=True)
def _ceil_key(value, shift):
    """An order key with nothing of value >= ``value`` below it: the smallest key whose value is >= ``value``
    (or one a little lower, around zero and the subnormals). ``value`` is a finite float64."""
    mantissa_bits = 23 - shift
    fraction, exponent = math.frexp(abs(value))  # |value| = fraction 2^exponent, fraction in [0.5, 1)
    biased = exponent + 126  # float32 biased exponent of |value|
    if value == 0 or biased <= 0:
        return np.int32(-1)  # -0.0: at or below every value >= a value this close to zero
    scaled = math.ldexp(fraction, mantissa_bits + 1)  # exact, in [2^p, 2^(p+1))
    if value > 0:
        significand = math.ceil(scaled)
        if significand == 1 << (mantissa_bits + 1):
            significand, biased = 1 << mantissa_bits, biased + 1
        if biased >= 255:
            return np.int32(255 << mantissa_bits)  # infinity
        return np.int32((biased << mantissa_bits) | (significand - (1 << mantissa_bits)))
    if biased >= 255:
        return np.int32(-1 - (255 << mantissa_bits))  # -infinity
    significand = math.floor(scaled)  # a negative value rounds towards zero, i.e. up
    return np.int32(-1 - ((biased << mantissa_bits) | (significand - (1 << mantissa_bits))))


@njit(cache=True)
def _raise_threshold(row, best, kth_key, threshold, margin, unit, shift):
    """A new lower bound ``best`` on the row's k-th best key raises its threshold."""
    if best > kth_key[row]:
        kth_key[row] = best
        kth = _key_value(best, shift)
        if math.isinf(kth):
            return
        widened = kth - margin[row] - 3.0 * unit * (abs(kth) + margin[row])
        threshold[row] = max(threshold[row], _ceil_key(widened, shift))


@njit(cache=True)
def _offer_heap(row, key, heap, heap_size, kth_key, threshold, margin, unit, shift):
    """Keep the k best keys offered to the row in a min-heap; a full heap's minimum bounds the k-th best."""
    k = heap.shape[1]
    size = heap_size[row]
    if size < k:  # sift up
        i = size
        while i > 0 and heap[row, (i - 1) // 2] > key:
            heap[row, i] = heap[row, (i - 1) // 2]
            i = (i - 1) // 2
        heap[row, i] = key
        heap_size[row] = size + 1
        if size + 1 == k:
            _raise_threshold(row, heap[row, 0], kth_key, threshold, margin, unit, shift)
        return
    if key <= heap[row, 0]:
        return
    i = 0  # replace the minimum, sift down
    while True:
        child = 2 * i + 1
        if child >= k:
            break
        if child + 1 < k and heap[row, child + 1] < heap[row, child]:
            child += 1
        if heap[row, child] >= key:
            break
        heap[row, i] = heap[row, child]
        i = child
    heap[row, i] = key
    _raise_threshold(row, heap[row, 0], kth_key, threshold, margin, unit, shift)


@njit(cache=True)
def _compact(row, cand_key, cand_id, count, threshold, overflow):
    """Drop the row's candidates below its threshold; flag the row if its list stays 3/4 full."""
    limit = threshold[row]
    kept = 0
    for i in range(count[row]):
        if cand_key[row, i] >= limit:
            cand_key[row, kept] = cand_key[row, i]
            cand_id[row, kept] = cand_id[row, i]
            kept += 1
    count[row] = kept
    if kept > cand_key.shape[1] - cand_key.shape[1] // 4:
        overflow[row] = True
        threshold[row] = ACCEPT_NONE
        count[row] = 0


@njit(inline="always")
def _append(row, key, item, cand_key, cand_id, count, heap, heap_size, kth_key, threshold, margin, unit, shift,
            overflow):
    _offer_heap(row, key, heap, heap_size, kth_key, threshold, margin, unit, shift)
    if key < threshold[row]:
        return
    if count[row] == cand_key.shape[1]:
        _compact(row, cand_key, cand_id, count, threshold, overflow)
        if overflow[row]:
            return
    n = count[row]
    cand_key[row, n] = key
    cand_id[row, n] = item
    count[row] = n + 1


@njit(parallel=True, cache=True)
def scan_rows(block, first_row, first_item, skip_self, self_offset, mask, cand_key, cand_id, count, heap, heap_size,
              kth_key, threshold, margin, unit, shift, overflow):
    """Row r of ``block`` scores state row ``first_row + r`` against items ``first_item + c``; with
    ``skip_self`` the item ``row + self_offset`` (the query itself) is left out.

    A row's columns form GROUPS strided groups (group p: columns p, p + width, ...); their maxima are taken
    with vector operations and only groups whose maximum reaches the threshold are read item by item. A row
    without a bound yet takes one from the (k+1)-th largest group maximum (maxima of disjoint item sets,
    one of which may be the query itself)."""
    rows, columns = block.shape
    k = heap.shape[1]
    width = (columns + GROUPS - 1) // GROUPS
    for chunk in prange((rows + 15) // 16):
        lane = np.empty(width, block.dtype)
        for r in range(chunk * 16, min(chunk * 16 + 16, rows)):
            row = first_row + r
            data = block[r]
            for p in range(width):
                lane[p] = _key(data[p], mask)
            for j in range(1, GROUPS):
                part = data[j * width:(j + 1) * width]  # slices indexed from 0 let the loops vectorise
                for p in range(part.shape[0]):
                    key = _key(part[p], mask)
                    lane[p] = key if key > lane[p] else lane[p]
            if kth_key[row] == ACCEPT_ALL and width > k:
                _raise_threshold(row, np.partition(lane, width - k - 1)[width - k - 1], kth_key, threshold,
                                 margin, unit, shift)
                for p in range(width):  # the partition reordered the lanes
                    lane[p] = _key(data[p], mask)
                for j in range(1, GROUPS):
                    part = data[j * width:(j + 1) * width]
                    for p in range(part.shape[0]):
                        key = _key(part[p], mask)
                        lane[p] = key if key > lane[p] else lane[p]
            limit = threshold[row]
            for p in range(width):
                if lane[p] < limit:
                    continue
                for c in range(p, columns, width):
                    key = _key(data[c], mask)
                    if key >= limit and not (skip_self and first_item + c == row + self_offset):
                        _append(row, key, first_item + c, cand_key, cand_id, count, heap, heap_size, kth_key,
                                threshold, margin, unit, shift, overflow)
                        limit = threshold[row]


@njit(parallel=True, cache=True)
def scan_columns(block, first_row, first_item, mask, cand_key, cand_id, count, heap, heap_size, kth_key, threshold,
                 margin, unit, shift, overflow):
    """The transposed use of a block: column c scores state row ``first_row + c`` against items
    ``first_item + r`` (row r). Threads own disjoint column ranges; per group of ROW_GROUP rows the column
    maxima are taken with vector operations and only columns whose maximum reaches their threshold are read."""
    rows, columns = block.shape
    low, high = -np.int64(mask) - 1, np.int64(mask)  # thresholds clipped to the range of the keys
    for chunk in prange((columns + COLUMN_SPAN - 1) // COLUMN_SPAN):
        start = chunk * COLUMN_SPAN
        stop = min(start + COLUMN_SPAN, columns)
        top = np.empty(stop - start, block.dtype)
        limit = np.empty(stop - start, block.dtype)
        for c in range(stop - start):
            limit[c] = min(max(threshold[first_row + start + c], low), high)
        for g in range(0, rows, ROW_GROUP):
            part = block[g, start:stop]  # slices indexed from 0 let the loops vectorise
            for c in range(part.shape[0]):
                top[c] = _key(part[c], mask)
            for r in range(g + 1, min(g + ROW_GROUP, rows)):
                part = block[r, start:stop]
                for c in range(part.shape[0]):
                    key = _key(part[c], mask)
                    top[c] = key if key > top[c] else top[c]
            for c in range(stop - start):
                if top[c] < limit[c]:
                    continue
                row = first_row + start + c
                for r in range(g, min(g + ROW_GROUP, rows)):
                    key = _key(block[r, start + c], mask)
                    if key >= threshold[row]:
                        _append(row, key, first_item + r, cand_key, cand_id, count, heap, heap_size, kth_key,
                                threshold, margin, unit, shift, overflow)
                limit[c] = min(max(threshold[row], low), high)


@njit(parallel=True, cache=True)
def finish(first_row, last_row, cand_key, cand_id, count, heap, heap_size, kth_key, threshold, margin, unit, shift,
           overflow):
    """Final compaction of rows first_row:last_row, so that each keeps only what can reach its top k."""
    for row in prange(first_row, last_row):
        if not overflow[row]:
            _compact(row, cand_key, cand_id, count, threshold, overflow)


@njit(inline="always")
def pair_score(query, item, euclidean):
    """The one float32 arithmetic of every reported score: 8 running sums over dimensions d = l (mod 8),
    each a rounded product (or squared difference) added in order, then ((s0 + s1) + (s2 + s3)) +
    ((s4 + s5) + (s6 + s7)); euclidean returns minus the square root. ``+ 0`` turns -0 into +0."""
    dim = query.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    full = dim - dim % 8
    for d in range(0, full, 8):
        if euclidean:
            t0, t1, t2, t3 = query[d] - item[d], query[d + 1] - item[d + 1], query[d + 2] - item[d + 2], query[d + 3] - item[d + 3]
            t4, t5, t6, t7 = query[d + 4] - item[d + 4], query[d + 5] - item[d + 5], query[d + 6] - item[d + 6], query[d + 7] - item[d + 7]
            s0 += t0 * t0; s1 += t1 * t1; s2 += t2 * t2; s3 += t3 * t3  # noqa: E702
            s4 += t4 * t4; s5 += t5 * t5; s6 += t6 * t6; s7 += t7 * t7  # noqa: E702
        else:
            s0 += query[d] * item[d]; s1 += query[d + 1] * item[d + 1]  # noqa: E702
            s2 += query[d + 2] * item[d + 2]; s3 += query[d + 3] * item[d + 3]  # noqa: E702
            s4 += query[d + 4] * item[d + 4]; s5 += query[d + 5] * item[d + 5]  # noqa: E702
            s6 += query[d + 6] * item[d + 6]; s7 += query[d + 7] * item[d + 7]  # noqa: E702
    tail = np.float32(0.0)
    for d in range(full, dim):
        if euclidean:
            t = query[d] - item[d]
            tail += t * t
        else:
            tail += query[d] * item[d]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail
    if euclidean:
        return -np.sqrt(total) + np.float32(0.0)
    return total + np.float32(0.0)


@njit(cache=True)
def _ordered(values, ids):
    """Positions of ``values`` ordered by value descending, then id ascending."""
    by_id = np.argsort(ids, kind="mergesort")
    return by_id[np.argsort(-values[by_id], kind="mergesort")]


@njit(parallel=True, cache=True)
def finalize(queries, gallery, first_row, last_row, query_offset, cand_id, count, overflow, euclidean, out_scores,
             out_ids):
    """Exact scores of the candidates of state rows first_row:last_row (query ``row + query_offset``), sorted,
    the best ``out_scores.shape[1]`` written to the query's output row (overflowed rows are left alone)."""
    k = out_scores.shape[1]
    for row in prange(first_row, last_row):
        if overflow[row]:
            continue
        query = row + query_offset
        n = count[row]
        values = np.empty(n, np.float32)
        ids = np.empty(n, np.int64)
        for i in range(n):
            ids[i] = cand_id[row, i]
            values[i] = pair_score(queries[query], gallery[ids[i]], euclidean)
        order = _ordered(values, ids)
        for j in range(min(k, n)):
            out_scores[query, j] = values[order[j]]
            out_ids[query, j] = ids[order[j]]


@njit(parallel=True, cache=True)
def exact_row(query, gallery, skip, euclidean, out_scores, out_ids):
    """Exact top ``len(out_scores)`` of one query against the whole gallery (item ``skip`` left out; -1: none),
    for the rare rows whose candidates overflowed."""
    values = np.empty(gallery.shape[0], np.float32)
    for i in prange(gallery.shape[0]):
        values[i] = pair_score(query, gallery[i], euclidean)
    order = np.argsort(-values, kind="mergesort")  # stable: ties stay in id order
    j = 0
    for i in order:
        if j == len(out_scores):
            break
        if i != skip:
            out_scores[j] = values[i]
            out_ids[j] = i
            j += 1
