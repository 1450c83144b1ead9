"""Small reference models (an image CNN, a hashed n-gram text classifier), their training loop and safe weight IO.

Only this package and :mod:`forensics.activations` import torch.
"""

from __future__ import annotations

from .hf import check_tokenizer, tokenizer_preprocess
from .image import ImageCNN
from .io import ARCHITECTURES, load_model, load_state_dict_file, save_model
from .text import TextClassifier, hash_ngrams, ngram_bucket, tokenize
from .train import (
    REFERENCE_DEFAULTS,
    accuracy,
    attack_success_rate,
    build_reference_model,
    predict_proba,
    train_ensemble,
    train_model,
    train_reference_model,
)

__all__ = [
    "ARCHITECTURES",
    "REFERENCE_DEFAULTS",
    "ImageCNN",
    "TextClassifier",
    "accuracy",
    "attack_success_rate",
    "build_reference_model",
    "check_tokenizer",
    "hash_ngrams",
    "load_model",
    "load_state_dict_file",
    "ngram_bucket",
    "predict_proba",
    "save_model",
    "tokenize",
    "tokenizer_preprocess",
    "train_ensemble",
    "train_model",
    "train_reference_model",
]
