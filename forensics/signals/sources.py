"""Per-source statistics: which contributors (annotators, devices, shards) look poisoned.

Each source is compared with a baseline on up to five kinds of evidence, each a one-sided test whose p-value
says how unlikely the source's excess would be if it behaved like the baseline:

- **label distribution**: ``label_js`` (Jensen-Shannon divergence from the consensus, in bits, 0..1),
  ``dominant_label``, ``dominant_share``; G-test against the consensus (``label_p``). The consensus is, per
  class, the sample-weighted median share over sources, so a bot labelling everything one class does not
  drag it.
- **disagreement with a model** (``predictions``): ``disagreement`` against ``disagreement_typical``, the rate
  the source's own class mix leads one to expect (per class, the sample-weighted median of the sources' rates,
  weighed by the source's labels: a model errs more on some classes, and a contributor who prefers them is not
  wrong for it); binomial test (``disagreement_p``).
- **suspicion score** (``scores``): ``mean_score`` against ``mean_score_others``; one-sided rank-sum
  (Mann-Whitney, normal approximation with tie correction) against all other sources (``score_p``).
- **share flagged** (``flagged``): ``flagged_share`` against ``flagged_share_typical``; binomial
  (``flagged_p``).
- **shared near duplicates** (``groups``): ``n_shared_groups`` (duplicate groups that also hold samples of
  other sources), ``shared_share`` (share of the source's samples in such groups) against
  ``shared_share_others`` (the pooled share of all other sources: most sources share nothing, so a typical
  rate would be 0); binomial (``shared_p``). Several sybil sources submitting copies of each other's
  samples all score high here.

``source_suspicion`` is the strongest evidence, Bonferroni-corrected for the number of tests run:
``-log10(min(1, m * min p))`` (0 = nothing unusual; 2 = a 1% chance). A p-value needs data to become small,
so a source of 3 samples cannot reach a high suspicion by chance, while a 300-sample bot that labels
everything one class reaches hundreds. ``evidence`` names the test behind it; ``q_value``
(Benjamini-Hochberg over sources) says which sources stand out once the number of sources is accounted for.

P-values say how sure, not how much: read the effect columns beside them. The tests above assume that sources
differ only by chance; real contributors differ in taste and skill, so a large honest source passes them by far
(an honest contributor with a class preference of its own holding a few hundred samples: 11 to 56). So each test
is also read **with the heterogeneity the sources show** (``suspicion_among_sources``, the same Bonferroni
minimum): honest sources' counts are overdispersed like draws of a Dirichlet-multinomial, whose variance grows by
``1 + (n - 1) rho`` for a source of ``n`` samples. ``rho`` is chosen so that the median source's label statistic
divided by it is the chi-square's median (for the one-sided count and rank tests, as normal deviates, the sources'
upper quartile the normal's), so a minority of attackers cannot widen it; the statistic of each source is divided
by its own inflation and read again. With fewer than ``MIN_SOURCES_FOR_NULL`` sources there is no bulk to learn
from, and it is the test as it is. The per-sample ``source`` signal (:func:`source_scores`) carries it where it
reaches ``SOURCE_EVIDENCE_MIN``.

Why so, measured on the attack matrix's tuning seeds (``benchmarks/matrix.py --seeds 0-4``: 40 contributors with
mild class preferences, ``python benchmarks/fusion_lab.py --seeds 0-4 --refresh source``): the statistic before, a
source's excess per sample against an exponential tail fitted to the sources, put the most unusual honest
contributor of a clean set at up to 3.6 (14% of a clean text set below p = 0.01) while the image attackers reached
only 3.1 to 7.6; read with the heterogeneity (and the class-mix expectation above: without it an honest contributor
of hard classes reached 3.4 on disagreement alone) honest contributors of the clean sets reach at most 2.7 and the
image attackers 4.0 to 300 (text sybils whose labels look like anyone's: 0.4 to 2.5, from 0 to 1). In the suspicion:
cells more than 0.02 below their best signal 13 -> 9 of 65, the worst clean image control 0.97% -> 0.55% flagged,
fake-source groups flagged at 2 from 1-66% to 100% of their samples. Carrying the value below 2 too added every
source's noise to Fisher's sum (clean review snippets up to 1.56% flagged).

Baselines get a half-count pseudo-count so that a baseline rate of 0 does not make one success infinitely
surprising.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from .._validate import check_labels, check_scores
from ..errors import InputError
from .duplicates import _check_sources, check_groups

_LN10 = float(np.log(10.0))
#: Below this many sources their bulk is no null: each source's own corrected test is its score.
MIN_SOURCES_FOR_NULL = 5
#: The ``source`` signal carries a source's ``suspicion_among_sources`` from this value on (1% of honest sources
#: reach it), 0 below it.
SOURCE_EVIDENCE_MIN = 2.0

#: The evidence names, in the order they are reported and tie-broken.
EVIDENCE = ("label", "disagreement", "score", "flagged", "shared")


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below and above which lies at least half of the weight (the lower one on an exact tie)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _binomial_excess(k: np.ndarray, n: np.ndarray, *, baseline: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per source: own rate, the baseline rate, log10 p of at least k successes in n at the baseline rate.

    ``baseline="typical"``: the sample-weighted median of the sources' rates (sources holding less than half
    of the data cannot move it). ``baseline="others"``: the pooled rate of all other sources. Either gets a
    half-count pseudo-count over all samples, so that a baseline of 0 does not make one success infinitely
    surprising.
    """
    total = n.sum()
    rate = k / n
    if baseline == "typical":
        p0 = np.full(len(k), _weighted_median(rate, n))
        p0 = (p0 * total + 0.5) / (total + 1.0)
    else:
        k_other, n_other = k.sum() - k, total - n
        p0 = (k_other + 0.5) / (n_other + 1.0)
    log_p = stats.binom.logsf(k - 1, n, p0) / _LN10
    return rate, p0, np.minimum(log_p, 0.0)


def _label_tests(codes: np.ndarray, y: np.ndarray, n_sources: int, n_classes: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """JS divergence from the consensus, dominant label and its share, log10 p of the G-test, the G statistic, and
    the label most in excess of the consensus (largest standardized residual)."""
    counts = np.bincount(codes * n_classes + y, minlength=n_sources * n_classes).reshape(n_sources, n_classes)
    n = counts.sum(axis=1).astype(np.float64)
    p = counts / n[:, None]
    # Consensus: per class, the sample-weighted median share over sources (a bot holding less than half of
    # the data cannot pull it), renormalised, with a half-count pseudo-count so no class is impossible.
    q = np.array([_weighted_median(p[:, c], n) for c in range(n_classes)])
    q = q / q.sum() if q.sum() > 0 else np.full(n_classes, 1.0 / n_classes)
    q = (q * n.sum() + 0.5) / (n.sum() + 0.5 * n_classes)
    # Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint).
    mid = 0.5 * (p + q[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / mid), 0.0).sum(axis=1)
    kl_q = (q[None, :] * np.log2(q[None, :] / mid)).sum(axis=1)
    js = 0.5 * (kl_p + kl_q)
    # G-test (likelihood ratio) of the source's counts against the consensus, chi-square with C-1 dof.
    with np.errstate(divide="ignore", invalid="ignore"):
        g = 2.0 * np.where(counts > 0, counts * np.log(counts / (n[:, None] * q[None, :])), 0.0).sum(axis=1)
    log_p = stats.chi2.logsf(g, n_classes - 1) / _LN10 if n_classes > 1 else np.zeros(n_sources)
    expected = n[:, None] * q[None, :]
    excess = ((counts - expected) / np.sqrt(expected)).argmax(axis=1)
    return js, counts.argmax(axis=1), counts.max(axis=1) / n, np.minimum(log_p, 0.0), g, excess


def _disagreement_test(codes: np.ndarray, y: np.ndarray, wrong: np.ndarray, n_sources: int, n_classes: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per source: its disagreement rate, the rate its class mix leads one to expect, log10 p of the binomial excess.

    A model errs more on some classes than on others, so a contributor who prefers the hard classes disagrees
    more without being wrong. The expected rate weighs each class's typical rate (the sample-weighted median of
    the sources' rates in that class, with a half-count pseudo-count) by the source's own labels.
    """
    cell = codes * n_classes + y
    count = np.bincount(cell, minlength=n_sources * n_classes).reshape(n_sources, n_classes).astype(np.float64)
    errs = np.bincount(cell, weights=wrong, minlength=n_sources * n_classes).reshape(n_sources, n_classes)
    per_class = np.zeros(n_classes)
    for c in range(n_classes):
        has = count[:, c] > 0
        if has.any():
            total = count[has, c].sum()
            per_class[c] = (_weighted_median(errs[has, c] / count[has, c], count[has, c]) * total + 0.5) / (total + 1.0)
    n = count.sum(axis=1)
    k = errs.sum(axis=1)
    expected = (count @ per_class) / n
    log_p = stats.binom.logsf(k - 1, n, expected) / _LN10
    return k / n, expected, np.minimum(log_p, 0.0)


def _rank_sum(codes: np.ndarray, s: np.ndarray, n_sources: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean score per source, the others' mean, and log10 p of the one-sided rank-sum test (normal, tie-corrected)."""
    valid = ~np.isnan(s)
    c, v = codes[valid], s[valid]
    n_all = len(v)
    n1 = np.bincount(c, minlength=n_sources).astype(np.float64)
    total = np.bincount(c, weights=v, minlength=n_sources)
    mean = np.divide(total, n1, out=np.full(n_sources, np.nan), where=n1 > 0)
    n2 = n_all - n1
    mean_others = np.divide(total.sum() - total, n2, out=np.full(n_sources, np.nan), where=n2 > 0)
    log_p = np.zeros(n_sources)
    if n_all < 2:
        return mean, mean_others, log_p
    ranks = stats.rankdata(v)
    r1 = np.bincount(c, weights=ranks, minlength=n_sources)
    _, ties = np.unique(v, return_counts=True)
    tie_term = float((ties.astype(np.float64) ** 3 - ties).sum()) / (n_all * (n_all - 1))
    var = n1 * n2 / 12.0 * ((n_all + 1) - tie_term)
    ok = (n1 > 0) & (n2 > 0) & (var > 0)
    z = (r1[ok] - n1[ok] * (n_all + 1) / 2.0 - 0.5) / np.sqrt(var[ok])
    log_p[ok] = np.minimum(stats.norm.logsf(z) / _LN10, 0.0)
    return mean, mean_others, log_p


def _check_same_length(values: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {a.shape}")
    if len(a) != n:
        raise InputError(f"{name} has {len(a)} entries but labels has {n} entries")
    return a


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    m = len(p)
    order = np.argsort(p, kind="stable")
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def source_table(
    sources: np.ndarray | Any,
    labels: np.ndarray,
    *,
    n_classes: int,
    predictions: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """Statistics of each source against the others, with one combined ``source_suspicion``.

    See the module docstring for the columns and how they combine. Only the evidence whose input is given is
    computed; the label distribution is always tested.

    Parameters
    ----------
    sources : array-like of str, shape (n,)
        Contributor of each sample; at least 2 distinct sources.
    labels : ndarray of int, shape (n,)
        Given labels, in ``0 .. n_classes - 1``.
    n_classes : int
    predictions : ndarray of int, shape (n,), optional
        A model's predicted class per sample, best out-of-sample (cross-validated or held out): a model
        trained on the poisoned data tends to agree with the labels it memorised.
    scores : ndarray of float, shape (n,), optional
        Any per-sample suspicion (higher = more suspicious); NaN entries are left out of the test.
    flagged : ndarray of bool, shape (n,), optional
        Samples flagged by some signal.
    groups : ndarray of int, shape (n,), optional
        Near-duplicate group per sample, -1 for none (see ``forensics.signals.duplicates``).

    Returns
    -------
    DataFrame
        Indexed by source (named ``source``), sorted by ``source_suspicion`` (descending), then size
        (descending), then name. ``evidence`` names the test behind the suspicion (the smallest p-value);
        ``suspicion_among_sources`` is the same minimum with each test read with the sources' heterogeneity.
    """
    y = np.asarray(labels)
    n = len(y) if y.ndim == 1 else -1
    y = check_labels(labels, n, n_classes=_check_n_classes(n_classes))
    src = _check_sources(sources, n)
    names, codes = np.unique(src, return_inverse=True)
    codes = codes.ravel()
    n_sources = len(names)
    if n_sources < 2:
        raise InputError(
            f"sources has {n_sources} distinct value(s) {list(names[:1])!r}; each source is compared with the "
            "others, so at least 2 are needed"
        )
    n_per = np.bincount(codes, minlength=n_sources)
    table = pd.DataFrame({"n_samples": n_per}, index=pd.Index(names, name="source"))
    log_p: dict[str, np.ndarray] = {}

    js, dominant, dominant_share, log_p["label"], g_stat, excess = _label_tests(codes, y, n_sources, n_classes)
    table["label_js"] = js
    table["dominant_label"] = dominant
    table["dominant_share"] = dominant_share
    table["excess_label"] = excess
    table["label_p"] = 10.0 ** log_p["label"]

    if predictions is not None:
        pred = check_labels(_check_same_length(predictions, n, "predictions"), n, name="predictions",
                            n_classes=n_classes)
        rate, typical, log_p["disagreement"] = _disagreement_test(codes, y, pred != y, n_sources, n_classes)
        table["disagreement"] = rate
        table["disagreement_typical"] = typical
        table["disagreement_p"] = 10.0 ** log_p["disagreement"]

    if scores is not None:
        s = check_scores(_check_same_length(scores, n, "scores"))
        mean, mean_others, log_p["score"] = _rank_sum(codes, s, n_sources)
        table["mean_score"] = mean
        table["mean_score_others"] = mean_others
        table["score_p"] = 10.0 ** log_p["score"]

    if flagged is not None:
        f = _check_same_length(flagged, n, "flagged")
        if f.dtype != bool:
            raise InputError(f"flagged must be a boolean mask; got dtype {f.dtype}")
        k = np.bincount(codes, weights=f, minlength=n_sources)
        rate, typical, log_p["flagged"] = _binomial_excess(k, n_per.astype(np.float64), baseline="typical")
        table["flagged_share"] = rate
        table["flagged_share_typical"] = typical
        table["flagged_p"] = 10.0 ** log_p["flagged"]

    if groups is not None:
        in_shared, table["n_shared_groups"] = _shared_groups(codes, check_groups(groups, n), n_sources)
        k = np.bincount(codes, weights=in_shared, minlength=n_sources)
        rate, others, log_p["shared"] = _binomial_excess(k, n_per.astype(np.float64), baseline="others")
        table["shared_share"] = rate
        table["shared_share_others"] = others
        table["shared_p"] = 10.0 ** log_p["shared"]

    names_run = [e for e in EVIDENCE if e in log_p]
    # A p-value below 1e-300 underflows to log10 = -inf; cap it so that every score stays finite.
    stacked = np.maximum(np.column_stack([log_p[e] for e in names_run]), -300.0)
    strongest = stacked.argmin(axis=1)
    # Bonferroni over the tests run, in log10: -log10(min(1, m * p_min)).
    combined = np.minimum(stacked.min(axis=1) + np.log10(len(names_run)), 0.0)
    table["source_suspicion"] = -combined + 0.0
    table["evidence"] = [names_run[i] if combined[j] < 0 else "" for j, i in enumerate(strongest)]
    table["q_value"] = _benjamini_hochberg(10.0 ** combined)
    if n_sources >= MIN_SOURCES_FOR_NULL:
        size = n_per.astype(np.float64)
        among = {e: _among_normal(log_p[e], size) for e in names_run if e != "label"}
        among["label"] = _among_chi2(g_stat, size, n_classes - 1, log_p["label"])
        stacked = np.maximum(np.column_stack([among[e] for e in names_run]), -300.0)
    # Each test's own suspicion among the sources (``among_label`` ...), corrected like their maximum: which of a
    # source's samples carry its evidence depends on the tests that find it unusual (source_scores).
    each = -np.minimum(stacked + np.log10(len(names_run)), 0.0) + 0.0
    for i, e in enumerate(names_run):
        table[f"among_{e}"] = each[:, i]
    table["suspicion_among_sources"] = each.max(axis=1)
    table["evidence_among_sources"] = [names_run[i] if v > 0 else "" for i, v in
                                       zip(stacked.argmin(axis=1), table["suspicion_among_sources"], strict=True)]
    order = np.lexsort((names, -n_per, -table["source_suspicion"].to_numpy()))
    return table.iloc[order]


def _shared_groups(codes: np.ndarray, g: np.ndarray, n_sources: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: in a near-duplicate group that holds samples of two or more sources; per source: how many such
    groups it is in."""
    member = g >= 0
    gm, cm = g[member], codes[member]
    pairs = np.unique(gm * n_sources + cm)
    sources_per_group = np.bincount(pairs // n_sources, minlength=int(gm.max(initial=-1)) + 1)
    shared_pairs = pairs[sources_per_group[pairs // n_sources] >= 2]
    in_shared = np.zeros(len(g), dtype=bool)
    in_shared[np.flatnonzero(member)[sources_per_group[gm] >= 2]] = True
    return in_shared, np.bincount(shared_pairs % n_sources, minlength=n_sources)


def _inflation(stat: np.ndarray, size: np.ndarray, *, power: float, quantile: float, level: float) -> np.ndarray:
    """Per source, the variance inflation ``1 + (n - 1) rho`` of a between-source heterogeneity ``rho`` chosen so
    that the ``quantile`` of ``stat / inflation ** power`` over the sources is ``level`` (1 where it already is)."""
    ok = np.isfinite(stat)
    s, n = stat[ok], size[ok]

    def excess(rho: float) -> float:
        return float(np.quantile(s / (1.0 + (n - 1.0) * rho) ** power, quantile)) - level

    if len(s) == 0 or excess(0.0) <= 0:
        return np.ones_like(size)
    rho = optimize.brentq(excess, 0.0, 1.0, xtol=1e-9) if excess(1.0) < 0 else 1.0
    return 1.0 + (size - 1.0) * rho


def _among_chi2(g: np.ndarray, size: np.ndarray, dof: int, log10_p: np.ndarray) -> np.ndarray:
    """log10 p of the label test's statistic read with the heterogeneity of the median source (never below the
    test's own p)."""
    if dof < 1:
        return log10_p
    phi = _inflation(g, size, power=1.0, quantile=0.5, level=float(stats.chi2.median(dof)))
    return np.maximum(np.minimum(stats.chi2.logsf(g / phi, dof) / _LN10, 0.0), log10_p)


def _among_normal(log10_p: np.ndarray, size: np.ndarray) -> np.ndarray:
    """log10 p of a one-sided count or rank test, as a normal deviate, read with the spread of the sources' upper
    quartile (never below the test's own p)."""
    # A p-value of 1 (nothing seen) is a deviate of -inf: kept far below, so it still counts in the quantile.
    z = np.maximum(-special.ndtri_exp(log10_p * _LN10), -40.0)
    phi = _inflation(z, size, power=0.5, quantile=0.75, level=float(stats.norm.ppf(0.75)))
    return np.maximum(np.minimum(stats.norm.logsf(z / np.sqrt(phi)) / _LN10, 0.0), log10_p)


def _check_n_classes(n_classes: Any) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise InputError(f"n_classes must be a positive integer; got {n_classes!r}")
    return int(n_classes)


def source_scores(
    sources: np.ndarray | Any,
    labels: np.ndarray,
    *,
    n_classes: int,
    predictions: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Each sample's source: its ``suspicion_among_sources`` (see :func:`source_table`) where it reaches
    ``SOURCE_EVIDENCE_MIN``, carried by the samples that make the source unusual; else 0; higher = more suspicious.

    The score is ``-log10`` of the source's p-value, what the combination reads as the ``source`` signal's tail
    probability. Which of the source's samples carry it depends on the tests that find the source unusual on their
    own (``among_label`` ... at least ``SOURCE_EVIDENCE_MIN``): a label excess, the samples of its label most in
    excess of the consensus (``excess_label``); a disagreement with the model, the samples the model disagrees with;
    shared near duplicates, the samples in groups shared with other sources; a score or a flagged share, all of them.
    Carried by every sample of a source, a label excess lent the source's other classes the attack's evidence: on a
    warp spread over 40 contributors, one honest contributor of 736 samples whose share of the target label the
    poison had raised put all of them, 7.4% of the clean samples, below p = 0.01, ahead of the poison that the
    robust spectral signature alone ranked at 0.98 (``benchmarks/RESULTS.md``, "Since: a longer-trained victim, a
    source's evidence on the samples that make it unusual"). An attacker's own clean samples of other classes are left
    out alike: on the bundled images the remediation's clean samples acted on fell from 1.01% to 0.34%.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    table = source_table(sources, labels, n_classes=n_classes, predictions=predictions, scores=scores,
                         flagged=flagged, groups=groups)
    among = table["suspicion_among_sources"]
    # Below the threshold a source is like the others: no evidence (Fisher's sum would add every source's noise).
    among = among.where(among >= SOURCE_EVIDENCE_MIN, 0.0)
    src = np.asarray(sources, dtype=object).astype(str)
    y = np.asarray(labels)
    score = among.reindex(src).to_numpy(dtype=np.float64)

    def finds(test: str) -> np.ndarray:
        """Per sample: its source is unusual by ``test`` alone."""
        column = f"among_{test}"
        if column not in table:
            return np.zeros(len(y), dtype=bool)
        return (table[column] >= SOURCE_EVIDENCE_MIN).reindex(src).to_numpy()

    carries = finds("score") | finds("flagged")  # a source's scores or flags: no finer mark, all its samples
    carries |= finds("label") & (y == table["excess_label"].reindex(src).to_numpy())
    if predictions is not None:
        carries |= finds("disagreement") & (np.asarray(predictions) != y)
    if groups is not None:
        names, codes = np.unique(src, return_inverse=True)
        carries |= finds("shared") & _shared_groups(codes.ravel(), np.asarray(groups), len(names))[0]
    return np.where(carries, score, 0.0)


__all__ = ["EVIDENCE", "MIN_SOURCES_FOR_NULL", "SOURCE_EVIDENCE_MIN", "source_scores", "source_table"]
