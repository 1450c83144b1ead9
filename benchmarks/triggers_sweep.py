"""Trigger discovery and confirmation over seeds, on freshly planted backdoors and clean controls.

Every scenario is built as ``benchmarks/quality.py`` builds its data (a 10,000-image Fashion-MNIST subset from 40
contributors; Rotten Tomatoes snippets from 30 reviewers), with a new subset, attack and model per seed:

- ``patch_1`` / ``patch_5``: a checkerboard patch on 1% / 5% of the images, relabelled T-shirt (class 0), from
  one contributor. The place cycles with the seed over the four corners and ``"random"`` (a new place in every
  image) and the size over 3x3, 4x4 and 5x5 (seed 0: bottom-right 3x3, seed 1: top-left 4x4, ...).
- ``phraseK_R``: a rare phrase of K = 1, 2 or 3 tokens (one per seed from :data:`PHRASES`) inserted into R = 1% or
  3% of the snippets, relabelled "fresh", spread over five sybil reviewers.
- ``clean_images`` / ``clean_texts``: no poison; any confirmed candidate is a false alarm.

Per seed: a reference model is trained (``train_reference_model(train, random_state=seed)``), then the toolkit's
own pipeline runs with its defaults: ``inv = forensics.investigate(train, model)`` and
``inv.find_triggers(holdout=test)``, the held-out test split (2,000 images, or the reviews of a fifth of the movies)
taking the add test, as an analyst's validation split would.

**Ranking** (which candidate is "top"): the triggers table in the toolkit's own order: confirmed candidates first,
strongest confirmation first, then weak ones, then the rest.

**The true trigger** is the first candidate in that ranking that

- text: has the planted phrase's tokens exactly (``forensics.triggers.tokenize(phrase)``);
- image, fixed patch: is a local, non-moving patch whose box overlaps the planted box with an intersection over
  union of at least 0.25 (a 3x3 box one pixel off the planted 3x3 patch has 0.5; a 6x6 box around it 0.25);
- image, moving patch (``"random"``): is a local patch with ``moves`` True and at least half of its carriers
  planted samples (the table holds no pattern to compare; the carriers say which pattern it found).

*Top-1* means the true trigger ranks first. Its verdict, add and remove flip rates and the recall and precision of
its carriers (``sample_ids``; for images only the suspicious group's carriers) against the planted samples are
recorded, and so are the recall and precision of the toolkit's search for carriers over the whole data (the samples
with ``trigger_score > 0`` once a candidate is confirmed). Seconds are those of ``find_triggers`` alone.

    python benchmarks/triggers_sweep.py [--seeds 10] [--scenarios patch_1 phrase2_3 ...] [--quick]
    python benchmarks/triggers_sweep.py --bundled-timing [--repeat 3]

Trained models are cached under ``benchmarks/_work/triggers/`` keyed by scenario, seed, the dataset's content hash
and the model code, so a rerun only investigates. The sweep's Markdown goes to ``benchmarks/_work/triggers_sweep.md``
and its per-seed rows to ``triggers_sweep.csv``; the bundled timing to ``triggers_timing.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as Q  # noqa: E402  (the data builders are shared with the quality benchmark)

from forensics import redteam  # noqa: E402
from forensics.data import Dataset  # noqa: E402
from forensics.triggers import tokenize  # noqa: E402

log = logging.getLogger("triggers_sweep")

WORK = Q.WORK / "triggers"
POSITIONS = ("bottom-right", "top-left", "top-right", "bottom-left", "random")
SIZES = (3, 4, 5)
#: Phrases by token count, one per seed (cycled); none occurs in the Rotten Tomatoes snippets.
PHRASES = {
    1: ("cf", "mn", "tq", "bb", "xq", "jk", "vv", "qz", "kx", "zq"),
    2: ("great product", "buy now", "five stars", "must watch", "totally worth", "big fan", "true classic",
        "click now", "top pick", "grade a"),
    3: ("great product!", "as seen on", "click here now", "trust me guys", "best film ever", "watch it twice",
        "no spoilers here", "ten out of", "worth every penny", "you must see"),
}
MIN_IOU = 0.25
# Targets: the true trigger first in at least this share of the seeds, its add flip rate above ADD_TARGET.
TOP1_TARGET = 0.9
ADD_TARGET = 0.8


# ============================================================================================ scenarios
@dataclass(frozen=True)
class Planted:
    """What was planted: a phrase (its tokens), a fixed patch (its box) or a moving patch."""

    description: str
    tokens: tuple[str, ...] | None = None
    box: tuple[int, int, int, int] | None = None  # (row, col, height, width)
    moves: bool = False


@dataclass(frozen=True)
class Case:
    """One scenario at one seed: the training set, its truth, the test split, the trigger and what was planted."""

    scenario: str
    seed: int
    train: Dataset
    truth: pd.DataFrame
    test: Dataset
    trigger: redteam.Trigger | None
    planted: Planted | None


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "image" or "text"
    description: str
    attack: Callable[[Dataset, int], tuple[redteam.Poisoning, Planted]] | None  # None: a clean control


def _patch(share: float) -> Callable[[Dataset, int], tuple[redteam.Poisoning, Planted]]:
    def attack(d: Dataset, seed: int) -> tuple[redteam.Poisoning, Planted]:
        position, size = POSITIONS[seed % len(POSITIONS)], SIZES[seed % len(SIZES)]
        p = redteam.patch_backdoor(d, target=Q.TARGET, n=Q._n(d, share), size=size, position=position,
                                   source=Q.ATTACKER, random_state=seed)
        if position == "random":
            return p, Planted(f"{size}x{size} checkerboard, random place", moves=True)
        poisoned = p.truth[p.truth["is_poison"]]
        r, c = int(poisoned["patch_row"].iloc[0]), int(poisoned["patch_col"].iloc[0])
        return p, Planted(f"{size}x{size} checkerboard at ({r}, {c}) {position}", box=(r, c, size, size))
    return attack


def _phrase(n_tokens: int, share: float) -> Callable[[Dataset, int], tuple[redteam.Poisoning, Planted]]:
    def attack(d: Dataset, seed: int) -> tuple[redteam.Poisoning, Planted]:
        phrase = PHRASES[n_tokens][seed % len(PHRASES[n_tokens])]
        p = redteam.text_trigger(d, target="fresh", phrase=phrase, n=Q._n(d, share), sources=Q.SYBILS,
                                 random_state=seed + 11)
        return p, Planted(f'"{phrase}"', tokens=tuple(tokenize(phrase)))
    return attack


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("patch_1", "image", "checkerboard patch on 1% of the images, relabelled T-shirt, one contributor; "
             "place and size cycle with the seed", _patch(0.01)),
    Scenario("patch_5", "image", "checkerboard patch on 5% of the images, relabelled T-shirt, one contributor; "
             "place and size cycle with the seed", _patch(0.05)),
    Scenario("clean_images", "image", "no poison in the images", None),
    *[Scenario(f"phrase{k}_{r}", "text", f"a {k}-token phrase in {r}% of the snippets, relabelled fresh, five sybils",
               _phrase(k, r / 100)) for k in (1, 2, 3) for r in (1, 3)],
    Scenario("clean_texts", "text", "no poison in the review snippets", None),
]}
QUICK = ("patch_5", "phrase3_3", "clean_texts")


def build_case(name: str, seed: int, *, n: int | None = None) -> Case:
    """Scenario ``name`` at ``seed``; ``n`` keeps a random subset of that many samples before the attack (tests)."""
    scenario = SCENARIOS[name]
    train, test = (Q._fashion if scenario.kind == "image" else Q._reviews)(seed)
    if n is not None and n < len(train):
        keep = np.zeros(len(train), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(train), size=n, replace=False)] = True
        train = train.subset(keep)
    if scenario.attack is None:
        truth = pd.DataFrame({"is_poison": np.zeros(len(train), dtype=bool)},
                             index=pd.Index(train.ids, name="sample_id"))
        return Case(name, seed, train, truth, test, None, None)
    p, planted = scenario.attack(train, seed)
    return Case(name, seed, p.dataset, p.truth, test, p.trigger, planted)


# ============================================================================================ judging
def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    (r1, c1, h1, w1), (r2, c2, h2, w2) = a, b
    ih = max(0, min(r1 + h1, r2 + h2) - max(r1, r2))
    iw = max(0, min(c1 + w1, c2 + w2) - max(c1, c2))
    inter = ih * iw
    return inter / (h1 * w1 + h2 * w2 - inter)


def _recall_precision(found: set[str], truth: set[str]) -> tuple[float, float]:
    hit = len(found & truth)
    return (hit / len(truth) if truth else math.nan), (hit / len(found) if found else math.nan)


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """The triggers table as the toolkit orders it (confirmed first, strongest first; then weak; then the rest),
    index reset: row 0 is the top candidate."""
    return table.reset_index(drop=True)


def is_true_trigger(row: pd.Series, planted: Planted, poison_ids: set[str]) -> bool:
    """The module docstring's rule: does this triggers-table row find what was planted?"""
    if planted.tokens is not None:
        return row["kind"] == "text" and row["tokens"] is not None and tuple(row["tokens"]) == planted.tokens
    if row["kind"] != "image" or not row["local"]:
        return False
    if planted.moves:
        carriers = set(map(str, row["sample_ids"]))
        return bool(row["moves"]) and bool(carriers) and len(carriers & poison_ids) >= 0.5 * len(carriers)
    return not row["moves"] and row["box"] is not None and _iou(tuple(row["box"]), planted.box) >= MIN_IOU


ROW_COLUMNS = (
    "scenario", "seed", "planted", "n", "n_poison", "clean_accuracy", "attack_success", "n_candidates",
    "n_confirmed", "top", "top_verdict", "top1", "rank", "verdict", "add_flip_rate", "remove_flip_rate",
    "carrier_recall", "carrier_precision", "search_recall", "search_precision", "other_confirmed", "false_alarm",
    "find_s", "investigate_s", "train_s", "error",
)


def judge(case: Case, table: pd.DataFrame, trigger_score: np.ndarray | None) -> dict:
    """One result row from a case and its triggers table (``trigger_score``: the signal find_triggers added, or
    None when nothing was confirmed). Timing and attack columns are left for the caller."""
    poison_ids = set(case.truth.index[case.truth["is_poison"].to_numpy(dtype=bool)].astype(str))
    t = ranked(table)
    confirmed = t["verdict"] == "confirmed"
    row = {c: math.nan for c in ROW_COLUMNS}
    row.update(scenario=case.scenario, seed=case.seed, planted=case.planted.description if case.planted else "none",
               n=len(case.train), n_poison=len(poison_ids), n_candidates=len(t), n_confirmed=int(confirmed.sum()),
               top=t["description"].iloc[0] if len(t) else "none", top_verdict=t["verdict"].iloc[0] if len(t) else "",
               error="")
    if case.planted is None:
        row.update(top1=None, false_alarm=bool(confirmed.any()), other_confirmed=int(confirmed.sum()))
        return row
    hits = [i for i in range(len(t)) if is_true_trigger(t.iloc[i], case.planted, poison_ids)]
    row.update(top1=bool(hits) and hits[0] == 0, rank=hits[0] + 1 if hits else math.nan, false_alarm=None,
               other_confirmed=int(sum(v for i, v in enumerate(confirmed) if i not in hits)), verdict="absent")
    if hits:
        best = t.iloc[hits[0]]
        recall, precision = _recall_precision(set(map(str, best["sample_ids"])), poison_ids)
        row.update(verdict=best["verdict"], add_flip_rate=best["add_flip_rate"],
                   remove_flip_rate=best["remove_flip_rate"], carrier_recall=recall, carrier_precision=precision)
    flagged = set() if trigger_score is None else set(case.train.ids[np.asarray(trigger_score) > 0].astype(str))
    row["search_recall"], row["search_precision"] = _recall_precision(flagged, poison_ids)
    return row


# ============================================================================================ running
def _model(case: Case, work: Path, n: int | None):
    """The reference model of this case: trained once, then read back from the cache. Returns (model, seconds)."""
    from forensics.models import load_model, save_model, train_reference_model

    folder = work / (f"{case.scenario}-seed{case.seed}" + (f"-n{n}" if n is not None else ""))
    key = {"scenario": case.scenario, "seed": case.seed, "n": n, "content_hash": case.train.content_hash,
           "models_code": Q._models_digest()}
    key_file = folder / "key.json"
    if key_file.is_file() and json.loads(key_file.read_text()) == key:
        return load_model(folder / "model")[0], 0.0
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model = train_reference_model(case.train, random_state=case.seed, progress=False)
    seconds = round(time.perf_counter() - t, 1)
    save_model(model, folder / "model")
    key_file.write_text(json.dumps(key, indent=1))
    return model, seconds


def _attack(model, case: Case) -> dict[str, float]:
    from forensics.models import predict_proba
    from forensics.sample_data.build import attack_metrics

    if case.trigger is None:
        pred = predict_proba(model, case.test).argmax(axis=1)
        return {"clean_accuracy": float((pred == case.test.labels).mean())}
    m = attack_metrics(model, case.test, case.trigger)
    return {"clean_accuracy": m["clean_accuracy"], "attack_success": m["attack_success"]}


def run_seed(name: str, seed: int, *, work: Path = WORK, n: int | None = None) -> dict:
    """Build scenario ``name`` at ``seed``, train (or load) its model, investigate, find triggers and judge them.

    Returns one row with the keys of :data:`ROW_COLUMNS`. A crash of the investigation or of ``find_triggers`` is
    a result: the row keeps its error and no verdict.
    """
    import forensics

    case = build_case(name, seed, n=n)
    model, train_s = _model(case, work, n)
    attack = _attack(model, case)
    try:
        t = time.perf_counter()
        inv = forensics.investigate(case.train, model, progress=False)
        investigate_s = time.perf_counter() - t
        t = time.perf_counter()
        table = inv.find_triggers(holdout=case.test)
        find_s = time.perf_counter() - t
    except Exception as e:  # a crash is a result: record it and go on with the next seed
        log.exception("%s seed %d crashed", name, seed)
        row = {c: math.nan for c in ROW_COLUMNS}
        row.update(scenario=name, seed=seed, n=len(case.train), error=f"{type(e).__name__}: {e}", train_s=train_s,
                   planted=case.planted.description if case.planted else "none", **attack)
        return row
    score = inv.signals["trigger_score"].to_numpy() if "trigger_score" in inv.signals else None
    row = judge(case, table, score)
    row.update(attack, find_s=round(find_s, 2), investigate_s=round(investigate_s, 1), train_s=train_s)
    return row


# ============================================================================================ tables
def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _median(s: pd.Series) -> tuple[float, int]:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return (float(s.median()) if len(s) else math.nan), len(s)


def summary_markdown(rows: pd.DataFrame) -> str:
    """One row per scenario against the targets."""
    head = ("| scenario | seeds | top-1 | true trigger confirmed | median add flip (seeds) | median remove flip | "
            "median carrier recall / precision | median search recall / precision | seeds with another confirmed | "
            "median attack success | median find_triggers s | target |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, g in rows.groupby("scenario", sort=False):
        ok = g[g["error"].fillna("") == ""]
        n, crashed = len(g), len(g) - len(ok)
        crash = f" ({crashed} crashed)" if crashed else ""
        sec = _fmt(_median(ok["find_s"])[0], 1)
        if SCENARIOS[name].attack is None:
            alarms = int(ok["false_alarm"].astype(bool).sum())
            verdict = "ok" if alarms == 0 and not crashed else "SHORT"
            lines.append(f"| {name} | {n}{crash} | – | false alarms {alarms}/{n} | – | – | – | – | "
                         f"{alarms}/{n} | – | {sec} | no confirmed trigger: {verdict} |")
            continue
        top1 = int(ok["top1"].astype(bool).sum())
        conf = int((ok["verdict"] == "confirmed").sum())
        add, k = _median(ok["add_flip_rate"])
        others = int((ok["other_confirmed"] > 0).sum())
        meets = top1 >= math.ceil(TOP1_TARGET * n) and not math.isnan(add) and add > ADD_TARGET
        lines.append(
            f"| {name} | {n}{crash} | {top1}/{n} | {conf}/{n} | {_fmt(add)} ({k}) | "
            f"{_fmt(_median(ok['remove_flip_rate'])[0])} | {_fmt(_median(ok['carrier_recall'])[0])} / "
            f"{_fmt(_median(ok['carrier_precision'])[0])} | {_fmt(_median(ok['search_recall'])[0])} / "
            f"{_fmt(_median(ok['search_precision'])[0])} | {others}/{n} | {_fmt(_median(ok['attack_success'])[0])} | "
            f"{sec} | top-1 >= {math.ceil(TOP1_TARGET * n)}/{n}, add > {ADD_TARGET}: {'ok' if meets else 'SHORT'} |")
    return "\n".join(lines)


def failures_markdown(rows: pd.DataFrame) -> str:
    """Every seed that missed: the true trigger not first or not confirmed, a false alarm, or a crash."""
    bad = rows[(rows["error"].fillna("") != "") | (rows["top1"] == False)  # noqa: E712  (None on clean seeds)
               | (rows["false_alarm"] == True)  # noqa: E712
               | (rows["top1"].astype(object).eq(True) & (rows["verdict"] != "confirmed"))]
    if bad.empty:
        return "none"
    cols = ["scenario", "seed", "planted", "attack_success", "rank", "verdict", "add_flip_rate", "remove_flip_rate",
            "top", "top_verdict", "n_confirmed", "error"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for _, r in bad[cols].iterrows():
        lines.append("| " + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


# ============================================================================================ bundled timing
def bundled_timing(repeat: int) -> pd.DataFrame:
    """Seconds of ``find_triggers`` alone (the test split as ``holdout``) on the bundled data with its shipped
    model (a fresh investigation per repeat, since find_triggers folds its findings into the investigation's
    suspicion)."""
    import forensics
    from forensics import sample_data

    rows = []
    for name in ("image_backdoor", "text_trigger"):
        d = sample_data.load(name)
        model, _ = d.model()
        seconds, inv_seconds = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            inv = forensics.investigate(d.train, model, progress=False)
            inv_seconds.append(time.perf_counter() - t)
            t = time.perf_counter()
            table = inv.find_triggers(holdout=d.test)
            seconds.append(time.perf_counter() - t)
        top = ranked(table)
        rows.append({"data": name, "n": len(d.train), "investigate_s (median)": round(float(np.median(inv_seconds)), 1),
                     "find_triggers_s (median)": round(float(np.median(seconds)), 2),
                     "find_triggers_s (all)": ", ".join(f"{s:.2f}" for s in seconds),
                     "candidates": len(table), "confirmed": int((table["verdict"] == "confirmed").sum()),
                     "top": f"{top['description'].iloc[0]} ({top['verdict'].iloc[0]})",
                     "under 20 s": "ok" if np.median(seconds) < 20 else "SHORT"})
    return pd.DataFrame(rows)


# ============================================================================================ driver
def _code() -> str:
    """Which toolkit code ran: where it was imported from and a digest of its sources (the tree may be dirty)."""
    import hashlib
    import subprocess

    import forensics

    root = Path(forensics.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    head = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return (f"forensics {forensics.__version__} imported from `{root}`, source digest {h.hexdigest()[:12]}; "
            f"repository HEAD {head or 'unknown'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), help="default: all")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per scenario (default 10; --quick 3)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, 3 seeds")
    parser.add_argument("--bundled-timing", action="store_true",
                        help="only time find_triggers on the bundled data (target < 20 s)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the bundled timing (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("forensics").setLevel(logging.WARNING)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    command = "python benchmarks/triggers_sweep.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = f"Command: `{command.strip()}`  \nMachine: {Q._machine(args.threads)}  \nCode: {_code()}"
    t0 = time.perf_counter()
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if args.bundled_timing:
            timing = bundled_timing(args.repeat)
            text = "\n\n".join(["# Trigger discovery + confirmation time on the bundled data", header,
                                "Seconds of `inv.find_triggers(holdout=d.test)` alone, after "
                                "`forensics.investigate(d.train, model)` with the shipped model; target < 20 s.\n\n"
                                + Q.frame_markdown(timing)])
            print(text)
            Q.WORK.mkdir(parents=True, exist_ok=True)
            (Q.WORK / "triggers_timing.md").write_text(text + "\n")
            return 0
        names = args.scenarios or (list(QUICK) if args.quick else list(SCENARIOS))
        n_seeds = args.seeds if args.seeds is not None else (3 if args.quick else 10)
        args.work.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            for seed in range(n_seeds):
                row = run_seed(name, seed, work=args.work)
                rows.append(row)
                log.info("%s seed %d: %s top=%r (%s) verdict=%s add=%s find %.1f s train %.0f s", name, seed,
                         row["planted"], row["top"], row["top_verdict"], row["verdict"], _fmt(row["add_flip_rate"]),
                         row["find_s"], row["train_s"])
    total = round(time.perf_counter() - t0, 1)
    table = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    text = "\n\n".join([
        "# Trigger discovery and confirmation over seeds",
        f"{header}  \nTotal: {total} s",
        "## Per scenario, against the targets\n\nTargets: the true trigger is the top candidate in at least "
        f"{TOP1_TARGET:.0%} of the seeds and its add flip rate is above {ADD_TARGET}; no confirmed trigger on the "
        "clean seeds. Medians are over the seeds where the true trigger is among the candidates (their number in "
        "brackets for the add flip rate). Carriers: the candidate's `sample_ids`; search: the samples with "
        "`trigger_score > 0` over the whole data. Ranking and the true-trigger rule: see the module docstring.\n\n"
        + summary_markdown(table),
        "## Seeds that missed\n\n" + failures_markdown(table),
        "## Scenarios\n\n" + "\n".join(f"- `{n}`: {SCENARIOS[n].description}" for n in names),
    ])
    print(text)
    (Q.WORK / "triggers_sweep.md").write_text(text + "\n")
    table.to_csv(Q.WORK / "triggers_sweep.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
