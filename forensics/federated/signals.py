"""Per-client signals over recorded rounds: pure functions over sketches and norms, higher = more suspicious.

Per round (one row per client of the round):

- :func:`norm_deviation`: ``|log norm - median| / (1.4826 MAD)`` of the round's norms (a boosted attacker, a
  free-rider sending tiny updates);
- :func:`aggregate_dissent`: ``1 - cos`` to the coordinate-wise median of the round's sketches, as a robust z;
- :func:`krum_distance`: Krum's score (sum of squared distances to the ``n - f - 2`` nearest updates), as a
  log-ratio to the round's median;
- :func:`trust_dissent`: ``1 - cos`` to an update computed on a small trusted root dataset (FLTrust), as a robust z.

Over rounds:

- :func:`accumulated_directions`: each client's update minus the round's median, projected on the round's top
  principal components (honest updates live in a few directions; noise added to look diverse spreads over all
  of them and is mostly dropped), scaled by the round's median residual norm and summed over the rounds
  (FoolsGold's history, denoised);
- :func:`sybil_groups`: HDBSCAN on the cosine distances of those directions; each client's similarity to its
  ``min_group - 1``-th nearest neighbour, ``-log(1 - s)``, is its ``closeness``. A group of fake devices is far
  more alike than honest non-IID clients are, even those that hold the same class. What is tested is the group:
  a client's statistic is the smaller of its closeness and the median closeness of its nearest neighbours (an
  honest client that happens to sit near a few others is not a group), and its tail probability comes from a
  normal fitted robustly (median, MAD) to the statistic of the clients *outside* its HDBSCAN group (everyone
  for an unclustered client), and, where there are others, of the clients of the other groups (the group must
  stand out against both), so a group that is half of the federation does not hide in its own null. A member
  that is itself unusual (p < ``GROUP_MEMBER_P``, at least half the group's median statistic) carries the
  group's evidence, that of its median statistic. A normal,
  not a fitted generalized Pareto tail: on 400 honest Fashion-MNIST clients (Dirichlet 0.1) the honest closeness
  ended lighter than exponential (the largest of 400 at 2.9 robust standard deviations), and an exponential tail
  left 100 sybils with added noise at p ~ 1e-3, short of the threshold after the correction for the signals;
- :func:`individuality` and :func:`shared_pool`: how far what sets a client apart from its nearest clients persists
  from one round to the next. A real device keeps its own data, so its difference from its look-alikes persists;
  fake devices drawing minibatches from one pool differ from each other by chance alone, which does not persist
  (cosine ~ N(0, 1/k) in a k-dimensional sketch). Closeness alone cannot tell such a pool from a class: on two-class
  review snippets at Dirichlet 0.1, honest clients of one class are more alike than 100 sybils (closeness 3.4-5.1
  against 2.1-2.3) and half the honest clients were flagged, no sybil; the honest clients' individuality there is
  0.13-0.95, the sybils' -0.07-0.16. So a client is tested for being alike only where its individuality (or its
  group's) is within chance (``POOL_BAND / sqrt(k)``), and being within chance among others that are is itself
  evidence, measured against the clients whose individuality is not;
- :func:`consistency`: mean cosine between a client's consecutive residual directions (context);
- staleness (in :mod:`.analysis`): an all-zero update or one byte-identical to an earlier one of the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .._validate import check_int

_MAD = 1.4826
#: A grouped client whose own statistic is below this tail probability carries its group's evidence.
GROUP_MEMBER_P = 0.05
#: Individuality within this many chance standard deviations (``1 / sqrt(k)``) is none: on 100-400 honest review
#: clients the honest clients' lowest sat at 0.13-0.41 (2.1-6.6 of them), the sybils' at or under 0.06 in nine of ten.
POOL_BAND = 2.0


def _robust_z(v: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 MAD) over the finite values; a zero spread falls back to the std, then to 1."""
    ok = np.isfinite(v)
    if not ok.any():
        return np.zeros_like(v)
    med = np.median(v[ok])
    spread = _MAD * np.median(np.abs(v[ok] - med))
    if not spread > 0:
        spread = float(np.std(v[ok]))
    if not spread > 0:
        spread = 1.0
    return (v - med) / spread


def norm_deviation(norms: np.ndarray) -> np.ndarray:
    """Two-sided robust z of the log norms of one round, shape (n,) -> (n,); NaN norms give NaN.

    Zero norms are taken at a millionth of the round's median norm, so they score far out rather than at inf.
    """
    n = np.asarray(norms, dtype=np.float64)
    pos = n[np.isfinite(n) & (n > 0)]
    floor = 1e-6 * (np.median(pos) if len(pos) else 1.0)
    with np.errstate(invalid="ignore"):
        return np.abs(_robust_z(np.log(np.maximum(n, floor))))


def _unit(x: np.ndarray) -> np.ndarray:
    nrm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, nrm, out=np.zeros_like(x), where=nrm > 0)


def aggregate_dissent(sketches: np.ndarray) -> np.ndarray:
    """Robust z of ``1 - cos(update, coordinate-wise median update)`` in one round, shape (n, k) -> (n,)."""
    s = np.asarray(sketches, dtype=np.float64)
    agg = np.median(s, axis=0)
    return _robust_z(1.0 - _unit(s) @ _unit(agg))


def trust_dissent(sketches: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """Robust z of ``1 - cos(update, trusted root-data update)`` in one round (FLTrust), (n, k), (k,) -> (n,)."""
    s = np.asarray(sketches, dtype=np.float64)
    return _robust_z(1.0 - _unit(s) @ _unit(np.asarray(trusted, dtype=np.float64)))


def krum_distance(sketches: np.ndarray, *, n_malicious: int | None = None) -> np.ndarray:
    """Krum's score in one round as ``log(score / median score)``, shape (n, k) -> (n,).

    Krum's score of an update is the sum of its squared distances to its ``n - f - 2`` nearest other updates
    (``f = n_malicious``, default a quarter of the clients); Krum selects the lowest. High here = far from its
    neighbours (an outlier); a tight sybil group scores low on it, which is why :func:`sybil_groups` exists.
    """
    s = np.asarray(sketches, dtype=np.float64)
    n = len(s)
    if n < 3:
        return np.zeros(n)
    f = n // 4 if n_malicious is None else check_int(n_malicious, "n_malicious", low=0)
    m = int(np.clip(n - f - 2, 1, n - 1))
    sq = (s**2).sum(axis=1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * s @ s.T, 0.0)
    np.fill_diagonal(d, np.inf)
    score = np.sort(d, axis=1)[:, :m].sum(axis=1)
    med = np.median(score)
    return np.log(np.maximum(score, 1e-300) / med) if med > 0 else np.zeros(n)


def round_residuals(sketches: np.ndarray, *, n_components: int = 10) -> np.ndarray:
    """One round's updates minus their coordinate-wise median, on the top ``n_components`` principal components,
    divided by the median residual norm. Shape (n, k) -> (n, k)."""
    s = np.asarray(sketches, dtype=np.float64)
    res = s - np.median(s, axis=0)
    q = min(n_components, min(res.shape) - 1) if len(res) > 1 else 0
    if q > 0:
        # The top right singular vectors, from the k x k scatter matrix (k is small; the clients may be many).
        _, vecs = np.linalg.eigh(res.T @ res)
        top = vecs[:, ::-1][:, :q]
        res = (res @ top) @ top.T
    scale = np.median(np.linalg.norm(res, axis=1))
    return res / scale if scale > 0 else res


def accumulated_directions(
    rounds: Sequence[tuple[Sequence[str], np.ndarray]], *, n_components: int = 10
) -> tuple[list[str], np.ndarray]:
    """Each client's denoised residual updates summed over rounds.

    Parameters
    ----------
    rounds : sequence of (client_ids, sketches (n_r, k))
    n_components : int
        Principal components kept per round.

    Returns
    -------
    client_ids : list of str
        In order of first appearance.
    directions : ndarray of float64, shape (n_clients, k)
    """
    acc: dict[str, np.ndarray] = {}
    for ids, sk in rounds:
        res = round_residuals(sk, n_components=n_components)
        for c, v in zip(ids, res):
            acc[c] = acc[c] + v if c in acc else v.copy()
    ids_out = list(acc)
    k = rounds[0][1].shape[1] if rounds else 0
    return ids_out, np.stack([acc[c] for c in ids_out]) if ids_out else np.zeros((0, k))


def consistency(rounds: Sequence[tuple[Sequence[str], np.ndarray]], *, n_components: int = 10) -> dict[str, float]:
    """Mean cosine between a client's residual directions in consecutive rounds it took part in."""
    last: dict[str, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    for ids, sk in rounds:
        res = _unit(round_residuals(sk, n_components=n_components))
        for c, v in zip(ids, res):
            if c in last:
                sums.setdefault(c, []).append(float(last[c] @ v))
            last[c] = v
    return {c: float(np.mean(v)) for c, v in sums.items()}


def sybil_groups(directions: np.ndarray, *, min_group: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of clients whose accumulated directions are far more alike than the other clients'.

    Parameters
    ----------
    directions : ndarray of float, shape (n, k)
        From :func:`accumulated_directions`.
    min_group : int >= 2
        The smallest group worth calling a sybil group; closeness is measured to the ``min_group - 1``-th
        nearest neighbour, so a smaller group cannot be close.

    Returns
    -------
    group : ndarray of int, shape (n,)
        HDBSCAN cluster per client, -1 for none.
    closeness : ndarray of float64, shape (n,)
        ``-log(1 - s)`` with ``s`` the cosine similarity to the ``min_group - 1``-th nearest neighbour.
    p_value : ndarray of float64, shape (n,)
        Upper-tail probability of each client's closeness under a normal fitted robustly (median, MAD) to the
        closeness of the clients outside its group (all clients for an unclustered one).
    """
    import hdbscan

    min_group = check_int(min_group, "min_group", low=2)
    x = _unit(np.asarray(directions, dtype=np.float64))
    n = len(x)
    group = np.full(n, -1, dtype=np.int64)
    p = np.ones(n)
    if n <= min_group:
        return group, np.zeros(n), p
    sim = np.clip(x @ x.T, -1.0, 1.0)
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)[:, :min_group - 1]
    kth = np.take_along_axis(sim, order[:, -1:], axis=1)[:, 0]
    closeness = -np.log(np.maximum(1.0 - kth, 1e-12))
    # A group, not a lone client, is what is tested: a client counts as close only as far as its nearest
    # neighbours are close too (an honest client that happens to sit near a few others is not a group).
    stat = np.minimum(closeness, np.median(closeness[order], axis=1))
    dist = np.maximum(1.0 - sim, 0.0)
    np.fill_diagonal(dist, 0.0)
    group = hdbscan.HDBSCAN(metric="precomputed", min_cluster_size=min_group,
                            min_samples=max(2, min_group // 2)).fit_predict(dist).astype(np.int64)
    # A grouped client is measured against the clients outside its group; an ungrouped one against everyone
    # (HDBSCAN may leave a small group unclustered, and then it is too small to move the median and MAD).
    p = _gaussian_tail(stat, stat)
    for g in np.unique(group[group >= 0]):
        inside = group == g
        if (~inside).sum() < min_group:
            continue
        # Two nulls, and the group must stand out against both: everyone outside it, and the clients of the other
        # groups, the most alike honest clients (label-skewed clients of one class group together; early in
        # training 13 of 100 such clients at Dirichlet 0.1 passed against everyone outside alone).
        others = (group >= 0) & ~inside
        refs = [stat[~inside]] + ([stat[others]] if others.sum() >= min_group else [])
        own = np.max([_gaussian_tail(stat[inside], ref) for ref in refs], axis=0)
        # A member carries its group's evidence (the group's median statistic) unless it is itself ordinary
        # next to the outside (an honest client HDBSCAN attached to the group): the edge members of a group of
        # 100 fake devices sit at p ~ 0.005-0.02 on their own while the group sits at 1e-10.
        whole = max(float(_gaussian_tail(np.array([np.median(stat[inside])]), ref)[0]) for ref in refs)
        # A member also needs at least half the group's median statistic: an honest client HDBSCAN attached to a
        # group of 10 sybils on digits sat at a fifth of it, and its own p was below GROUP_MEMBER_P all the same.
        member = (own < GROUP_MEMBER_P) & (stat[inside] >= 0.5 * np.median(stat[inside]))
        p[inside] = np.where(member, np.minimum(own, whole), own)
    return group, closeness, p


def individuality(rounds: Sequence[tuple[Sequence[str], np.ndarray]], client_ids: Sequence[str],
                  directions: np.ndarray, *, neighbours: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """How far what sets each client apart from its nearest clients persists from round to round.

    A client's neighbours are the ``neighbours`` clients nearest in cosine to its accumulated direction
    (:func:`accumulated_directions`). In each round, its deviation is its sketch minus the mean sketch of those of
    its neighbours that took part (at least two); its persistence is the mean cosine between its deviations in
    consecutive rounds. Its individuality is the larger of its own persistence and the median persistence of its
    neighbours: a client counts as without individuality only as far as its look-alikes are too (an honest client
    whose large dataset is sampled anew each round sits near zero on its own; its neighbours do not).

    Parameters
    ----------
    rounds : sequence of (client_ids, sketches (n_r, k))
        Raw sketches, in round order.
    client_ids : sequence of str
        The rows of ``directions``.
    directions : ndarray, shape (n, k)
    neighbours : int >= 2

    Returns
    -------
    individuality : ndarray of float64, shape (n,)
        NaN for a client seen in fewer than two rounds (with neighbours beside it).
    neighbours : ndarray of int, shape (n, m)
        Each client's nearest clients (rows of ``directions``), nearest first.
    """
    neighbours = check_int(neighbours, "neighbours", low=2)
    ids = [str(c) for c in client_ids]
    n = len(ids)
    if n < 3:
        return np.full(n, np.nan), np.zeros((n, 0), dtype=np.int64)
    x = _unit(np.asarray(directions, dtype=np.float64))
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    near = np.argsort(-sim, axis=1)[:, :min(neighbours, n - 1)]
    pos = {c: i for i, c in enumerate(ids)}
    previous: dict[str, np.ndarray] = {}
    cosines: dict[str, list[float]] = {}
    for r_ids, sk in rounds:
        here = {str(c): j for j, c in enumerate(r_ids)}
        s = np.asarray(sk, dtype=np.float64)
        current = {}
        for c, j in here.items():
            if c not in pos:
                continue
            rows = [here[ids[m]] for m in near[pos[c]] if ids[m] in here]
            if len(rows) < 2:
                continue
            current[c] = _unit(s[j] - s[rows].mean(axis=0))
            if c in previous:
                cosines.setdefault(c, []).append(float(previous[c] @ current[c]))
        previous = current
    own = np.array([np.mean(cosines[c]) if c in cosines else np.nan for c in ids])
    return np.where(np.isfinite(own), np.fmax(own, _nanmedian(own[near], axis=1)), np.nan), near


def shared_pool(individuality: np.ndarray, neighbours: np.ndarray, group: np.ndarray, sybil_p: np.ndarray, *,
                k: int, min_group: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Clients whose individuality is within chance, as tail probabilities; and the closeness test kept for them.

    Parameters
    ----------
    individuality, neighbours : ndarray, shapes (n,) and (n, m)
        From :func:`individuality` (NaN: not measured yet).
    group, sybil_p : ndarray, shape (n,)
        From :func:`sybil_groups`.
    k : int
        Sketch dimension: chance persistence has standard deviation ``1 / sqrt(k)``.
    min_group : int
        Fewer clients with individuality than this: no reference, nothing is tested.

    Returns
    -------
    pool_p : ndarray of float64, shape (n,)
        For a client within chance (individuality <= ``POOL_BAND / sqrt(k)``) in a crowd (at least half its nearest
        clients within chance too): the lower-tail probability of its log individuality (floored at
        ``1 / sqrt(k)``) under a normal fitted robustly to that of the clients beyond chance; a member of an HDBSCAN
        group within chance (the median of its measured members) that is itself unusual (below ``GROUP_MEMBER_P``)
        carries the group's evidence, that of its median. 1 elsewhere.
    sybil_p : ndarray of float64, shape (n,)
        ``sybil_p`` where closeness can speak for a pool: clients within chance or not measured yet, and every member
        of a group within chance; 1 elsewhere.
    """
    ind = np.asarray(individuality, dtype=np.float64)
    near = np.asarray(neighbours, dtype=np.int64)
    group, sybil_p = np.asarray(group), np.asarray(sybil_p, dtype=np.float64)
    floor, band = 1.0 / np.sqrt(k), POOL_BAND / np.sqrt(k)
    known = np.isfinite(ind)
    within = known & (ind <= band)
    # A crowd, not a lone client: honest clients whose large datasets are sampled anew each round sat at 0.11 among
    # balanced image clients (2 of 100 flagged) with their nearest clients beyond chance. Sybils that HDBSCAN put in
    # a group with honest clients (100 among 150 on reviews at Dirichlet 0.1) still have each other as neighbours.
    crowd = within & ((within[near].mean(axis=1) >= 0.5) if near.shape[1] else False)
    stat = np.log(np.maximum(np.where(known, ind, 1.0), floor))
    pool_p = np.ones(len(ind))
    kept = np.where(known & ~within, 1.0, sybil_p)  # devices with their own data are alike as a class is
    pooled = []
    for g in np.unique(group[group >= 0]):
        inside = group == g
        if known[inside].any() and np.median(ind[inside & known]) <= band:
            kept[inside] = sybil_p[inside]  # a boosted attacker among the sybils keeps the group's closeness
            pooled.append(inside)
    reference = stat[known & ~within]
    if len(reference) < min_group:
        return pool_p, kept
    pool_p[crowd] = 1.0 - _gaussian_tail(stat[crowd], reference)
    for inside in pooled:
        whole = 1.0 - float(_gaussian_tail(np.array([np.median(stat[inside & known])]), reference)[0])
        carry = inside & crowd & (pool_p < GROUP_MEMBER_P)
        pool_p[carry] = np.minimum(pool_p[carry], whole)
    return pool_p, kept


def _nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` without the warning for an all-NaN slice (its median is NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(a, axis=axis), dtype=np.float64)


def _gaussian_tail(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Upper-tail probability of ``x`` under a normal fitted robustly (median, 1.4826 MAD) to ``reference``."""
    from scipy import stats

    med = float(np.median(reference))
    spread = _MAD * float(np.median(np.abs(reference - med)))
    if not spread > 0:
        spread = float(np.std(reference)) or 1.0
    return np.asarray(stats.norm.sf((x - med) / spread), dtype=np.float64)


def rounds_window(rounds: Sequence[int], window: int | None) -> list[int]:
    """The last ``window`` of the rounds (all of them for None)."""
    rs = sorted(rounds)
    return rs if window is None else rs[-check_int(window, "window", low=1):]


def mean_by_client(per_round: Sequence[tuple[Sequence[str], np.ndarray]]) -> Mapping[str, float]:
    """Mean over rounds of a per-round score, per client (NaN rounds skipped)."""
    tot: dict[str, list[float]] = {}
    for ids, v in per_round:
        for c, x in zip(ids, v):
            if np.isfinite(x):
                tot.setdefault(c, []).append(float(x))
    return {c: float(np.mean(v)) for c, v in tot.items()}


__all__ = ["POOL_BAND", "accumulated_directions", "aggregate_dissent", "consistency", "individuality", "krum_distance",
           "mean_by_client", "norm_deviation", "round_residuals", "rounds_window", "shared_pool", "sybil_groups",
           "trust_dissent"]
