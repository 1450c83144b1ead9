"""Per-source statistics: which contributors (annotators, devices, shards) look poisoned.

Each source is compared with a baseline on up to five kinds of evidence, each a one-sided test whose p-value
says how unlikely the source's excess would be if it behaved like the baseline:

- **label distribution**: ``label_js`` (Jensen-Shannon divergence from the consensus, in bits, 0..1),
  ``dominant_label``, ``dominant_share``; G-test against the consensus (``label_p``). The consensus is, per
  class, the sample-weighted median share over sources, so a bot labelling everything one class does not
  drag it.
- **disagreement with a model** (``predictions``): ``disagreement`` against ``disagreement_typical`` (the
  sample-weighted median of the sources' rates); binomial test (``disagreement_p``).
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
The per-sample ``source`` signal (:func:`source_scores`) reads each source against the bulk of the sources
instead (:func:`suspicion_among_sources`), since honest contributors differ too.

P-values say how sure, not how much: read the effect columns beside them. The binomial tests assume that
sources differ only by chance; real annotators differ in skill, so a very large clean source can be
significantly, yet slightly, worse than the typical one. Baselines get a half-count pseudo-count so that a
baseline rate of 0 does not make one success infinitely surprising.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._validate import check_labels, check_scores
from ..errors import InputError
from .duplicates import _check_sources, check_groups

_LN10 = float(np.log(10.0))
#: Below this many sources their bulk is no null: each source's own corrected test is its score.
MIN_SOURCES_FOR_NULL = 5

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
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """JS divergence from the consensus, dominant label and its share, log10 p of the G-test, the consensus."""
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
    return js, counts.argmax(axis=1), counts.max(axis=1) / n, np.minimum(log_p, 0.0), q


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
        (descending), then name. ``evidence`` names the test behind the suspicion (the smallest p-value).
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

    js, dominant, dominant_share, log_p["label"], _ = _label_tests(codes, y, n_sources, n_classes)
    table["label_js"] = js
    table["dominant_label"] = dominant
    table["dominant_share"] = dominant_share
    table["label_p"] = 10.0 ** log_p["label"]

    if predictions is not None:
        pred = check_labels(_check_same_length(predictions, n, "predictions"), n, name="predictions",
                            n_classes=n_classes)
        k = np.bincount(codes, weights=(pred != y), minlength=n_sources)
        rate, typical, log_p["disagreement"] = _binomial_excess(k, n_per.astype(np.float64), baseline="typical")
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
        g = check_groups(groups, n)
        member = g >= 0
        gm, cm = g[member], codes[member]
        # Groups that hold samples of two or more sources.
        pairs = np.unique(gm * n_sources + cm)
        sources_per_group = np.bincount(pairs // n_sources, minlength=int(gm.max(initial=-1)) + 1)
        shared_pairs = pairs[sources_per_group[pairs // n_sources] >= 2]
        table["n_shared_groups"] = np.bincount(shared_pairs % n_sources, minlength=n_sources)
        in_shared = np.zeros(n, dtype=bool)
        in_shared[np.flatnonzero(member)[sources_per_group[gm] >= 2]] = True
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
    order = np.lexsort((names, -n_per, -table["source_suspicion"].to_numpy()))
    return table.iloc[order]


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
    """Each sample's source suspicion against the bulk of the sources (see :func:`suspicion_among_sources`);
    higher = more suspicious.

    Every sample of a source gets the same score, ``-log10`` of a p-value (0 for a source like the others): what the
    combination reads as the ``source`` signal's tail probability.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    table = source_table(sources, labels, n_classes=n_classes, predictions=predictions, scores=scores,
                         flagged=flagged, groups=groups)
    among = pd.Series(suspicion_among_sources(table["source_suspicion"].to_numpy(), table["n_samples"].to_numpy()),
                      index=table.index)
    src = np.asarray(sources, dtype=object).astype(str)
    return among.reindex(src).to_numpy(dtype=np.float64)


def suspicion_among_sources(source_suspicion: np.ndarray, n_samples: np.ndarray) -> np.ndarray:
    """Each source's ``source_suspicion`` measured against the bulk of the sources: ``-log10`` of a p-value on the
    scale of the sample suspicion (2 = about 1% of clean sources are this unusual).

    The raw tests are -log10 p-values against the other sources, and their power grows with a source's size: an
    honest contributor with a mild class preference of its own passes them by far once it holds a few hundred
    samples (11 to 56 on the bundled images). Read per sample, a single such source holding 6-21% of a training set
    then put every one of its samples below p = 0.01 on the attack matrix's tuning seeds (``benchmarks/matrix.py
    --seeds 0-4``), the most frequent reason for a clean sample to be flagged. So the statistic is the source's
    excess **per sample**, ``source_suspicion / n_samples``, for the sources whose raw test is significant
    (``source_suspicion >= 2``; 0 for the others), calibrated with an exponential tail fitted to the bulk of the
    sources (:func:`forensics.signals.combine.tail_probability`). On those seeds a clean source then put at most
    15% of a text set and 3% of an image set below 0.01 (from 21% and 15%), while a bot labelling 1-5% of the data
    one class and a lone backdoor contributor still reached 5 to 7.6. The result is never above the source's own
    corrected test, and with fewer than ``MIN_SOURCES_FOR_NULL`` sources it is that test.

    Parameters
    ----------
    source_suspicion : ndarray of float, shape (n_sources,)
        Each source's ``-log10`` corrected p-value (:func:`source_table`).
    n_samples : ndarray of int, shape (n_sources,)
        Each source's number of samples.

    Returns
    -------
    ndarray of float64, shape (n_sources,)
    """
    from .combine import tail_probability

    raw = check_scores(source_suspicion, name="source_suspicion")
    size = np.asarray(n_samples, dtype=np.float64)
    if size.shape != raw.shape or not (size > 0).all():
        raise InputError(f"n_samples must hold one positive count per source ({len(raw)}); got {n_samples!r}")
    raw = np.nan_to_num(raw, nan=0.0)
    if len(raw) < MIN_SOURCES_FOR_NULL:
        return raw + 0.0
    effect = np.where(raw >= 2.0, raw / size, 0.0)
    among = -np.log10(tail_probability(effect, max_shape=0.0))
    return np.minimum(among, raw) + 0.0


__all__ = ["EVIDENCE", "MIN_SOURCES_FOR_NULL", "source_scores", "source_table", "suspicion_among_sources"]
