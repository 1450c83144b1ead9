"""Exact and near duplicates, reported as groups.

Every grouping function returns one integer per sample: the sample's duplicate group (0, 1, 2, ... numbered by
the position of each group's first member) or -1 for a sample that duplicates nothing. Groups are the connected
components of the "is a near duplicate of" relation (single linkage: A~B and B~C put A, B and C together).

No function here builds an n x n matrix. Near duplicates are found by bucketing (bands of a perceptual hash for
images, MinHash bands for texts, radius queries for feature vectors) and by checking only the pairs that share a
bucket, so the cost grows with the number of candidate pairs, not with n squared.

:func:`duplicate_scores` turns groups into a per-sample suspicion: duplicates whose labels disagree, and duplicates
spread over several sources (the mark of sybil contributors), score high. The finders (exact hashes, image pHash,
feature projections, text MinHash) share the bucketing and grouping code, which is why they live in one module past
600 lines.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .._validate import check_features, check_images, check_int, check_labels, check_number
from ..errors import InputError

#: Side of the grey thumbnail that hashes and pixel checks use, and side of the kept low-frequency DCT block.
_THUMB_SIDE = 32
_PHASH_BLOCK = 8

#: Upper bound on candidate pairs handled at once (memory stays in the tens of MB).
_PAIR_CHUNK = 1 << 21

#: Weight of the plain "has copies" evidence in :func:`duplicate_scores`; kept below the label-conflict and
#: source-spread evidence so that an innocent same-source copy never outranks either.
REDUNDANCY_WEIGHT = 0.25

# Odd 64-bit constants: the base of the rolling shingle hash and the final bit mixer (splitmix64).
_BASE = np.uint64(0x100000001B3)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


# ---------------------------------------------------------------------------------------------- group helpers
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the 64 output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _groups_from_components(components: np.ndarray) -> np.ndarray:
    """Group ids from component labels: components with at least 2 members numbered by first member, others -1."""
    n = len(components)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse, counts = np.unique(components, return_index=True, return_inverse=True, return_counts=True)
    multi = counts >= 2
    # Number the multi-member components by the position of their first member.
    order = np.argsort(np.where(multi, first, n + np.arange(len(first))), kind="stable")
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    ids = np.where(multi, rank, -1)
    return ids[inverse.ravel()].astype(np.int64)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes given undirected edges (i, j)."""
    if len(i) == 0:
        return np.arange(n)
    # float weights: repeated edges add up and can never cancel to zero.
    graph = sp.coo_matrix((np.ones(len(i), dtype=np.float32), (i, j)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels


def check_groups(groups: Any, n: int | None = None, *, name: str = "groups") -> np.ndarray:
    """Duplicate group ids (int, -1 for none) of length n, or a clear error."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {g.shape}")
    if n is not None and len(g) != n:
        raise InputError(f"{name} has {len(g)} entries but labels has {n} entries")
    if g.dtype.kind not in "iu":
        raise InputError(f"{name} must be integer group ids (-1 for no group); got dtype {g.dtype}")
    g = g.astype(np.int64, copy=False)
    if len(g) and g.min() < -1:
        raise InputError(f"{name} must be >= -1 (-1 means no group); found {int(g.min())}")
    return g


def _check_sources(sources: Any, n: int, *, name: str = "sources") -> np.ndarray:
    s = np.asarray(sources, dtype=object)
    if s.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {s.shape}")
    if len(s) != n:
        raise InputError(f"{name} has {len(s)} entries but labels has {n} entries")
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in s], dtype=bool)
    if missing.any():
        raise InputError(f"{name} has {int(missing.sum())} missing value(s), first at position "
                         f"{int(np.flatnonzero(missing)[0])}; give every sample a source")
    return s.astype(str)


def _bucket_pairs(keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair (i < j in bucket order) of positions whose keys are equal, in chunks of bounded size."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, len(k)])
    for s in np.unique(sizes[sizes >= 2]):
        run_starts = starts[sizes == s]
        per_run = int(s) * (int(s) - 1) // 2
        if per_run <= _PAIR_CHUNK:
            a, b = np.triu_indices(int(s), 1)
            # Many small buckets of the same size: one template of pairs, offset to each bucket.
            step = max(1, _PAIR_CHUNK // per_run)
            for c in range(0, len(run_starts), step):
                r = run_starts[c:c + step, None]
                yield order[(r + a).ravel()], order[(r + b).ravel()]
        else:
            # A huge bucket: rows in blocks against the rest of the bucket.
            block = max(1, _PAIR_CHUNK // int(s))
            for r0 in run_starts:
                members = order[r0:r0 + s]
                for i0 in range(0, int(s) - 1, block):
                    rows = np.arange(i0, min(i0 + block, int(s)))
                    ii, jj = np.nonzero(np.arange(int(s))[None, :] > rows[:, None])
                    yield members[rows[ii]], members[jj]


def _expand_runs(src: np.ndarray, first: np.ndarray, counts: np.ndarray, order: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (src[k], order[first[k] + t]) for t < counts[k], in chunks of about _PAIR_CHUNK pairs."""
    if len(src) == 0:
        return
    cum = np.cumsum(counts)
    cuts = np.unique(np.r_[0, np.searchsorted(cum, np.arange(_PAIR_CHUNK, cum[-1], _PAIR_CHUNK), side="right"),
                           len(src)])
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        c = counts[lo:hi]
        offsets = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        yield np.repeat(src[lo:hi], c), order[np.repeat(first[lo:hi], c) + offsets]


# ---------------------------------------------------------------------------------------------- exact duplicates
def exact_duplicate_groups(hashes: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Groups of samples with identical content hashes.

    Parameters
    ----------
    hashes : array-like of str (or any hashable scalar), shape (n,)
        One content hash per sample, e.g. ``Dataset.hashes``.

    Returns
    -------
    ndarray of int64, shape (n,)
        Group id of each sample (0, 1, ... by first member), -1 for a sample whose hash occurs once.
    """
    h = np.asarray(hashes)
    if h.ndim != 1:
        raise InputError(f"hashes must be 1-D; got shape {h.shape}")
    if h.dtype == object:
        missing = [i for i, v in enumerate(h) if v is None]
        if missing:
            raise InputError(f"hashes has {len(missing)} missing value(s), first at position {missing[0]}")
        h = h.astype(str)
    if len(h) == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(h, return_inverse=True)
    return _groups_from_components(inverse.ravel())


# ---------------------------------------------------------------------------------------------- images
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, widened to a box average when shrinking (anti-aliasing)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support, 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _thumbnails(images: np.ndarray) -> np.ndarray:
    """Grey 32 x 32 thumbnails, uint8, shape (n, 32 * 32): the common ground of hashing and pixel checks."""
    x = check_images(images)
    n, h, w = x.shape[:3]
    rh, rw = _resample_matrix(h, _THUMB_SIDE), _resample_matrix(w, _THUMB_SIDE)
    out = np.empty((n, _THUMB_SIDE * _THUMB_SIDE), dtype=np.uint8)
    # Bounded float memory whatever the image size.
    step = max(1, (1 << 24) // (h * w * (x.shape[3] if x.ndim == 4 else 1)))
    grey = np.array([0.299, 0.587, 0.114], np.float32)
    for start in range(0, n, step):
        chunk = x[start:start + step].astype(np.float32)
        if chunk.ndim == 4:
            chunk = chunk[..., 0] if chunk.shape[-1] == 1 else chunk @ grey
        small = rh @ (chunk @ rw.T)
        out[start:start + step] = np.clip(np.rint(small), 0, 255).reshape(len(chunk), -1)
    return out


def _phash_of_thumbnails(thumbs: np.ndarray) -> np.ndarray:
    out = np.empty(len(thumbs), dtype=np.uint64)
    for start in range(0, len(thumbs), 1 << 14):
        t = thumbs[start:start + (1 << 14)].reshape(-1, _THUMB_SIDE, _THUMB_SIDE).astype(np.float32)
        low = scipy.fft.dctn(t, type=2, axes=(1, 2), norm="ortho")[:, :_PHASH_BLOCK, :_PHASH_BLOCK]
        low = low.reshape(len(t), -1)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[start:start + len(t)] = np.packbits(bits, axis=1).view(">u8").ravel()
    return out


def image_phash(images: np.ndarray) -> np.ndarray:
    """Perceptual (DCT) hash of each image, 64 bits.

    Each image is turned grey, resampled to a 32 x 32 thumbnail and transformed by a 2-D DCT; the 8 x 8
    lowest frequencies are compared with their median, one bit each. Re-encoding, mild noise, a brightness
    change or a few edited pixels flip few bits; unrelated images differ in about half of them. On tiny images
    (28 x 28) distinct images of similar shape can share most bits, so treat a small distance as a candidate,
    not as proof (:func:`near_duplicate_groups_images` checks the pixels).

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 1 or 3)

    Returns
    -------
    ndarray of uint64, shape (n,)
        Compare two hashes with ``np.bitwise_count(a ^ b)`` (the Hamming distance, 0..64).
    """
    return _phash_of_thumbnails(_thumbnails(images))


def _band_edges(max_hamming: int) -> tuple[int, np.ndarray]:
    """Multi-index hashing: the probe radius r and the bit edges of the b bands, with b * (r + 1) > max_hamming,
    so that (pigeonhole) every pair within ``max_hamming`` bits agrees within r bits on some band. r = 1 keeps the
    bands wide (few collisions) at the price of one probe per bit of the band."""
    r = 0 if max_hamming == 0 else 1
    b = max_hamming // (r + 1) + 1
    return r, np.linspace(0, 64, b + 1).round().astype(int)


def _band_keys(codes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return (codes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)


def _run_ends(starts: np.ndarray) -> np.ndarray:
    """For a sorted array cut into runs (``starts`` marks each run's first position): each position's run end."""
    first = np.flatnonzero(starts)
    return np.r_[first[1:], len(starts)][np.cumsum(starts) - 1]


def _hamming_candidates(codes: np.ndarray, max_hamming: int, groups: np.ndarray | None = None
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair (i, j) whose 64-bit codes differ in at most ``max_hamming`` bits, in chunks.

    With ``groups``, only pairs of different groups are proposed: once the copies of one image are joined, their
    pairs are not even generated (an image with 80 copies has 3,160 pairs among them). A pair may be yielded
    more than once (from several bands).
    """
    m = max_hamming
    r, edges = _band_edges(m)
    g = np.arange(len(codes)) if groups is None else np.asarray(groups, dtype=np.int64)
    span = int(g.max()) + 1 if len(g) else 1
    for lo, hi in zip(edges[:-1], edges[1:]):
        keys = _band_keys(codes, lo, hi)
        order = np.lexsort((g, keys))  # by band key, then group
        k, gs = keys[order], g[order]
        new_key = np.r_[True, k[1:] != k[:-1]]
        key_end = _run_ends(new_key)
        group_end = _run_ends(new_key | np.r_[True, gs[1:] != gs[:-1]])
        # Same band key: each member with the members of the later groups of its bucket (each pair once).
        counts = key_end - group_end
        hit = counts > 0
        for i, j in _expand_runs(order[hit], group_end[hit], counts[hit], order):
            ok = np.bitwise_count(codes[i] ^ codes[j]) <= m
            yield i[ok], j[ok]
        if r == 0:
            continue
        # One bit apart: each member with the other groups' members of the partner bucket, from the member
        # with the smaller key (each pair once). Sorted by (key rank, group), the member's own group is one run.
        rank = np.cumsum(new_key) - 1
        joint = rank * span + gs
        for bit in range(hi - lo):
            partner = k ^ np.uint64(1 << bit)
            src = np.flatnonzero(partner > k)
            first = np.searchsorted(k, partner[src], side="left")
            last = np.searchsorted(k, partner[src], side="right")
            present = last > first
            src, first, last = src[present], first[present], last[present]
            own = rank[first] * span + gs[src]
            own_lo = np.searchsorted(joint, own, side="left")
            own_hi = np.searchsorted(joint, own, side="right")
            for a, b in ((first, own_lo), (own_hi, last)):
                counts = b - a
                hit = counts > 0
                for i, j in _expand_runs(order[src[hit]], a[hit], counts[hit], order):
                    ok = np.bitwise_count(codes[i] ^ codes[j]) <= m
                    yield i[ok], j[ok]


def _leader_pairs(codes: np.ndarray, max_hamming: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each code paired with the first code of its bucket on every band, when within ``max_hamming`` bits: at most
    one pair per code and band, and enough to join most copies of one image before all pairs are considered."""
    _, edges = _band_edges(max_hamming)
    for lo, hi in zip(edges[:-1], edges[1:]):
        keys = _band_keys(codes, lo, hi)
        order = np.argsort(keys, kind="stable")
        k = keys[order]
        new_key = np.r_[True, k[1:] != k[:-1]]
        leader = order[np.flatnonzero(new_key)[np.cumsum(new_key) - 1]]
        i, j = leader[~new_key], order[~new_key]
        ok = np.bitwise_count(codes[i] ^ codes[j]) <= max_hamming
        yield i[ok], j[ok]


def near_duplicate_groups_hashes(phashes: np.ndarray, *, max_hamming: int = 4) -> np.ndarray:
    """Groups of 64-bit hashes within ``max_hamming`` differing bits of each other (hashes alone, no pixels).

    Parameters
    ----------
    phashes : ndarray of uint64, shape (n,)
        E.g. from :func:`image_phash`.
    max_hamming : int, default 4
        Largest number of differing bits (0..16) between near duplicates.

    Returns
    -------
    ndarray of int64, shape (n,)
        Group id per sample, -1 for none.
    """
    codes = np.asarray(phashes)
    if codes.ndim != 1 or codes.dtype != np.uint64:
        raise InputError(f"phashes must be a 1-D uint64 array (see image_phash); got {codes.dtype} {codes.shape}")
    m = check_int(max_hamming, "max_hamming", low=0, high=16)
    uniq, inverse = np.unique(codes, return_inverse=True)
    ii, jj = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    if m > 0:
        for a, b in _hamming_candidates(uniq, m):
            ii.append(a)
            jj.append(b)
    comp = _components(len(uniq), np.concatenate(ii), np.concatenate(jj))
    return _groups_from_components(comp[inverse.ravel()])


def _changed_share(a: np.ndarray, b: np.ndarray, tolerance: float) -> np.ndarray:
    """Share of thumbnail pixels that differ by more than ``tolerance`` once the mean difference is removed.

    The mean (not the median, many times slower) removes a global brightness change; a sparse edit moves it
    little (20 pixels changed by 255 shift it by 5 grey levels).
    """
    d = a.astype(np.int16) - b.astype(np.int16)
    d -= np.rint(d.mean(axis=1, keepdims=True)).astype(np.int16)
    return (np.abs(d) > tolerance).mean(axis=1)


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a uint8 matrix and the inverse index, by a 64-bit key per row (checked, not trusted).

    When every row is distinct (the usual case) the rows themselves are returned, uncopied, with the identity as
    inverse: a million rows of 2 KB are not copied for nothing."""
    keys = np.empty(len(rows), dtype=np.uint64)
    width = -(-rows.shape[1] // 8) * 8
    salt = np.arange(width // 8, dtype=np.uint64)[None, :]
    for start in range(0, len(rows), 65_536):  # bounded temporaries: a padded copy of one block at a time
        block = rows[start : start + 65_536]
        padded = np.zeros((len(block), width), dtype=np.uint8)
        padded[:, :rows.shape[1]] = block
        keys[start : start + len(block)] = _mix64(_mix64(padded.view(np.uint64) ^ salt).sum(axis=1))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if len(first) == len(rows):  # distinct keys: distinct rows
        return rows, np.arange(len(rows))
    inverse = inverse.ravel()
    uniq = rows[first]
    if any(not np.array_equal(uniq[inverse[c:c + 4096]], rows[c:c + 4096]) for c in range(0, len(rows), 4096)):
        # Two different rows share a key (about 1 chance in 2**64 per pair): sort the rows themselves.
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inverse.ravel()
    return uniq, inverse


def near_duplicate_groups_images(
    images: np.ndarray,
    *,
    max_hamming: int = 6,
    max_changed_share: float = 0.02,
    pixel_tolerance: int = 32,
) -> np.ndarray:
    """Groups of near-identical images: perceptual-hash candidates confirmed on the pixels.

    Each image is reduced to a grey 32 x 32 thumbnail. Pairs whose perceptual hashes (:func:`image_phash`)
    differ in at most ``max_hamming`` bits are candidates; a candidate pair is a near duplicate when at most
    ``max_changed_share`` of the thumbnail pixels differ by more than ``pixel_tolerance`` grey levels, after the
    mean difference (a global brightness change) is removed. So a copy with noise, a brightness change, a
    light blend or a few edited pixels joins its original; two different images of similar shape do not.
    A pasted patch that covers more than about 1% of a tiny (28 x 28) image can move the hash past
    ``max_hamming``; such copies are found by feature distance (:func:`near_duplicate_groups_features`).
    Two groups of copies already joined are compared on at most 16 failing pairs before they are taken to be
    different images, so data holding many copies of each image (augmented sets) stays fast: a million images,
    83 noisy copies of each, in about 6 minutes on 2 cores.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 1 or 3)
    max_hamming : int, default 6
        Hash bits (of 64) two candidates may differ in (0..16). Larger finds more edited copies and checks
        more pairs.
    max_changed_share : float, default 0.02
        Largest share (0..1) of thumbnail pixels that may differ; 0.02 is 20 of the 1,024 thumbnail pixels.
    pixel_tolerance : int, default 32
        Grey-level difference (0..255) below which a pixel counts as unchanged.

    Returns
    -------
    ndarray of int64, shape (n,)
        Group id per image (0, 1, ... by first member), -1 for an image with no near duplicate.
    """
    m = check_int(max_hamming, "max_hamming", low=0, high=16)
    share = check_number(max_changed_share, "max_changed_share", low=0.0, high=1.0)
    tol = check_int(pixel_tolerance, "pixel_tolerance", low=0, high=255)
    thumbs = _thumbnails(images)
    if len(thumbs) == 0:
        return np.zeros(0, dtype=np.int64)
    # Identical thumbnails are near duplicates at no cost; only distinct ones are compared.
    uniq, inverse = _unique_rows(thumbs)
    codes = _phash_of_thumbnails(uniq)
    comp = _verified_components(uniq, codes, m, lambda a, b: _changed_share(a, b, tol) <= share)
    return _groups_from_components(comp[inverse.ravel()])


#: Candidate pairs gathered before they are checked: bounds memory whatever the number of candidates.
_CANDIDATE_BATCH = 1 << 21

#: Failed checks after which two groups of joined images are taken to be different: two images of alike hashes
#: with 80 copies each would otherwise cost 6,400 checks, all failing.
_MAX_FAILED_CHECKS = 16


def _distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values: a sort and a mask (np.unique's hashing takes over a second on 2 million keys)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _run_ranks(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (0 for the first)."""
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return np.arange(len(sorted_keys)) - np.repeat(starts, np.diff(np.r_[starts, len(sorted_keys)]))


def _verified_components(thumbs: np.ndarray, codes: np.ndarray, max_hamming: int,
                         same: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Connected components of the pairs within ``max_hamming`` hash bits that ``same`` confirms on the thumbnails.

    Data with many copies of each image (augmented sets: 80 copies of each of 12,000 images at a million rows)
    has billions of candidate pairs, almost all inside one image's copies. So the copies are joined first, each
    against the first member of its hash buckets; then only pairs across the components so far are generated.
    A pair whose two images have been joined meanwhile is not checked, and two components are compared on one
    pair first, then on at most ``_MAX_FAILED_CHECKS`` failing pairs in all: beyond that they are different
    images whose hashes happen to be alike. Up to that bound the components are those of all confirmed pairs.
    """
    n = len(thumbs)
    root = np.arange(n)  # the first member of each node's component
    failed_keys, failed_counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([same(thumbs[a[c:c + (1 << 14)]], thumbs[b[c:c + (1 << 14)]])
                               for c in range(0, len(a), 1 << 14)]) if len(a) else np.zeros(0, dtype=bool)

    def failures(keys: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(failed_keys, keys), max(len(failed_keys) - 1, 0))
        return np.where(failed_keys[at] == keys, failed_counts[at], 0) if len(failed_keys) else np.zeros_like(keys)

    def settle(a: np.ndarray, b: np.ndarray) -> None:
        nonlocal root, failed_keys, failed_counts
        a, b = np.divmod(_distinct(np.minimum(a, b) * n + np.maximum(a, b)), n)
        for allowed in (1, _MAX_FAILED_CHECKS):  # one pair per two components first: most join on it
            open_ = root[a] != root[b]
            a, b = a[open_], b[open_]
            ra, rb = root[a], root[b]
            key = np.minimum(ra, rb) * n + np.maximum(ra, rb)
            order = np.argsort(key, kind="stable")
            a, b, key = a[order], b[order], key[order]
            take = _run_ranks(key) < np.minimum(allowed, _MAX_FAILED_CHECKS - failures(key))
            ok = check(a[take], b[take])
            if ok.any():
                # Each node tied to its component's first member, plus the confirmed pairs.
                comp = _components(n, np.r_[np.arange(n), a[take][ok]], np.r_[root, b[take][ok]])
                root = np.unique(comp, return_index=True)[1][comp]
            if (~ok).any():
                new_keys, new_counts = np.unique(key[take][~ok], return_counts=True)
                keys = _distinct(np.r_[failed_keys, new_keys])
                counts = failures(keys)
                counts[np.searchsorted(keys, new_keys)] += new_counts
                failed_keys, failed_counts = keys, counts
            a, b = a[~take], b[~take]

    def run(candidates: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        batch: list[tuple[np.ndarray, np.ndarray]] = []
        size = 0
        for a, b in candidates:
            # Pairs already joined, or between components already told apart, are dropped as they come: batches
            # fill with open pairs only.
            ra, rb = root[a], root[b]
            keep = ra != rb
            if len(failed_keys):
                keep &= failures(np.minimum(ra, rb) * n + np.maximum(ra, rb)) < _MAX_FAILED_CHECKS
            if keep.any():
                batch.append((a[keep].astype(np.int64), b[keep].astype(np.int64)))
                size += int(keep.sum())
            if size >= _CANDIDATE_BATCH:
                settle(np.concatenate([p[0] for p in batch]), np.concatenate([p[1] for p in batch]))
                batch, size = [], 0
        if batch:
            settle(np.concatenate([p[0] for p in batch]), np.concatenate([p[1] for p in batch]))

    run(_leader_pairs(codes, max_hamming))
    run(_hamming_candidates(codes, max_hamming, root))
    return root


def near_duplicate_groups_features(
    features: np.ndarray,
    *,
    radius: float,
    metric: str = "euclidean",
    n_projected: int = 16,
    random_state: int = 0,
) -> np.ndarray:
    """Groups of samples whose feature vectors lie within ``radius`` of each other.

    The features are projected on their ``n_projected`` main axes (PCA fitted on at most 20,000 rows); an
    orthogonal projection never lengthens a distance, so a k-d tree radius query in the projected space finds
    every pair within ``radius`` plus a few more, and each such candidate is then checked on the full vectors.
    The answer is exact; the projection only makes the search fast (a small radius prunes a low-dimensional
    tree well, whereas a radius query in 100+ dimensions compares every pair). The cost grows with the number
    of pairs within the radius: a radius that puts thousands of distinct samples within reach of each other
    makes millions of pairs.

    Parameters
    ----------
    features : ndarray, shape (n, d)
        E.g. penultimate-layer activations or text embeddings.
    radius : float
        Largest distance between near duplicates: Euclidean, or for ``metric="cosine"`` the cosine distance
        (1 - cosine similarity, e.g. 0.01).
    metric : {"euclidean", "cosine"}
    n_projected : int, default 16
        Dimensions of the search space (capped at d).
    random_state : int, default 0
        Seed of the row sample the projection is fitted on (the result does not depend on it, only the speed).

    Returns
    -------
    ndarray of int64, shape (n,)
        Group id per sample, -1 for none.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    x = check_features(features)
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.integer, np.floating)) \
            or not np.isfinite(radius) or radius < 0:
        raise InputError(f"radius must be a finite number >= 0; got {radius!r}")
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}")
    k = check_int(n_projected, "n_projected", low=1)
    r = float(radius)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(f"features has {int((norms == 0).sum())} all-zero row(s); the cosine distance "
                             f"is undefined for them, first at row {int(np.flatnonzero(norms[:, 0] == 0)[0])}")
        # On unit vectors, cosine distance c is Euclidean distance sqrt(2 c).
        x, r = x / norms, float(np.sqrt(2.0 * r))
    if len(x) < 2:
        return np.full(len(x), -1, dtype=np.int64)
    # Identical rows (copies of one input) are grouped at no cost and searched once.
    raw, inverse = _unique_rows(np.ascontiguousarray(x).view(np.uint8))
    u = raw.view(np.float32)
    n, d = u.shape
    top = max((float(np.abs(u[c : c + 65_536]).max()) for c in range(0, n, 65_536)), default=0.0) if d else 0.0
    if top > 1e6:
        # Huge values (1e20 and up) overflow float32 sums of squares in the PCA and the distance check: scale
        # vectors and radius alike by a power of two, which is exact and keeps every distance comparison.
        factor = np.float32(2.0 ** -np.ceil(np.log2(top)))
        u, r = u * factor, r * float(factor)
    ii, jj = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    if n >= 2:
        k = min(k, d, n)
        rng = np.random.default_rng(random_state)
        sample = u[rng.choice(n, size=min(n, 20_000), replace=False)]
        pca = PCA(n_components=k, random_state=random_state).fit(sample)
        z = np.empty((n, k), dtype=np.float64)
        for start in range(0, n, 65_536):  # bounded temporaries (PCA centres a copy of what it transforms)
            z[start : start + 65_536] = pca.transform(u[start : start + 65_536])
        nn = NearestNeighbors(radius=r, algorithm="kd_tree").fit(z)
        graph = sp.triu(nn.radius_neighbors_graph(z, mode="connectivity"), k=1).tocoo()
        for c in range(0, graph.nnz, 1 << 16):
            a, b = graph.row[c:c + (1 << 16)].astype(np.int64), graph.col[c:c + (1 << 16)].astype(np.int64)
            ok = np.linalg.norm(u[a] - u[b], axis=1) <= r * (1 + 1e-6)
            ii.append(a[ok])
            jj.append(b[ok])
    comp = _components(n, np.concatenate(ii), np.concatenate(jj))
    return _groups_from_components(comp[inverse])


# ---------------------------------------------------------------------------------------------- texts
_NON_WORD = re.compile(r"[^\w\s]|_")
_DIGITS = re.compile(r"\d")
_SPACES = re.compile(r"\s+")


def normalize_text(s: str, *, keep_digits: bool = True) -> str:
    """Text reduced to what matters for near-duplicate detection.

    Unicode NFKC (full-width and ligature forms folded), case-folded, punctuation and symbols replaced by
    spaces, digits removed when ``keep_digits`` is False (templates that differ only in numbers), runs of
    whitespace collapsed to one space, ends stripped.
    """
    if not isinstance(s, str):
        raise InputError(f"normalize_text expects a str; got {type(s).__name__}")
    s = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", s).casefold())
    if not keep_digits:
        s = _DIGITS.sub("", s)
    return _SPACES.sub(" ", s).strip()


def _shingles(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(text index, 64-bit shingle hash) of every character k-gram; a text shorter than k is one shingle."""
    padded = [t.ljust(k, "\0") for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    per_text = lengths - k + 1
    owner = np.repeat(np.arange(len(padded)), per_text)
    starts = np.repeat(offsets, per_text) + (np.arange(per_text.sum()) - np.repeat(np.cumsum(per_text) - per_text,
                                                                                   per_text))
    h = np.zeros(len(starts), dtype=np.uint64)
    for t in range(k):
        h = h * _BASE + codes[starts + t]
    return owner, _mix64(h)


def _minhash(owner: np.ndarray, shingle: np.ndarray, n_texts: int, n_perm: int, rng: np.random.Generator
             ) -> np.ndarray:
    """(n_texts, n_perm) uint32 MinHash signatures; hashes h_k(x) = (a_k x + b_k mod 2^64) >> 32."""
    a = rng.integers(1, 2**63, size=n_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=n_perm, dtype=np.uint64)
    text_starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    sig = np.empty((n_texts, n_perm), dtype=np.uint32)
    # Chunks of whole texts so that the (shingles x permutations) block stays small.
    bounds = np.searchsorted(text_starts, np.arange(0, len(owner), 1 << 16), side="right") - 1
    cut = np.unique(np.r_[text_starts[np.unique(bounds)], len(owner)])
    for lo, hi in zip(cut[:-1], cut[1:]):
        block = shingle[lo:hi, None] * a[None, :] + b[None, :]
        local = text_starts[np.searchsorted(text_starts, lo):np.searchsorted(text_starts, hi)]
        sig[owner[local]] = np.minimum.reduceat(block >> np.uint64(32), local - lo, axis=0).astype(np.uint32)
    return sig


def _lsh_shape(n_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows): the most selective banding that still proposes a pair at ``threshold`` with p >= 0.995."""
    best = (n_perm, 1)
    for rows in range(1, n_perm + 1):
        bands = n_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= 0.995:
            best = (bands, rows)
    return best


def near_duplicate_groups_texts(
    texts: Sequence[str] | np.ndarray,
    *,
    threshold: float = 0.8,
    shingle_size: int = 5,
    n_perm: int = 64,
    keep_digits: bool = True,
    random_state: int = 0,
) -> np.ndarray:
    """Groups of near-identical texts: Jaccard similarity of character shingles at least ``threshold``.

    Texts are normalised (:func:`normalize_text`), cut into character ``shingle_size``-grams, summarised by
    MinHash signatures; banding the signatures (LSH) proposes candidate pairs, which are kept only if their
    exact shingle Jaccard similarity reaches ``threshold``. Texts that normalise to the same string are
    grouped at once; a text that normalises to the empty string joins no group.

    Parameters
    ----------
    texts : sequence of str, length n
    threshold : float, default 0.8
        Smallest Jaccard similarity (0 < threshold <= 1) of near duplicates. One changed word in a
        30-word text keeps it above 0.8; in a 6-word text it does not.
    shingle_size : int, default 5
        Characters per shingle.
    n_perm : int, default 64
        MinHash permutations; more find borderline pairs more reliably at a higher cost.
    keep_digits : bool, default True
        False ignores digits (texts that differ only in numbers become identical).
    random_state : int, default 0
        Seed of the MinHash permutations (results are exact for the proposed pairs; the seed only decides
        which borderline pairs are proposed).

    Returns
    -------
    ndarray of int64, shape (n,)
        Group id per text (0, 1, ... by first member), -1 for none.
    """
    t = np.asarray(texts, dtype=object)
    if t.ndim != 1:
        raise InputError(f"texts must be 1-D; got shape {t.shape}")
    bad = [i for i, v in enumerate(t) if not isinstance(v, str)]
    if bad:
        raise InputError(f"texts must all be str; texts[{bad[0]}] is {type(t[bad[0]]).__name__}")
    thr = check_number(threshold, "threshold", low=0.0, high=1.0)
    if thr == 0.0:
        raise InputError("threshold must be > 0 (0 would make every pair of texts a near duplicate)")
    k = check_int(shingle_size, "shingle_size", low=1, high=64)
    n_perm = check_int(n_perm, "n_perm", low=8, high=1024)
    n = len(t)
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    normal = np.array([normalize_text(s, keep_digits=keep_digits) for s in t], dtype=object)
    uniq, inverse = np.unique(normal.astype(str), return_inverse=True)
    inverse = inverse.ravel()
    nonempty = np.flatnonzero(np.char.str_len(uniq) > 0) if len(uniq) else np.zeros(0, dtype=np.int64)
    u = len(nonempty)
    ii, jj = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    if u > 1:
        owner, shingle = _shingles([str(s) for s in uniq[nonempty]], k)
        sig = _minhash(owner, shingle, u, n_perm, np.random.default_rng(random_state))
        # Exact shingle sets as a sparse binary matrix, for the final Jaccard check.
        vocab, col = np.unique(shingle, return_inverse=True)
        sets = sp.csr_matrix((np.ones(len(col), dtype=np.float32), (owner, col.ravel())), shape=(u, len(vocab)))
        sets.sum_duplicates()
        sets.data[:] = 1.0
        sizes = np.asarray(sets.sum(axis=1)).ravel()
        bands, rows = _lsh_shape(n_perm, thr)
        mult = np.random.default_rng(random_state + 1).integers(1, 2**63, size=rows, dtype=np.uint64) * 2 + 1
        found = []
        for band in range(bands):
            keys = _mix64((sig[:, band * rows:(band + 1) * rows].astype(np.uint64) * mult).sum(axis=1))
            found.extend(np.minimum(a, b) * u + np.maximum(a, b) for a, b in _bucket_pairs(keys))
        # Pairs proposed by several bands are checked once.
        pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        for c in range(0, len(pairs), 1 << 15):
            ca, cb = np.divmod(pairs[c:c + (1 << 15)], u)
            inter = np.asarray(sets[ca].multiply(sets[cb]).sum(axis=1)).ravel()
            ok = inter >= thr * (sizes[ca] + sizes[cb] - inter) - 1e-9
            ii.append(nonempty[ca[ok]])
            jj.append(nonempty[cb[ok]])
    comp = _components(len(uniq), np.concatenate(ii), np.concatenate(jj))
    # Texts that normalise to "" stay alone even when there are several of them.
    comp = np.where(np.char.str_len(uniq.astype(str))[inverse] > 0, comp[inverse], len(uniq) + np.arange(n))
    return _groups_from_components(comp)


# ---------------------------------------------------------------------------------------------- scores
def _group_stats(groups: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per grouped sample: how many members of its group share its code, and how many distinct codes the group has."""
    member = groups >= 0
    g, c = groups[member], codes[member]
    pair = g * (int(codes.max()) + 1) + c
    _, pair_inv, pair_count = np.unique(pair, return_inverse=True, return_counts=True)
    same = pair_count[pair_inv.ravel()]
    uniq_pairs = np.unique(pair)
    distinct = np.bincount(uniq_pairs // (int(codes.max()) + 1), minlength=int(g.max()) + 1)
    return same, distinct[g]


def duplicate_scores(
    groups: np.ndarray, labels: np.ndarray, sources: np.ndarray | Sequence[Any] | None = None
) -> np.ndarray:
    """Suspicion of each sample from its duplicate group; higher = more suspicious, 0 for a sample in no group.

    Three pieces of evidence, each in [0, 1), combined as a noisy-OR ``1 - (1-c)(1-s)(1-r)``:

    - label conflict ``c``: the share of the other members of the group whose label differs from this
      sample's (a minority label in a group of copies scores most);
    - source spread ``s = 1 - 1/n_sources`` of the group: copies sent by many contributors are the sybil
      signature (0 for a group from a single source, 0.8 for five sources);
    - redundancy ``r = REDUNDANCY_WEIGHT * (1 - 1/size)``: any copy is mildly suspicious (upsampled poison).

    Parameters
    ----------
    groups : ndarray of int, shape (n,)
        Group id per sample, -1 for none (from any ``*_groups`` function here).
    labels : ndarray of int, shape (n,)
    sources : array-like of str, shape (n,), optional
        Contributor of each sample; without it the spread evidence is 0.

    Returns
    -------
    ndarray of float64, shape (n,)
        In [0, 1); 0 for samples in no group.
    """
    y = check_labels(labels, len(np.asarray(labels)))
    n = len(y)
    g = check_groups(groups, n)
    out = np.zeros(n, dtype=np.float64)
    member = g >= 0
    if not member.any():
        return out
    size = np.bincount(g[member])[g[member]].astype(np.float64)
    if (size < 2).any():
        raise InputError("groups has a group with a single member; single samples must have group -1")
    same_label, _ = _group_stats(g, y)
    conflict = (size - same_label) / (size - 1)
    spread = np.zeros_like(size)
    if sources is not None:
        s = _check_sources(sources, n)
        _, codes = np.unique(s, return_inverse=True)
        _, n_sources = _group_stats(g, codes.ravel())
        spread = 1.0 - 1.0 / n_sources
    redundancy = REDUNDANCY_WEIGHT * (1.0 - 1.0 / size)
    out[member] = 1.0 - (1.0 - conflict) * (1.0 - spread) * (1.0 - redundancy)
    return out


def duplicate_group_table(
    groups: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray | Sequence[Any] | None = None,
    ids: np.ndarray | Sequence[Any] | None = None,
) -> pd.DataFrame:
    """One row per duplicate group, largest first.

    Parameters
    ----------
    groups : ndarray of int, shape (n,)
        Group id per sample, -1 for none.
    labels : ndarray of int, shape (n,)
    sources : array-like of str, shape (n,), optional
    ids : array-like of str, shape (n,), optional
        Sample ids (e.g. ``Dataset.ids``); positions are used without them.

    Returns
    -------
    DataFrame
        Columns ``group``, ``size``, ``n_labels``, ``labels`` (sorted list), ``n_sources``, ``sources``
        (sorted list; both absent without ``sources``), ``sample_ids`` (list, in dataset order).
        Sorted by size (descending), then group.
    """
    y = check_labels(labels, len(np.asarray(labels)))
    n = len(y)
    g = check_groups(groups, n)
    if ids is None:
        sample_ids = np.arange(n).astype(str)
    else:
        sample_ids = np.asarray(ids, dtype=object)
        if sample_ids.ndim != 1 or len(sample_ids) != n:
            raise InputError(f"ids has {len(sample_ids)} entries but labels has {n} entries")
    frame = pd.DataFrame({"group": g, "label": y, "sample_id": sample_ids})
    if sources is not None:
        frame["source"] = _check_sources(sources, n)
    frame = frame[frame["group"] >= 0]
    columns = ["group", "size", "n_labels", "labels"] + (["n_sources", "sources"] if sources is not None else []) \
        + ["sample_ids"]
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("labels", "sources", "sample_ids") else np.int64)
                             for c in columns})
    by = frame.groupby("group", sort=True)
    table = pd.DataFrame({
        "size": by.size(),
        "n_labels": by["label"].nunique(),
        "labels": by["label"].agg(lambda v: sorted(set(int(x) for x in v))),
    })
    if sources is not None:
        table["n_sources"] = by["source"].nunique()
        table["sources"] = by["source"].agg(lambda v: sorted(set(v)))
    table["sample_ids"] = by["sample_id"].agg(list)
    table = table.reset_index().sort_values(["size", "group"], ascending=[False, True], kind="stable")
    return table[columns].reset_index(drop=True)


__all__ = [
    "REDUNDANCY_WEIGHT",
    "duplicate_group_table",
    "duplicate_scores",
    "exact_duplicate_groups",
    "image_phash",
    "near_duplicate_groups_features",
    "near_duplicate_groups_hashes",
    "near_duplicate_groups_images",
    "near_duplicate_groups_texts",
    "normalize_text",
]
