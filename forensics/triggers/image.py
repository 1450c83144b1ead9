"""Image trigger candidates: a localized pattern shared by a suspicious group and rare among its label peers.

Given a group of images (a cluster, a selection, a source's samples) and its peers (typically the other samples
of the same label), :func:`image_trigger_candidate` looks for what the group holds in common that the others do
not, in three steps:

1. **A fixed patch.** Per pixel, the share of the group within ``tolerance`` of the group's median value, minus
   the share of the references within ``tolerance`` of that same value (the *exclusive consistency*, in
   [-1, 1]). The references are the peers and, separately, a sample of every image outside the group (the larger
   share counts): a dirty-label group lacks its label peers' shapes, which is consistent against the peers alone
   but common everywhere else. Each strongly consistent region is boxed, and the group's median inside the box
   is a candidate pattern; its *strength* is the share of the group that carries it there minus the share of
   the references that do. The strong regions' common box is the patch when it is small.
2. **A moving patch.** Otherwise, small windows (2x2 up to 8x8) of the group images are hashed after coarse
   quantization; a window that recurs in most group images and few references is a pattern pasted at varying
   places. It is grown where it continues in every carrier, then located in every image by template matching
   (``moves=True``, with each image's position).
3. **No local pattern.** Otherwise (a blended, image-wide trigger, or nothing at all) the candidate says so
   (``local=False``) and offers the image-wide difference: the mean, over the half of the group whose own difference
   follows the group's mean most, of each image minus its nearest look-alikes among the other images (pixel space).
   A blend, a sinusoid or a faint overlay leaves an image nearest to clean images of its own kind, so the difference
   is the added signal; against the label peers it would be mostly the shapes of the classes a relabelled group
   comes from. A blend over a flat background does change some pixels consistently, but all over the image: its
   strong regions do not share a small box.

Everything is per-pixel statistics over the group and bounded samples of the rest: no n x n matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from .._validate import check_images, check_int, check_number, check_random_state
from ..errors import InputError
from ..signals.marks import window_keys

# Strongly consistent regions examined as fixed patches, strongest first.
_MAX_REGIONS = 20
# Group and reference images the moving-patch search hashes windows of (each at most).
_MOVING_SAMPLE = 500
# Images per chunk in per-pixel statistics.
_CHUNK = 256
# Nearest images averaged as what a group image would look like without an image-wide trigger, and the largest
# side (in pixels) at which images are compared to find them.
_LOOKALIKES = 5
_LOOKALIKE_SIDE = 32
# Images among which look-alikes are sought (those outside a group, subsampled).
_LOOKALIKE_REFS = 2000
# Pixels of the Gaussian blur an image's fine detail is taken against (:func:`fine_detail_groups`).
_DETAIL_SIGMA = 1.0


@dataclass(frozen=True, eq=False)
class ImageTriggerCandidate:
    """What a group of images shares that its peers do not.

    Attributes
    ----------
    local : bool
        True when a small region (a patch) explains the group; False for an image-wide difference (a blend)
        or no difference at all.
    moves : bool
        True when the patch sits at a different place in each image (see ``positions``).
    box : (row, col, height, width) or None
        Where the patch sits in every carrier (fixed patches only).
    pattern : ndarray of uint8, shape (height, width) or (height, width, 3), or None
        The reconstructed patch: the group's median inside the box (fixed), or the median of the matched
        windows (moving). None when ``local`` is False.
    positions : ndarray of int64, shape (m, 2), or None
        Top-left (row, col) of the best match of ``pattern`` in each group image, in the group's order
        (moving patches only; fixed patches sit at ``box``).
    group : ndarray of int64, shape (m,)
        Row positions of the group's images in the array given.
    carriers : ndarray of bool, shape (m,)
        Which group images carry the pattern (a match of at least ``match_threshold``); when ``local`` is False,
        the half of the (sampled) group whose own difference follows the mean difference most, which ``difference``
        is the mean of.
    target : int or None
        The group's most common label when labels were given.
    strength : float
        Share of the group carrying the pattern minus share of the references (peers and other images)
        carrying it (local), or the mean absolute difference in grey levels divided by 255 (not local).
    difference : ndarray of float32, shape (h, w) or (h, w, 3)
        Group mean minus peers mean.
    low_variance : ndarray of bool, shape (h, w)
        Pixels where at least 80% of the group lies within ``tolerance`` of the group's median.
    consistency : ndarray of float32, shape (h, w)
        Exclusive consistency (see the module docstring).
    peer_mean : ndarray of float32, shape (h, w) or (h, w, 3)
        Mean image of the peers: what a removed patch is filled with.
    tolerance : int
        Grey levels within which two pixel values count as the same.
    description : str
        One sentence for a person.
    confirmation : Confirmation or None
        Set by :func:`forensics.triggers.confirm_image_candidates`.
    """

    local: bool
    moves: bool
    box: tuple[int, int, int, int] | None
    pattern: np.ndarray | None
    positions: np.ndarray | None
    group: np.ndarray
    carriers: np.ndarray
    target: int | None
    strength: float
    difference: np.ndarray = field(repr=False)
    low_variance: np.ndarray = field(repr=False)
    consistency: np.ndarray = field(repr=False)
    peer_mean: np.ndarray = field(repr=False)
    tolerance: int = 16
    description: str = ""
    confirmation: Any = None

    def __repr__(self) -> str:
        shape = None if self.pattern is None else self.pattern.shape
        return (f"ImageTriggerCandidate(local={self.local}, moves={self.moves}, box={self.box}, pattern_shape="
                f"{shape}, group={len(self.group)}, carriers={int(self.carriers.sum())}, target={self.target}, "
                f"strength={self.strength:.3f})")


def label_peers(labels: Sequence[int] | np.ndarray, group: np.ndarray) -> np.ndarray:
    """The peers of a group: samples with the group's most common label that are not in the group.

    Parameters
    ----------
    labels : array of int, shape (n,)
    group : array of bool, shape (n,)

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    y = np.asarray(labels)
    g = np.asarray(group)
    if g.dtype != bool or g.shape != y.shape:
        raise InputError(f"group must be a boolean mask of shape {y.shape}; got dtype {g.dtype}, shape {g.shape}")
    if not g.any():
        raise InputError("group is empty; give at least one sample")
    values, counts = np.unique(y[g], return_counts=True)
    return (y == values[np.argmax(counts)]) & ~g


def image_trigger_candidate(
    images: np.ndarray,
    group: Sequence[Any] | np.ndarray,
    *,
    peers: Sequence[Any] | np.ndarray,
    ids: Sequence[Any] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    tolerance: int = 16,
    min_share: float = 0.5,
    max_box_fraction: float = 0.25,
    match_threshold: float = 0.9,
    max_peers: int = 2000,
    patches: bool = True,
    random_state: int = 0,
) -> ImageTriggerCandidate:
    """The pattern a group of images shares and its peers lack: a fixed patch, a moving patch, or neither.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3)
    group : boolean mask of shape (n,), or a sequence of sample ids (then ``ids`` is needed)
        The suspicious group.
    peers : boolean mask of shape (n,), or a sequence of sample ids
        What the group is compared with, usually :func:`label_peers` (same label, not in the group).
        Samples in both are left out of the peers.
    ids : sequence of length n, optional
        Sample ids, to give ``group`` and ``peers`` as ids.
    labels : array of int, shape (n,), optional
        Training labels; the group's most common one is reported as ``target``.
    tolerance : int
        Grey levels within which two pixel values count as the same (0 to 127).
    min_share : float in (0, 1]
        A patch needs a strength (share of the group carrying it minus share of the references carrying it)
        of at least this.
    max_box_fraction : float in (0, 1]
        Largest box, as a share of the image area, still called local.
    match_threshold : float in (0, 1]
        Share of a patch's pixels that must match (within ``tolerance``) for an image to carry it.
    max_peers : int
        Peers, and other images, beyond this many are subsampled (with ``random_state``).
    patches : bool
        Look for a fixed or a moving patch first (False: offer the image-wide difference only).
    random_state : int

    Returns
    -------
    ImageTriggerCandidate
    """
    x = check_images(images, allow_empty=False)
    n = len(x)
    g_idx = _rows(group, n, ids, "group")
    p_mask = np.zeros(n, dtype=bool)
    p_mask[_rows(peers, n, ids, "peers")] = True
    p_mask[g_idx] = False
    p_idx = np.flatnonzero(p_mask)
    if not len(p_idx):
        raise InputError("peers is empty once the group's own samples are left out; give other samples")
    tolerance = check_int(tolerance, "tolerance", low=0, high=127)
    min_share = check_number(min_share, "min_share", low=0, high=1, low_open=True)
    max_box_fraction = check_number(max_box_fraction, "max_box_fraction", low=0, high=1, low_open=True)
    match_threshold = check_number(match_threshold, "match_threshold", low=0, high=1, low_open=True)
    max_peers = check_int(max_peers, "max_peers", low=1)
    rng = np.random.default_rng(check_random_state(random_state))
    target = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise InputError(f"labels must be integer class indices of shape ({n},); got {y.dtype}, {y.shape}")
        values, counts = np.unique(y[g_idx], return_counts=True)
        target = int(values[np.argmax(counts)])
    # The rest of the images (not the group) as a second reference: a dirty-label group lacks its label peers'
    # strokes, which looks consistent against the peers alone but is common everywhere else.
    o_idx = np.flatnonzero(~np.isin(np.arange(n), g_idx))
    if len(p_idx) > max_peers:
        p_idx = np.sort(rng.choice(p_idx, size=max_peers, replace=False))
    if len(o_idx) > max_peers:
        o_idx = np.sort(rng.choice(o_idx, size=max_peers, replace=False))

    xc = _channels_last(x)  # a view
    median = np.median(xc[g_idx], axis=0)
    same_g = _share_within(xc, g_idx, median, tolerance)
    same_ref = np.maximum(_share_within(xc, p_idx, median, tolerance), _share_within(xc, o_idx, median, tolerance))
    consistency = (same_g - same_ref).astype(np.float32)
    low_variance = same_g >= 0.8
    peer_mean = _mean(xc, p_idx)
    difference = (_mean(xc, g_idx) - peer_mean).astype(np.float32)
    maps = {"difference": _restore(difference, x), "low_variance": low_variance, "consistency": consistency,
            "peer_mean": _restore(peer_mean, x), "tolerance": tolerance}
    ref_idx = np.union1d(p_idx, o_idx)

    fixed = None if not patches else _fixed_patch(
        x, g_idx, ref_idx, median, consistency, tolerance=tolerance, min_share=min_share,
        max_box_fraction=max_box_fraction, match_threshold=match_threshold)
    if fixed is not None:
        box, pattern, carriers, strength = fixed
        r, c, bh, bw = box
        return ImageTriggerCandidate(
            local=True, moves=False, box=box, pattern=pattern, positions=None, group=g_idx, carriers=carriers,
            target=target, strength=strength,
            description=(f"a {bh}x{bw} patch at rows {r}-{r + bh - 1}, columns {c}-{c + bw - 1}, the same place "
                         f"in {int(carriers.sum())} of the {len(g_idx)} group images"),
            **maps,
        )
    few_g = np.sort(rng.choice(g_idx, size=min(len(g_idx), _MOVING_SAMPLE), replace=False))
    few_r = np.sort(rng.choice(ref_idx, size=min(len(ref_idx), _MOVING_SAMPLE), replace=False))
    moving = _moving_pattern(xc[few_g], xc[few_r], tolerance, min_share) if patches else None
    if moving is not None:
        pattern = _restore(moving, x)
        match, rows, cols = locate_pattern(x[g_idx], pattern, tolerance=tolerance)
        carriers = match >= match_threshold
        if carriers.any():
            # The search used square windows: extend the pattern where it continues in every carrier.
            pattern, rows, cols = _grow(xc[g_idx[carriers]], moving, rows[carriers], cols[carriers], tolerance)
            pattern = _restore(pattern, x)
            match, rows, cols = locate_pattern(x[g_idx], pattern, tolerance=tolerance)
            carriers = match >= match_threshold
            pos = np.stack([rows, cols], axis=1)
            _, pos_counts = np.unique(pos[carriers], axis=0, return_counts=True)
            # A pattern found at one place in most carriers is a fixed one, which step 1 judged not local.
            ref_match = search_image(x[ref_idx], pattern, moves=True, tolerance=tolerance)
            strength = float(carriers.mean()) - float((ref_match >= match_threshold).mean())
            if pos_counts.max() < 0.5 * carriers.sum() and strength >= min_share:
                ph, pw = pattern.shape[:2]
                return ImageTriggerCandidate(
                    local=True, moves=True, box=None, pattern=pattern, positions=pos, group=g_idx,
                    carriers=carriers, target=target, strength=strength,
                    description=(f"a {ph}x{pw} patch at a different place in each image, found in "
                                 f"{int(carriers.sum())} of the {len(g_idx)} group images at "
                                 f"{len(pos_counts)} different places"),
                    **maps,
                )

    # An image-wide trigger: what the group adds to images like its own. Against its label peers the mean
    # difference is mostly the shapes of the classes the relabelled images come from.
    few_g = np.sort(rng.choice(g_idx, size=min(len(g_idx), _MOVING_SAMPLE), replace=False))
    difference, follows = _consensus_difference(xc, few_g, o_idx)
    maps["difference"] = _restore(difference, x)
    mad = float(np.abs(maps["difference"]).mean())
    return ImageTriggerCandidate(
        local=False, moves=False, box=None, pattern=None, positions=None, group=g_idx,
        carriers=np.isin(g_idx, few_g[follows]), target=target, strength=mad / 255.0,
        description=(f"no local pattern: across the image, the {int(follows.sum())} group images whose own "
                     f"difference follows the group's most differ from the images they look like by {mad:.1f} grey "
                     "levels on average; that mean difference is the candidate"),
        **maps,
    )


def fine_detail_groups(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    group_share: float = 0.05,
    min_group: int = 10,
    min_z: float = 4.5,
    max_sample: int = 2000,
    random_state: int = 0,
) -> list[np.ndarray]:
    """Per class, the images furthest along the class's main direction of fine detail, where they lie apart from the
    rest: candidate groups for a pattern blended into them.

    An image's fine detail is the image minus its Gaussian blur (``_DETAIL_SIGMA`` pixels): shapes and colours are
    smooth and leave only their edges, which differ from image to image, while a blended noise pattern or a fine
    overlay is the same in every carrier. Within each class the first principal direction of the details (fitted on
    at most ``max_sample`` images) is the pattern's when a share of the class carries it, and the images whose detail
    lies furthest along it (robust z, either side) make the group: the top ``group_share`` of the class, at least
    ``min_group`` (classes under twice that are skipped), when every one of them lies at least ``min_z`` from the
    class's median; a class whose top lies closer holds nothing apart. (On the attack matrix's tuning cells the top
    5% of a clean class reached 1.4-2.5, sandals with their straps 3.7-4.3, the target class of a colour blend the
    model learned 5.1-9.3.) Why: in colour images, where every image has its own
    colours, activations and pixel look-alikes are ordered by colour first, and no signal saw a colour noise blend
    the model had learned (attack matrix, ``colour_blend``, tuning seeds 1, 2 and 6: r@2x 0.02-0.03 for every
    signal); this ordering put its carriers first (r@2x 1.00 in all three).

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3)
    labels : array of int, shape (n,)
    group_share, min_group : float, int
    min_z : float
        Robust z (along the direction, from the class's median, in MADs) that every member of a group must reach.
    max_sample : int
        Images per class the direction is fitted on.
    random_state : int

    Returns
    -------
    list of ndarray of bool, shape (n,)
        One group per class whose top lies apart, each of one class.
    """
    from sklearn.utils.extmath import randomized_svd

    x = check_images(images, allow_empty=False)
    y = np.asarray(labels)
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise InputError(f"labels must be integer class indices of shape ({len(x)},); got {y.dtype}, {y.shape}")
    group_share = check_number(group_share, "group_share", low=0, high=1, low_open=True)
    min_group = check_int(min_group, "min_group", low=1)
    min_z = check_number(min_z, "min_z", low=0)
    max_sample = check_int(max_sample, "max_sample", low=2)
    seed = check_random_state(random_state)
    rng = np.random.default_rng(seed)
    xc = _channels_last(x)
    groups = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = max(min_group, int(round(group_share * len(rows))))
        if len(rows) < 2 * k:
            continue
        fit = np.sort(rng.choice(rows, size=min(len(rows), max_sample), replace=False))
        d = _detail(xc[fit])
        centre = d.mean(axis=0)
        _, _, vt = randomized_svd(d - centre, n_components=1, random_state=seed)
        proj = np.concatenate([(_detail(xc[rows[s:s + _CHUNK]]) - centre) @ vt[0]
                               for s in range(0, len(rows), _CHUNK)])
        med = np.median(proj)
        spread = 1.4826 * np.median(np.abs(proj - med)) or float(np.std(proj)) or 1.0
        z = np.abs(proj - med) / spread
        top = np.argsort(-z, kind="stable")[:k]
        if z[top[-1]] < min_z:
            continue
        group = np.zeros(len(x), dtype=bool)
        group[rows[top]] = True
        groups.append(group)
    return groups


def _detail(x: np.ndarray) -> np.ndarray:
    """(m, h, w, c) uint8 -> each image minus its Gaussian blur, flattened: (m, h * w * c) float32."""
    f = x.astype(np.float32)
    return (f - ndimage.gaussian_filter(f, sigma=(0, _DETAIL_SIGMA, _DETAIL_SIGMA, 0))).reshape(len(f), -1)


def _lookalike_difference(x: np.ndarray, rows: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Mean over ``x[rows]`` of each image minus the mean of its ``_LOOKALIKES`` nearest ``x[refs]`` (pixel space,
    compared at most ``_LOOKALIKE_SIDE`` pixels a side): (h, w, c) float32. A blend, a sinusoid or a faint overlay
    leaves an image closest to clean images of its own kind, so what remains is the added signal."""
    total = np.zeros(x.shape[1:], dtype=np.float64)
    for _, residual in _lookalike_residuals(x, rows, refs):
        total += residual
    return (total / len(rows)).astype(np.float32)


def _consensus_difference(x: np.ndarray, rows: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The look-alike difference of the half of ``x[rows]`` whose own difference follows the mean of all of them
    most (by cosine), and which rows those are: (h, w, c) float32, bool (len(rows),).

    A group the signals gathered is rarely pure: its clean members dilute the mean difference, and a diluted
    trigger may no longer turn the model (a sinusoid 61% of whose group carried it: 9.5 grey levels, 10% of held-out
    images turned; the half that follows it, every one a carrier: 15.1, 69%). The clean members' differences are
    their own detail, no closer to the mean than to any other direction, so they fall in the other half."""
    first = _lookalike_difference(x, rows, refs).astype(np.float64)
    norm = float(np.sqrt((first**2).sum()))
    cosine = np.zeros(len(rows))
    if norm > 0:
        at = {r: j for j, r in enumerate(rows)}
        for i, residual in _lookalike_residuals(x, rows, refs):
            r_norm = float(np.sqrt((residual**2).sum()))
            cosine[at[i]] = float((residual * first).sum()) / (r_norm * norm) if r_norm > 0 else 0.0
    follows = cosine >= np.median(cosine)
    return _lookalike_difference(x, rows[follows], refs), follows


def carries_difference(images: np.ndarray, difference: np.ndarray, *, max_refs: int = 2000,
                       random_state: int = 0) -> np.ndarray:
    """How closely each image's own deviation follows an image-wide ``difference``: **higher = carries it**.

    Each image minus the mean of its nearest look-alikes among a sample of ``max_refs`` images (itself left out) is
    compared with ``difference`` by their cosine, clipped to [0, 1]. A clean image's deviation is its own detail,
    no more aligned with the difference than with any other direction (cosines near 0); an image carrying the
    trigger deviates along it. Cosine rather than the projected amount, because an unusual clean image deviates a lot
    in every direction: on a sinusoid the model had learned, it ranked the carriers at AUROC 0.968 and 0.997 against
    0.960 and 0.994 for the projection. The same cosine is also read in fine detail (each image minus its blur, against
    the difference's own detail) and the larger one kept: where every image has its own colours, its look-alikes
    differ in colour and swamp a blended noise pattern, which its fine detail keeps (on a colour blend of the attack
    matrix, 239 of its 399 carriers were found by the look-alikes alone, 399 with the detail).

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3)
    difference : ndarray of float, shape (h, w) or (h, w, 3)
        An image-wide candidate's ``difference``.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    x = check_images(images, allow_empty=False)
    xc = _channels_last(x)
    d = np.asarray(difference, dtype=np.float64).reshape(xc.shape[1:])
    d_norm = float(np.sqrt((d**2).sum()))
    out = np.zeros(len(x))
    if not d_norm > 0 or len(x) < 2:
        return out
    rng = np.random.default_rng(check_random_state(random_state))
    refs = np.sort(rng.choice(len(x), size=min(len(x), check_int(max_refs, "max_refs", low=2)), replace=False))
    for i, residual in _lookalike_residuals(xc, np.arange(len(x)), refs):
        r_norm = float(np.sqrt((residual**2).sum()))
        out[i] = float((residual * d).sum()) / (r_norm * d_norm) if r_norm > 0 else 0.0
    # The same in fine detail (each image minus its blur): where every image has its own colours its look-alikes
    # differ in colour, which swamps a blended noise pattern, while its detail holds the pattern and its edges only.
    d_detail = _detail(d[None].astype(np.float32))[0]
    dd_norm = float(np.sqrt((d_detail**2).sum()))
    if dd_norm > 0:
        for s in range(0, len(x), _CHUNK):
            det = _detail(xc[s:s + _CHUNK])
            norms = np.sqrt((det**2).sum(axis=1))
            cos = np.divide(det @ d_detail, norms * dd_norm, out=np.zeros(len(det)), where=norms > 0)
            out[s:s + _CHUNK] = np.maximum(out[s:s + _CHUNK], cos)
    return np.clip(out, 0.0, 1.0)


def _lookalike_residuals(x: np.ndarray, rows: np.ndarray, refs: np.ndarray) -> Any:
    """Yields (row, image minus the mean of its ``_LOOKALIKES`` nearest references, float64), the row itself never
    among its references. ``x``: (n, h, w, c) uint8."""
    h, w = x.shape[1:3]
    f = max(1, int(np.ceil(max(h, w) / _LOOKALIKE_SIDE)))

    def small(batch: np.ndarray) -> np.ndarray:
        b = batch.astype(np.float32)[:, : h - h % f or h, : w - w % f or w]
        if f > 1:
            b = b.reshape(len(b), b.shape[1] // f, f, b.shape[2] // f, f, -1).mean(axis=(2, 4))
        return b.reshape(len(b), -1)

    ref_small = small(x[refs])
    ref_norm = (ref_small**2).sum(axis=1)
    k = max(1, min(_LOOKALIKES, len(refs) - 1))
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        dist = ref_norm[None, :] - 2.0 * small(x[chunk]) @ ref_small.T  # + |image|^2, the same for every reference
        dist[refs[None, :] == chunk[:, None]] = np.inf
        near = np.argpartition(dist, k - 1, axis=1)[:, :k]
        for i, nn in zip(chunk, near):
            yield i, x[i].astype(np.float64) - x[refs[nn]].astype(np.float64).mean(axis=0)


def _share_within(x: np.ndarray, rows: np.ndarray, value: np.ndarray, tolerance: int) -> np.ndarray:
    """Per pixel, the share of images ``x[rows]`` (x: (n, h, w, c) uint8) within ``tolerance`` of ``value``
    (h, w, c) on every channel. Chunked: no float copy of all the images."""
    count = np.zeros(x.shape[1:3])
    for s in range(0, len(rows), _CHUNK):
        part = x[rows[s:s + _CHUNK]].astype(np.float32)
        count += (np.abs(part - value) <= tolerance).all(axis=-1).sum(axis=0)
    return count / len(rows)


def _mean(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean image of ``x[rows]`` (x: (n, h, w, c) uint8), chunked."""
    total = np.zeros(x.shape[1:])
    for s in range(0, len(rows), _CHUNK):
        total += x[rows[s:s + _CHUNK]].sum(axis=0, dtype=np.float64)
    return total / len(rows)


def _fixed_patch(
    x: np.ndarray, g_idx: np.ndarray, ref_idx: np.ndarray, median: np.ndarray, consistency: np.ndarray, *,
    tolerance: int, min_share: float, max_box_fraction: float, match_threshold: float,
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, float] | None:
    """A fixed patch: (box, pattern, carriers among the group, strength), or None.

    Each connected region of strongly consistent pixels (at least half the peak) is boxed and scored by its
    strength: the share of the group that matches the group's median there minus the share of the references
    that do. Regions that reach ``min_share`` are kept; the patch is the strongest with the regions that touch
    it. When the kept regions are spread over the image (their common bounding box is large), the patch must be
    matched by nearly the whole group (``_WHOLE_GROUP``) and be the only such place: a blend over a flat
    background changes pixels everywhere in the same way, and then there is no local patch.
    """
    top = float(consistency.max())
    if top <= 0:
        return None
    regions, k = ndimage.label(consistency >= 0.5 * top, structure=np.ones((3, 3), dtype=bool))  # 8-connected
    mass = ndimage.sum(consistency, regions, index=np.arange(1, k + 1))
    slices = ndimage.find_objects(regions)

    def evaluate(box):
        r, c, bh, bw = box
        pattern = _restore(np.clip(np.rint(median[r:r + bh, c:c + bw]), 0, 255).astype(np.uint8), x)
        carriers = search_image(x[g_idx], pattern, box=box, tolerance=tolerance) >= match_threshold
        ref = search_image(x[ref_idx], pattern, box=box, tolerance=tolerance) >= match_threshold
        return pattern, carriers, float(carriers.mean()) - float(ref.mean())

    limit = max_box_fraction * consistency.size
    scored = {}
    for j in np.argsort(-mass)[:_MAX_REGIONS]:
        rs, cs = slices[j]
        box = (rs.start, cs.start, rs.stop - rs.start, cs.stop - cs.start)
        if box[2] * box[3] <= limit:
            _, carriers, strength = evaluate(box)
            if strength >= min_share:
                scored[box] = (strength, float(carriers.mean()))
    if not scored:
        return None
    good = list(scored)
    # The patch is the strongest region with the regions that touch it. A region elsewhere is another mark of
    # the group (its classes' own background, say): boxed together, the background would dilute the pattern
    # and the search would match images that carry only the background.
    best = max(good, key=lambda b: scored[b][0])
    spread = _union(good)[2] * _union(good)[3] > limit
    if spread and any(scored[b][1] >= _WHOLE_GROUP for b in good if not _touch(b, best)):
        # A blend leaves its fixed pattern wherever the images are flat, in several places that every group
        # image matches; a patch is the one place that (nearly) every group image matches.
        return None
    box = _union([b for b in good if _touch(b, best)])
    pattern, carriers, strength = evaluate(box)
    if strength < min_share or (spread and carriers.mean() < _WHOLE_GROUP):
        return None
    return box, pattern, carriers, strength


#: Share of a group that must match a region for it to count as carried by the whole group.
_WHOLE_GROUP = 0.95


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The bounding box (row, col, height, width) of boxes."""
    r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    r1, c1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return int(r0), int(c0), int(r1 - r0), int(c1 - c0)


def _touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes overlap, touch, or have one pixel between them."""
    return (a[0] <= b[0] + b[2] + 1 and b[0] <= a[0] + a[2] + 1) and (a[1] <= b[1] + b[3] + 1
                                                                       and b[1] <= a[1] + a[3] + 1)


def _moving_pattern(xg: np.ndarray, xp: np.ndarray, tolerance: int, min_share: float) -> np.ndarray | None:
    """The median of the windows that recur in most group images ``xg`` and few references ``xp`` (both uint8,
    (m, h, w, c)), or None.

    Windows are quantized to bins of ``2 * tolerance + 1`` grey levels and hashed to 64-bit keys; the window
    size kept is the largest whose best recurrence (group share minus peer share) is within 90% of the best of
    all sizes, so that a 3x3 patch is not reported as one of its 2x2 corners.
    """
    h, w = xg.shape[1:3]
    step = 2 * tolerance + 1
    qg = xg // step
    qp = xp // step
    best: list[tuple[int, float, np.uint64]] = []
    for k in range(2, min(8, h // 2, w // 2) + 1):
        key_g = window_keys(qg, k)  # (m, positions)
        key_p = window_keys(qp, k)
        share_g, uniq = _image_share(key_g)
        if not len(uniq):
            continue
        share_p = np.zeros(len(uniq))
        codes = pd.Index(uniq).get_indexer(key_p.ravel())
        img = np.repeat(np.arange(len(key_p)), key_p.shape[1])
        hit = codes >= 0
        pairs = pd.unique(codes[hit].astype(np.int64) * len(key_p) + img[hit])
        np.add.at(share_p, pairs // len(key_p), 1.0)
        share_p /= len(key_p)
        score = share_g - share_p
        j = int(np.argmax(score))
        best.append((k, float(score[j]), uniq[j]))
    if not best or max(s for _, s, _ in best) < min_share:
        return None
    top = max(s for _, s, _ in best)
    k, _, key = max((b for b in best if b[1] >= 0.9 * top), key=lambda b: b[0])
    key_g = window_keys(qg, k)
    img, pos = np.nonzero(key_g == key)
    r, c = np.unravel_index(pos, (h - k + 1, w - k + 1))
    windows = sliding_window_view(xg, (k, k), axis=(1, 2))[img, r, c]  # (matches, c, k, k)
    pattern = np.median(windows, axis=0).transpose(1, 2, 0)  # (k, k, c)
    return np.clip(np.rint(pattern), 0, 255).astype(np.uint8)


def _grow(xc: np.ndarray, pattern: np.ndarray, rows: np.ndarray, cols: np.ndarray,
          tolerance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extend a moving pattern (k, k, c) found at (rows, cols) in carriers xc (m, h, w, c) by one row or column
    at a time while at least 95% of the carriers (that have room) agree on the new strip within ``tolerance``
    of its median; carriers without room are dropped. Returns the pattern and the remaining carriers' top-left
    corners."""
    h, w = xc.shape[1:3]
    top, left = rows.astype(np.int64), cols.astype(np.int64)
    ph, pw = pattern.shape[:2]
    idx = np.arange(len(xc))
    grown = True
    while grown:
        grown = False
        for side in ("top", "bottom", "left", "right"):
            if side in ("top", "bottom"):
                r = top - 1 if side == "top" else top + ph
                fits = (r >= 0) & (r < h)
                if fits.mean() < 0.5:
                    continue
                cc = left[fits, None] + np.arange(pw)
                strip = xc[idx[fits, None], r[fits, None], cc]  # (m, pw, c)
            else:
                c = left - 1 if side == "left" else left + pw
                fits = (c >= 0) & (c < w)
                if fits.mean() < 0.5:
                    continue
                rr = top[fits, None] + np.arange(ph)
                strip = xc[idx[fits, None], rr, c[fits, None]]  # (m, ph, c)
            median = np.median(strip, axis=0)
            agree = (np.abs(strip - median) <= tolerance).all(axis=(1, 2)).mean()
            if agree < 0.95:
                continue
            new = np.clip(np.rint(median), 0, 255).astype(np.uint8)
            # Carriers without room for the strip cannot hold the grown pattern where they carry it: drop them.
            xc, top, left = xc[fits], top[fits], left[fits]
            idx = np.arange(len(xc))
            if side == "top":
                pattern, top, ph = np.concatenate([new[None], pattern], axis=0), top - 1, ph + 1
            elif side == "bottom":
                pattern, ph = np.concatenate([pattern, new[None]], axis=0), ph + 1
            elif side == "left":
                pattern, left, pw = np.concatenate([new[:, None], pattern], axis=1), left - 1, pw + 1
            else:
                pattern, pw = np.concatenate([pattern, new[:, None]], axis=1), pw + 1
            grown = True
    return pattern, top, left


def _image_share(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct key of keys (m, positions): the share of the m images holding it, and the keys."""
    m = len(keys)
    codes, uniq = pd.factorize(keys.ravel())
    img = np.repeat(np.arange(m), keys.shape[1])
    pairs = pd.unique(codes.astype(np.int64) * m + img)
    return np.bincount(pairs // m, minlength=len(uniq)) / m, np.asarray(uniq, dtype=np.uint64)


# ---------------------------------------------------------------------------------------------------- search
def locate_pattern(
    images: np.ndarray, pattern: np.ndarray, *, tolerance: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best place of ``pattern`` in each image.

    Returns
    -------
    match : ndarray of float64, shape (n,)
        Share of the pattern's pixels within ``tolerance`` (every channel) at the best place.
    rows, cols : ndarray of int64, shape (n,)
        Top-left corner of the best place (the first one, in row-major order, on ties).
    """
    x = check_images(images, allow_empty=False)
    pat = _channels_last(_check_pattern(pattern, x), single=True).astype(np.int16)
    x = _channels_last(x)
    tolerance = check_int(tolerance, "tolerance", low=0, high=255)
    ph, pw = pat.shape[:2]
    h, w = x.shape[1:3]
    n_cols = w - pw + 1
    # About 2**25 compared pixels per chunk, whatever the image and pattern sizes.
    chunk = max(1, 2**25 // ((h - ph + 1) * n_cols * pat.size))
    match = np.empty(len(x))
    best = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        windows = sliding_window_view(x[s:s + chunk], (ph, pw), axis=(1, 2))  # (b, H, W, c, ph, pw)
        ok = np.abs(windows.astype(np.int16) - pat.transpose(2, 0, 1)) <= tolerance
        share = ok.all(axis=3).mean(axis=(3, 4)).reshape(len(ok), -1)
        best[s:s + chunk] = share.argmax(axis=1)
        match[s:s + chunk] = share.max(axis=1)
    return match, best // n_cols, best % n_cols


def search_image(
    images: np.ndarray,
    pattern: np.ndarray,
    *,
    box: tuple[int, int, int, int] | None = None,
    moves: bool = False,
    tolerance: int = 16,
) -> np.ndarray:
    """How well each image carries a patch: the share of the pattern's pixels it matches, **higher = carries it**.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3)
    pattern : ndarray of uint8, shape (ph, pw) or (ph, pw, 3)
        A reconstructed patch (``ImageTriggerCandidate.pattern``).
    box : (row, col, height, width), optional
        Where a fixed patch sits; the images are compared there only. Its size must be the pattern's.
    moves : bool
        Search every place (template matching) instead; ``box`` must then be None.
    tolerance : int
        Grey levels within which a pixel matches (on every channel).

    Returns
    -------
    ndarray of float64, shape (n,), in [0, 1]
        1.0 when every pixel of the pattern is found (at the box, or at the best place).
    """
    x = check_images(images, allow_empty=False)
    pat = _check_pattern(pattern, x)
    tolerance = check_int(tolerance, "tolerance", low=0, high=255)
    if moves:
        if box is not None:
            raise InputError("give box for a fixed patch or moves=True for a moving one, not both")
        return locate_pattern(x, pat, tolerance=tolerance)[0]
    if box is None:
        raise InputError("search_image needs box=(row, col, height, width) for a fixed patch, or moves=True")
    r, c, bh, bw = _check_box(box, x.shape[1:3])
    if (bh, bw) != pat.shape[:2]:
        raise InputError(f"box is {bh}x{bw} but the pattern is {pat.shape[0]}x{pat.shape[1]}")
    region = _channels_last(x[:, r:r + bh, c:c + bw]).astype(np.int16)
    ok = (np.abs(region - _channels_last(pat, single=True).astype(np.int16)) <= tolerance).all(axis=-1)
    return ok.mean(axis=(1, 2)).astype(np.float64)


# ---------------------------------------------------------------------------------------------------- helpers
def _channels_last(x: np.ndarray, *, single: bool = False) -> np.ndarray:
    """Images (n, h, w) -> (n, h, w, 1), (n, h, w, 3) unchanged; with ``single``, one image or pattern
    (h, w) -> (h, w, 1), (h, w, 3) unchanged."""
    return x[..., None] if x.ndim == (2 if single else 3) else x


def _restore(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Drop the channel axis added by :func:`_channels_last` when the images are grayscale."""
    return a[..., 0] if like.ndim == 3 else a


def _check_pattern(pattern: Any, images: np.ndarray) -> np.ndarray:
    p = pattern if isinstance(pattern, np.ndarray) else np.asarray(pattern)
    if p.dtype != np.uint8:
        raise InputError(f"pattern must be a uint8 array; got dtype {p.dtype}")
    want = images.ndim - 1
    if p.ndim != want or (want == 3 and p.shape[-1] != 3) or 0 in p.shape:
        kind = "(ph, pw, 3) for colour images" if want == 3 else "(ph, pw) for grayscale images"
        raise InputError(f"pattern must have shape {kind}; got {p.shape}")
    if p.shape[0] > images.shape[1] or p.shape[1] > images.shape[2]:
        raise InputError(f"the {p.shape[0]}x{p.shape[1]} pattern is larger than the "
                         f"{images.shape[1]}x{images.shape[2]} images")
    return p


def _check_box(box: Any, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    try:
        r, c, bh, bw = (int(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"box must be (row, col, height, width); got {box!r}") from None
    if r < 0 or c < 0 or bh < 1 or bw < 1 or r + bh > hw[0] or c + bw > hw[1]:
        raise InputError(f"box {box!r} (row, col, height, width) does not fit in the {hw[0]}x{hw[1]} images")
    return r, c, bh, bw


def _rows(sel: Any, n: int, ids: Any, name: str) -> np.ndarray:
    """Row positions of a boolean mask of length n, or of a sequence of ids found in ``ids``."""
    a = np.asarray(sel)
    if a.dtype == bool:
        if a.shape != (n,):
            raise InputError(f"{name} is a boolean mask of shape {a.shape} but there are {n} images")
        rows = np.flatnonzero(a)
    else:
        if ids is None:
            raise InputError(f"{name} is not a boolean mask, so it is read as sample ids: give ids= as well")
        known = pd.Index(np.asarray(ids, dtype=object).astype(str))
        if len(known) != n:
            raise InputError(f"ids has {len(known)} entries but there are {n} images")
        rows = known.get_indexer(a.astype(str).ravel())
        if (rows < 0).any():
            missing = a.astype(str).ravel()[rows < 0]
            raise InputError(f"{name} has {len(missing)} id(s) not in ids, for example {list(missing[:3])!r}")
        rows = np.unique(rows)
    if not len(rows):
        raise InputError(f"{name} is empty; give at least one sample")
    return rows.astype(np.int64)


