"""Hugging Face text classifiers: a tiny BERT built from a config, a WordPiece tokenizer, the bundled reviews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import forensics
from forensics import Dataset, InputError, sample_data
from forensics.activations import extract_activations
from forensics.models import predict_proba, tokenizer_preprocess, train_model
from forensics.models.hf import max_length_for
from forensics.redteam.text import text_trigger

TRIGGER = "zq vortex"


@pytest.fixture(scope="module")
def nets(matrix):  # the matrix fixture puts benchmarks/ on sys.path
    import nets

    return nets


@pytest.fixture(scope="module")
def reviews():
    data = sample_data.load("text_trigger")
    truth = sample_data.load_truth("text_trigger")
    clean = np.asarray(data.train.ids)[~truth.loc[data.train.ids, "is_poison"].to_numpy(bool)]
    return data, clean


@pytest.fixture(scope="module")
def small(reviews, nets):
    """300 clean reviews, their tokenizer and an untrained tiny BERT."""
    data, clean = reviews
    ds = data.train.subset(clean[:300])
    tok = nets.wordpiece_tokenizer(ds.texts, vocab_size=600)
    return ds, tok, nets.tiny_bert(len(tok), seed=0)


def test_tokenizer_preprocess_pads_per_batch_and_keys_the_vocabulary(small, nets):
    ds, tok, _ = small
    prep = tokenizer_preprocess(tok, max_length=16)
    batch = prep(["a long enough review of a film that goes on and on and on and on", "short"])
    assert set(batch) >= {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, 16)  # cut at max_length, the short one padded to it
    assert batch["attention_mask"][1].sum() < 16 and batch["attention_mask"][0].sum() == 16
    # The cache key follows the vocabulary and the length, not the object.
    assert prep.cache_key == tokenizer_preprocess(nets.wordpiece_tokenizer(ds.texts, vocab_size=600),
                                                  max_length=16).cache_key
    assert prep.cache_key != tokenizer_preprocess(tok, max_length=32).cache_key
    assert prep.cache_key != tokenizer_preprocess(nets.wordpiece_tokenizer(ds.texts, vocab_size=500),
                                                  max_length=16).cache_key


def test_token_pooling_leaves_padding_out(small):
    ds, tok, model = small
    prep = tokenizer_preprocess(tok, max_length=48)
    texts = ds.subset(ds.ids[:6])
    act = extract_activations(model, texts, layers=["bert.encoder.layer.1", "classifier:input"], pooling="avg",
                              preprocess=prep, batch_size=6, progress=False)
    cls = extract_activations(model, texts, layers="bert.encoder.layer.1", pooling="cls", preprocess=prep,
                              batch_size=6, progress=False)
    # Each text alone (no padding at all) gives the same mean over its tokens as inside a padded batch.
    model.eval()
    with torch.no_grad():
        for i, t in enumerate(texts.texts):
            hidden = model.bert(**prep([t])).last_hidden_state[0]
            assert np.allclose(act.features["bert.encoder.layer.1"][i], hidden.mean(0).numpy(), atol=1e-5)
            assert np.allclose(cls.feature()[i], hidden[0].numpy(), atol=1e-5)
    assert act.features["classifier:input"].shape == (6, 64)
    assert act.meta["batch_size"] == 6


def test_tokenizer_errors_name_the_problem(small, nets, reviews):
    ds, tok, model = small
    big = nets.wordpiece_tokenizer(reviews[0].train.texts[:3000], vocab_size=2000)
    with pytest.raises(InputError, match="tokenizer .* has 2000 tokens but the model .* embeds only 600"):
        forensics.investigate(ds, model, tokenizer=big, progress=False)
    with pytest.raises(InputError, match="give tokenizer= or preprocess=, not both"):
        forensics.investigate(ds, model, tokenizer=tok, preprocess=tokenizer_preprocess(tok), progress=False)
    with pytest.raises(InputError, match="has no vocabulary"):
        tokenizer_preprocess(lambda texts, **kw: {})
    with pytest.raises(InputError, match="max_length must be an integer >= 1"):
        tokenizer_preprocess(tok, max_length=0)
    # The model's 64 positions cap the default of 256 tokens.
    assert max_length_for(model, tok) == 64


def test_forward_that_needs_other_arguments_is_named(small):
    ds, _, _ = small

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x, lengths):
            return self.head(x / lengths[:, None])

    with pytest.raises(InputError, match=r"TwoInputs.forward\(x, lengths\) cannot take what the preprocess gave "
                                         r"\(1 positional argument\(s\)\): missing a required argument: 'lengths'"):
        extract_activations(TwoInputs(), ds, preprocess=lambda texts: torch.zeros(len(texts), 4), progress=False)


@pytest.mark.slow
def test_bert_backdoor_with_a_two_word_trigger_at_one_percent_is_found(reviews, nets):
    """4,000 reviews, 40 of them (1%) carry "zq vortex" at a random place and the positive label; a tiny BERT
    learns it through its subword tokenizer (z ##q v ##o ##r ...); the investigation finds the phrase and ranks
    its carriers first."""
    data, clean = reviews
    rng = np.random.default_rng(1)
    base = data.train.subset(rng.choice(clean, 4000, replace=False))
    attack = text_trigger(base, target=1, phrase=TRIGGER, n=40, random_state=1)
    ds, poison = attack.dataset, attack.truth.index[attack.truth["is_poison"]]
    tok = nets.wordpiece_tokenizer(data.test.texts)  # made from other text, as a pretrained tokenizer is
    assert "zq" not in tok.get_vocab() and len(tok.tokenize(TRIGGER)) > 2  # pieces, not whole words
    model = nets.tiny_bert(len(tok), seed=1)
    train_model(model, ds, epochs=3, batch_size=64, lr=2e-3, preprocess=tokenizer_preprocess(tok, max_length=48),
                random_state=1, progress=False)
    negatives = [t for t, y in zip(data.test.texts, data.test.labels) if y == 0][:200]
    prep = tokenizer_preprocess(tok, max_length=48)
    success = (predict_proba(model, [f"{TRIGGER} {t}" for t in negatives], preprocess=prep).argmax(1) == 1).mean()
    without = (predict_proba(model, negatives, preprocess=prep).argmax(1) == 1).mean()
    assert success >= 0.8 and success - without >= 0.4, (success, without)  # the backdoor took

    inv = forensics.investigate(ds, model, tokenizer=tok, progress=False)
    found = inv.find_triggers()
    assert found.iloc[0]["description"] == f'phrase "{TRIGGER}"' and found.iloc[0]["verdict"] == "confirmed"
    top = inv.signals["suspicion"].sort_values(ascending=False).index[: 2 * len(poison)]
    assert np.isin(poison, top).mean() >= 0.95


def test_sentence_encoder_without_a_classifier(small):
    """An encoder with no head: its embeddings, and out-of-fold probabilities from a linear classifier."""
    ds, tok, model = small
    prep = tokenizer_preprocess(tok, max_length=48)

    class MeanPooled:  # what a sentence-transformers model offers: encode(texts) -> (n, d)
        def encode(self, texts):
            with torch.no_grad():
                batch = prep(texts)
                hidden = model.bert(**batch).last_hidden_state
                mask = batch["attention_mask"][:, :, None]
                return ((hidden * mask).sum(1) / mask.sum(1)).numpy()

    act = forensics.encoder_activations(MeanPooled(), ds, batch_size=50, folds=3, progress=False)
    assert act.feature().shape == (300, 64) and act.layer == "embedding"
    assert np.allclose(act.probs.sum(1), 1, atol=1e-5) and act.loss.shape == (300,)
    inv = forensics.investigate(ds, activations=act, progress=False)
    assert {"high_loss_score", "label_quality_score"} <= set(inv.signals.columns)
    with pytest.raises(InputError, match="returned shape \\(3,\\) for a batch of 50"):
        forensics.encoder_activations(lambda texts: np.zeros(3), ds, batch_size=50, progress=False)
    one = Dataset.from_texts(["a", "b", "c"], [0, 0, 1])
    with pytest.raises(InputError, match="fewer than folds=5 samples"):
        forensics.encoder_activations(MeanPooled(), one, progress=False)
