"""combine: tail probabilities, summed evidence, the honest threshold, context signals and reasons."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.errors import InputError
from forensics.signals.combine import (
    DEFAULT_THRESHOLD,
    MAX_GAIN,
    combine,
    evidence_tail,
    posterior_tail,
    tail_probability,
)


def _null(n=20_000, k=6, seed=0):
    """k clean signals of different kinds: normal, heavy (lognormal), gated (mostly 0) and discrete."""
    rng = np.random.default_rng(seed)
    return {
        "normal": rng.normal(size=n),
        "heavy": rng.lognormal(sigma=1.5, size=n),
        "loss_like": -np.log(rng.beta(8, 1, size=n)),
        "gated": np.where(rng.random(n) < 0.02, rng.exponential(size=n), 0.0),
        "discrete": rng.binomial(10, 0.1, size=n) / 10,
        "correlated": rng.normal(size=n),
    }, np.zeros(n, dtype=np.int64)


def test_tail_probability_is_empirical_in_the_bulk_and_extrapolates_beyond():
    v = np.arange(1, 1001, dtype=float)  # uniform ranks
    p = tail_probability(v)
    assert p[0] == 1.0 and p[499] == pytest.approx(0.501)  # share of values at or above
    assert p[-1] < p[-2] < p[874]  # beyond the 87.5th percentile it keeps falling
    assert p[-1] >= (1 / 1000) / MAX_GAIN


def test_tail_probability_nan_is_no_evidence_and_inf_ranks_first_without_claiming_1e300():
    v = np.r_[np.random.default_rng(0).normal(size=999), np.inf]
    v[0] = np.nan
    p = tail_probability(v)
    assert p[0] == 1.0
    assert p[-1] == p.min() and p[-1] == pytest.approx((1 / 999) / MAX_GAIN)  # 999 scored samples


def test_a_heavy_tail_is_not_taken_for_evidence():
    # Pareto tail index 1: an exponential fitted to the bulk would call the top 1% astronomically rare.
    v = np.random.default_rng(1).pareto(1.0, size=50_000)
    p = tail_probability(v)
    assert 0.002 < np.mean(p < 0.01) < 0.02


def test_clean_signals_raise_about_one_percent_at_the_default_threshold():
    scores, labels = _null()
    scores["correlated"] = scores["normal"] + 0.3 * scores["correlated"]  # two signals that move together
    c = combine(scores, labels)
    assert np.mean(c.suspicion >= DEFAULT_THRESHOLD) <= 0.015
    assert np.mean(c.suspicion >= 1.0) == pytest.approx(0.1, abs=0.03)


def test_a_planted_group_seen_by_two_signals_tops_the_ranking_and_is_flagged():
    scores, labels = _null(n=10_000)
    planted = np.arange(300)  # 3% of the data
    scores["normal"][planted] += 5.0
    scores["heavy"][planted] *= 30
    c = combine(scores, labels)
    top = np.argsort(-c.suspicion, kind="stable")[:600]
    assert np.isin(planted, top).mean() >= 0.95
    assert np.mean(c.suspicion[planted] >= DEFAULT_THRESHOLD) >= 0.5
    assert np.mean(np.delete(c.suspicion, planted) >= DEFAULT_THRESHOLD) <= 0.015
    assert c.reasons[0].startswith(("heavy", "normal"))  # unknown signals are named by their key


def test_context_signals_stay_out_and_standardize_is_checked():
    scores, labels = _null(n=2000)
    scores["knn_outlier"] = np.r_[np.full(10, 1e6), np.zeros(1990)]
    c = combine(scores, labels)
    assert "knn_outlier" not in c.tail_p.columns and "far from its class" not in c.reasons[0]
    assert "knn_outlier" in combine(scores, labels, context=()).tail_p.columns
    with pytest.raises(InputError, match=r"standardize names \['nope'\]"):
        combine(scores, labels, standardize=["nope"])
    with pytest.raises(InputError, match="every signal given"):
        combine({"knn_outlier": scores["knn_outlier"]}, labels)
    with pytest.raises(InputError, match="has infinite values"):
        combine({"a": np.r_[-np.inf, np.zeros(9)]}, np.zeros(10, dtype=np.int64))


def test_evidence_tail_sets_a_poisoned_fifth_aside():
    rng = np.random.default_rng(2)
    clean = rng.gamma(5.0, size=8000)
    sums = np.r_[clean, 40 + rng.normal(size=1500)]  # 16% of the data far out
    p = evidence_tail(sums)
    assert np.mean(p[8000:] < 0.01) == 1.0
    assert np.mean(p[:8000] < 0.01) <= 0.015


def test_a_confirmed_trigger_is_exact_evidence_whatever_share_carries_it():
    scores, labels = _null(n=10_000)
    carriers = np.zeros(10_000, dtype=bool)
    carriers[::10] = True  # a tenth of the data: a fitted tail would call that a 10% event
    without = combine(scores, labels)
    c = combine({**scores, "trigger": np.where(carriers, 40.0, 0.0)}, labels)
    np.testing.assert_array_equal(c.tail_p["trigger"], np.where(carriers, 1e-40, 1.0))
    assert c.suspicion[carriers].min() > c.suspicion[~carriers].max()
    assert (c.suspicion[carriers] >= DEFAULT_THRESHOLD).all()
    assert all(r.startswith("carries a confirmed trigger (1 in 10^40)") for r in c.reasons[carriers])
    # The others keep their order: the trigger adds no evidence to them.
    order = np.argsort(-without.suspicion[~carriers], kind="stable")
    assert np.all(np.diff(c.suspicion[~carriers][order]) <= 1e-12)
    with pytest.raises(InputError, match=r"scores\['trigger'\] are -log10 p-values"):
        combine({**scores, "trigger": np.full(10_000, -1.0)}, labels)


def test_a_weakly_confirmed_trigger_keeps_its_carriers_above_agreeing_moderate_evidence():
    """One confirmation at p = 1e-4 beside silent signals, and clean samples on which several signals agree
    moderately (hard, ambiguous samples): the floor keeps every carrier at least at 4 - log10(2) (two rules flag a
    sample: the sum, the trigger) and above them; the plain sum puts the carriers below."""
    scores, labels = _null(n=10_000, seed=7)
    rng = np.random.default_rng(7)
    agreeing = rng.choice(10_000, 60, replace=False)
    for name in ("normal", "correlated"):
        scores[name][agreeing] = 2.3  # about 1 in 90 each
    scores["heavy"][agreeing] = np.quantile(scores["heavy"], 0.98)
    carriers = np.setdiff1d(rng.choice(10_000, 100, replace=False), agreeing)[:40]
    trigger = np.zeros(10_000)
    trigger[carriers] = 4.0
    plain = combine({**scores, "trigger": trigger}, labels, floor=())
    c = combine({**scores, "trigger": trigger}, labels)
    floor = np.where(trigger > 0, 4 - np.log10(2), 0)
    np.testing.assert_allclose(c.suspicion, np.maximum(plain.suspicion, floor))
    # Beside a second floor signal (a one-way relabelling that found nothing), three rules.
    with_flip = {**scores, "trigger": trigger, "targeted_flip": np.zeros(10_000)}
    np.testing.assert_allclose(combine(with_flip, labels).suspicion,
                               np.maximum(combine(with_flip, labels, floor=()).suspicion,
                                          np.where(trigger > 0, 4 - np.log10(3), 0)))
    assert c.suspicion[carriers].min() > c.suspicion[agreeing].max()
    assert plain.suspicion[carriers].min() < plain.suspicion[agreeing].max()
    others = np.setdiff1d(np.arange(10_000), carriers)
    np.testing.assert_array_equal(c.suspicion[others], plain.suspicion[others])
    with pytest.raises(InputError, match=r"floor names \['normal'\], whose null is neither an exact p-value, a "
                                         r"share of clean samples nor a label's probability"):
        combine(scores, labels, floor=["normal"])


def _calibrated_label_probs(n, k, rng):
    """The probability a calibrated model gives each sample's label, the label drawn from its prediction."""
    probs = rng.dirichlet(np.full(k, 0.3), size=n)
    labels = np.array([rng.choice(k, p=row) for row in probs])
    return probs[np.arange(n), labels], labels


def test_label_signals_read_the_model_probability_of_the_label():
    rng = np.random.default_rng(4)
    q, labels = _calibrated_label_probs(20_000, 10, rng)
    c = combine({"high_loss": -np.log(q), "label_quality": 1.0 - q}, labels, n_classes=10)
    for name in ("high_loss", "label_quality"):
        np.testing.assert_allclose(c.tail_p[name], np.clip(10 * q, 1e-300, 1.0))
        assert np.mean(c.tail_p[name] < 0.01) <= 0.01  # P(q <= t) <= k t for a clean label
    assert np.mean(c.suspicion >= DEFAULT_THRESHOLD) <= 0.01
    with pytest.raises(InputError, match=r"scores\['label_quality'\] are one minus a probability"):
        combine({"label_quality": np.r_[1.5, np.zeros(9)]}, np.zeros(10, dtype=np.int64))
    with pytest.raises(InputError, match=r"scores\['high_loss'\] are losses"):
        combine({"high_loss": np.r_[-1.0, np.zeros(9)]}, np.zeros(10, dtype=np.int64))


def test_one_signal_that_sees_the_attack_is_not_drowned_by_silent_ones():
    rng = np.random.default_rng(5)
    scores, _ = _null(n=10_000, seed=5)
    # Silent signals of the kinds the built-in ones are: gated (mostly 0), discrete, heavy-tailed.
    silent = {name: scores[name] for name in ("gated", "discrete", "heavy")}
    q, labels = _calibrated_label_probs(10_000, 10, rng)
    flips = rng.choice(10_000, 200, replace=False)  # 2% of the labels flipped, which the model did not learn
    q[flips] = rng.uniform(1e-6, 1e-4, size=200)
    loss = -np.log(q)
    c = combine({**silent, "high_loss": loss}, labels, n_classes=10)
    budget = np.argsort(-c.suspicion, kind="stable")[:400]
    alone = np.argsort(-loss, kind="stable")[:400]
    assert np.isin(flips, alone).mean() == 1.0
    assert np.isin(flips, budget).mean() >= 0.98
    assert np.mean(np.delete(c.suspicion, flips) >= DEFAULT_THRESHOLD) <= 0.01


def test_a_one_way_relabelling_keeps_its_samples_above_agreeing_moderate_evidence():
    """Samples a relabelling's posterior calls relabelled, beside clean samples on which several silent signals
    agree moderately: the share floor keeps each at -log10 of twice its posterior tail (the sum or the share:
    two rules), the plain sum puts some below the agreeing clean samples."""
    scores, labels = _null(n=10_000, seed=9)
    rng = np.random.default_rng(9)
    agreeing = rng.choice(10_000, 60, replace=False)
    for name in ("normal", "correlated"):
        scores[name][agreeing] = 2.3
    scores["heavy"][agreeing] = np.quantile(scores["heavy"], 0.98)
    relabelled = np.setdiff1d(rng.choice(10_000, 100, replace=False), agreeing)[:40]
    prob = np.zeros(10_000)
    prob[relabelled] = rng.uniform(0.9, 1.0, 40)
    plain = combine({**scores, "targeted_flip": prob}, labels, floor=())
    c = combine({**scores, "targeted_flip": prob}, labels)
    share = -np.log10(np.minimum(1.0, 2 * posterior_tail(prob)))
    np.testing.assert_allclose(c.suspicion, np.maximum(plain.suspicion, share))
    assert c.suspicion[relabelled].min() > c.suspicion[agreeing].max()
    assert plain.suspicion[relabelled].min() < plain.suspicion[agreeing].max()
    # Where no pair was found (no sample with a posterior), nothing moves.
    silent = combine({**scores, "targeted_flip": np.zeros(10_000)}, labels)
    np.testing.assert_array_equal(silent.suspicion, combine({**scores, "targeted_flip": np.zeros(10_000)}, labels,
                                                            floor=()).suspicion)


def test_a_posterior_is_read_as_the_expected_share_of_clean_samples_at_or_above_it():
    s = np.array([0.0, 0.9, 0.5, 0.9, np.nan, 1.0, 0.0, 0.0, 0.0, 0.0])
    # At or above 1.0: no clean sample expected; 0.9: two at 0.1 each; 0.5: another 0.5. Plus one, over n = 10.
    np.testing.assert_allclose(posterior_tail(s), [1, 0.12, 0.17, 0.12, 1, 0.1, 1, 1, 1, 1])
    with pytest.raises(InputError, match=r"posterior scores must lie in \[0, 1\]"):
        posterior_tail(np.array([0.2, 1.5]))
    # The registered relabelling signal is read so: certain scores are as rare as one sample in n, and a label's
    # unsure samples reach 0.01 only as far as their own probabilities say.
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(10), 1000)
    prob = np.where(labels == 3, rng.beta(0.2, 8.0, 10_000), 0.0)  # label 3's samples: mostly clean, a few unsure
    prob[:40] = 1.0  # 40 label-0 samples the pair test found certainly relabelled
    c = combine({"targeted_flip": prob}, labels)
    np.testing.assert_allclose(c.tail_p["targeted_flip"], posterior_tail(prob))
    assert np.all(c.tail_p["targeted_flip"].to_numpy()[:40] == pytest.approx(1 / 10_000))
    # Calibrated probabilities: a sample is relabelled with the probability it scores. Of the samples that were
    # not, about 1% reach 0.01 (the sum of 1 - s over those flagged is 99 of 10,000 by construction; the draw adds
    # its noise), and those that were reach it far more often.
    relabelled = rng.random(10_000) < prob
    flagged = c.tail_p["targeted_flip"].to_numpy() <= 0.01
    assert 0.005 < np.mean(flagged[~relabelled]) <= 0.012
    assert np.mean(flagged[relabelled & (labels == 3)]) > 0.3
    # With a trusted set's scores, the clean samples' own, the tail is fitted to them instead.
    trusted = rng.beta(0.2, 8.0, 2000)
    anchored = combine({"targeted_flip": prob}, labels, null_scores={"targeted_flip": trusted})
    np.testing.assert_allclose(anchored.tail_p["targeted_flip"], tail_probability(prob, reference=trusted,
                                                                                  max_gain=10_000))


def test_signals_of_one_group_count_once():
    scores, labels = _null(n=5000, seed=6)
    x = scores.pop("normal")
    twin = x + 1e-9  # a second estimate of the same evidence
    grouped = combine({**scores, "spectral": x, "robust_spectral": twin}, labels)
    alone = combine({**scores, "spectral": x}, labels)
    double = combine({**scores, "spectral": x, "twin": twin}, labels)  # "twin" is not in the group
    # Counted once (the smaller p times two), the twin does not double the evidence of the same samples.
    top = np.argsort(-x)[:50]
    assert np.abs(grouped.suspicion[top] - alone.suspicion[top]).max() < 0.1
    assert np.all(double.suspicion[top] > grouped.suspicion[top] + 0.2)
    assert list(grouped.tail_p.columns)[-2:] == ["spectral", "robust_spectral"]  # each still has its own reasons



def test_a_by_class_signal_reads_a_clean_mode_every_class_has_as_clean_and_one_class_s_group_as_not():
    # Robust spectral distances on short texts: 5% of every class far out (uninformative snippets far from each
    # class's core), beyond what a tail fitted to the bulk's quartiles expects. A group in one class goes further.
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(4), 3000)
    s = np.abs(rng.normal(size=len(labels)))
    mode = rng.random(len(labels)) < 0.05
    s[mode] = 30 + 20 * np.abs(rng.normal(size=int(mode.sum())))
    planted = np.flatnonzero((labels == 1) & ~mode)[:60]
    s[planted] = 300 + rng.random(60)
    by_class = combine({"robust_spectral": s}, labels).tail_p["robust_spectral"].to_numpy()
    bulk = combine({"plain": s}, labels).tail_p["plain"].to_numpy()  # an unregistered signal: a fitted null
    clean = np.ones(len(s), dtype=bool)
    clean[planted] = False
    assert np.mean(bulk[clean] <= 0.01) > 0.04  # the bulk's tail calls the whole mode 1-in-100
    assert np.mean(by_class[clean] <= 0.01) <= 0.015
    assert np.all(by_class[planted] < 1e-3)
    # Beyond MAX_REFERENCE_CLASSES classes an even subset of them is read, with the same effect.
    many = np.repeat(np.arange(40), 1000)
    many_s = np.where(rng.random(len(many)) < 0.05, 30 + 20 * np.abs(rng.normal(size=len(many))),
                      np.abs(rng.normal(size=len(many))))
    assert np.mean(combine({"robust_spectral": many_s}, many).tail_p["robust_spectral"] <= 0.01) <= 0.015
    # With one class there is no other class to read: the bulk's tail alone.
    one = np.zeros(len(s), dtype=np.int64)
    assert np.array_equal(combine({"robust_spectral": s}, one).tail_p["robust_spectral"].to_numpy(),
                          combine({"plain": s}, one).tail_p["plain"].to_numpy())

def _confident_model(n, k, rng, flips=0, learned=(1e-4, 0.3)):
    """A calibrated, confident model's probabilities, each label drawn from them; ``flips`` labels then changed to
    another class that the model learned in part (its probability of the new label log-uniform in ``learned``)."""
    probs = rng.dirichlet(np.full(k, 0.05), size=n)
    labels = np.array([rng.choice(k, p=row) for row in probs])
    flipped = rng.choice(n, flips, replace=False)
    for i in flipped:
        new = rng.choice([c for c in range(k) if c != labels[i]])
        row = probs[i] * (1.0 - (q := np.exp(rng.uniform(*np.log(learned))))) / (1.0 - probs[i, new] + 1e-12)
        row[new] = q
        probs[i], labels[i] = row / row.sum(), new
    return probs, labels, flipped


def test_the_label_null_of_the_model_ranks_flips_the_model_half_learned_and_only_when_labels_show_an_attack():
    from forensics.signals.combine import LABEL_GATE, label_null

    rng = np.random.default_rng(7)
    n, k = 10_000, 10
    scores, _ = _null(n=n, seed=7)
    silent = {name: scores[name] for name in ("normal", "heavy", "gated", "discrete", "correlated")}

    def signals(probs, labels):
        q = probs[np.arange(n), labels]
        return {**silent, "high_loss": -np.log(q), "label_quality": 1.0 - q}

    # Clean labels: the gate stays shut and nothing changes.
    probs, labels, _ = _confident_model(n, k, rng)
    bound = combine(signals(probs, labels), labels, n_classes=k)
    read = combine(signals(probs, labels), labels, n_classes=k, label_null=label_null(probs))
    assert read.label_gate >= LABEL_GATE and np.isnan(bound.label_gate)
    np.testing.assert_array_equal(read.suspicion, bound.suspicion)
    no_floor = combine(signals(probs, labels), labels, n_classes=k, label_null=label_null(probs), floor=())
    np.testing.assert_array_equal(read.suspicion, no_floor.suspicion)  # no label floor while the gate is shut
    assert np.mean(read.suspicion >= DEFAULT_THRESHOLD) <= 0.01

    # 5% flipped, some learned in part (probability 1e-4 to 0.3 of the new label): the bound k q calls those above
    # 0.1 certain; the model's own predicted distribution says a clean label is rarely so improbable.
    probs, labels, flipped = _confident_model(n, k, rng, flips=500)
    s = signals(probs, labels)
    bound = combine(s, labels, n_classes=k)
    read = combine(s, labels, n_classes=k, label_null=label_null(probs))
    assert read.label_gate < 1e-20
    budget = 2 * len(flipped)

    def recall(susp):
        return np.isin(flipped, np.argsort(-susp, kind="stable")[:budget]).mean()

    # Beside five silent signals (measured: the loss alone 0.90 at twice the flips, the bound 0.64, the null 0.83 in
    # the sum, 0.86 with the label signals' floor).
    alone = recall(s["high_loss"])
    assert recall(read.suspicion) >= recall(bound.suspicion) + 0.15
    assert recall(read.suspicion) >= alone - 0.1
    assert np.all(read.tail_p["high_loss"] <= bound.tail_p["high_loss"])

    # Where the gate opens, each label signal's exact p-value sets a floor, corrected over the three rules (the sum
    # and the two label signals): more of the flips reach the threshold (measured 0.40 -> 0.55), the clean labels
    # stay under their 1% (0.3% -> 0.5%). Where it stays shut (above), no label floor: the bound is no exact p-value.
    plain = combine(s, labels, n_classes=k, label_null=label_null(probs), floor=())
    floor = -np.log10(np.minimum(1.0, 3 * read.tail_p[["high_loss", "label_quality"]].min(axis=1).to_numpy()))
    np.testing.assert_allclose(read.suspicion, np.maximum(plain.suspicion, floor))
    flagged = read.suspicion >= DEFAULT_THRESHOLD
    assert flagged[flipped].mean() >= (plain.suspicion[flipped] >= DEFAULT_THRESHOLD).mean() + 0.1
    assert np.delete(flagged, flipped).mean() <= 0.01
    with pytest.raises(InputError, match="label_null must be label_null"):
        combine(s, labels, label_null=np.array([[0.5, 0.1], [0.2, 0.3]]))
