"""One suspicion score per sample, comparable across datasets and signals, with readable reasons.

Each signal's scores become a tail probability under the null it is registered with
(:mod:`forensics.signals.registry`), so that a signal's small probabilities mean what they say:

- ``"fitted"`` (:func:`tail_probability`): under the *bulk* of the data. Up to the 87.5th percentile the empirical
  share of samples scoring at least as high; above it a generalized Pareto tail whose scale and shape come from the
  50th, 75th and 87.5th percentiles. A heavy-tailed signal gets a heavy tail, a light-tailed one an exponential
  tail, and a poisoned eighth of the data does not widen its own null. It is never taken more than
  ``min(MAX_GAIN, n)`` times below the empirical share: past ``1/n**2`` a fitted tail has no data behind it (on
  300 review snippets of a tiny model, 9% of the samples lit a unit the rest never did, and an unbounded
  extrapolation called each of them a 1-in-10^7 event), and a +inf score ranks first without claiming more.
- ``"log_p"``: -log10 p-values with an exponential tail; ``"exact_p"``: p-values taken as they are (a confirmed
  trigger, an activation cluster against the other classes' splits, a source against the other sources).
- ``"label_loss"`` and ``"label_doubt"`` (``high_loss``, ``label_quality``): a model's probability ``q`` of the
  given label. A clean label is a draw from a calibrated prediction, so ``P(q <= t) <= k t`` for ``k`` classes and
  ``p = min(1, k q)``. A tail fitted to losses is heavy (hard clean samples reach far), and so, on the issue's
  5% random flips, none of ``high_loss``, ``label_quality`` and ``knn_disagreement`` ever gave a flip a tail
  probability below 0.01 although each ranked the flips at r@2x 0.96-0.97.
- ``"posterior"`` (``targeted_flip``): a probability ``s`` that the sample was poisoned. The expected number of
  clean samples at or above ``s`` is the sum of ``1 - s_j`` over the samples scoring at least as high, and
  :func:`posterior_tail` reads it as a share of all samples (plus one, so that no sample is certain). A tail fitted to
  the scores themselves (the fitted null, before) bounded the evidence a probability can carry (an exponential tail
  over a score in [0, 1]) while putting 1.2-5% of all clean samples of a pair-flip cell of the attack matrix below
  0.01; read as a posterior, 0-0.6% on the tuning seeds, and the worst pair flip went from 0.15 to 0.06 below the
  signal alone (``python benchmarks/fusion_lab.py --seeds 0-4 --families pair_flip --refresh targeted_flip``). A
  trusted set's scores (``null_scores``) are a better null still, the clean samples' own: it is then read as a fitted
  null against them.

The evidence is summed (``sum -ln p``, Fisher's statistic): several moderate signals that agree (a flip has a high
loss, a disagreeing out-of-fold prediction and neighbours of another class) outrank one signal's chance outlier,
while one overwhelming signal still dominates. Signals registered in one group (``spectral`` and
``robust_spectral``, two estimates of the same direction) count once, as their smaller probability times two. The
sum gets its own tail probability from the data (:func:`evidence_tail`: sums already extreme under a Gamma fitted
to the bulk are set aside, the tail of the rest is fitted as above), which accounts for signals that move
together, and it is never below that of Fisher's statistic for half as many independent p-values as there are
pieces of evidence, a bound no fit can undercut. ``suspicion = -log10`` of that probability, so a threshold ``t``
reads as the estimated share ``10**-t`` of clean samples reaching it (``suspicion >= 2``: about 1%).

Why this and not another fusion: on the cached cells of the attack matrix's tuning seeds (``python
benchmarks/fusion_lab.py --seeds 0-4``; 55 attacked cells, 10 clean controls) the three calibrations above (the
label null, one piece for the spectral pair, the source signal against the other sources rather than a tail fitted
to its samples: a single honest contributor holding 6-21% of the data put all its samples below 0.01 there) and the
Fisher bound moved the worst gap of ``suspicion`` to the best single signal's recall at twice the poison count from
-0.73 to -0.49, the median from -0.03 to 0.00 and the cells short of -0.02 from 28 to 21, with at most 0.90% of a
clean image set and 1.32% of clean review snippets flagged at 2 (from 0.72% and 2.41%). A harmonic-mean p-value
(worst gap -1.00, 12% of a clean set flagged) and the smaller of Fisher's and the Bonferroni minimum (-0.61) did
worse: the signals' tails are calibrated well enough to add, not to be compared one by one. What remains is Fisher's
own cost: with six continuous silent signals beside it, a label signal that ranks 2% of flips perfectly keeps about
half of them in the budget (``tests/test_combine.py`` checks the case of gated, discrete and heavy-tailed silent
signals, where it keeps them all); the worst cells are flips on 0.7-2% of the data that the model half learned.

**The label null of the model** (``label_null=``: :func:`label_null` of its predicted probabilities, which
``investigate`` passes). The bound ``k q`` is far from tight for a confident model: on the attack matrix's clean
images 0.5% of the labels lie at ``k q <= 0.3``, so a flipped label that the model half learned (``q`` of 0.1 to
0.5) gets no evidence at all, and random flips lost 0.05 to 0.08 of recall at twice their count to their best
signal (the loss or the kNN disagreement) beside the silent signals. A calibrated model's own predicted distribution
gives the exact null, ``mean_i sum_c p_ic [p_ic <= q]`` (on the clean controls 0.3-0.4% of ``high_loss``'s
probabilities below 0.01 and 29-30% below 0.3: near uniform), but read on every dataset it makes the label signals
speak everywhere: their noise put a group of sybil sources 0.54 below its best signal on a tuning cell and 2.6% of
clean review snippets over the threshold (``benchmarks/RESULTS.md``, "Since: the labels read against the model's own
predictions"). So it is read only where the labels show an attack: more labels at the null's ``LABEL_ALPHA`` (1%)
than a binomial draw of a calibrated model's allows, at p below ``LABEL_GATE`` (1e-3); otherwise the bound. On the
tuning seeds the gate opened on every random-flip cell (p 1e-28 to 1e-60) and on one overlay whose ranking it left
as it was, on no clean control, pair flip, bot or sybil group (p >= 0.01), and the random flips' gap went from
-0.05..-0.08 to -0.01..-0.04, no other cell changing; on the report seeds (100-109, not looked at before) from
-0.04..-0.08 to -0.01..-0.02 (r@2x median 0.922 -> 0.966), the 35 other cells and 20 clean controls as they were.

A trusted set (``investigate(..., trusted=...)``, 500 samples or more) anchors the fitted nulls of the signals that
can score it with the data (``null_scores``; :data:`~forensics.signals.compute.ANCHORED_SIGNALS`): their tails are
measured against the trusted samples' scores, which no poison inflates. The tail of the summed evidence stays the
bulk's: anchoring it too flagged up to 2.2% of a clean control. On the attack matrix (``python
benchmarks/fusion_lab.py --seeds 100-104 --refresh all --anchor 500``: report seeds, 500 clean samples of each cell
taken as the trusted set) the poison flagged at ``suspicion >= 2`` went from 0.66 to 0.71 on average (pair flips 0.63
to 0.88, blends 0.70 to 0.80, random flips 0.36 to 0.44), the worst clean image control from 0.64% to 0.87% flagged
(texts 1.71% to 1.70%); the ranking hardly moved (22 cells short of their best signal instead of 23): the anchor
moves where the threshold falls, towards its nominal 1% of clean samples, not the order.

A confirmed trigger (the ``trigger`` signal that :meth:`~forensics.investigation.Investigation.find_triggers` adds:
an exact test on the model, counted in full only when its carriers' labels are pure) also sets a floor
(``floor``, :data:`FLOOR_SIGNALS`): a carrier's tail probability is at most the confirmation's p-value times the
number of rules that can flag a sample (the sum, and each floor signal present: a Bonferroni bound over the rules),
so silent signals cannot drown it. In the sum alone, a
phrase confirmed at p = 1e-4 in a small BERT left its 40 carriers at suspicion 1.5-1.7, below 62 hard clean
snippets on which five signals agreed moderately (2.0-2.3): r@2x 0.45; with the floor 1.00 (``python
benchmarks/own_models.py bert --seeds 4 3 2 --epochs 5``; the other seeds unchanged). Samples that carry no
confirmed trigger are untouched. On the attack matrix (``fusion_lab.py``, ``no_floor`` against ``shipped``) it changed
none of the 50 tuning cells (seeds 0-4) and one of the 65 report cells (seeds 100-104: a blend confirmed on the model,
r@2x gap -0.02 to 0.00, poison flagged at 2 from 77% to 85%). Letting every exact p-value set such a floor
(activation clusters, shared marks, sources: ``exact_floor``) flagged up to 11.6% of a clean text control and 1.9% of
a clean image one: those tests are exact against their own null, but their nulls are about groups, not single
samples.

A one-way relabelling sets a floor too (``targeted_flip``, whose ``"posterior"`` tail is already an estimated share
of clean samples at or above a score): a sample's tail probability is at most that share times the number of rules
(twice it without a confirmed trigger: flagged by the sum or by the share). In the sum, natural hard samples of the
pair, on which the spectral, neighbour and label signals agree moderately, outranked relabelled samples whose
posterior was high: on the attack matrix's pair flips (``fusion_lab.py --refresh targeted_flip``) the worst gap to
the signal alone went from -0.06 to -0.01 on the tuning seeds (0-4; seed 3, poison flagged at 2 from 27% to 88%)
and, once chosen, from -0.13 to -0.01 on the report seeds (100-109: seed 102 from 0.84 to 0.97 r@2x, pair flips
short of -0.02 from 2 of 10 to none, poison flagged at 2 from 0.78 to 0.93 on average), every clean control, bot and
random flip as it was (the posterior is silent where no pair is found). Without the factor two (the share alone) the
tuning seeds gave the same ranking; corrected over the pieces of evidence, as a trigger's floor then was, the report
worst stayed at -0.11.

**Floors count the rules, not the pieces.** A trigger's floor was first corrected over the pieces of evidence (eleven
on the images), as if the smallest of them had been picked; but the floor reads one signal named beforehand, and a
sample is flagged by the sum's rule or by a floor's, so the multiplicity is the number of rules (2 or 3). On a warp
the model learned, whose carriers the model's features name one by one (``probe_carriers``: -log10 p 2.5 at the
median; tuning seed 1, attack success 0.90), the pieces' factor kept 63% of them under the threshold and 21 of 533
below the review budget's cut, under clean samples with moderate evidence everywhere. On the attack
matrix (``fusion_lab.py``; every clean control and every cell without a confirmed trigger as it was, since no trigger
is confirmed there): tuning seeds (0-4, 65 cells) short of the best signal - 0.02 from 1 to 0, worst gap -0.04 to
-0.02, poison flagged at 2 from 0.883 to 0.898 on average (8-epoch victim, 15 cells: 0.823 to 0.863); report seeds
(100-109, after the choice; 130 cells) short from 10 to 9 (sinusoid 106 -0.03 to 0.00), flagged 0.849 to 0.855
(8-epoch: short 2 to 1, warp 101 -0.04 to 0.00, flagged 0.888 to 0.929); no cell fell.

**Label signals set a floor where the gate opens.** Once the gate has found more improbable labels than a calibrated
model draws, the labels were attacked, and a label signal's probability under the model's own predicted distribution
is an exact p-value, as a confirmed trigger's is: ``high_loss`` and ``label_quality`` then set floors too (four rules
beside a one-way relabelling: the sum, ``targeted_flip`` and the two). Where the gate stays shut (the bound ``k q`` is
no p-value of its own) nothing changes. On the attack matrix's random flips (``fusion_lab.py``, ``no_label_floor``
against ``shipped``) the tuning seeds' ranking stayed as it was (0-4: no cell short of the best signal - 0.02 either
way) and the flips flagged at 2 rose from 0.31 to 0.34 of them on average (17-19% flipped: 0.1% to 7%); on the report
seeds (100-109; 104 and 108 looked at while choosing between one label signal and both, both kept as the tuning seeds
chose) cells short from 2 to 1 (108 -0.07 to -0.04, 104 -0.03 to -0.02), flagged 0.33 to 0.37, and the clean samples
of those cells flagged at most 1.11% (from 1.48%: the relabelling's floor, now read over four rules, had put natural
confusions of a pair over the threshold). The gate stayed shut, and the scores as they were, on the 25 backdoor cells
of the tuning seeds and the 40 image-wide cells, 10 pair flips and 10 clean image controls of the report seeds
rebuilt beside them. The flips flagged stay few where a fifth of the labels are flipped: the model learned the noise,
and its own predicted distribution is then wide.

**The ``"by_class"`` null** (``spectral``, ``robust_spectral``, ``low_loss``: signals that see a backdoor in the one
class it relabels to). A tail fitted to the bulk's median and quartiles cannot see a mode of clean samples beyond them:
on the attack matrix's clean review snippets 3-5% of each class lie 30 to 600 robust spreads from its core (short
snippets the model is unsure of, whose activations sit near zero, far from every class's centre), and
``robust_spectral`` alone put 4.3% and 5.0% of two clean sets below 0.01 (tuning seed 0, report seed 101; 1.4% and 3.2%
of them over the threshold). Such a signal's tail probability is therefore never below the median, over the other
classes, of a tail fitted to each one's top :data:`CLASS_TAIL_COUNT` scores: the attack leaves the other classes clean,
and a mode every class has is in them. On the tuning seeds (``fusion_lab.py --seeds 0-4``) the worst clean text went
from 1.37% to 1.02% flagged, the worst clean image from 0.55% to 0.53%, and no attacked cell's gap to its best signal
fell by more than 0.01 (worst -0.34 to -0.30); on the report seeds (100-109, after the choice) the worst clean text from
3.20% to 1.19% (median 0.99% to 0.51%), the clean images as they were (worst 0.37%), and no attacked cell moved by more
than 0.03.

Signals are compared on their own scale, pooled over classes: the built-in ones that need it standardize within each
class themselves (spectral, robust spectral, low loss, kNN distance), and standardizing losses or label-quality
scores within classes would shrink exactly the attacked class, whose spread the attack inflates (``standardize``
does it for other signals). Context-only signals (registered with ``context_only=True``) stay in the caller's table
but not in the suspicion. The reasons, in each signal's registered words, name the signals whose own tail
probability is below ``reason_p``, strongest first.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .._validate import check_labels, check_probs, check_scores
from ..errors import InputError
from .registry import evidence_group, null_kind, reason_text, registered_signals

#: Quantiles of the scores from which the tail is fitted (Pickands: each gap holds half the mass of the one
#: before); a poisoned eighth of the data lies above them and cannot widen its own null.
TAIL_QUANTILES = (0.5, 0.75, 0.875)
#: Quantiles of the summed evidence to which the Gamma of the first step of :func:`evidence_tail` is fitted.
SUM_QUANTILES = (0.5, 0.8)
#: Sums beyond this tail probability of that Gamma are set aside before the tail of the sums is fitted.
TRIM_P = 1e-3
#: Largest tail shape: 2 is a tail as heavy as ``x ** -0.5``; lighter-than-exponential tails are taken as exponential.
MAX_SHAPE = 2.0
#: A tail probability is at most this many times below the empirical share of samples at or above the score.
MAX_GAIN = 1e6
#: Default threshold: an estimated 1% of clean samples reach it.
DEFAULT_THRESHOLD = 2.0
#: Signals whose own tail probability bounds the suspicion from below (see :func:`combine`'s ``floor``): a confirmed
#: trigger's exact p-value, a one-way relabelling's estimated share of clean samples (its ``"posterior"`` null), the
#: label signals' p-values under the model's own predicted distribution (only where the label gate opens).
FLOOR_SIGNALS = ("trigger", "targeted_flip", "high_loss", "label_quality")
#: The label signals read the model's own predicted distribution (:func:`label_null`) when more labels lie at a
#: predicted share at most ``LABEL_ALPHA`` than a calibrated model would draw, at a one-sided binomial p-value
#: below ``LABEL_GATE`` (a label attack); otherwise the bound ``k q``.
LABEL_ALPHA = 0.01
LABEL_GATE = 1e-3
#: Knots of a label null, log-spaced over the probabilities ``[LABEL_Q_MIN, 1]``.
LABEL_KNOTS = 256
LABEL_Q_MIN = 1e-12
#: A ``"by_class"`` signal's tail under another class is fitted from about this many of that class's top scores.
CLASS_TAIL_COUNT = 32
#: At most this many other classes are read for a ``"by_class"`` signal (evenly spaced over the classes).
MAX_REFERENCE_CLASSES = 32
_BLOCK = 1 << 16

@dataclass(frozen=True)
class Combined:
    """The combined score: ``suspicion`` (n,), per-signal tail probabilities and reasons."""

    suspicion: np.ndarray
    tail_p: pd.DataFrame = field(repr=False)
    reasons: np.ndarray = field(repr=False)
    top_signal: np.ndarray = field(repr=False)
    #: The label gate's p-value (:data:`LABEL_GATE`; NaN without a label null): below it, the label signals were
    #: read against the model's own predicted distribution.
    label_gate: float = float("nan")

    def estimated_clean_flag_rate(self, threshold: float) -> float:
        """Estimated share of clean samples whose suspicion reaches ``threshold`` (``10**-threshold``)."""
        return float(min(1.0, 10.0 ** (-threshold)))


def _within_class_z(s: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Robust z-score within each class; NaN and +inf stay. Zero spread falls back to the class's std, then to 1."""
    z = s.copy()
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & np.isfinite(s))
        if len(rows) == 0:
            continue
        v = s[rows]
        med = np.median(v)
        spread = 1.4826 * np.median(np.abs(v - med))
        if not spread > 0:
            spread = float(np.std(v))
        if not spread > 0:
            spread = 1.0
        z[rows] = (v - med) / spread
    return z


def tail_probability(
    scores: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    quantiles: tuple[float, float, float] = TAIL_QUANTILES,
    max_shape: float = MAX_SHAPE,
    max_gain: float = MAX_GAIN,
) -> np.ndarray:
    """Upper-tail probability of each score under the bulk of ``reference``: **lower = more surprising**.

    Up to the ``quantiles[2]`` quantile ``q3`` of ``reference``: the share of it at or above the value. Above, a
    generalized Pareto tail ``S(x) = (1 - quantiles[2]) * (1 + xi (x - q3) / sigma) ** (-1 / xi)`` whose shape
    ``xi = log2((q3 - q2) / (q2 - q1))`` (Pickands' estimator, clipped to [0, ``max_shape``]) and scale come from
    the three quantiles. When the reference is one value up to ``q3`` (a gated signal, zero for most samples),
    the tail is exponential with the mean excess of the values above it. The result is never below the share of
    ``scores`` at or above the value divided by ``max_gain``.

    Parameters
    ----------
    scores : ndarray of float, shape (n,)
        Higher = more suspicious; NaN = no evidence (probability 1); +inf = beyond every finite score.
    reference : ndarray of float, optional
        The values whose bulk is the null (default: ``scores``), e.g. the scores without the samples already
        found extreme.
    quantiles : three increasing floats in (0, 1)
        Where the tail is fitted; the share above the last one is the largest poisoned share that cannot shape
        its own null.
    max_shape : float >= 0
        Largest tail shape; 0 fits an exponential tail.
    max_gain : float >= 1
        Largest ratio between the empirical share and the returned probability.

    Returns
    -------
    ndarray of float64, shape (n,)
        In (0, 1].
    """
    z = np.asarray(scores, dtype=np.float64)
    q_lo, q_mid, q_hi = quantiles
    if not 0 < q_lo < q_mid < q_hi < 1:
        raise InputError(f"quantiles must be three increasing numbers in (0, 1); got {quantiles!r}")
    if not max_gain >= 1:
        raise InputError(f"max_gain must be >= 1; got {max_gain!r}")
    if not max_shape >= 0:
        raise InputError(f"max_shape must be >= 0; got {max_shape!r}")
    p = np.ones_like(z)
    ok = ~np.isnan(z)
    v = z[ok]
    fit = _fit_tail(v if reference is None else np.asarray(reference, dtype=np.float64), quantiles, max_shape)
    if len(v) == 0 or fit is None:  # nothing scored, or nothing finite to measure against
        return p
    # Shares at or above each value (ties count in full; +inf sorts last).
    surv_own = 1.0 - np.searchsorted(np.sort(v), v, side="left") / len(v)
    p[ok] = np.clip(np.maximum(_eval_tail(fit, v), surv_own / max_gain), 1e-300, 1.0)
    return p


@dataclass(frozen=True)
class _Tail:
    """A fitted null: the sorted reference (empirical shares up to ``top``), a generalized Pareto tail above."""

    ref: np.ndarray
    top: float
    share: float
    shape: float
    scale: float


def _fit_tail(reference: np.ndarray, quantiles: tuple[float, float, float], max_shape: float) -> _Tail | None:
    """The null of :func:`tail_probability` fitted to ``reference`` (None when it holds no finite value)."""
    ref = np.sort(reference[~np.isnan(reference)])
    finite = ref[np.isfinite(ref)]
    if len(finite) == 0:
        return None
    a, b, c = np.quantile(finite, quantiles)
    share = 1.0 - quantiles[2]
    if c > b:
        # Pickands: for a generalized Pareto tail the gaps of these quantiles grow by 2**xi.
        shape = max_shape if b <= a else float(np.clip(np.log2((c - b) / (b - a)), 0.0, max_shape))
        scale = (c - b) / np.log(2.0) if shape == 0 else shape * (c - b) / (2.0**shape - 1.0)
    else:
        # The bulk is one value up to q_hi (most samples score, say, 0): the tail is what lies above it.
        above = finite[finite > c]
        share = float(np.mean(ref > c))
        shape, scale = 0.0, float(np.mean(above - c)) if len(above) else 0.0
    return _Tail(ref=ref, top=float(c), share=share, shape=shape, scale=scale)


def _eval_tail(fit: _Tail, v: np.ndarray) -> np.ndarray:
    """Tail probabilities of the (non-NaN) values ``v`` under a fitted null, before any floor."""
    surv_ref = 1.0 - np.searchsorted(fit.ref, v, side="left") / len(fit.ref)
    excess = np.maximum(v - fit.top, 0.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if fit.scale <= 0:
            tail = np.zeros_like(v)
        elif fit.shape == 0:
            tail = fit.share * np.exp(-excess / fit.scale)
        else:
            tail = fit.share * (1.0 + fit.shape * excess / fit.scale) ** (-1.0 / fit.shape)
    tail = np.where(np.isposinf(v), 0.0, tail)
    return np.where(v > fit.top, tail, surv_ref)


def evidence_tail(evidence: np.ndarray, *, max_gain: float = MAX_GAIN) -> np.ndarray:
    """Upper-tail probability of each sample's summed evidence ``sum_s -ln p_s`` under the bulk of the sums.

    Two steps, so that a poisoned minority does not shape its own null while a heavy clean tail is kept:

    1. A Gamma distribution is fitted to the median and 80th percentile of the sums (``SUM_QUANTILES``; the sum
       of ``k`` independent ``-ln p`` is Gamma(k, 1), and signals that move together or are conservative change
       its shape and scale). These quantiles stay in the clean bulk while up to a fifth of the data is poisoned.
       Samples beyond its ``TRIM_P`` tail are set aside.
    2. The tail of the remaining sums (:func:`tail_probability` with them as ``reference``) gives every sample's
       probability.

    When the sums have no spread for a Gamma (a median of 0, or equal quantiles), nothing is set aside.

    Parameters
    ----------
    evidence : ndarray of float, shape (n,)
        Non-negative sums; NaN is not allowed.

    Returns
    -------
    ndarray of float64, shape (n,)
        In (0, 1].
    """
    t = np.asarray(evidence, dtype=np.float64)
    q_lo, q_hi = SUM_QUANTILES
    lo, hi = np.quantile(t, SUM_QUANTILES)
    ratio = hi / lo if lo > 0 else np.inf
    # The ratio of two Gamma quantiles falls as the shape grows; outside this range there is no Gamma to fit.
    shapes = (0.02, 1e4)
    gap = lambda a: stats.gamma.ppf(q_hi, a) / stats.gamma.ppf(q_lo, a)  # noqa: E731
    keep = np.ones(len(t), dtype=bool)
    if gap(shapes[1]) < ratio < gap(shapes[0]):
        shape = float(np.exp(optimize.brentq(lambda la: gap(np.exp(la)) - ratio, *np.log(shapes))))
        scale = lo / stats.gamma.ppf(q_lo, shape)
        keep = (t <= hi) | (stats.gamma.sf(t, shape, scale=scale) >= TRIM_P)
    return tail_probability(t, reference=t[keep], max_gain=max_gain)


def label_null(probs: np.ndarray) -> np.ndarray:
    """The label signals' null read from a model's predicted probabilities, at knots.

    If the model is calibrated, a clean sample's label is a draw from its predicted distribution, so the share of
    clean labels at predicted probability at most ``t`` is ``mean_i sum_c p_ic [p_ic <= t]``: the exact null, where
    the bound ``k t`` is an upper bound that a confident model never comes near. Kept at :data:`LABEL_KNOTS`
    log-spaced probabilities from :data:`LABEL_Q_MIN` to 1 (a saved investigation keeps these, not the
    probabilities); :func:`combine` reads a label's probability ``q`` as the share at the first knot at or above
    it, capped by ``k q``, which can only overstate the null.

    Parameters
    ----------
    probs : ndarray, shape (n, k)
        The model's predicted probabilities on the data (rows sum to 1).

    Returns
    -------
    ndarray of float64, shape (LABEL_KNOTS, 2)
        Columns: the probability ``t``, the share of labels a calibrated model would draw at or below it.
    """
    p = check_probs(probs, len(np.asarray(probs)))
    flat = np.sort(p.ravel())
    mass = np.cumsum(flat) / len(p)
    knots = np.logspace(np.log10(LABEL_Q_MIN), 0.0, LABEL_KNOTS)
    at = np.searchsorted(flat, knots, side="right")
    share = np.where(at > 0, mass[np.maximum(at - 1, 0)], 0.0)
    share[-1] = 1.0  # every label has probability at most 1
    return np.column_stack([knots, np.minimum(share, 1.0)])


def _check_label_null(curve: Any) -> np.ndarray:
    c = np.asarray(curve, dtype=np.float64)
    if (c.ndim != 2 or c.shape[1] != 2 or len(c) < 2 or not np.isfinite(c).all() or (np.diff(c[:, 0]) <= 0).any()
            or (np.diff(c[:, 1]) < 0).any() or c[:, 1].min() < 0 or c[-1, 1] > 1 + 1e-9 or c[-1, 0] < 1):
        raise InputError("label_null must be label_null(probs): increasing probabilities up to 1 and the share of "
                         "labels at or below each, non-decreasing in [0, 1]")
    return c


def _label_p(q: np.ndarray, curve: np.ndarray, n_classes: int) -> np.ndarray:
    """A label's tail probability under a label null: the share at the first knot at or above ``q``, capped by
    ``k q``."""
    at = np.minimum(np.searchsorted(curve[:, 0], q, side="left"), len(curve) - 1)
    return np.minimum(curve[at, 1], n_classes * q)


def combine(
    scores: Mapping[str, np.ndarray] | pd.DataFrame,
    labels: np.ndarray,
    *,
    standardize: Collection[str] = (),
    context: Collection[str] | None = None,
    reason_p: float = 0.01,
    n_classes: int | None = None,
    null_scores: Mapping[str, np.ndarray] | None = None,
    floor: Collection[str] = FLOOR_SIGNALS,
    label_null: np.ndarray | None = None,
) -> Combined:
    """Combine per-sample signal scores (higher = more suspicious) into one suspicion score.

    Parameters
    ----------
    scores : mapping of signal name to array (n,), or a DataFrame with one column per signal
        NaN where a signal could not score a sample; +inf for "beyond any finite score" (e.g. an underflowed
        p-value).
    labels : array of int, shape (n,)
        Each sample's given label (used by ``standardize``).
    standardize : collection of str
        Signals whose scores are first put on a robust z-scale within each class (median and MAD), for a
        signal whose scale differs between classes and that does not standardize itself.
    context : collection of str, optional
        Signals left out of the suspicion and the reasons (they stay in the caller's table); names that are not
        among the signals are ignored. Default: the signals registered as context only; ``()`` combines every
        signal.
    reason_p : float
        A signal is named in a sample's reasons when its own tail probability is below this.
    n_classes : int, optional
        Number of classes, for the signals whose null reads a model's probability of the label (``label_loss``,
        ``label_doubt``); default: the largest label + 1.
    null_scores : mapping of signal name to array, optional
        For a signal with a fitted null or a posterior: the same signal's scores on samples known to be clean (a
        trusted set scored with the data). Its tail is then measured against them (a tail fitted to them), instead of
        the bulk of the data, which a poisoned minority inflates, or of its own probabilities. The tail of the summed
        evidence stays the bulk's.
    floor : collection of str
        Signals whose tail probability caps a sample's: its suspicion is never below that, whatever the other
        signals say: the p-value of an exact null (``"exact_p"``), or the estimated share of clean samples at or
        above of a ``"posterior"`` null, or a label signal's p-value where the label gate opens, times the number of
        rules that can flag a sample (the sum, and each floor signal present: a Bonferroni bound over them). Default:
        :data:`FLOOR_SIGNALS` (a confirmed trigger, a one-way relabelling, the label signals); ``()`` for the plain
        sum.
    label_null : ndarray, optional
        :func:`label_null` of the model's predicted probabilities. The label signals (``label_loss``,
        ``label_doubt``) are then read against it wherever the labels show an attack (:data:`LABEL_GATE`), else
        against the bound ``k q`` as without it.

    Returns
    -------
    Combined
        ``suspicion`` (n,) is ``-log10`` of the tail probability of ``sum_s -ln p_s``: higher = more suspicious,
        and a threshold ``t`` flags an estimated ``10**-t`` of clean samples.
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else [(c, scores[c].to_numpy()) for c in scores]
    if not items:
        raise InputError("scores is empty; give at least one signal")
    names = [str(name) for name, _ in items]
    unknown = sorted(set(standardize) - set(names))
    if unknown:
        raise InputError(f"standardize names {unknown}, which are not among the signals {names}")
    n = len(items[0][1])
    if context is None:
        context = [spec.name for spec in registered_signals() if spec.context_only]
    items = [(name, values) for name, values in items if name not in set(context)]
    if not items:
        raise InputError(f"every signal given ({names}) is a context signal; give at least one other")
    names = [str(name) for name, _ in items]
    y = check_labels(labels, n)
    k = int(y.max()) + 1 if n_classes is None else int(n_classes)
    anchors = {}
    for name, values in (null_scores or {}).items():
        if null_kind(name) not in ("fitted", "by_class", "posterior") or name not in names:
            raise InputError(f"null_scores[{name!r}]: only a combined signal with a fitted null or a posterior can be "
                             "anchored")
        anchors[name] = check_scores(values, name=f"null_scores[{name!r}]")
        if np.isfinite(anchors[name]).sum() < 2:
            raise InputError(f"null_scores[{name!r}] holds fewer than 2 finite scores")
    curve = None if label_null is None else _check_label_null(label_null)
    tails, label_q = {}, {}
    for name, values in items:
        raw = np.asarray(values)
        # +inf is a signal's "beyond any finite score" (an underflowed p-value); -inf has no such reading.
        top = np.isposinf(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, dtype=bool)
        s = check_scores(np.where(top, np.nan, raw) if top.any() else raw, name=f"scores[{name!r}]")
        if len(s) != n:
            raise InputError(f"scores[{name!r}] has {len(s)} entries but labels has {n}")
        s = _within_class_z(s, y) if name in standardize else s.copy()
        s[top] = np.inf
        tails[name] = _signal_tail(name, s, k, anchors.get(name), y)
        if curve is not None and null_kind(name) in ("label_loss", "label_doubt"):
            label_q[name] = _label_q(null_kind(name), s)
    gate = float("nan")
    if label_q:
        read = {name: np.clip(np.nan_to_num(_label_p(q, curve, k), nan=1.0), 1e-300, 1.0)  # type: ignore[arg-type]
                for name, q in label_q.items()}
        # More improbable labels than a calibrated model draws: the labels were attacked, and the exact null
        # ranks the attacked labels where the bound would leave most of them at 1 (random flips: see the docstring).
        gate = min(float(stats.binom.sf(int((p <= LABEL_ALPHA).sum()) - 1, n, LABEL_ALPHA)) for p in read.values())
        if gate < LABEL_GATE:
            tails.update(read)
    tail_p = pd.DataFrame(tails)
    p = tail_p.to_numpy()
    pieces = _evidence_pieces(tail_p)
    evidence = -np.log(pieces).sum(axis=1)
    # No fit to the bulk may claim a sum rarer than Fisher's statistic of half as many independent p-values would be.
    tail = np.maximum(evidence_tail(evidence), stats.gamma.sf(evidence, pieces.shape[1] / 2.0))
    # A floor signal bounds the suspicion from below (its p-value or share, Bonferroni-corrected over the rules: the
    # sum and each floor): silent signals beside a confirmed trigger or a one-way relabelling must not drown what it
    # found.
    wanted = set(floor)
    chosen = [name for name in names if name in wanted]
    inexact = [name for name in chosen if null_kind(name) not in ("exact_p", "posterior", "label_loss", "label_doubt")]
    if inexact:
        raise InputError(f"floor names {inexact}, whose null is neither an exact p-value, a share of clean samples "
                         "nor a label's probability; only such a signal can set a floor")
    # A label signal's p-value is exact only under the model's own predicted distribution, read where the gate
    # opened (never where it is NaN: no label null): a label attack confirmed, as a trigger is by its test.
    floored = [name for name in chosen if null_kind(name) not in ("label_loss", "label_doubt") or gate < LABEL_GATE]
    rules = 1 + len(floored)
    for name in floored:
        tail = np.minimum(tail, np.minimum(1.0, rules * tail_p[name].to_numpy()))
    suspicion = -np.log10(np.clip(tail, 1e-300, 1.0)) + 0.0
    top_signal = np.asarray(tail_p.columns, dtype=object)[p.argmin(axis=1)]
    order = np.argsort(p, axis=1)
    reasons = np.empty(n, dtype=object)
    for i in range(n):
        reasons[i] = "; ".join(
            f"{reason_text(names[j])} (1 in {_odds(p[i, j])})" for j in order[i] if p[i, j] < reason_p
        )
    top_signal[p.min(axis=1) >= reason_p] = ""
    return Combined(suspicion=suspicion, tail_p=tail_p, reasons=reasons, top_signal=top_signal, label_gate=gate)


def _label_q(null: str, s: np.ndarray) -> np.ndarray:
    """A label signal's score as the model's probability of the label: a loss (``-ln q``) or ``1 - q``."""
    return np.exp(-s) if null == "label_loss" else 1.0 - s


def posterior_tail(scores: np.ndarray) -> np.ndarray:
    """Tail probabilities of scores that are probabilities of being poisoned: **lower = more surprising**.

    ``p_i = (1 + sum_{j: s_j >= s_i} (1 - s_j)) / n``: the expected share of clean samples scoring at least ``s_i``
    if the probabilities are calibrated (one pseudo-sample keeps the top from 0). A score of 0 or NaN is no evidence
    (probability 1).

    Parameters
    ----------
    scores : ndarray of float, shape (n,)
        In [0, 1], or NaN.

    Returns
    -------
    ndarray of float64, shape (n,)
        In (0, 1].
    """
    s = np.asarray(scores, dtype=np.float64)
    if ((s < 0) | (s > 1)).any():
        raise InputError(f"posterior scores must lie in [0, 1]; got values from {np.nanmin(s)} to {np.nanmax(s)}")
    p = np.ones(len(s))
    scored = np.flatnonzero(s > 0)
    if len(scored):
        order = scored[np.argsort(-s[scored], kind="stable")]
        expected_clean = np.cumsum(1.0 - s[order])
        # Ties share the count of the last of them: every sample at or above the value.
        last = np.searchsorted(-s[order], -s[order], side="right") - 1
        p[order] = np.minimum(1.0, (1.0 + expected_clean[last]) / len(s))
    return p


def _signal_tail(name: str, s: np.ndarray, n_classes: int, reference: np.ndarray | None = None,
                 labels: np.ndarray | None = None) -> np.ndarray:
    """One signal's tail probabilities under the null it is registered with (NaN: no evidence, probability 1);
    ``reference``: clean samples' scores that a fitted null is measured against instead of the bulk; ``labels``:
    the classes a ``"by_class"`` null reads."""
    null = null_kind(name)
    with np.errstate(over="ignore"):
        if null == "exact_p":
            if (s < 0).any():
                raise InputError(f"scores[{name!r}] are -log10 p-values and cannot be negative; got {np.nanmin(s)}")
            p = 10.0 ** -s
        elif null in ("label_loss", "label_doubt"):
            q = _label_q(null, s)
            if ((q < 0) | (q > 1 + 1e-9)).any():
                kind = "losses (-ln of a probability)" if null == "label_loss" else "one minus a probability"
                raise InputError(f"scores[{name!r}] are {kind} and must lie in [0, "
                                 f"{'inf' if null == 'label_loss' else 1}]; got values out of that range")
            # A clean label is a draw from the model's predicted distribution: P(q <= t) <= n_classes * t.
            p = n_classes * q
        elif null == "posterior" and reference is None:
            p = posterior_tail(s)
        else:
            # Past 1/n**2 (n times rarer than the rarest sample that can be seen) a fitted tail has no data behind it.
            gain = float(min(MAX_GAIN, max(1, len(s))))
            p = tail_probability(s, reference=reference, max_shape=0.0 if null == "log_p" else MAX_SHAPE,
                                 max_gain=gain)
            if null == "by_class" and labels is not None:
                p = np.maximum(p, _other_classes_tail(s, labels))
            return p
    return np.clip(np.nan_to_num(p, nan=1.0), 1e-300, 1.0)


def _other_classes_tail(s: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each sample's tail probability under the other classes' scores: the median, over the other classes, of the
    tail fitted to that class's top :data:`CLASS_TAIL_COUNT` scores (0, no bound, where no other class has 8 finite
    scores).

    An attack that one class's signal sees (a backdoor relabels to its target) leaves the other classes' tails clean,
    and the median over them is not moved by a few attacked classes; a mode of clean samples that every class has
    (short, uninformative texts far from every class's core) is in them too, and a fit to the top of each class sees
    it where a fit to the bulk's median and quartiles does not. A class's top scores reach into such a mode only when
    the class is large enough (a 5% mode: 640 samples or more); a smaller class's tail is fitted at the bulk's
    quantiles, and the bound then adds little to the bulk's own tail.
    """
    finite = np.isfinite(s)
    classes = np.unique(labels[finite])
    if len(classes) > MAX_REFERENCE_CLASSES:
        classes = classes[np.linspace(0, len(classes) - 1, MAX_REFERENCE_CLASSES).round().astype(int)]
    fits = []
    for c in classes:
        ref = s[finite & (labels == c)]
        if len(ref) >= 8:
            m = min(1.0 - TAIL_QUANTILES[2], CLASS_TAIL_COUNT / len(ref))
            fit = _fit_tail(ref, (1.0 - 4 * m, 1.0 - 2 * m, 1.0 - m), MAX_SHAPE)
            if fit is not None:
                fits.append((c, fit))
    out = np.zeros(len(s))
    if not fits:
        return out
    # In blocks, so that a million samples against 32 classes never hold more than a few MB at once.
    for start in range(0, len(s), _BLOCK):
        v, y = s[start:start + _BLOCK], labels[start:start + _BLOCK]
        block = np.full((len(fits), len(v)), np.nan)
        for row, (c, fit) in enumerate(fits):
            block[row] = _eval_tail(fit, v)
            block[row, y == c] = np.nan
        out[start:start + _BLOCK] = _column_nanmedian(block)
    return out


def _column_nanmedian(block: np.ndarray) -> np.ndarray:
    """Median of each column's non-NaN values (0 where there is none): ``np.nanmedian`` loops over the columns."""
    ordered = np.sort(block, axis=0)  # NaN last
    count = (~np.isnan(block)).sum(axis=0)
    lo = np.take_along_axis(ordered, np.maximum(count - 1, 0)[None, :] // 2, axis=0)[0]
    hi = np.take_along_axis(ordered, (count // 2)[None, :], axis=0)[0]
    return np.where(count > 0, (lo + hi) / 2.0, 0.0)


def _evidence_pieces(tail_p: pd.DataFrame) -> np.ndarray:
    """The tail probabilities that are summed: one per signal, and one per group of signals that read the same
    evidence (its smallest times its size, a Bonferroni bound)."""
    groups: dict[str, list[str]] = {}
    for name in tail_p.columns:
        groups.setdefault(evidence_group(name), []).append(name)
    return np.column_stack([np.minimum(1.0, tail_p[g].to_numpy().min(axis=1) * len(g)) for g in groups.values()])


def _odds(p: float) -> str:
    inv = 1.0 / max(p, 1e-300)
    if inv < 1e4:
        return f"{inv:,.0f}"
    return f"10^{np.log10(inv):.0f}"


_RENAMED = {
    "SIGNAL_TEXT": lambda: {spec.name: spec.reason for spec in registered_signals()},
    "LOG_P_SIGNALS": lambda: tuple(spec.name for spec in registered_signals() if spec.null == "log_p"),
    "EXACT_P_SIGNALS": lambda: tuple(spec.name for spec in registered_signals() if spec.null == "exact_p"),
    "CONTEXT_SIGNALS": lambda: tuple(spec.name for spec in registered_signals() if spec.context_only),
}


def __getattr__(name: str) -> Any:
    # The constants that named signals' reasons and nulls before the registry held them: still readable, with a warning.
    if name in _RENAMED:
        warnings.warn(f"forensics.signals.combine.{name} is deprecated: read forensics.signals.registry "
                      "(registered_signals(), reason_text(), null_kind())", DeprecationWarning, stacklevel=2)
        return _RENAMED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Combined", "DEFAULT_THRESHOLD", "FLOOR_SIGNALS", "LABEL_ALPHA", "LABEL_GATE", "MAX_GAIN", "SUM_QUANTILES",
           "TAIL_QUANTILES", "TRIM_P", "combine", "evidence_tail", "label_null", "posterior_tail", "tail_probability"]
