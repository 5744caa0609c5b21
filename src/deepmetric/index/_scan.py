"""Compiled candidate selection for the exact top-k search (numba): one pass over each block of fast scores.

Fast scores arrive as raw bits, int16 for bfloat16 and int32 for float32, and are compared as order keys:
a non-negative bit pattern is its own key, a negative one has its magnitude bits flipped, so keys order
like the values (-0.0 just below +0.0). Every query row owns

- a bounded list of candidates, (key, gallery id) packed in one int64: every item offered whose key
  reached the row's threshold;
- a histogram of the candidates' keys by bucket (bfloat16: the key itself; float32: its top 16 bits), from
  the row's k-th-best bucket up: the highest bucket with at least k candidates at or above it is a lower
  bound on the row's k-th best fast score (the candidates are distinct items), ``kth``, and moves up in
  O(1) per candidate;
- a threshold key, the smallest key of value >= ``kth - margin - 3 unit (|kth| + margin)`` (``margin`` is
  twice the row's proven error bound, ``unit`` the relative rounding of the fast scores' output; see
  ``topk._FastPass``), raised whenever ``kth`` rises.

A full list is compacted to the candidates still at or above the threshold; a row whose list stays 3/4
full (thousands of tied scores) is flagged, to be searched again with a longer list.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

GROUPS = 16  # a block row's columns form 16 strided groups; a group is read item by item only if its maximum passes
ROW_GROUP = 16  # the transposed use tests groups of 16 block rows per column
COLUMN_SPAN = 256  # columns per thread task in the transposed use
_AHEAD = 6  # candidates whose gallery rows are prefetched ahead of the one being scored
HISTOGRAM_BINS = 256  # buckets of order keys counted per row, from its k-th-best bucket up
ACCEPT_ALL = np.int32(-(1 << 31))  # threshold key before a row has a bound on its k-th best
ACCEPT_NONE = np.int32((1 << 31) - 1)  # threshold key of an overflowed row


@intrinsic
def _prefetch(typingctx, address):
    """Ask the CPU to start loading the cache line at ``address`` (an integer) for reading."""
    signature = types.void(types.intp)

    def codegen(context, builder, sig, args):
        pointer, int32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer, int32, int32, int32]), "llvm.prefetch.p0")
        builder.call(function, [builder.inttoptr(args[0], pointer), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return signature, codegen


@njit(inline="always")
def _prefetch_row(array, row):
    """Prefetch every cache line of ``array[row]`` (a C-contiguous 2-D array)."""
    start = array.ctypes.data + row * array.strides[0]
    for offset in range(0, array.strides[0], 64):
        _prefetch(start + offset)


@njit(inline="always")
def _prefetch_state(row, cands, count, hist, base, kth_coarse):
    """Prefetch the lines of a row's state that an append touches: the list's next slot, the histogram bin
    of its k-th-best bucket."""
    _prefetch(cands.ctypes.data + row * cands.strides[0] + min(count[row], cands.shape[1] - 1) * 8)
    b = kth_coarse[row] - base[row]
    if 0 <= b < hist.shape[1]:
        _prefetch(hist.ctypes.data + row * hist.strides[0] + b * 2)


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
    if value == 0 or (biased <= 0 and value > 0):
        return np.int32(-1)  # -0.0: at or below every value >= a value this close to zero
    if biased <= 0:  # a negative value in the subnormal range: truncate its magnitude in subnormal units
        return np.int32(-1 - math.floor(math.ldexp(abs(value), 149 - shift)))
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


# the helpers below that take arrays are inlined: a call with array arguments costs a reference-count
# update per array, which is more than the work of the common case
@njit(inline="always")
def _raise_threshold(row, best, kth_key, threshold, margin, unit, shift):
    """A new lower bound ``best`` on the row's k-th best key raises its threshold."""
    if best > kth_key[row]:
        kth_key[row] = best
        kth = _key_value(best, shift)
        widened = kth - margin[row] - 3.0 * unit * (abs(kth) + margin[row])
        if math.isfinite(widened):
            threshold[row] = max(threshold[row], _ceil_key(widened, shift))


@njit(cache=True)
def _recount(row, cands, count, hist, base, above, kth_coarse, coarse_shift):
    """Recount the row's histogram from its candidate list, its first bin at the k-th-best bucket."""
    base[row] = kth_coarse[row]
    hist[row, :] = 0
    total = 0
    for i in range(count[row]):
        bucket = (cands[row, i] >> 32) >> coarse_shift
        if bucket >= base[row]:
            total += 1
            if bucket - base[row] < hist.shape[1]:
                hist[row, bucket - base[row]] += 1
    above[row] = total


@njit(inline="always")
def _advance(row, cands, count, hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift,
             k):
    """Move the row's k-th-best bucket up while at least k offered items stay at or above it."""
    moved = False
    while True:
        b = kth_coarse[row] - base[row]
        if b >= hist.shape[1]:
            _recount(row, cands, count, hist, base, above, kth_coarse, coarse_shift)
            b = 0
        if above[row] - hist[row, b] < k:
            break
        above[row] -= hist[row, b]
        kth_coarse[row] += 1
        moved = True
    if moved:
        _raise_threshold(row, kth_coarse[row] << coarse_shift, kth_key, threshold, margin, unit, shift)


@njit(cache=True)
def _start(row, cands, count, hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift,
           k):
    """The row's first k candidates: its k-th-best bucket and histogram."""
    keys = np.empty(count[row], np.int64)
    for i in range(count[row]):
        keys[i] = (cands[row, i] >> 32) >> coarse_shift
    kth_coarse[row] = np.partition(keys, count[row] - k)[count[row] - k]
    _recount(row, cands, count, hist, base, above, kth_coarse, coarse_shift)
    _raise_threshold(row, kth_coarse[row] << coarse_shift, kth_key, threshold, margin, unit, shift)
    _advance(row, cands, count, hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift,
             k)


@njit(cache=True)
def _compact(row, cands, count, threshold, overflow):
    """Drop the row's candidates below its threshold; flag the row if its list stays 3/4 full."""
    limit = threshold[row]
    kept = 0
    for i in range(count[row]):
        if (cands[row, i] >> 32) >= limit:
            cands[row, kept] = cands[row, i]
            kept += 1
    count[row] = kept
    if kept > cands.shape[1] - cands.shape[1] // 4:
        overflow[row] = True
        threshold[row] = ACCEPT_NONE
        count[row] = 0


@njit(inline="always")
def _append(row, key, item, cands, count, hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift,
            coarse_shift, overflow, k):
    """Add an item whose key reached the row's threshold: to the list as one int64 (key in the high half,
    gallery id in the low half: a cache line holds 8 candidates), and to the count of its bucket."""
    if count[row] == cands.shape[1]:
        _compact(row, cands, count, threshold, overflow)
        if overflow[row]:
            return
    n = count[row]
    cands[row, n] = (np.int64(key) << 32) | np.int64(item)
    count[row] = n + 1
    if kth_coarse[row] == ACCEPT_ALL:
        if n + 1 == k:
            _start(row, cands, count, hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift,
                   coarse_shift, k)
        return
    bucket = key >> coarse_shift
    if bucket >= kth_coarse[row]:
        if bucket - base[row] < hist.shape[1]:
            hist[row, bucket - base[row]] += 1
        above[row] += 1
        _advance(row, cands, count, hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift,
                 coarse_shift, k)


@njit(inline="always")
def _scan_row(block, r, first_row, first_item, own, mask, lane, hits, cands, count, hist, base, above, kth_coarse,
              kth_key, threshold, margin, unit, shift, coarse_shift, overflow, k):
    """Row r of ``block`` against items ``first_item + c`` for state row ``first_row + r`` (see ``scan_rows``;
    ``lane`` and ``hits`` are scratch of the row's group width and its columns)."""
    columns = block.shape[1]
    width = lane.shape[0]
    _prefetch_state(first_row + r, cands, count, hist, base, kth_coarse)
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
        # np.partition sorts a copy
        _raise_threshold(row, np.partition(lane, width - k - 1)[width - k - 1], kth_key, threshold,
                         margin, unit, shift)
    # first the columns that pass, without branches inside a group; then their appends
    limit = threshold[row]
    found = 0
    for p in range(width):
        if lane[p] >= limit:
            for j in range(GROUPS):
                c = p + j * width
                hits[found] = c
                found += (c < columns) and (_key(data[min(c, columns - 1)], mask) >= limit)
    for i in range(found):
        c = hits[i]
        key = _key(data[c], mask)
        if key >= threshold[row] and first_item + c != own[row]:
            _append(row, key, first_item + c, cands, count, hist, base, above, kth_coarse, kth_key, threshold,
                    margin, unit, shift, coarse_shift, overflow, k)


@njit(nogil=True, cache=True)
def scan_rows(block, first_row, first_item, own, mask, cands, count, hist, base, above, kth_coarse,
              kth_key, threshold, margin, unit, shift, coarse_shift, overflow, k):
    """Row r of ``block`` scores state row ``first_row + r`` against items ``first_item + c``, leaving out
    item ``own[row]`` (the query itself; -1, no item, when it has none).

    A row's columns form GROUPS strided groups (group p: columns p, p + width, ...); their maxima are taken
    with vector operations and only groups whose maximum reaches the threshold are read item by item. A row
    without a bound yet takes one from the (k+1)-th largest group maximum (maxima of disjoint item sets,
    one of which may be the query itself)."""
    rows, columns = block.shape
    width = (columns + GROUPS - 1) // GROUPS
    lane = np.empty(width, block.dtype)
    hits = np.empty(width * GROUPS, np.int64)
    for r in range(rows):
        _scan_row(block, r, first_row, first_item, own, mask, lane, hits, cands, count, hist, base, above,
                  kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift, overflow, k)


@njit(inline="always")
def _column_limits(limit, first_row, start, low, high, cands, count, hist, base, kth_coarse, threshold):
    """Thresholds of state rows ``first_row + start + c`` clipped to the keys' range, their state prefetched."""
    for c in range(limit.shape[0]):
        limit[c] = min(max(threshold[first_row + start + c], low), high)
        _prefetch_state(first_row + start + c, cands, count, hist, base, kth_coarse)


@njit(inline="always")
def _scan_column_group(block, g, start, first_row, first_item, mask, low, high, top, limit, cands, count, hist, base,
                       above, kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift, overflow, k):
    """Block rows g:g + ROW_GROUP against state rows ``first_row + start + c`` for columns start:start +
    len(top) (see ``scan_columns``; ``top`` is scratch, ``limit`` the rows' clipped thresholds, kept up to date)."""
    rows = block.shape[0]
    stop = start + top.shape[0]
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
                _append(row, key, first_item + r, cands, count, hist, base, above, kth_coarse, kth_key,
                        threshold, margin, unit, shift, coarse_shift, overflow, k)
        limit[c] = min(max(threshold[row], low), high)


@njit(nogil=True, cache=True)
def scan_columns(block, first_row, first_item, mask, cands, count, hist, base, above, kth_coarse, kth_key, threshold,
                 margin, unit, shift, coarse_shift, overflow, k):
    """The transposed use of a block: column c scores state row ``first_row + c`` against items
    ``first_item + r`` (row r). Per span of COLUMN_SPAN columns and group of ROW_GROUP rows the column
    maxima are taken with vector operations and only columns whose maximum reaches their threshold are read."""
    rows, columns = block.shape
    low, high = -np.int64(mask) - 1, np.int64(mask)  # thresholds clipped to the range of the keys
    for chunk in range((columns + COLUMN_SPAN - 1) // COLUMN_SPAN):
        start = chunk * COLUMN_SPAN
        stop = min(start + COLUMN_SPAN, columns)
        top = np.empty(stop - start, block.dtype)
        limit = np.empty(stop - start, block.dtype)
        _column_limits(limit, first_row, start, low, high, cands, count, hist, base, kth_coarse, threshold)
        for g in range(0, rows, ROW_GROUP):
            _scan_column_group(block, g, start, first_row, first_item, mask, low, high, top, limit, cands, count,
                               hist, base, above, kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift,
                               overflow, k)


@njit(nogil=True, cache=True)
def scan_both(block, first_row, first_item, own, mask, cands, count, hist, base, above, kth_coarse, kth_key, threshold,
              margin, unit, shift, coarse_shift, overflow, k):
    """``scan_rows`` and ``scan_columns`` of one block in one pass over it: per group of ROW_GROUP block rows,
    first those rows, then the column side of the same rows while they are in cache. State rows
    ``first_row``... (the block's rows) and ``first_item``... (its columns) must not overlap."""
    rows, columns = block.shape
    width = (columns + GROUPS - 1) // GROUPS
    lane = np.empty(width, block.dtype)
    hits = np.empty(width * GROUPS, np.int64)
    low, high = -np.int64(mask) - 1, np.int64(mask)
    top = np.empty(columns, block.dtype)
    limit = np.empty(columns, block.dtype)
    _column_limits(limit, first_item, 0, low, high, cands, count, hist, base, kth_coarse, threshold)
    for g in range(0, rows, ROW_GROUP):
        for r in range(g, min(g + ROW_GROUP, rows)):
            _scan_row(block, r, first_row, first_item, own, mask, lane, hits, cands, count, hist, base, above,
                      kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift, overflow, k)
        _scan_column_group(block, g, 0, first_item, first_row, mask, low, high, top, limit, cands, count, hist,
                           base, above, kth_coarse, kth_key, threshold, margin, unit, shift, coarse_shift, overflow,
                           k)


@njit(nogil=True, cache=True)
def finish(first_row, last_row, cands, count, hist, base, above, kth_coarse, kth_key, threshold,
           margin, unit, shift, coarse_shift, overflow, k):
    """Final compaction of rows first_row:last_row, so that each keeps only what can reach its top k."""
    for row in range(first_row, last_row):
        if not overflow[row]:
            _compact(row, cands, count, threshold, overflow)


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
            t0, t1, t2, t3 = query[d] - item[d], query[d + 1] - item[d + 1], query[d + 2] - item[d + 2], \
                query[d + 3] - item[d + 3]
            t4, t5, t6, t7 = query[d + 4] - item[d + 4], query[d + 5] - item[d + 5], query[d + 6] - item[d + 6], \
                query[d + 7] - item[d + 7]
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


@njit(inline="always")
def _rank_code(score_bits, reported_id):
    """One int64 whose ascending order is score descending, then id ascending: (~order key of the float32
    score) << 32 | id."""
    return (np.int64(~_key(score_bits, np.int32(0x7FFFFFFF))) << 32) | reported_id


@njit(inline="always")
def _write_ranked(codes, values, out_scores, out_ids):
    """Sort the rank codes and write the first ``len(out_scores)`` scores and ids (``values`` is scratch of
    at least that length)."""
    codes.sort()
    bits = values.view(np.int32)
    for j in range(min(len(out_scores), len(codes))):
        key = ~np.int32(codes[j] >> 32)
        bits[j] = key ^ np.int32(0x7FFFFFFF) if key < 0 else key  # the order key's own inverse
        out_scores[j] = values[j]
        out_ids[j] = codes[j] & 0xFFFFFFFF


@njit(nogil=True, cache=True)
def finalize(queries, gallery, first_row, last_row, query_offset, cands, count, overflow, euclidean, item_ids,
             query_ids, out_scores, out_ids):
    """Exact scores of the candidates of state rows first_row:last_row (query ``row + query_offset``), sorted by
    score descending then reported id ascending (one sort of int64 (~order key of the score) << 32 | id), the
    best ``out_scores.shape[1]`` written to output row ``query_ids[query]``; gallery item i is reported as
    ``item_ids[i]``. Overflowed rows are left alone."""
    per_task = 64
    for task in range((last_row - first_row + per_task - 1) // per_task):
        values = np.empty(cands.shape[1], np.float32)
        bits = values.view(np.int32)
        order = np.empty(cands.shape[1], np.int64)
        for row in range(first_row + task * per_task, min(first_row + (task + 1) * per_task, last_row)):
            if overflow[row]:
                continue
            query = row + query_offset
            n = count[row]
            for i in range(min(n, _AHEAD)):
                _prefetch_row(gallery, cands[row, i] & 0xFFFFFFFF)
            for i in range(n):
                if i + _AHEAD < n:  # random rows of a large gallery: load them a few candidates ahead
                    _prefetch_row(gallery, cands[row, i + _AHEAD] & 0xFFFFFFFF)
                values[i] = pair_score(queries[query], gallery[cands[row, i] & 0xFFFFFFFF], euclidean)
            for i in range(n):
                order[i] = _rank_code(bits[i], item_ids[cands[row, i] & 0xFFFFFFFF])
            _write_ranked(order[:n], values, out_scores[query_ids[query]], out_ids[query_ids[query]])


@njit(parallel=True, cache=True)
def exact_row(query, gallery, skip, euclidean, item_ids, out_scores, out_ids):
    """Exact top ``len(out_scores)`` of one query against the whole gallery (item ``skip`` left out; -1: none),
    ordered like ``finalize``, for the rare rows whose candidates overflowed."""
    values = np.empty(gallery.shape[0], np.float32)
    for i in prange(gallery.shape[0]):
        values[i] = pair_score(query, gallery[i], euclidean)
    bits = values.view(np.int32)
    order = np.empty(gallery.shape[0], np.int64)
    n = 0
    for i in range(gallery.shape[0]):
        if i != skip:
            order[n] = _rank_code(bits[i], item_ids[i])
            n += 1
    _write_ranked(order[:n], values, out_scores, out_ids)
