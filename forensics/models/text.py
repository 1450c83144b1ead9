"""A fast bag-of-n-grams reference classifier for texts, with hashed features and no vocabulary.

Features
--------
A text is lowercased and split into tokens ``\\w+|[^\\w\\s]`` (words, and each punctuation mark on its own, so
``"great product!"`` gives ``great``, ``product``, ``!``). Every word n-gram with n in ``ngram_range`` (by
default unigrams and bigrams) is joined with single spaces and mapped to a bucket::

    bucket = int.from_bytes(blake2b(ngram.encode("utf-8"), digest_size=8).digest(), "little") % n_buckets

The hash is stable across processes and machines (unlike Python's ``hash()``), so a saved model needs no
vocabulary file and a given phrase always lands in the same buckets.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._validate import check_int
from ..errors import InputError
from ._init import reset_affine

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercased tokens of ``text``: runs of word characters, and each other non-space character alone.

    >>> tokenize("Great product!")
    ['great', 'product', '!']
    """
    if not isinstance(text, str):
        raise InputError(f"text must be a string; got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


# Cached: the same n-grams recur in every epoch; the bound keeps memory at a few tens of MB.
@functools.lru_cache(maxsize=2**18)
def ngram_bucket(ngram: str, n_buckets: int) -> int:
    """Bucket of one n-gram (its tokens joined by single spaces): blake2b-64 of its UTF-8 bytes mod n_buckets."""
    digest = hashlib.blake2b(ngram.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_buckets


def hash_ngrams(tokens: Sequence[str], *, n_buckets: int, ngram_range: tuple[int, int] = (1, 2)) -> list[int]:
    """Buckets of all n-grams of ``tokens`` with ``ngram_range[0] <= n <= ngram_range[1]``, n-gram by n-gram."""
    lo, hi = ngram_range
    out: list[int] = []
    for n in range(lo, hi + 1):
        out.extend(ngram_bucket(" ".join(tokens[i:i + n]), n_buckets) for i in range(len(tokens) - n + 1))
    return out


class TextClassifier(nn.Module):
    """Hashed n-gram embeddings summed per text, one hidden layer, a linear head.

    Layers, in order: ``embedding`` (``nn.EmbeddingBag`` with ``mode="sum"``: a sum, not a mean, so a short
    trigger phrase is not diluted in a long text) -> ``fc1`` (the penultimate representation) -> ``relu1``
    -> ``head`` (the logits).

    Parameters
    ----------
    n_classes : int
        Number of output classes (at least 2).
    n_buckets : int
        Number of hash buckets (rows of the embedding table).
    dim : int
        Embedding width.
    hidden : int
        Width of ``fc1``.
    ngram_range : (int, int)
        Smallest and largest n-gram length.

    Attributes
    ----------
    config : dict
        JSON-serializable constructor arguments: ``TextClassifier(**model.config)`` rebuilds the architecture.

    Notes
    -----
    The default 2**15 buckets x 32 dimensions in float32 keep the weights at about 4 MB.
    """

    def __init__(
        self,
        n_classes: int,
        *,
        n_buckets: int = 2**15,
        dim: int = 32,
        hidden: int = 64,
        ngram_range: tuple[int, int] | list[int] = (1, 2),
    ) -> None:
        super().__init__()
        check_int(n_classes, "n_classes", low=2)
        check_int(n_buckets, "n_buckets", low=2)
        check_int(dim, "dim", low=1)
        check_int(hidden, "hidden", low=1)
        if len(ngram_range) != 2:
            raise InputError(f"ngram_range must be (min_n, max_n); got {ngram_range!r}")
        lo, hi = (check_int(v, "ngram_range", low=1) for v in ngram_range)
        if lo > hi:
            raise InputError(f"ngram_range must be (min_n, max_n) with min_n <= max_n; got {ngram_range!r}")
        self.config: dict[str, Any] = {
            "n_classes": int(n_classes),
            "n_buckets": int(n_buckets),
            "dim": int(dim),
            "hidden": int(hidden),
            "ngram_range": [lo, hi],
        }
        self.embedding = nn.EmbeddingBag(n_buckets, dim, mode="sum")
        self.fc1 = nn.Linear(dim, hidden)
        self.relu1 = nn.ReLU()
        self.head = nn.Linear(hidden, n_classes)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Zero the embedding table; draw ``fc1`` and ``head`` from ``generator``, or from torch's global one."""
        # The table starts at zero (fc1 and head break the symmetry): an n-gram never seen in training, such as a
        # new phrase inserted at test time, then adds nothing beyond the buckets it shares with trained n-grams,
        # and the sum over a long text does not start as noise that grows with its length.
        nn.init.zeros_(self.embedding.weight)
        reset_affine(self.fc1, generator)
        reset_affine(self.head, generator)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, n_classes).

        Parameters
        ----------
        tokens : LongTensor, shape (total,)
            Bucket ids of all texts of the batch, concatenated.
        offsets : LongTensor, shape (batch,)
            Start of each text in ``tokens``.
        """
        return self.head(self.relu1(self.fc1(self.embedding(tokens, offsets))))

    def preprocess(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input ``(tokens, offsets)`` from a sequence of texts (see the module docstring for the hashing).

        Returns
        -------
        tokens : LongTensor, shape (total,)
        offsets : LongTensor, shape (len(texts),)
        """
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of strings, not one string")
        n_buckets = self.config["n_buckets"]
        ngram_range = tuple(self.config["ngram_range"])
        ids: list[int] = []
        offsets: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"texts[{i}] is a {type(text).__name__}, not a string")
            offsets.append(len(ids))
            ids.extend(hash_ngrams(_TOKEN.findall(text.lower()), n_buckets=n_buckets, ngram_range=ngram_range))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)
