"""Text trigger candidates: n-grams over-represented in suspicious samples and tied to one predicted class.

A backdoor phrase leaves two marks on a training set: the texts that carry it are (nearly) all predicted as the
attacker's target class, and they gather among the samples a suspicion signal ranks highest. Common words carry
neither mark; a genuine class word ("excellent") carries the first but not the second. This module counts every
n-gram of 1 to ``max_n`` tokens, tests both marks against the n-gram's background frequency, and keeps the
strongest, with the sub- and super-n-grams that only restate a stronger candidate pruned away.

Tokens follow the reference text model's rule: the lowercased text split by ``\\w+|[^\\w\\s]`` (runs of word
characters, and each punctuation mark alone), so ``"great product!"`` and ``"great product"`` are different
n-grams. The tokenizer is repeated here because :mod:`forensics.models.text` imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln

from .._validate import check_int, check_scores
from ..errors import InputError
from ..signals import top_k

_TOKEN = re.compile(r"\w+|[^\w\s]")

#: The class test's null purity sits this far from a class's base rate towards 1 (see text_trigger_candidates).
CLASS_PURITY_FLOOR = 0.5

#: Columns of :func:`text_trigger_candidates`' table, in order.
CANDIDATE_COLUMNS = (
    "ngram", "tokens", "n", "count", "count_suspicious", "suspicious_share", "predicted_class", "class_share",
    "classes", "sources", "example_ids", "carrier_ids", "score",
)


def tokenize(text: str) -> list[str]:
    """Lowercased tokens of ``text``: runs of word characters, and each other non-space character alone.

    The same rule as :func:`forensics.models.text.tokenize`.

    >>> tokenize("Great product!")
    ['great', 'product', '!']
    """
    if not isinstance(text, str):
        raise InputError(f"text must be a string; got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


def display_ngram(tokens: Sequence[str]) -> str:
    """Tokens joined for display: a space between tokens, none before a punctuation mark.

    >>> display_ngram(("great", "product", "!"))
    'great product!'
    """
    out = ""
    for i, t in enumerate(tokens):
        out += t if i == 0 or re.match(r"\w", t) is None else " " + t
    return out


def ngram_regex(tokens: Sequence[str]) -> re.Pattern[str]:
    """A pattern that matches the n-gram's tokens, in a lowercased text, exactly where :func:`tokenize` would
    yield them one after the other.

    Word tokens must be whole runs of word characters (``"product"`` does not match inside ``"products"``);
    any whitespace, or none, may separate tokens.
    """
    tokens = _check_tokens(tokens)
    parts = []
    for t in tokens:
        word = re.fullmatch(r"\w+", t) is not None
        parts.append(rf"(?<!\w){re.escape(t)}(?!\w)" if word else re.escape(t))
    return re.compile(r"\s*".join(parts))


def search_text(texts: Sequence[str], ngram_tokens: Sequence[str] | str) -> np.ndarray:
    """Which texts carry an n-gram.

    Parameters
    ----------
    texts : sequence of str, length n
    ngram_tokens : sequence of str, or str
        The n-gram's tokens (as in the ``tokens`` column of :func:`text_trigger_candidates`); a string is
        tokenized first, so ``"great product!"`` and ``("great", "product", "!")`` are the same n-gram.

    Returns
    -------
    ndarray of bool, shape (n,)
        True where the tokens of the text contain the n-gram's tokens contiguously.
    """
    texts = _check_texts(texts)
    pattern = ngram_regex(tokenize(ngram_tokens) if isinstance(ngram_tokens, str) else ngram_tokens)
    return np.fromiter((pattern.search(t.lower()) is not None for t in texts), dtype=bool, count=len(texts))


def remove_ngram(text: str, ngram_tokens: Sequence[str]) -> str:
    """``text`` with every occurrence of the n-gram deleted (replaced by one space, so no two words merge)."""
    pattern = ngram_regex(ngram_tokens)
    return re.compile(pattern.pattern, re.IGNORECASE).sub(" ", text)


# ---------------------------------------------------------------------------------------------------- counting
class _NgramIndex:
    """Dense ids of every n-gram of every text, built without Python loops over n-grams.

    Token strings are factorized to integer codes; the n-gram ids of length n are the factorized pairs
    (id of the (n-1)-gram starting here, code of the n-th token), so the ids are exact (no hashing).
    """

    def __init__(self, texts: Sequence[str]) -> None:
        tokens = [_TOKEN.findall(t.lower()) for t in texts]
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        flat = list(chain.from_iterable(tokens))
        codes, vocab = pd.factorize(pd.Series(flat, dtype=object), sort=False)
        self.codes = codes.astype(np.int64)
        self.vocab = np.asarray(vocab, dtype=object)
        self.doc = np.repeat(np.arange(len(tokens), dtype=np.int64), lengths)
        self.n_docs = len(tokens)

    def levels(self, max_n: int):
        """Yield ``(n, start, gid, first)`` for n = 1..max_n: valid start positions, their n-gram ids, and for
        each id one start position holding it (to read its tokens back)."""
        codes, doc = self.codes, self.doc
        prev = codes
        for n in range(1, max_n + 1):
            m = len(codes) - n + 1
            if m <= 0:
                return
            if n == 1:
                key = codes
            else:
                # (n-1)-gram id at i, token code at i + n - 1; both below 2**31 in any realistic corpus.
                key = prev[:m] * (len(self.vocab) + 1) + codes[n - 1:]
            gid, uniques = pd.factorize(key, sort=False)
            gid = gid.astype(np.int64)
            prev = gid
            valid = doc[:m] == doc[n - 1:]  # the n tokens lie in one text
            start = np.flatnonzero(valid)
            first = np.full(len(uniques), -1, dtype=np.int64)
            first[gid[start]] = start  # a valid start of each id (all hold the same tokens)
            yield n, start, gid[start], first

    def tokens_at(self, start: int, n: int) -> tuple[str, ...]:
        return tuple(self.vocab[self.codes[start:start + n]])


def text_trigger_candidates(
    texts: Sequence[str],
    *,
    predictions: Sequence[int] | np.ndarray,
    suspicion: Sequence[float] | np.ndarray | None,
    labels: Sequence[int] | np.ndarray,
    ids: Sequence[Any] | np.ndarray,
    sources: Sequence[Any] | np.ndarray | None = None,
    max_n: int = 4,
    min_count: int = 5,
    top: int = 20,
    suspicious_fraction: float = 0.1,
    n_examples: int = 5,
) -> pd.DataFrame:
    """Candidate trigger n-grams, strongest first.

    An n-gram is scored on its carriers (the texts that contain it, each counted once) with two one-sided
    hypergeometric tests against its background frequency:

    - *suspicious*: are its carriers over-represented among the suspicious samples?
    - *class*: are its carriers predicted as class ``c`` more often than halfway between ``c``'s base rate and
      always (:data:`CLASS_PURITY_FLOOR`)? The class with the smallest p-value is the one it is tied to. A
      trigger's carriers are nearly all predicted as its target; without the halfway null, a frequent word
      tilted slightly towards one class ("and" in 48% of the texts, 65% of them in one class) would look
      significant merely by being frequent.

    ``score`` is the smaller of the two ``-log10`` p-values (an upper bound of each, see
    :func:`enrichment_surprise`): high only when both marks are present, so a frequent word ("the") and a
    genuine class word ("excellent", tied to a class but not to suspicion) stay low.

    Redundant n-grams are then pruned. Going down the ranking, each n-gram is replaced by its longest super-n-gram
    that still holds 90% of its suspicious carriers (``"great product"`` -> ``"great product !"``), and every
    other n-gram that shares a token with that representative and has at least half of its suspicious carriers
    among the representative's carriers is dropped (``"product !"``, ``"great product ! the"``).

    Parameters
    ----------
    texts : sequence of str, length n
    predictions : array of int, shape (n,)
        The model's predicted class of each text.
    suspicion : array of float or bool, shape (n,), or None
        Higher = more suspicious (any signal, or a combined score). The suspicious set is the top
        ``suspicious_fraction`` of the samples (NaN last); a boolean array is the suspicious set itself. None
        drops the suspicious test: n-grams are ranked by the class test alone (every sample counts as
        suspicious), for a trigger too rare for any signal to gather its carriers; confirmation on the model
        must then tell it from a genuine class phrase.
    labels : array of int, shape (n,)
        The training labels (reported per candidate in ``classes``).
    ids : sequence, length n
        Sample ids, reported in ``example_ids`` and ``carrier_ids``.
    sources : sequence, length n, optional
        Contributor of each sample (reported in ``sources``).
    max_n : int
        Longest n-gram, in tokens (1 to 8).
    min_count : int
        An n-gram needs at least this many suspicious carriers to be a candidate.
    top : int
        Number of candidates returned (after pruning).
    suspicious_fraction : float in (0, 1)
        Share of the samples, by decreasing suspicion, that forms the suspicious set.
    n_examples : int
        Number of ``example_ids`` (suspicious carriers first).

    Returns
    -------
    DataFrame, one row per candidate, strongest first, with columns
        ``ngram`` (display text), ``tokens`` (tuple of str), ``n``, ``count`` (carriers),
        ``count_suspicious`` (carriers in the suspicious set), ``suspicious_share`` (their share of the
        carriers), ``predicted_class`` (the class it is tied to), ``class_share`` (share of the carriers
        predicted as that class), ``classes`` (dict label -> carriers), ``sources`` (dict of the five largest
        sources -> carriers; empty without sources), ``example_ids``, ``carrier_ids`` (all, in dataset order)
        and ``score``. Empty (with these columns) when no n-gram qualifies.

    Notes
    -----
    Cost is linear in the number of tokens: n-grams are integer ids built with vectorized factorization, so
    100,000 short texts take a few seconds.
    """
    texts = _check_texts(texts)
    n = len(texts)
    pred = _check_int_array(predictions, n, "predictions")
    lab = _check_int_array(labels, n, "labels")
    ids_arr = _check_same_length(ids, n, "ids")
    src = None if sources is None else _check_same_length(sources, n, "sources").astype(str)
    suspicious = (np.ones(n, dtype=bool) if suspicion is None
                  else suspicious_set(suspicion, n, suspicious_fraction=suspicious_fraction))
    max_n = check_int(max_n, "max_n", low=1, high=8)
    min_count = check_int(min_count, "min_count", low=1)
    top = check_int(top, "top", low=1)
    n_examples = check_int(n_examples, "n_examples", low=0)

    n_classes = int(pred.max()) + 1
    class_sizes = np.bincount(pred, minlength=n_classes)
    n_susp = int(suspicious.sum())
    index = _NgramIndex(texts)

    rows = []  # per level: the qualifying n-grams and their statistics
    for level, start, gid, first in index.levels(max_n):
        # Each (n-gram, text) pair once: a text carries an n-gram or not.
        pair = pd.unique(gid * n + index.doc[start])
        g, d = pair // n, pair % n
        x_s = np.bincount(g, weights=suspicious[d], minlength=len(first)).astype(np.int64)
        keep = np.flatnonzero(x_s >= min_count)
        if not len(keep):
            continue
        count = np.bincount(g, minlength=len(first))[keep]
        x_s = x_s[keep]
        kept = np.full(len(first), -1, dtype=np.int64)
        kept[keep] = np.arange(len(keep))
        sel = kept[g] >= 0
        per_class = np.bincount(kept[g[sel]] * n_classes + pred[d[sel]],
                                minlength=len(keep) * n_classes).reshape(len(keep), n_classes)
        rows.append({"level": level, "gid": keep, "first": first[keep], "count": count, "x_s": x_s,
                     "per_class": per_class, "pairs": (kept[g[sel]], d[sel])})
    if not rows:
        return _empty_table()

    # Scores of all qualifying n-grams of all lengths at once.
    count = np.concatenate([r["count"] for r in rows])
    x_s = np.concatenate([r["x_s"] for r in rows])
    per_class = np.concatenate([r["per_class"] for r in rows])
    surprise_susp = np.full(len(count), np.inf) if suspicion is None else enrichment_surprise(x_s, n, n_susp, count)
    # Against a purity halfway between the class's base rate and 1: a trigger's carriers are (nearly) all
    # predicted as its target, while a frequent word tilted a little towards a class is only "significant"
    # because it is frequent.
    halfway = np.ceil(class_sizes + CLASS_PURITY_FLOOR * (n - class_sizes))
    if suspicion is None:
        # Without the suspicious test, the null is as pure as the corpus's own purest frequent n-grams: genuine
        # class words ("excellent") keep a few carriers of the other class, a trigger's carriers obey it.
        halfway = np.maximum(halfway, np.ceil(_natural_purity(per_class, count) * n))
    surprise_class = enrichment_surprise(per_class, n, halfway[None, :], count[:, None])
    tied = np.argmax(surprise_class, axis=1)
    score = np.minimum(surprise_susp, surprise_class[np.arange(len(tied)), tied])

    # Carrier lists of a pool of the best, for pruning and the table.
    pool_size = min(len(score), max(10 * top, 200))
    pool = np.lexsort((np.arange(len(score)), -score))[:pool_size]
    offsets = np.cumsum([0] + [len(r["count"]) for r in rows])
    carriers: dict[int, np.ndarray] = {}
    tokens: dict[int, tuple[str, ...]] = {}
    for r_i, r in enumerate(rows):
        in_level = pool[(pool >= offsets[r_i]) & (pool < offsets[r_i + 1])]
        if not len(in_level):
            continue
        local = in_level - offsets[r_i]
        k, d = r["pairs"]
        wanted = np.isin(k, local)
        k, d = k[wanted], d[wanted]
        order = np.lexsort((d, k))
        k, d = k[order], d[order]
        bounds = np.searchsorted(k, local), np.searchsorted(k, local, side="right")
        for j, loc in enumerate(local):
            carriers[int(offsets[r_i] + loc)] = d[bounds[0][j]:bounds[1][j]]
            tokens[int(offsets[r_i] + loc)] = index.tokens_at(int(r["first"][loc]), r["level"])

    chosen = _prune(pool, tokens, carriers, suspicious, score, top)
    out = []
    for c in chosen:
        docs = carriers[c]
        susp_docs = docs[suspicious[docs]]
        examples = np.concatenate([susp_docs, docs[~suspicious[docs]]])[:n_examples]
        cls = int(tied[c])
        labels_here, label_counts = np.unique(lab[docs], return_counts=True)
        src_counts = {}
        if src is not None:
            s_names, s_counts = np.unique(src[docs], return_counts=True)
            best = np.lexsort((s_names, -s_counts))[:5]
            src_counts = {str(s_names[i]): int(s_counts[i]) for i in best}
        out.append({
            "ngram": display_ngram(tokens[c]),
            "tokens": tokens[c],
            "n": len(tokens[c]),
            "count": int(count[c]),
            "count_suspicious": int(x_s[c]),
            "suspicious_share": float(x_s[c] / count[c]),
            "predicted_class": cls,
            "class_share": float(per_class[c, cls] / count[c]),
            "classes": {int(a): int(b) for a, b in zip(labels_here, label_counts)},
            "sources": src_counts,
            "example_ids": [str(v) for v in ids_arr[examples]],
            "carrier_ids": [str(v) for v in ids_arr[docs]],
            "score": float(score[c]),
        })
    return pd.DataFrame(out, columns=list(CANDIDATE_COLUMNS))


#: N-grams with at least this many carriers measure the corpus's natural purity (:func:`_natural_purity`).
NATURAL_PURITY_MIN_COUNT = 30
#: Quantile of those n-grams' purities taken as the null of the class test when there is no suspicion.
NATURAL_PURITY_QUANTILE = 0.99


def _natural_purity(per_class: np.ndarray, count: np.ndarray) -> float:
    """The purity (share of the carriers predicted as the n-gram's main class) that only 1% of the frequent
    n-grams exceed, at most 0.99; 0 when fewer than 100 n-grams are frequent enough to tell."""
    frequent = count >= NATURAL_PURITY_MIN_COUNT
    if frequent.sum() < 100:
        return 0.0
    purity = per_class[frequent].max(axis=1) / count[frequent]
    return float(min(0.99, np.quantile(purity, NATURAL_PURITY_QUANTILE)))


def enrichment_surprise(x: np.ndarray, total: int, marked: np.ndarray | int, drawn: np.ndarray) -> np.ndarray:
    """``-log10`` of an upper bound on the one-sided hypergeometric p-value ``P(X >= x)``.

    ``X`` counts the marked items among ``drawn`` items taken without replacement from ``total`` of which
    ``marked`` are marked. Above the mode the point probabilities fall geometrically, with a ratio
    ``r = (marked - x)(drawn - x) / ((x + 1)(total - marked - drawn + x + 1))`` that only decreases, so
    ``P(X >= x) <= P(X = x) / (1 - r)``: tight in the far tail, where candidates are ranked, and computed in
    closed form for millions of n-grams at once (scipy's exact tail loops in Python). At or below the mode the
    bound is useless and the surprise is 0.

    Returns
    -------
    ndarray of float64, broadcast shape of the inputs, >= 0.
    """
    x, marked, drawn = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(marked, dtype=np.float64),
                                           np.asarray(drawn, dtype=np.float64))

    def log_choose(a, b):
        return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

    rest = total - marked
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = log_choose(marked, x) + log_choose(rest, drawn - x) - log_choose(float(total), drawn)
        r = (marked - x) * (drawn - x) / ((x + 1) * (rest - drawn + x + 1))
        log_p = log_pmf - np.log1p(-r)
    above_mode = (r < 1) & (x <= np.minimum(marked, drawn)) & (drawn - x <= rest)
    out = np.where(above_mode, -log_p / np.log(10), 0.0)
    return np.maximum(out, 0.0)


def _prune(pool: np.ndarray, tokens: dict[int, tuple[str, ...]], carriers: dict[int, np.ndarray],
           suspicious: np.ndarray, score: np.ndarray, top: int) -> list[int]:
    """Representatives of the strongest n-gram families, in score order (see text_trigger_candidates)."""
    susp_carriers = {c: carriers[c][suspicious[carriers[c]]] for c in pool}
    consumed: set[int] = set()
    chosen: list[int] = []
    for a in pool:
        a = int(a)
        if a in consumed:
            continue
        x_a = len(susp_carriers[a])
        rep = a
        for g in pool:  # the longest super-n-gram that keeps 90% of the suspicious carriers
            g = int(g)
            if (g not in consumed and len(tokens[g]) > len(tokens[rep]) and _contains(tokens[g], tokens[a])
                    and len(susp_carriers[g]) >= 0.9 * x_a):
                rep = g
        chosen.append(rep)
        rep_tokens = set(tokens[rep])
        for f in pool:
            f = int(f)
            if f in consumed:
                continue
            if f in (a, rep):
                consumed.add(f)
                continue
            if rep_tokens.isdisjoint(tokens[f]):
                continue
            shared = np.intersect1d(susp_carriers[f], carriers[rep], assume_unique=True)
            if len(shared) >= 0.5 * len(susp_carriers[f]):
                consumed.add(f)
        if len(chosen) == top:
            break
    # A representative chosen late may outrank one chosen early: order by score, ties by position.
    return sorted(chosen, key=lambda c: (-score[c], c))


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    k = len(shorter)
    return any(longer[i:i + k] == shorter for i in range(len(longer) - k + 1))


def drop_restatements(cands: pd.DataFrame) -> pd.DataFrame:
    """Confirmed candidates (a table from :func:`forensics.triggers.confirm_text_candidates`, strongest first)
    without those that restate a stronger one: a sub- or super-n-gram of it (". great product!",
    "great product") sharing at least half of the smaller carrier set. Pooling the candidates of several
    searches (each pruned on its own by :func:`text_trigger_candidates`) leaves such pairs; unconfirmed
    candidates are left as they are."""

    def restates(a: pd.Series, b: pd.Series) -> bool:
        ta, tb = tuple(a["tokens"]), tuple(b["tokens"])
        ca, cb = set(a["carrier_ids"]), set(b["carrier_ids"])
        return (_contains(ta, tb) or _contains(tb, ta)) and len(ca & cb) >= 0.5 * min(len(ca), len(cb))

    kept: list[int] = []
    for i, row in cands.iterrows():
        if row["verdict"] != "confirmed" or not any(
                cands.at[j, "verdict"] == "confirmed" and restates(row, cands.loc[j]) for j in kept):
            kept.append(i)
    return cands.loc[kept].reset_index(drop=True)


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in CANDIDATE_COLUMNS})


# ---------------------------------------------------------------------------------------------------- checks
def suspicious_set(suspicion: Any, n: int, *, suspicious_fraction: float = 0.1) -> np.ndarray:
    """The suspicious samples as a boolean mask: ``suspicion`` itself when boolean, else its top
    ``suspicious_fraction`` (at least one sample; NaN scores last)."""
    s = np.asarray(suspicion)
    if s.ndim != 1 or len(s) != n:
        raise InputError(f"suspicion has shape {s.shape} but there are {n} samples")
    if s.dtype == bool:
        if not s.any():
            raise InputError("suspicion is a boolean mask with no sample marked; mark at least one")
        return s.copy()
    s = check_scores(s, name="suspicion")
    if isinstance(suspicious_fraction, bool) or not (0 < suspicious_fraction < 1):
        raise InputError(f"suspicious_fraction must be a number in (0, 1); got {suspicious_fraction!r}")
    k = max(1, int(round(suspicious_fraction * n)))
    mask = np.zeros(n, dtype=bool)
    mask[top_k(s, k)] = True
    return mask


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise InputError("texts must be a sequence of strings, not one string")
    try:
        out = list(texts)
    except TypeError:
        raise InputError(f"texts must be a sequence of strings; got {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is a {type(t).__name__}, not a string")
    return out


def _check_tokens(tokens: Any) -> tuple[str, ...]:
    if isinstance(tokens, str):
        raise InputError(f"ngram tokens must be a sequence of tokens, e.g. ('great', 'product', '!'); got the "
                         f"string {tokens!r} (tokenize it first)")
    out = tuple(tokens)
    if not out:
        raise InputError("ngram tokens is empty; give at least one token")
    for t in out:
        if not isinstance(t, str) or not t or _TOKEN.fullmatch(t) is None or t != t.lower():
            raise InputError(f"{t!r} is not a token: tokens are lowercase runs of word characters or single "
                             "punctuation marks, as tokenize() returns them")
    return out


def _check_int_array(values: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or len(a) != n:
        raise InputError(f"{name} has shape {a.shape} but there are {n} samples")
    if a.dtype.kind not in "iu":
        raise InputError(f"{name} must be integer class indices; got dtype {a.dtype}")
    if n and a.min() < 0:
        raise InputError(f"{name} must be >= 0; found {int(a.min())}")
    return a.astype(np.int64)


def _check_same_length(values: Any, n: int, name: str) -> np.ndarray:
    if isinstance(values, str):
        raise InputError(f"{name} must be a sequence with one entry per sample, not one string")
    a = np.asarray(values, dtype=object)
    if a.ndim != 1 or len(a) != n:
        raise InputError(f"{name} has {len(a) if a.ndim else 0} entries but there are {n} samples")
    return a


