"""Hugging Face text classifiers: the preprocess a tokenizer makes, and the check that it fits the model.

Nothing here imports ``transformers``: a tokenizer is any callable that takes a list of texts with ``padding``,
``truncation``, ``max_length`` and ``return_tensors="pt"`` and returns a mapping of tensors (``input_ids``,
``attention_mask``, ...), as every ``transformers`` tokenizer does. The model is then called with those keywords
(``model(**batch)``), and its ``.logits`` are read, so an ``AutoModelForSequenceClassification`` runs as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._validate import check_int
from ..errors import InputError

#: Tokens per text unless said otherwise: the reviews of the bundled data fit, long documents are cut.
DEFAULT_MAX_LENGTH = 256


def _vocab_digest(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab() if callable(getattr(tokenizer, "get_vocab", None)) else None
    if not isinstance(vocab, Mapping) or not vocab:
        raise InputError(
            f"tokenizer ({type(tokenizer).__name__}) has no vocabulary (get_vocab()); give a Hugging Face "
            "tokenizer, e.g. AutoTokenizer.from_pretrained(<your model's folder>)"
        )
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return h.hexdigest()


def tokenizer_preprocess(tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH) -> Callable[[Sequence[str]], dict]:
    """The preprocess of a Hugging Face tokenizer: texts -> ``{"input_ids": ..., "attention_mask": ..., ...}``.

    Each batch is padded to its longest text and cut at ``max_length`` tokens. The keys are passed to the model
    as keywords; the ``attention_mask`` also keeps padding out of ``pooling="avg"`` / ``"max"`` over a token
    sequence in :func:`~forensics.activations.extract_activations`.

    Parameters
    ----------
    tokenizer : a ``transformers`` tokenizer (or any callable with its calling convention and ``get_vocab()``)
    max_length : int
        Longest input in tokens (a BERT takes at most 512).

    Returns
    -------
    callable
        ``preprocess(texts)`` with a ``cache_key`` made of the tokenizer's class, vocabulary, truncation and
        padding sides and ``max_length``, so that the activation cache tells two tokenizers apart.
    """
    if not callable(tokenizer):
        raise InputError(f"tokenizer must be a callable Hugging Face tokenizer; got {type(tokenizer).__name__}")
    max_length = check_int(max_length, "max_length", low=1)
    sides = (getattr(tokenizer, "padding_side", None), getattr(tokenizer, "truncation_side", None))
    key = f"tokenizer:{type(tokenizer).__qualname__}:{_vocab_digest(tokenizer)}:{sides}:{max_length}"

    def preprocess(texts: Sequence[str]) -> dict:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        if not isinstance(enc, Mapping) or not isinstance(enc.get("input_ids"), torch.Tensor):
            raise InputError(
                f"the tokenizer returned {type(enc).__name__} without an input_ids tensor; it must accept "
                "return_tensors='pt' as Hugging Face tokenizers do"
            )
        return dict(enc)

    preprocess.cache_key = key  # type: ignore[attr-defined]
    preprocess.tokenizer = tokenizer  # type: ignore[attr-defined]
    return preprocess


def max_length_for(model: Any, tokenizer: Any = None, default: int = DEFAULT_MAX_LENGTH) -> int:
    """``default``, lowered to what the model's position embeddings and the tokenizer can take."""
    limits = [default]
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 10**6:  # transformers says "no limit" with a huge number
        limits.append(declared)
    return min(limits)


def check_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    """Refuse a tokenizer whose token ids reach past the model's embedding table (another model's tokenizer).

    Raises
    ------
    InputError
        Naming both sizes, and the tokenizer's and the model's names where they have them.
    """
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        return  # not a Hugging Face model: nothing to compare against
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else len(tokenizer.get_vocab())
    if size > emb.num_embeddings:
        tok_name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        model_name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        raise InputError(
            f"the tokenizer ({tok_name!r}) has {size} tokens but the model ({model_name!r}) embeds only "
            f"{emb.num_embeddings}: the tokenizer does not match the model; load both from the same folder "
            "(AutoTokenizer.from_pretrained and AutoModelForSequenceClassification.from_pretrained)"
        )
