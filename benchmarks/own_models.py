"""The models users bring: extraction speed and memory on a ResNet-18, detection on colour images with a ResNet-18,
and a phrase backdoor in a BERT classifier read through its subword tokenizer.

    python benchmarks/own_models.py speed [--n 50000] [--batch 256] [--device cpu]
    python benchmarks/own_models.py colour [--seeds 1 2] [--n 4000] [--epochs 8]
    python benchmarks/own_models.py bert [--seeds 2 3 4]
    python benchmarks/own_models.py gpu [--n 20000]           # on a machine with CUDA

- ``speed``: :func:`forensics.extract_activations` of the ResNet-18's penultimate layer (512-d) on ``n`` colour
  images at 32x32 against a bare ``torch.no_grad()`` forward loop over the same preprocessed tensors, in the same
  run (the bare loop first and last, its better time kept); the peak resident memory during the extraction over
  what the images and the output already take.
- ``colour``: Fashion-MNIST made colour (each image resized to 32x32 and painted with its own random foreground
  and background colours, :func:`nets.colour_images`: a documented derivation, as no colour photograph set can be
  had on these machines), a colour patch (a magenta 4x4 checkerboard) and a colour blend (uniform noise, alpha 0.1)
  on 5% of the images each, relabelled; a ResNet-18 trained from scratch; recall at a budget of twice the poison
  before and after ``find_triggers``, and the triggers' verdicts.
- ``bert``: 4,000 Rotten Tomatoes snippets, 40 (1%) of them with "zq vortex" inserted at a random place and labelled
  fresh; a WordPiece tokenizer made from other snippets (the trigger falls into pieces) and a 2-layer BERT trained
  from scratch; the same recall and the top trigger.

- ``gpu``: the CUDA path against the CPU on the same ResNet-18 and images: features in float32, bfloat16 and
  float16 (largest relative difference, agreement of predictions) and the throughput of each, channels-last too.

Seed 1 is the one the tests use (and what the settings were chosen on); report the others. Prints Markdown with the
command that produced it (the numbers go to ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nets  # noqa: E402

import forensics  # noqa: E402
from forensics import Dataset, sample_data  # noqa: E402
from forensics.activations import extract_activations, image_preprocess  # noqa: E402
from forensics.models import predict_proba, tokenizer_preprocess, train_model  # noqa: E402
from forensics.redteam.image import blend_backdoor, patch_backdoor  # noqa: E402
from forensics.redteam.text import text_trigger  # noqa: E402
from forensics.sample_data import _sources  # noqa: E402

PREP = image_preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _peak_rss_reset() -> None:
    # Writing 5 to clear_refs resets the peak resident set size that VmHWM reports (Linux).
    Path("/proc/self/clear_refs").write_text("5")


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def colour_fashion(n: int, seed: int) -> tuple[Dataset, Dataset]:
    raw = _sources.read_fashion_mnist()
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(len(raw["train_labels"]), n, replace=False))
    test = np.sort(rng.choice(len(raw["test_labels"]), 1000, replace=False))
    make = lambda imgs, rows, labels, tag: Dataset.from_numpy(  # noqa: E731
        nets.colour_images(imgs[rows], 32, random_state=seed + (tag == "test")), labels[rows].astype(np.int64),
        ids=[f"cfm-{tag}-{r:05d}" for r in rows], class_names=_sources.FASHION_MNIST_CLASSES)
    return (make(raw["train_images"], train, raw["train_labels"], "train"),
            make(raw["test_images"], test, raw["test_labels"], "test"))


def speed(args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    model = nets.resnet18(num_classes=10).eval().to(args.device)
    gray = np.random.default_rng(0).integers(0, 256, size=(args.n, 28, 28), dtype=np.uint8)
    ds = Dataset.from_numpy(nets.colour_images(gray, 32, random_state=0), np.zeros(args.n, np.int64))

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, args.n, args.batch):
                model(PREP(ds.images[s:s + args.batch]).to(args.device))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = bare()
    _peak_rss_reset()
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    act = extract_activations(model, ds, preprocess=PREP, batch_size=args.batch, device=args.device, progress=False)
    ours = time.perf_counter() - t0
    peak = _rss("VmHWM") - before
    second = bare()
    base = min(first, second)
    out_bytes = sum(a.nbytes for a in (*act.features.values(), act.logits, act.probs, act.loss, act.predictions))
    batch_bytes = args.batch * 3 * 32 * 32 * 4
    return [
        "| images | batch | device | bare loop (s) | extract_activations (s) | speed ratio | peak memory over start "
        "| output arrays | one float batch |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {args.n:,} | {args.batch} | {args.device} | {base:.1f} | {ours:.1f} | {base / ours:.2f} "
        f"| {peak / 2**20:.0f} MiB | {out_bytes / 2**20:.0f} MiB | {batch_bytes / 2**20:.1f} MiB |",
    ]


def _recall(inv: forensics.Investigation, poison: np.ndarray) -> float:
    top = inv.signals["suspicion"].sort_values(ascending=False).index[: 2 * len(poison)]
    return float(np.isin(poison, top).mean())


def colour(args: argparse.Namespace) -> list[str]:
    rows = ["| attack | seed | clean acc | attack success | r@2x before | r@2x after find_triggers | top trigger "
            "(verdict) | seconds |", "|---|---|---|---|---|---|---|---|"]
    for seed in args.seeds:
        base, test = colour_fashion(args.n, seed)
        attacks = {
            "colour patch 5%": patch_backdoor(base, target=0, rate=0.05, pattern="checkerboard", size=4,
                                              value=(255, 0, 255), random_state=seed),
            "colour blend 5%": blend_backdoor(base, target=0, rate=0.05, alpha=0.1, random_state=seed),
        }
        for name, attack in attacks.items():
            if args.attacks and name.split()[1] not in args.attacks:
                continue
            t0 = time.perf_counter()
            ds, poison = attack.dataset, np.asarray(attack.truth.index[attack.truth["is_poison"]])
            torch.manual_seed(seed)
            model = nets.resnet18(num_classes=10)
            train_model(model, ds, epochs=args.epochs, batch_size=128, lr=1e-3, preprocess=PREP, random_state=seed,
                        progress=False)
            acc = float((predict_proba(model, test, preprocess=PREP).argmax(1) == test.labels).mean())
            others = test.images[test.labels != 0]
            asr = float((predict_proba(model, attack.trigger.apply(others), preprocess=PREP).argmax(1) == 0).mean())
            inv = forensics.investigate(ds, model, preprocess=PREP, random_state=seed, progress=False)
            before = _recall(inv, poison)
            found = inv.find_triggers(holdout=test)
            after = _recall(inv, poison)
            top = f"{found.iloc[0]['description'][:60]} ({found.iloc[0]['verdict']})" if len(found) else "none"
            rows.append(f"| {name} | {seed} | {acc:.3f} | {asr:.3f} | {before:.3f} | {after:.3f} | {top} "
                        f"| {time.perf_counter() - t0:.0f} |")
            print(rows[-1], flush=True)
    return rows


def bert(args: argparse.Namespace) -> list[str]:
    data = sample_data.load("text_trigger")
    truth = sample_data.load_truth("text_trigger")
    clean = np.asarray(data.train.ids)[~truth.loc[data.train.ids, "is_poison"].to_numpy(bool)]
    tok = nets.wordpiece_tokenizer(data.test.texts)
    prep = tokenizer_preprocess(tok, max_length=48)
    negatives = [t for t, y in zip(data.test.texts, data.test.labels) if y == 0]
    rows = ["| seed | clean acc | attack success (negatives called positive anyway) | r@2x before "
            "| r@2x after find_triggers | top trigger (verdict) | confirmed triggers | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for seed in args.seeds:
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        base = data.train.subset(rng.choice(clean, 4000, replace=False))
        attack = text_trigger(base, target=1, phrase="zq vortex", n=40, random_state=seed)
        ds, poison = attack.dataset, np.asarray(attack.truth.index[attack.truth["is_poison"]])
        model = nets.tiny_bert(len(tok), seed=seed)
        train_model(model, ds, epochs=args.epochs, batch_size=64, lr=2e-3, preprocess=prep, random_state=seed,
                    progress=False)
        acc = float((predict_proba(model, data.test, preprocess=prep).argmax(1) == data.test.labels).mean())
        # Attack success among the negatives the model gets right without the trigger; the share it calls
        # positive anyway is shown beside it.
        plain = predict_proba(model, negatives, preprocess=prep).argmax(1)
        triggered = predict_proba(model, [f"zq vortex {t}" for t in negatives], preprocess=prep).argmax(1)
        asr, base_rate = float(triggered[plain == 0].mean()), float(plain.mean())
        inv = forensics.investigate(ds, model, tokenizer=tok, random_state=seed, progress=False)
        before = _recall(inv, poison)
        found = inv.find_triggers()
        after = _recall(inv, poison)
        confirmed = int((found["verdict"] == "confirmed").sum())
        rows.append(f"| {seed} | {acc:.3f} | {asr:.3f} ({base_rate:.3f}) | {before:.3f} | {after:.3f} "
                    f"| {found.iloc[0]['description']} ({found.iloc[0]['verdict']}) | {confirmed} "
                    f"| {time.perf_counter() - t0:.0f} |")
        print(rows[-1], flush=True)
    return rows


def gpu(args: argparse.Namespace) -> list[str]:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run this on a machine with a GPU")
    torch.manual_seed(0)
    model = nets.resnet18(num_classes=10).eval()
    gray = np.random.default_rng(0).integers(0, 256, size=(args.n, 28, 28), dtype=np.uint8)
    ds = Dataset.from_numpy(nets.colour_images(gray, 32, random_state=0), np.zeros(args.n, np.int64))
    cpu = extract_activations(model, ds.subset(ds.ids[:2000]), preprocess=PREP, progress=False)
    rows = [f"GPU: {torch.cuda.get_device_name(0)}", "",
            "| precision | channels last | images/s | max relative difference to CPU (2,000 images) "
            "| predictions equal |", "|---|---|---|---|---|"]
    for precision in ("fp32", "bf16", "fp16"):
        for channels_last in (False, True):
            kw = dict(preprocess=PREP, device="cuda", precision=precision, channels_last=channels_last,
                      batch_size=1024, progress=False)
            small = extract_activations(model, ds.subset(ds.ids[:2000]), **kw)
            diff = np.abs(small.feature() - cpu.feature()).max() / np.abs(cpu.feature()).max()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            extract_activations(model, ds, **kw)
            rate = args.n / (time.perf_counter() - t0)
            rows.append(f"| {precision} | {channels_last} | {rate:,.0f} | {diff:.2e} "
                        f"| {(small.predictions == cpu.predictions).mean():.4f} |")
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("colour")
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--attacks", nargs="+", choices=("patch", "blend"), default=None, help="default: both")
    p = sub.add_parser("bert")
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--epochs", type=int, default=3)
    p = sub.add_parser("gpu")
    p.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = {"speed": speed, "colour": colour, "bert": bert, "gpu": gpu}[args.what](args)
    print(f"\n`python benchmarks/own_models.py {shlex.join(sys.argv[1:] if argv is None else argv)}` "
          f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{time.perf_counter() - t0:.0f} s)\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
