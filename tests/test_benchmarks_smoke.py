"""The quality benchmark's metric tables on a tiny planted scenario, the attack matrix's draws and tables, and the
store's scale benchmark on a few hundred rows."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest


def _results(q, n_poison: int = 2, n: int = 10):
    """Poison at rows 0..n_poison-1; the combined score ranks it first, ART SS ranks it last."""
    rank = np.arange(n, 0, -1).astype(float)  # row 0 highest
    return {
        "combined": q.MethodResult(scores=rank, flags=rank > n - n_poison),
        "signals_only": q.MethodResult(scores=-rank, flags=np.zeros(n, bool)),  # before triggers: ranked last
        "art_ac_smaller": q.MethodResult(flags=np.arange(n) % 2 == 0, scores=(np.arange(n) % 2 == 0).astype(float)),
        "art_ac_relative-size": q.MethodResult(error="ValueError: The truth value of an empty array is ambiguous"),
        "art_ss": q.MethodResult(scores=-rank, flags=np.zeros(n, bool)),
        "cleanlab_oof": q.MethodResult(scores=np.r_[np.inf, rank[1:]], flags=np.zeros(n, bool)),
        "cleanlab_model": q.MethodResult(scores=np.zeros(n), flags=np.zeros(n, bool)),
        "loss": q.MethodResult(scores=rank),
        "spectral": q.MethodResult(scores=rank),
    }


def test_metric_table_on_a_planted_ranking(quality):
    y = np.zeros(10, bool)
    y[:2] = True
    t = quality.metric_table(_results(quality), y).set_index("method")
    assert t.loc["combined", "auroc"] == 1.0 and t.loc["combined", "recall_at_2x"] == 1.0
    assert t.loc["combined", "precision_at_2x"] == 0.5  # 2 poison in a budget of 4
    assert (t.loc["combined", "elimination"], t.loc["combined", "sacrifice"]) == (1.0, 0.0)
    assert t.loc["art_ss", "auroc"] == 0.0 and t.loc["art_ss", "recall_at_2x"] == 0.0
    # every even row flagged: poison row 0 of rows 0, 1; clean rows 2, 4, 6, 8 of 8
    assert (t.loc["art_ac_smaller", "elimination"], t.loc["art_ac_smaller", "sacrifice"]) == (0.5, 0.5)
    # +inf ranks above every finite score
    assert t.loc["cleanlab_oof", "recall_at_2x"] == 1.0
    # a crash is a result: its row stays, with the error and no metrics
    crash = t.loc["art_ac_relative-size"]
    assert crash["error"].startswith("ValueError") and np.isnan(crash["auroc"])
    best = quality.best_anchor(t.reset_index())
    assert best["method"] == "cleanlab_oof"


def test_markdown_tables_name_crashes_and_the_clean_control(quality):
    y = np.zeros(10, bool)
    y[:2] = True
    poisoned = quality.metric_table(_results(quality), y)
    clean = quality.metric_table(_results(quality), np.zeros(10, bool))
    tables = {"patch_5": poisoned, "clean": clean}
    summary = quality.summary_markdown(tables)
    assert "| patch_5 | 2 | 1.00 (1.000) | 0.00 (0.000) | 1.00 / 0.000 | 1.00 (1.000) cleanlab (OOF) |" in summary
    assert "| clean | 0 | flags 20.0% | flags 0.0% | 20.00% of the data |" in summary
    flags = quality.flags_markdown(tables)
    assert "crash: ValueError" in flags and "| clean | 20.00% | 50.00% |" in flags
    assert "| patch_5 | 1.00 (1.000) |" in quality.signals_markdown(tables, ["spectral"])
    targets = quality.targets_markdown(tables)
    assert "| patch_5 | >= 0.95 | 1.000 ok |" in targets and "20.00% SHORT" in targets


def test_matrix_draws_each_family_from_its_ranges_and_repeats_itself(matrix):
    for seed in (0, 1, 100):
        for family in matrix.FAMILIES:
            cell = matrix.draw(family, seed)
            assert cell.params == matrix.draw(family, seed).params and cell.name == f"{family}-seed{seed}"
            p = cell.params
            if "rate" in p and family not in ("flips", "pair_flip", "clean_label"):
                assert 0.003 <= p["rate"] <= 0.10
            if family == "patch":
                assert 1 <= p["size"] <= 5 and (p["value"] == 255 or 16 <= p["value"] <= 96)
            if family == "blend":
                assert 0.05 <= p["alpha"] <= 0.2
            if family == "flips":
                assert 0.02 <= p["rate"] <= 0.2
            if family == "pair_flip":
                assert 0.1 <= p["rate"] <= 0.4 and p["from_class"] != p["to_class"]
            if family == "text":
                assert 1 <= len(p["phrase"].split()) <= 4
    # Different seeds draw different attacks.
    assert matrix.draw("patch", 0).params != matrix.draw("patch", 1).params


def test_matrix_family_table_counts_only_attacks_that_took(matrix):
    def rows(seed, asr, combined, best):
        base = {"family": "blend", "seed": seed, "n_poison": 50, "attack_success": asr, "auroc": 0.9,
                "params": "{}", "confirmed": ""}
        methods = {"combined": combined, "signals_only": combined - 0.1, "spectral": best,
                   **{a: 0.5 for a in matrix.q.ANCHORS}}
        return [{**base, "method": m, "recall_at_2x": r} for m, r in methods.items()]

    table = pd.DataFrame(rows(0, 0.95, 0.9, 1.0) + rows(1, 0.2, 0.1, 0.2) + rows(2, 0.99, 1.0, 0.8))
    out = matrix.family_table(table).set_index("family").loc["blend"]
    assert (out["cells"], out["took"]) == (3, 2)
    assert out["after find_triggers: median"] == 0.95 and out["worst "] == 0.9
    assert out["worst gap"] == pytest.approx(-0.1) and out["gap to best signal: median"] == pytest.approx(0.05)


def test_fusion_lab_compares_fusions_on_cached_cells(fusion_lab, tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 10, n)
    poison = np.zeros(n, dtype=bool)
    poison[:40] = True

    def cell(name, is_poison):
        table = pd.DataFrame({
            "high_loss_score": np.where(is_poison, 12.0, rng.exponential(0.2, n)),  # the model gives them ~1e-5
            "spectral_score": rng.exponential(1.0, n),
            "duplicates_score": np.zeros(n),
            "knn_outlier_score": np.where(is_poison, 0.0, rng.normal(size=n)),  # context only: never counted
            "suspicion": rng.random(n), "is_poison": is_poison, "label": labels, "combined": rng.random(n),
            "trigger_score": np.zeros(n),  # no trigger confirmed: not a signal of the cell
        })
        (tmp_path / name).mkdir()
        table.to_parquet(tmp_path / name / "signals.parquet")
        return fusion_lab.Cell(tmp_path / name, tmp_path, refresh=[])

    attacked = cell("flips-seed0", poison)
    assert attacked.signals == ["high_loss", "spectral", "duplicates"]
    row = fusion_lab.compare(attacked)
    assert row["best signal"] == "1.00 high_loss"
    assert row["shipped"] == "+0.00 (1.00)"  # the one signal that sees them is not drowned
    clean = fusion_lab.compare(cell("clean-seed0", np.zeros(n, dtype=bool)))
    assert clean["shipped"].endswith("% flagged") and float(clean["shipped"].split("%")[0]) <= 1.0
    table = fusion_lab.summary(pd.DataFrame([row, clean]).fillna(""))
    shipped = table.set_index("fusion").loc["shipped"]
    assert shipped["worst gap"] == "+0.00" and shipped["cells below -0.02"] == "0 of 1"


def test_own_models_speed_table_measures_both_loops(matrix, capsys):
    import own_models

    assert own_models.main(["speed", "--n", "96", "--batch", "32"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 96 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["96", "32", "cpu"] and float(cells[5]) > 0  # the ratio of the two loops' times
    assert cells[7] == "0 MiB" and cells[8] == "0.4 MiB"  # 96 x (512 + 3 x 10 + 2) float32 values; 32 images
    assert "`python benchmarks/own_models.py speed --n 96 --batch 32`" in out


def test_scale_augments_the_bundled_images_with_their_ground_truth(scale, tmp_path):
    from forensics import sample_data

    images, labels, is_poison = scale._load(30_000, tmp_path)  # more than the 12,000 originals: drawn again
    assert isinstance(images, np.memmap) and images.shape == (30_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == is_poison.shape == (30_000,)
    truth = sample_data.load_truth("image_backdoor")
    share = truth["is_poison"].mean()
    assert abs(is_poison.mean() - share) < 0.01  # the planted share, drawn with the images
    again = scale._load(30_000, tmp_path)  # read back, not rebuilt
    np.testing.assert_array_equal(again[0][:100], images[:100])
    np.testing.assert_array_equal(again[2], is_poison)


def test_scale_map_ranking_puts_small_far_clusters_first(scale):
    from types import SimpleNamespace

    table = pd.DataFrame({"is_small": [False, True, True, False], "distance_to_label_bulk": [np.nan, 0.5, 4.0, 1.0]},
                         index=pd.Index([-1, 0, 1, 2], name="cluster"))
    m = SimpleNamespace(table=table, clusters=np.array([-1, 0, 1, 2, 1, 0]))
    np.testing.assert_array_equal(scale._map_ranking(m), [0.0, 1.5, 5.0, 0.5, 5.0, 1.5])


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_the_scale_benchmark_stages_run_on_a_small_investigation(scale_store, tmp_path):
    folder = tmp_path / "inv"
    rows = [row for stage in scale_store.STAGES for row in scale_store._run_stage(stage, folder, 2_000, 4)]
    by_stage = {row["stage"]: row for row in rows}
    assert all(row["seconds"] >= 0 and row["peak_mb"] > 0 for row in rows)
    # The flag + save wrote the tables again, not the features.
    written = by_stage["flag 1,000 + save"]["note"]
    assert "samples.2.parquet" in written and "features" not in written
    assert by_stage["open to read the review: Investigation.read_review"]["note"] == "1,000 decided"
    assert by_stage["open to read the review: load, then .review"]["note"] == "1,000 decided"
    assert {f"export 1,000 marked rows, {fmt}" for fmt in ("csv", "parquet", "json")} <= set(by_stage)
