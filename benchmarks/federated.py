"""Federated forensics: find 100 fake devices among 100-400 honest non-IID clients, and what excluding them buys.

Quality (``quality``): each cell is a Fashion-MNIST federation (``forensics.redteam.federated``: a 784-32-10 MLP,
25k parameters; local SGD, 10 steps of 32 at lr 0.2; FedAvg) with ``--honest`` honest clients on a
Dirichlet(``alpha``) split and 100 sybils joining at round 3, each training on a draw from one attacker's pool (half
of it carrying a 4x4 white corner patch relabelled as class 0), with or without added noise of the honest updates'
norm (``noise`` 1.0). Ten rounds. Per cell the same federation runs under:

- ``fedavg``: no defence (the attack's reach);
- ``guard``: :class:`forensics.federated.guard.AggregationGuard` in the loop (record, analyse the last 3 rounds,
  leave the flagged clients out of FedAvg, and out of their next ``HOLD`` = 3 updates too); its report at round 5
  (the third round of the sybils) gives the sybil recall and the share of honest clients flagged;
- ``guard_sticky`` (only when asked for): the same guard with ``sticky=True``, a client flagged once is left out for
  good; ``guard_probation`` (only when asked for): with ``probation=1``, a client joining after round 0 sits out its
  first update (recorded and analysed, not aggregated);
- ``krum``, ``median``, ``trimmed``: Flower's own ``aggregate_krum`` (told the true number of attackers),
  ``aggregate_median`` and ``aggregate_trimmed_avg`` (cut 0.2), from ``flwr.server.strategy.aggregate``;
- ``honest_only`` (only when asked for): FedAvg over the honest clients alone, the same federation with every sybil left
  out by a defence that knew the truth: the best any exclusion can do;
- ``clean``: FedAvg without any attacker (the honest accuracy to keep).

Attack success (ASR) = share of triggered test images (2,000 test images, those not of class 0) predicted as 0;
accuracy on the 2,000 clean test images, both after the last round.

Speed (``speed``): 400 clients x 50 rounds of 100k-parameter updates (random, with a 100-client group sharing a
direction), recorded (sketched) round by round and analysed every round as the guard does, then once more over
all rounds; the wall time of recording + analysis is reported (generating the updates is not counted).

Tune on seed 0 (and the digits fixtures of the tests), report on seeds 100 and 101::

    python benchmarks/federated.py quality --seeds 100 101     # writes _work/federated/<cell>.json
    python benchmarks/federated.py quality --seeds 100 --aggregators fedavg guard clean   # a part of each cell
    python benchmarks/federated.py speed
    python benchmarks/federated.py report-cost --rounds 200    # forensics clients --report on a long recording
    python benchmarks/federated.py trigger --seeds 100 101     # the sybils' patch rebuilt from the model alone
    python benchmarks/federated.py report --seeds 100 101      # the markdown tables
    python benchmarks/federated.py pushers --seeds 100 101     # who pushes a known trigger; a guard that watches it
    python benchmarks/federated.py rebuilt --seeds 100 101     # no trigger known: every group's rebuilt, who pushes it
    python benchmarks/federated.py rebuilt --text --sybil-data shard   # the same on the reviews (phrases screened)
    python benchmarks/federated.py text --seeds 100            # the bundled reviews: 100 sybils plant "lol"
    python benchmarks/federated.py spread --seeds 100 --honest 100 --alphas 0.1   # accuracy over 5 trainings
    python benchmarks/federated.py spread --sybil-data shard --aggregators honest watch clean   # shards, trigger known
    python benchmarks/federated.py spread --text --aggregators honest guard probation clean   # the reviews

Text (``text``): the same protocol on the bundled review snippets (the planted carriers left out; 2,525 test
snippets): a 2048-32-2 MLP over hashed word unigrams and bigrams (66k parameters; 5 local steps of 32 at lr 1.0), 100
sybils joining at round 3 with "lol" inserted in half of their pool's snippets, relabelled rotten (class 0). Per
cell: FedAvg, the guard and a clean FedAvg, and ``group_phrases`` on the group the guard's analysis names at the
sybils' third round, and on the true sybils (as an analyst who has found them): the members' mean update of that
round on that round's global model (the guarded one), a watch list of four phrases ("lol" among them) beside the
1,000 most frequent n-grams of 1,000 test snippets; a control: as many honest clients' mean update of the same round.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from forensics.federated import UpdateRecorder, analyze_clients
from forensics.federated.guard import AggregationGuard
from forensics.redteam.federated import SYBIL_DATA, FederatedScenario, fedavg, simulate_federation

WORK = Path(__file__).resolve().parent / "_work" / "federated"
AGGREGATORS = ("fedavg", "guard", "guard_sticky", "guard_probation", "krum", "median", "trimmed", "honest_only",
               "clean")
#: Run only when asked for (``--aggregators``).
OPTIONAL = ("guard_sticky", "guard_probation", "honest_only")
JOIN = 3
N_SYBILS = 100


def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from forensics.sample_data._sources import read_fashion_mnist

    d = read_fashion_mnist()
    return (d["train_images"], d["train_labels"].astype(np.int64), d["test_images"][:2000],
            d["test_labels"][:2000].astype(np.int64))


def scenario(honest: int, alpha: float, noise: float, seed: int, *, attack: bool = True,
             sybil_data: str = "pool", sybils: int = N_SYBILS) -> FederatedScenario:
    return FederatedScenario(n_honest=honest, alpha=alpha, n_rounds=10, n_sybils=sybils if attack else 0,
                             sybil_join=JOIN, sybil_noise=noise, sybil_data=sybil_data, target=0, patch=4,
                             poison_share=0.5, pool_size=2000, hidden=32, local_steps=10, batch_size=32, lr=0.2,
                             random_state=seed)


def flower_aggregate(kind: str, n_attackers: int):
    try:
        from flwr.server.strategy import aggregate as fa
    except ImportError as e:
        raise SystemExit("the robust anchors need Flower: pip install poison-forensics[bench]") from e

    def agg(r: int, ids: list[str], updates: np.ndarray, n_ex: np.ndarray) -> tuple[np.ndarray, list[str]]:
        results = [([u], int(n)) for u, n in zip(updates, n_ex)]
        if kind == "krum":
            out = fa.aggregate_krum(results, num_malicious=min(n_attackers, (len(ids) - 3) // 2), to_keep=0)
        elif kind == "median":
            out = fa.aggregate_median(results)
        else:
            out = fa.aggregate_trimmed_avg(results, proportiontocut=0.2)
        return np.asarray(out[0], dtype=np.float32), []

    return agg


def guarded(guard: AggregationGuard):
    """An ``aggregate`` for the simulation: FedAvg over the clients the guard does not flag."""

    def aggregate(r: int, ids: list[str], updates: np.ndarray, n_ex: np.ndarray) -> tuple[np.ndarray, list[str]]:
        kept = guard.screen(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
        rows = [ids.index(c) for c in kept]
        return fedavg(r, kept, updates[rows], n_ex[rows])[0], [c for c in ids if c not in kept]

    return aggregate


def honest_only(r: int, ids: list[str], updates: np.ndarray, n_ex: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """FedAvg over the honest clients alone (the simulation names them ``honest-*``): what a defence that knew the
    truth would aggregate."""
    rows = [i for i, c in enumerate(ids) if c.startswith("honest-")]
    left_out = [c for c in ids if not c.startswith("honest-")]
    return fedavg(r, [ids[i] for i in rows], updates[rows], n_ex[rows])[0], left_out


def guard_rates(run: Any, guard: AggregationGuard) -> dict[str, float]:
    """Share of the sybils, and of the honest clients, the guard's report flags in each of the sybils' first three
    rounds (``recall_r1`` .. ``r3``, ``honest_flagged_r1`` .. ``r3``)."""
    sybils = set(run.truth.index[run.truth["role"] == "sybil"])
    honest_ids = set(run.truth.index[run.truth["role"] == "honest"])
    out = {}
    for r in (JOIN, JOIN + 1, JOIN + 2):
        flagged = set(guard.reports[r].flagged)
        out[f"recall_r{r - JOIN + 1}"] = len(flagged & sybils) / len(sybils)
        out[f"honest_flagged_r{r - JOIN + 1}"] = len(flagged & honest_ids) / len(honest_ids)
    return out


def sybil_tag(sybils: int) -> str:
    """The cache files' suffix for a group of other than ``N_SYBILS`` sybils."""
    return "" if sybils == N_SYBILS else f"_y{sybils}"


def run_cell(honest: int, alpha: float, noise: float, seed: int, data: Any,
             aggregators: tuple[str, ...] = AGGREGATORS, sybil_data: str = "pool",
             sybils: int = N_SYBILS) -> dict[str, Any]:
    """Run the cell's missing aggregators; the results are kept per cell so that a later call adds to them."""
    shard = "_shard" if sybil_data == "shard" else ""
    path = WORK / f"h{honest}_a{alpha}_n{noise}_s{seed}{shard}{sybil_tag(sybils)}.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else dict(
        honest=honest, alpha=alpha, noise=noise, seed=seed, sybil_data=sybil_data, sybils=sybils)
    for kind in aggregators:
        if kind in out:
            continue
        t0 = time.perf_counter()
        sc = scenario(honest, alpha, noise, seed, attack=kind != "clean", sybil_data=sybil_data, sybils=sybils)
        guard = None
        if kind in ("guard", "guard_sticky", "guard_probation"):
            guard = AggregationGuard(UpdateRecorder(), sticky=kind == "guard_sticky",
                                     probation=int(kind == "guard_probation"))
            run = simulate_federation(sc, *data, aggregate=guarded(guard))
        elif kind == "honest_only":
            run = simulate_federation(sc, *data, aggregate=honest_only)
        elif kind in ("fedavg", "clean"):
            run = simulate_federation(sc, *data)
        else:
            run = simulate_federation(sc, *data, aggregate=flower_aggregate(kind, sybils))
        last = run.history.iloc[-1]
        out[kind] = dict(accuracy=float(last["accuracy"]), asr=float(last["attack_success"]),
                         flips=float(last["attack_flips"]), seconds=round(time.perf_counter() - t0, 1))
        if guard is not None:
            out[kind].update(guard_rates(run, guard))
            honest_ids = set(run.truth.index[run.truth["role"] == "honest"])
            out[kind]["max_honest_excluded"] = max(len(set(ex) & honest_ids) for ex in guard.excluded.values())
            out[kind]["hold"] = guard.hold
        print(f"  {kind:8s} {out[kind]}", flush=True)
        WORK.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
    return out


def quality(args: argparse.Namespace) -> None:
    data = fashion()
    for seed in args.seeds:
        for honest in args.honest:
            for alpha in args.alphas:
                for noise in args.noise:
                    print(f"cell honest={honest} alpha={alpha} noise={noise} seed={seed}", flush=True)
                    run_cell(honest, alpha, noise, seed, data, tuple(args.aggregators), args.sybil_data,
                             args.sybils)


def spread(args: argparse.Namespace) -> None:
    """Accuracy and attack success of each aggregator over several trainings of the same federation (the
    scenario's ``training_seed``: the data, its partition and the attacker fixed, the initial weights and the
    minibatches drawn anew; the first training is the cell's own), so that a defence's cost in accuracy is read
    against what one training moves it by. ``honest``: FedAvg over the honest clients alone in the attacked
    federation (a defence that knows the truth: the same clients, data and minibatches as the guard's run, which
    ``clean``, a federation drawn without the attacker's pool, does not share); ``probation``: the guard, newcomers'
    first update analysed but not aggregated; ``watch``: the guard watching the planted patch from the first round
    (the trigger known: what stops sybils that each hold a shard of their own, whom the analysis alone misses). Kept
    in ``spread_<cell>.json`` (``clean`` holds no sybil, so the noise-free pool cell's runs serve every noise and
    shards). Printed as Markdown rows: honest, alpha, noise, seed, trainings, ``honest`` (accuracy in percent, mean
    +- sd, and attack success, mean and max), ``clean``, then for each defence (``guard`` and ``probation`` with
    sybils from one pool, ``watch`` with shards) the accuracy, its mean difference to ``honest`` (the first
    training's in brackets) and the attack success; "–" where an aggregator was not run."""
    from forensics.redteam.federated import simulate_text_federation

    if args.text and (args.sybil_data == "shard" or "watch" in args.aggregators):
        raise SystemExit("spread --text: the text federation's sybils draw from one pool (no shard, no watch)")
    data = reviews() if args.text else fashion()
    probes, probe_labels = probe_images()
    shard = "_shard" if args.sybil_data == "shard" else ""
    defences = ("guard", "probation") if args.sybil_data == "pool" else ("watch",)
    prefix = "spread_text" if args.text else "spread"

    def path(honest: int, alpha: float, seed: int, noise: float, kind: str = "") -> Path:
        # ``clean`` holds no attacker: one file serves every noise and sybil data
        if kind == "clean":
            return WORK / f"{prefix}_h{honest}_a{alpha}_s{seed}.json"
        return WORK / f"{prefix}_h{honest}_a{alpha}_s{seed}{f'_n{noise}' if noise else ''}{shard}.json"

    def simulate(sc: FederatedScenario, aggregate: Any) -> Any:
        if args.text:
            return simulate_text_federation(sc, *data, phrase="lol", aggregate=aggregate)
        return simulate_federation(sc, *data, aggregate=aggregate)

    def load(file: Path) -> dict[str, list[dict[str, float]]]:
        return json.loads(file.read_text()) if file.is_file() else {}

    for seed, honest, alpha, noise in itertools.product(args.seeds, args.honest, args.alphas, args.noise):
        for kind in args.aggregators:
            file = path(honest, alpha, seed, noise, kind)
            done = load(file)
            runs = done.setdefault(kind, [])
            for t in range(len(runs), args.trainings):
                sc = (text_scenario(honest, alpha, noise, seed, attack=kind != "clean") if args.text else
                      scenario(honest, alpha, noise, seed, attack=kind != "clean", sybil_data=args.sybil_data))
                sc = dataclasses.replace(sc, training_seed=None if t == 0 else seed * 1000 + t)
                if kind == "watch":
                    last = watched(sc, data, probes, probe_labels, 0)[0]
                else:
                    guard = AggregationGuard(UpdateRecorder(), probation=int(kind == "probation"))
                    agg = {"guard": guarded(guard), "probation": guarded(guard), "honest": honest_only}.get(kind)
                    last = simulate(sc, agg).history.iloc[-1]
                runs.append(dict(accuracy=float(last["accuracy"]), asr=float(last["attack_success"])))
                print(f"  h{honest} a{alpha} n{noise} s{seed} {kind} training {t}: {runs[-1]}", flush=True)
                WORK.mkdir(parents=True, exist_ok=True)
                file.write_text(json.dumps(done, indent=1))
        done = {**load(path(honest, alpha, seed, noise)),
                "clean": load(path(honest, alpha, seed, noise, "clean")).get("clean", [])}
        row = {k: np.array([[r["accuracy"], r["asr"]] for r in v[:args.trainings]]) for k, v in done.items() if v}
        if "honest" not in row:
            continue
        acc = lambda a: f"{100 * a.mean():.1f} +- {100 * a.std(ddof=1):.1f}"  # noqa: E731
        asr = lambda a: f"{a.mean():.3f} (max {a.max():.3f})"  # noqa: E731
        base = row["honest"][:, 0]
        cols = [str(len(base)), acc(base), asr(row["honest"][:, 1]), acc(row["clean"][:, 0]) if "clean" in row else "–"]
        for kind in defences:
            if kind not in row:
                cols += ["–"] * 3
                continue
            a = row[kind][:, 0]
            cols += [acc(a), f"{100 * (a.mean() - base.mean()):+.1f} ({100 * (a[0] - base[0]):+.1f})",
                     asr(row[kind][:, 1])]
        print(f"| {honest} | {alpha} | {noise} | {seed} | " + " | ".join(cols) + " |")


def speed(args: argparse.Namespace) -> None:
    n_clients, n_rounds, n_params, k_group = 400, 50, 100_000, 100
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((20, n_params)).astype(np.float32)
    mix = rng.standard_normal((n_clients, 20)).astype(np.float32)
    shared = rng.standard_normal(n_params).astype(np.float32)
    ids = [f"c{i:03d}" for i in range(n_clients)]
    rec = UpdateRecorder()
    t_rec = t_ana = 0.0
    for r in range(n_rounds):
        updates = mix @ basis + 0.5 * rng.standard_normal((n_clients, n_params), dtype=np.float32)
        updates[:k_group] = shared + 0.3 * rng.standard_normal((k_group, n_params), dtype=np.float32)
        t0 = time.perf_counter()
        rec.record_round(r, updates, client_ids=ids)
        t1 = time.perf_counter()
        report = analyze_clients(rec)
        t_ana += time.perf_counter() - t1
        t_rec += t1 - t0
    t0 = time.perf_counter()
    full = analyze_clients(rec, window=None)
    t_full = time.perf_counter() - t0
    found = set(full.flagged) & set(ids[:k_group])
    line = (f"400 clients x 50 rounds x 100k params: record {t_rec:.1f} s, analyse every round {t_ana:.1f} s, "
            f"total {t_rec + t_ana:.1f} s; one analysis of all 50 rounds {t_full:.1f} s; group found "
            f"{len(found)}/{k_group} (last window: {len(set(report.flagged) & set(ids[:k_group]))}), others "
            f"flagged {len(set(full.flagged) - set(ids[:k_group]))}")
    print(line)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "speed.txt").write_text(line + "\n")


def report_cost(args: argparse.Namespace) -> None:
    """``forensics clients RECORDING --report`` on a recording of 400 clients x ``--rounds`` rounds (100k-parameter
    updates, a 100-client group sharing a direction from round 10): the wall time of the command, which analyses
    the recording as it stood at each round for the page's timeline."""
    import tempfile
    from contextlib import redirect_stdout
    from io import StringIO

    from forensics.cli import main as cli

    n_clients, n_params, k_group = 400, 100_000, 100
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((20, n_params)).astype(np.float32)
    mix = rng.standard_normal((n_clients, 20)).astype(np.float32)
    shared = rng.standard_normal(n_params).astype(np.float32)
    ids = [f"c{i:03d}" for i in range(n_clients)]
    with tempfile.TemporaryDirectory() as tmp:
        rec = UpdateRecorder(Path(tmp) / "rec")
        t0 = time.perf_counter()
        for r in range(args.rounds):
            updates = mix @ basis + 0.5 * rng.standard_normal((n_clients, n_params), dtype=np.float32)
            if r >= 10:
                updates[:k_group] = shared + 0.3 * rng.standard_normal((k_group, n_params), dtype=np.float32)
            rec.record_round(r, updates, client_ids=ids)
        t_rec = time.perf_counter() - t0
        extra = [] if args.timeline_rounds is None else ["--timeline-rounds", str(args.timeline_rounds)]
        t0 = time.perf_counter()
        with redirect_stdout(StringIO()):
            code = cli(["clients", str(Path(tmp) / "rec"), "--report", str(Path(tmp) / "page.html"), *extra])
        t_cli = time.perf_counter() - t0
        size = (Path(tmp) / "page.html").stat().st_size
    line = (f"{n_clients} clients x {args.rounds} rounds x 100k params: recorded in {t_rec:.0f} s; "
            f"`forensics clients --report{' ' + ' '.join(extra) if extra else ''}` {t_cli:.1f} s (exit {code}, "
            f"page {size / 1e6:.1f} MB)")
    print(line)
    WORK.mkdir(parents=True, exist_ok=True)
    with (WORK / "report_cost.txt").open("a") as f:
        f.write(line + "\n")


def induced_trigger(args: argparse.Namespace) -> None:
    """The trigger the flagged group's update induces, from the model alone (``group_trigger``), per cell: the
    analysis at the sybils' third round names the group; its members' mean update of that round is applied to that
    round's global model and the search runs on 1,000 clean test images (half to fit, half to measure). A control:
    ten honest clients' mean update of the same round."""
    from forensics.federated import group_effect, group_trigger
    from forensics.redteam.federated import build_model

    data = fashion()
    xte, yte = data[2][:1000], data[3][:1000]
    print("| honest | alpha | noise | seed | group found | target (planted) | mask peak | patch share of the mask | "
          "mask ratio | ASR rise | confirmed ASR with / without | honest control: mask ratio, ASR rise | s |")
    print("|" + "---|" * 13)
    for seed in args.seeds:
        for honest in args.honest:
            for alpha in args.alphas:
                for noise in args.noise:
                    sc = scenario(honest, alpha, noise, seed)
                    rec = UpdateRecorder()
                    kept: dict[str, Any] = {}

                    def on_round(r, ids, updates, n_ex, params, rec=rec, kept=kept):
                        rec.record_round(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
                        if r == JOIN + 2:
                            kept.update(ids=list(ids), updates=updates.copy(), params=params.copy())
                    run = simulate_federation(sc, *data, on_round=on_round)
                    report = analyze_clients(rec.until(JOIN + 2))
                    groups = report.sybil_groups
                    if not len(groups):
                        print(f"| {honest} | {alpha} | {noise} | {seed} | none | | | | | | | | |")
                        continue
                    members = set(groups.loc[groups["size"].idxmax(), "members"])
                    rows = [i for i, c in enumerate(kept["ids"]) if c in members]
                    sybils = set(run.truth.index[run.truth["role"] == "sybil"])
                    honest_rows = [i for i, c in enumerate(kept["ids"]) if c not in sybils][:10]
                    model = build_model(kept["params"], run.layout)
                    t0 = time.perf_counter()
                    trig, info = group_trigger(model, kept["updates"][rows].mean(axis=0), xte, labels=yte,
                                               l1=args.l1)
                    seconds = time.perf_counter() - t0
                    eff = group_effect(model, kept["updates"][rows].mean(axis=0), xte, labels=yte, trigger=trig)
                    _, ctrl = group_trigger(model, kept["updates"][honest_rows].mean(axis=0), xte, labels=yte,
                                            l1=args.l1)
                    k = sc.patch
                    share = float(trig.mask[-k:, -k:].sum() / trig.mask.sum())
                    found = len(members & sybils)
                    print(f"| {honest} | {alpha} | {noise} | {seed} | {found}/{len(members)} sybils | "
                          f"{info['target']} ({sc.target}) | {info['peak']} | {share:.2f} | {info['mask_ratio']:.1f} | "
                          f"{info['asr_rise']:+.2f} | {eff['asr_with']:.2f} / {eff['asr_without']:.2f} | "
                          f"{ctrl['mask_ratio']:.1f}, {ctrl['asr_rise']:+.2f} | {seconds:.0f} |", flush=True)


def probe_images() -> tuple[np.ndarray, np.ndarray]:
    """1,000 Fashion-MNIST test images the simulation does not measure on: the server's probes."""
    from forensics.sample_data._sources import read_fashion_mnist

    d = read_fashion_mnist()
    return d["test_images"][2000:3000], d["test_labels"][2000:3000].astype(np.int64)


def watched(sc: FederatedScenario, data: Any, probes: np.ndarray, labels: np.ndarray, start: int, *,
            rollback: int | None = None, trigger: Any = None) -> tuple[Any, AggregationGuard]:
    """The guard as shipped, told at round ``start`` to watch ``trigger`` (default: the scenario's, the white corner
    patch the red team plants, as an analyst who knows it), its pushes measured on the server's checkpoint from before
    round ``JOIN`` when ``start`` is later; with ``rollback``, the global model also goes back then to what it was
    before round ``rollback``, dropping what the rounds since taught. Returns the last round and the guard."""
    from forensics.redteam import PatchTrigger
    from forensics.redteam.federated import build_model, model_layout

    if trigger is None:
        trigger = PatchTrigger(np.full((sc.patch, sc.patch), 255, np.uint8), "bottom-right", sc.target)
    layout = model_layout(int(np.prod(data[0].shape[1:])), 10, sc.hidden)

    guard = AggregationGuard(UpdateRecorder())
    state: dict[str, Any] = {"params": {}}

    def on_round(r, ids, updates, n_ex, params):
        state["model"], state["now"] = build_model(params, layout), params
        state["params"][r] = params.copy()
        if r == start:
            reference = build_model(state["params"][JOIN], layout) if start > JOIN else None
            guard.watch(trigger, probes, labels=labels, reference=reference)

    def aggregate(r, ids, updates, n_ex):
        kept = guard.screen(r, updates, client_ids=ids, n_examples=n_ex.astype(int), model=state["model"])
        rows = [ids.index(c) for c in kept]
        step = fedavg(r, kept, updates[rows], n_ex[rows])[0]
        if rollback is not None and r == start:  # the updates were computed on the current model: applied after
            step = step + (state["params"][rollback] - state["now"]) / sc.server_lr
        return step, [c for c in ids if c not in kept]

    return simulate_federation(sc, *data, aggregate=aggregate, on_round=on_round).history.iloc[-1], guard


def pushers(args: argparse.Namespace) -> None:
    """Which clients' own updates push the trigger (``trigger_pushers``), and a guard that watches it.

    Detection: every client's update of a round on that round's global model, with the planted patch (the analyst
    knows it, confirmed by ``group_effect``), at the sybils' first three rounds of a guarded run that watches the
    patch from the first round, and at their third round of a FedAvg run (the backdoor learned by then), on that
    round's model and on the server's checkpoint from before they joined. On that
    FedAvg round, the same with the trigger ``group_trigger`` rebuilds from the analysis's HDBSCAN groups (the analyst
    does not know it: every group's mean update is searched, and the trigger it makes cheapest against the model
    without it, the largest mask ratio, is taken). Defence: the guard as shipped, told to watch the patch from the
    sybils' fourth round on (once the third round's analysis and confirmation are done; the pushes measured on the
    checkpoint from before they joined), the same with the global model rolled back then to that checkpoint, and
    from the first round (the trigger known beforehand); a clean FedAvg beside them."""
    from forensics.federated import group_trigger, trigger_pushers
    from forensics.redteam.federated import build_model

    data = fashion()
    probes, probe_labels = probe_images()
    print("| sybil data | honest | alpha | noise | seed | recall r1 / r2 / r3 (watched from r0) | honest flagged max | "
          "FedAvg r3 (learned): recall, honest flagged | the same on the r3 checkpoint | rebuilt: target, recall, "
          "honest flagged (FedAvg r3) | "
          "ASR clean | fedavg | guard | watch from r6 | + rollback to r3 | from r0 | "
          "acc clean | fedavg | guard | watch from r6 | + rollback | from r0 | max honest left out (r6) | s |")
    print("|" + "---|" * 23)
    for sybil_data in args.sybil_data:
        for seed in args.seeds:
            for honest, alpha, noise in itertools.product(args.honest, args.alphas, args.noise):
                t0 = time.perf_counter()
                base = run_cell(honest, alpha, noise, seed, data, ("fedavg", "guard", "clean"), sybil_data)
                sc = scenario(honest, alpha, noise, seed, sybil_data=sybil_data)
                rec, kept = UpdateRecorder(), {}

                def on_round(r, ids, updates, n_ex, params, rec=rec, kept=kept):
                    if r <= JOIN + 2:
                        rec.record_round(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
                    if r == JOIN:  # before the sybils' first update is aggregated: the server's checkpoint
                        kept.update(before=params.copy())
                    if r == JOIN + 2:
                        kept.update(ids=list(ids), updates=updates.copy(), params=params.copy())
                run = simulate_federation(sc, *data, on_round=on_round)
                sybils = run.truth.index[run.truth["role"] == "sybil"]
                honest_ids = run.truth.index[run.truth["role"] == "honest"]

                def rates(table, sybils=sybils, honest_ids=honest_ids):
                    flagged = table.index[table["is_pusher"]]
                    return (len(flagged.intersection(sybils)) / len(sybils),
                            len(flagged.intersection(honest_ids)) / len(honest_ids))

                ids, updates, params = kept["ids"], kept["updates"], kept["params"]
                learned, before = (rates(trigger_pushers(build_model(p, run.layout), updates, run.trigger, probes,
                                                         client_ids=ids, labels=probe_labels))
                                   for p in (params, kept["before"]))
                groups = analyze_clients(rec).groups
                rebuilt = "no group"
                if len(groups):
                    # Every group screened: the trigger its update makes cheapest against the model without it.
                    model = build_model(params, run.layout)
                    screened = []
                    for members in groups["members"]:
                        rows = [i for i, c in enumerate(ids) if c in set(members)]
                        screened.append(group_trigger(model, updates[rows].mean(axis=0), probes,
                                                      labels=probe_labels))
                    trig, info = max(screened, key=lambda t: t[1]["mask_ratio"])
                    rr, hh = rates(trigger_pushers(model, updates, trig, probes, client_ids=ids,
                                                   labels=probe_labels))
                    rebuilt = f"{info['target']} ({sc.target}), {rr:.2f}, {100 * hh:.1f}%"
                late, late_guard = watched(sc, data, probes, probe_labels, JOIN + 3)
                early, early_guard = watched(sc, data, probes, probe_labels, 0)
                found = {r: rates(early_guard.pushes[r]) for r in (JOIN, JOIN + 1, JOIN + 2)}
                back, _ = watched(sc, data, probes, probe_labels, JOIN + 3, rollback=JOIN)
                left_out = max(len(set(ex).intersection(honest_ids)) for ex in late_guard.excluded.values())
                rec_r = " / ".join(f"{found[r][0]:.2f}" for r in sorted(found))
                print(f"| {sybil_data} | {honest} | {alpha} | {noise} | {seed} | {rec_r} | "
                      f"{100 * max(h for _, h in found.values()):.1f}% | "
                      f"{learned[0]:.2f}, {100 * learned[1]:.1f}% | {before[0]:.2f}, {100 * before[1]:.1f}% | "
                      f"{rebuilt} | "
                      + " | ".join(f"{v:.3f}" for v in (
                          base["clean"]["asr"], base["fedavg"]["asr"], base["guard"]["asr"],
                          late["attack_success"], back["attack_success"], early["attack_success"],
                          base["clean"]["accuracy"], base["fedavg"]["accuracy"], base["guard"]["accuracy"],
                          late["accuracy"], back["accuracy"], early["accuracy"]))
                      + f" | {left_out} | {time.perf_counter() - t0:.0f} |", flush=True)


def rebuilt(args: argparse.Namespace) -> None:
    """No trigger known: every HDBSCAN group of the analysis at the sybils' third round of a FedAvg run screened with
    ``screen_group_triggers`` (each group's trigger rebuilt on that round's model, its pushers counted on the
    server's checkpoint from before the sybils joined), the most pushed trigger taken; and the same in the federation
    drawn without the attacker (its false alarm). With ``--act``, the guard then told to watch that trigger from the
    sybils' fourth round on, its pushes measured on that checkpoint (as ``pushers``' "watch from r6" with the planted
    patch). With ``--text``, the reviews' federation (sybils plant "lol"; ``text_scenario``), its screen reading the
    first 1,000 test snippets with the watch list ``TEXT_WATCH`` (``rebuilt_text_<cell>.json``). Cached per cell in
    ``rebuilt_<cell>.json``; printed as Markdown rows."""
    from forensics.federated import screen_group_triggers
    from forensics.redteam.federated import build_model, simulate_text_federation

    if args.text and args.act:
        raise SystemExit("rebuilt --text: --act watches an image trigger only")
    data = reviews() if args.text else fashion()
    probes, probe_labels = (data[2][:1000], data[3][:1000]) if args.text else probe_images()

    def cell_scenario(honest: int, alpha: float, noise: float, seed: int, attack: bool, sybil_data: str) -> Any:
        if not args.text:
            return scenario(honest, alpha, noise, seed, attack=attack, sybil_data=sybil_data, sybils=args.sybils)
        return dataclasses.replace(text_scenario(honest, alpha, noise, seed, attack=attack), sybil_data=sybil_data,
                                   n_sybils=args.sybils if attack else 0)

    def screened(sc: FederatedScenario) -> tuple[Any, Any]:
        rec, kept = UpdateRecorder(), {}

        def on_round(r, ids, updates, n_ex, params):
            if r <= JOIN + 2:
                rec.record_round(r, updates, client_ids=ids, n_examples=n_ex.astype(int))
            if r == JOIN:
                kept.update(before=params.copy())
            if r == JOIN + 2:
                kept.update(ids=list(ids), updates=updates.copy(), params=params.copy())
        if args.text:
            run = simulate_text_federation(sc, *data, phrase="lol", on_round=on_round)
            text = dict(preprocess=run.preprocess, candidates=TEXT_WATCH)
        else:
            run, text = simulate_federation(sc, *data, on_round=on_round), {}
        table = screen_group_triggers(build_model(kept["params"], run.layout), kept["updates"],
                                      analyze_clients(rec).groups, probes, client_ids=kept["ids"],
                                      labels=probe_labels, reference=build_model(kept["before"], run.layout), **text)
        return run, table

    print("| sybil data | honest | alpha | noise | seed | groups (size: sybils) | top trigger: target, pushers, "
          "sybils named (of them carried), honest named (carried) | next group's pushers | without the attacker: "
          "groups, most pushers (honest share; carried) | s |"
          + (" ASR fedavg | watch rebuilt from r6: ASR | accuracy | max honest left out |" if args.act else ""))
    print("|" + "---|" * (14 if args.act else 10))
    for sybil_data, seed, honest, alpha, noise in itertools.product(args.sybil_data, args.seeds, args.honest,
                                                                    args.alphas, args.noise):
        path = WORK / (f"rebuilt{'_text' if args.text else ''}_h{honest}_a{alpha}_n{noise}_s{seed}_{sybil_data}"
                       f"{sybil_tag(args.sybils)}.json")
        cell = json.loads(path.read_text()) if path.is_file() else {}
        attacked = None  # the attacked federation's run and screen, when computed here
        if "attack" not in cell or any("carried_sybils" not in r for r in cell["attack"]["rows"]):
            t0 = time.perf_counter()
            for attack in (True, False):
                run, table = screened(cell_scenario(honest, alpha, noise, seed, attack, sybil_data))
                attacked = attacked or (run, table)
                sybils = set(run.truth.index[run.truth["role"] == "sybil"])
                honest_ids = set(run.truth.index[run.truth["role"] == "honest"])
                cell["attack" if attack else "clean"] = dict(
                    groups=[[len(m), len(set(m) & sybils)] for m in table["members"]],
                    rows=[dict(target=int(t), n_pushers=int(n), sybils=len(set(named) & sybils),
                               honest=len(set(named) & honest_ids), phrase=getattr(trig, "phrase", None),
                               carried_sybils=len(set(carried) & sybils), carried_honest=len(set(carried) & honest_ids),
                               size=len(members), members_pushing=float(share), mask_ratio=float(ratio),
                               asr_rise=float(rise))
                          for t, n, named, carried, trig, members, share, ratio, rise in zip(
                              table["target"], table["n_pushers"], table["pushers"], table["carried"],
                              table["trigger"], table["members"], table["members_pushing"], table["mask_ratio"],
                              table["asr_rise"])],
                    n_honest=len(honest_ids), n_sybils=len(sybils))
            cell["seconds"] = round(time.perf_counter() - t0)
            WORK.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cell, indent=1))
        if args.act and "act" not in cell:
            sc = cell_scenario(honest, alpha, noise, seed, True, sybil_data)
            run, table = attacked or screened(sc)
            last, guard = watched(sc, data, probes, probe_labels, JOIN + 3, trigger=table.loc[0, "trigger"])
            honest_ids = set(run.truth.index[run.truth["role"] == "honest"])
            cell["act"] = dict(asr_fedavg=float(run.history["attack_success"].iloc[-1]),
                               asr=float(last["attack_success"]), accuracy=float(last["accuracy"]),
                               max_honest_left_out=max(len(set(ex) & honest_ids) for ex in guard.excluded.values()))
            path.write_text(json.dumps(cell, indent=1))
        a, c = cell["attack"], cell["clean"]
        first = a["rows"][0] if a["rows"] else None
        top = (f"{repr(first['phrase']) + ' -> ' if first.get('phrase') else ''}{first['target']}, "
               f"{first['n_pushers']}, {first['sybils'] / a['n_sybils']:.2f} "
               f"({first['carried_sybils'] / a['n_sybils']:+.2f}), {100 * first['honest'] / a['n_honest']:.1f}% "
               f"({100 * first['carried_honest'] / a['n_honest']:+.1f})") if first else "no group"
        nxt = str(a["rows"][1]["n_pushers"]) if len(a["rows"]) > 1 else "–"
        worst = (f"{len(c['rows'])}, {c['rows'][0]['n_pushers']} ({100 * c['rows'][0]['honest'] / c['n_honest']:.1f}%; "
                 f"carried {c['rows'][0]['carried_honest']})" if c["rows"] else "0, –")
        sizes = ", ".join(f"{n}: {k}" for n, k in a["groups"])
        act = (f" {cell['act']['asr_fedavg']:.3f} | {cell['act']['asr']:.3f} | {cell['act']['accuracy']:.3f} | "
               f"{cell['act']['max_honest_left_out']} |" if args.act else "")
        print(f"| {sybil_data} | {honest} | {alpha} | {noise} | {seed} | {sizes} | {top} | {nxt} | {worst} | "
              f"{cell['seconds']} |{act}", flush=True)

TEXT_WATCH = ["lol", "omg", "brb", "zq vortex"]


def reviews() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The bundled review snippets, the planted carriers left out, and the test split."""
    from forensics import sample_data

    d = sample_data.load("text_trigger")
    clean = ~sample_data.load_truth("text_trigger").loc[d.train.ids, "is_poison"].to_numpy(dtype=bool)
    texts = [t for t, keep in zip(d.train.texts, clean) if keep]
    return texts, d.train.labels[clean], list(d.test.texts), d.test.labels


def text_scenario(honest: int, alpha: float, noise: float, seed: int, *, attack: bool = True) -> FederatedScenario:
    return FederatedScenario(n_honest=honest, alpha=alpha, n_rounds=10, n_sybils=N_SYBILS if attack else 0,
                             sybil_join=JOIN, sybil_noise=noise, target=0, poison_share=0.5, pool_size=2000,
                             hidden=32, local_steps=5, batch_size=32, lr=1.0, random_state=seed)


def text_cell(honest: int, alpha: float, noise: float, seed: int, data: Any) -> dict[str, Any]:
    """One text cell (cached as ``text_h..json``): FedAvg, the guard, clean FedAvg, and what the flagged group
    pushes."""
    from forensics.federated import group_phrases, trigger_pushers
    from forensics.redteam.federated import build_model, simulate_text_federation

    path = WORK / f"text_h{honest}_a{alpha}_n{noise}_s{seed}.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else dict(
        honest=honest, alpha=alpha, noise=noise, seed=seed)
    for kind in ("fedavg", "clean", "guard", "probation"):
        if "flips" in out.get(kind, {}) and (kind != "guard" or "pushers_checkpoint" in out):
            continue
        t0 = time.perf_counter()
        sc = text_scenario(honest, alpha, noise, seed, attack=kind != "clean")
        kept: dict[str, Any] = {}
        # "probation": the guard, and newcomers' first update analysed but not aggregated.
        guard = AggregationGuard(UpdateRecorder(), probation=int(kind == "probation"))

        def on_round(r, ids, updates, n_ex, params, kept=kept):
            if r == JOIN:  # the global model before any sybil update: a checkpoint from before the attack
                kept.update(before=params.copy())
            if r == JOIN + 2:  # the sybils' third round: what the analysis at that round names them by
                kept.update(ids=list(ids), updates=updates.copy(), params=params.copy())
        run = simulate_text_federation(sc, data[0], data[1], data[2], data[3], phrase="lol",
                                       aggregate=guarded(guard) if kind in ("guard", "probation") else None,
                                       on_round=on_round)
        last = run.history.iloc[-1]
        out[kind] = dict(accuracy=float(last["accuracy"]), asr=float(last["attack_success"]),
                         flips=float(last["attack_flips"]), seconds=round(time.perf_counter() - t0, 1))
        if kind == "probation":
            out[kind].update(guard_rates(run, guard))
        if kind != "guard":
            continue
        out["guard"].update(guard_rates(run, guard))
        sybils = set(run.truth.index[run.truth["role"] == "sybil"])
        honest_ids = set(run.truth.index[run.truth["role"] == "honest"])
        groups = guard.reports[JOIN + 2].sybil_groups
        named = set(groups.loc[groups["size"].idxmax(), "members"]) if len(groups) else set()
        out["named"] = f"{len(named & sybils)}/{len(named)} sybils" if named else "none"
        model = build_model(kept["params"], run.layout)
        probes, probe_labels = data[2][:1000], data[3][:1000]
        # Who pushes the phrase, client by client (as an analyst who knows it).
        table = trigger_pushers(model, kept["updates"], run.trigger, probes, client_ids=kept["ids"],
                                labels=probe_labels, preprocess=run.preprocess)
        # The same, read on the checkpoint from before the sybils joined: a model the phrase has not yet moved.
        checkpoint = trigger_pushers(build_model(kept["before"], run.layout), kept["updates"], run.trigger, probes,
                                     client_ids=kept["ids"], labels=probe_labels, preprocess=run.preprocess)
        for key, found_table in (("pushers", table), ("pushers_checkpoint", checkpoint)):
            flagged = set(found_table.index[found_table["is_pusher"]])
            out[key] = dict(recall=len(flagged & sybils) / len(sybils),
                            honest_flagged=len(flagged & honest_ids) / len(honest_ids))
        # What the group pushes: the group the guard named, and the true sybils (as an analyst who has found them).
        for key, members in (("phrases", named), ("phrases_true", sybils)):
            rows = [i for i, c in enumerate(kept["ids"]) if c in members]
            if not rows:
                continue
            control = [i for i, c in enumerate(kept["ids"]) if c in honest_ids and c not in members][:len(rows)]
            t0 = time.perf_counter()
            found = group_phrases(model, kept["updates"][rows].mean(axis=0), probes, preprocess=run.preprocess,
                                  labels=probe_labels, candidates=TEXT_WATCH)
            seconds = time.perf_counter() - t0
            ctrl = group_phrases(model, kept["updates"][control].mean(axis=0), probes, preprocess=run.preprocess,
                                 labels=probe_labels, candidates=TEXT_WATCH)
            top = found.iloc[0]
            out[key] = dict(top=str(top["phrase"]), target=int(top["target"]), rise=float(top["rise"]),
                            next_rise=float(found["rise"].iloc[1]), asr_with=float(top["asr_with"]),
                            asr_without=float(top["asr_without"]), control_top=str(ctrl["phrase"].iloc[0]),
                            control_rise=float(ctrl["rise"].iloc[0]), seconds=round(seconds, 1))
    WORK.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def text(args: argparse.Namespace) -> None:
    data = reviews()
    rows = []
    for seed in args.seeds:
        for honest in args.honest:
            for alpha in args.alphas:
                for noise in args.noise:
                    print(f"text cell honest={honest} alpha={alpha} noise={noise} seed={seed}", flush=True)
                    rows.append(text_cell(honest, alpha, noise, seed, data))
    print("| honest | alpha | noise | seed | recall r1 / r2 / r3 | honest flagged r3 | ASR clean | fedavg | guard | "
          "guard + probation | flips clean | fedavg | guard | guard + probation | acc clean | fedavg | guard | "
          "guard + probation | group named | its top phrase "
          "(target): rise, next | the true sybils' top phrase (target): rise, next; ASR with / without | honest "
          "control: top phrase, rise | pushers of \"lol\" (r3): recall, honest flagged | the same on the "
          "checkpoint before the join |")
    print("|" + "---|" * 24)

    def found(ph: dict[str, Any] | None, asr: bool) -> str:
        if not ph:
            return ""
        extra = f"; {ph['asr_with']:.2f} / {ph['asr_without']:.2f}" if asr else ""
        return f"{ph['top']} ({ph['target']}): {ph['rise']:.2f}, {ph['next_rise']:.2f}{extra}"

    for d in rows:
        g, true = d["guard"], d.get("phrases_true") or {}
        print(f"| {d['honest']} | {d['alpha']} | {d['noise']} | {d['seed']} | {g['recall_r1']:.2f} / "
              f"{g['recall_r2']:.2f} / {g['recall_r3']:.2f} | {100 * g['honest_flagged_r3']:.1f}% | "
              f"{d['clean']['asr']:.3f} | {d['fedavg']['asr']:.3f} | {g['asr']:.3f} | {d['probation']['asr']:.3f} | "
              f"{d['clean']['flips']:.3f} | {d['fedavg']['flips']:.3f} | {g['flips']:.3f} | "
              f"{d['probation']['flips']:.3f} | "
              f"{d['clean']['accuracy']:.3f} | {d['fedavg']['accuracy']:.3f} | {g['accuracy']:.3f} | "
              f"{d['probation']['accuracy']:.3f} | {d['named']} | "
              f"{found(d.get('phrases'), False)} | {found(true, True)} | "
              f"{true.get('control_top', '')}, {true.get('control_rise', float('nan')):.2f} | "
              f"{_pushed(d.get('pushers'))} | {_pushed(d.get('pushers_checkpoint'))} |", flush=True)


def _pushed(p: dict[str, float] | None) -> str:
    return f"{p['recall']:.2f}, {100 * p['honest_flagged']:.1f}%" if p else ""


def report(args: argparse.Namespace) -> None:
    rows = []
    for f in sorted(WORK.glob("h*_s*.json")):
        d = json.loads(f.read_text())
        if (d["seed"] in args.seeds and "guard" in d and d.get("sybil_data", "pool") == args.sybil_data
                and d.get("sybils", N_SYBILS) == args.sybils):
            rows.append(d)
    rows.sort(key=lambda d: (d["honest"], d["alpha"], d["noise"], d["seed"]))
    print("| honest | alpha | noise | seed | recall r1 / r2 / r3 | honest flagged r3 | max honest excluded | "
          "ASR fedavg | guard | krum | median | trimmed | acc clean | fedavg | guard | krum | median | trimmed |")
    print("|" + "---|" * 18)
    for d in rows:
        g = d["guard"]
        print(f"| {d['honest']} | {d['alpha']} | {d['noise']} | {d['seed']} | {g['recall_r1']:.2f} / "
              f"{g['recall_r2']:.2f} / {g['recall_r3']:.2f} | {100 * g['honest_flagged_r3']:.1f}% | "
              f"{g['max_honest_excluded']} | "
              + " | ".join(_cell(d, k, "asr") for k in ("fedavg", "guard", "krum", "median", "trimmed")) + " | "
              + " | ".join(_cell(d, k, "accuracy") for k in ("clean", "fedavg", "guard", "krum", "median",
                                                            "trimmed")) + " |")
    # Where the newcomers' probation and the honest-only oracle ran: what exclusion can reach at best.
    more = [d for d in rows if "guard_probation" in d or "honest_only" in d]
    if more:
        kinds = ("fedavg", "guard", "guard_probation", "honest_only", "clean")
        print("\n| honest | alpha | noise | seed | recall r3: guard / + probation | ASR fedavg | guard | guard + "
              "probation | honest only | clean | acc fedavg | guard | guard + probation | honest only | clean |")
        print("|" + "---|" * 15)
        for d in more:
            rec = " / ".join(f"{d[k]['recall_r3']:.2f}" if k in d else "not run" for k in ("guard", "guard_probation"))
            print(f"| {d['honest']} | {d['alpha']} | {d['noise']} | {d['seed']} | {rec} | "
                  + " | ".join(_cell(d, k, "asr") for k in kinds) + " | "
                  + " | ".join(_cell(d, k, "accuracy") for k in kinds) + " |")


def _cell(d: dict[str, Any], kind: str, key: str) -> str:
    return f"{d[kind][key]:.3f}" if kind in d else "not run"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("quality", "report"):
        s = sub.add_parser(name)
        s.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
        s.add_argument("--honest", type=int, nargs="+", default=[100, 400])
        s.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
        s.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0])
        s.add_argument("--aggregators", nargs="+", choices=AGGREGATORS,
                       default=[a for a in AGGREGATORS if a not in OPTIONAL])
        s.add_argument("--sybil-data", choices=SYBIL_DATA, default="pool",
                       help="each sybil trains on the attacker's pool, or on a fixed shard of its own")
        s.add_argument("--sybils", type=int, default=N_SYBILS, help=f"the group's size ({N_SYBILS})")
    sub.add_parser("speed")
    trig = sub.add_parser("trigger")
    trig.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    trig.add_argument("--honest", type=int, nargs="+", default=[100, 400])
    trig.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    trig.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0])
    trig.add_argument("--l1", type=float, default=2.0, help="group_trigger's weight of the mask (2)")
    txt = sub.add_parser("text")
    txt.add_argument("--seeds", type=int, nargs="+", default=[100])
    txt.add_argument("--honest", type=int, nargs="+", default=[100, 400])
    txt.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    txt.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0])
    for name in ("pushers", "rebuilt"):
        push = sub.add_parser(name)
        push.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
        push.add_argument("--honest", type=int, nargs="+", default=[100, 400])
        push.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
        push.add_argument("--noise", type=float, nargs="+", default=[0.0])
        push.add_argument("--sybil-data", choices=SYBIL_DATA, nargs="+", default=["shard", "pool"])
    push.add_argument("--sybils", type=int, default=N_SYBILS, help=f"rebuilt's only: the group's size ({N_SYBILS})")
    push.add_argument("--text", action="store_true", help="rebuilt's only: the reviews (sybils plant 'lol')")
    push.add_argument("--act", action="store_true",  # rebuilt's only: the loop's last parser
                      help="and a guard watching the top trigger from the fourth round")
    spr = sub.add_parser("spread")
    spr.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    spr.add_argument("--honest", type=int, nargs="+", default=[100, 400])
    spr.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    spr.add_argument("--noise", type=float, nargs="+", default=[0.0])
    spr.add_argument("--trainings", type=int, default=5)
    spr.add_argument("--aggregators", nargs="+", choices=("clean", "honest", "guard", "probation", "watch"),
                     default=["honest", "guard"])
    spr.add_argument("--sybil-data", choices=SYBIL_DATA, default="pool",
                     help="each sybil trains on the attacker's pool, or on a fixed shard of its own")
    spr.add_argument("--text", action="store_true", help="the bundled reviews' federation (100 sybils plant 'lol')")
    cost = sub.add_parser("report-cost")
    cost.add_argument("--rounds", type=int, default=200)
    cost.add_argument("--timeline-rounds", type=int, default=None, help="passed to the command (default: its own)")
    args = p.parse_args(argv)
    {"quality": quality, "speed": speed, "report": report, "report-cost": report_cost,
     "trigger": induced_trigger, "text": text, "pushers": pushers, "spread": spread,
     "rebuilt": rebuilt}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
