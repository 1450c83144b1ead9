"""The ``forensics`` command line: ``forensics scan`` for data pipelines, ``forensics demo`` on the bundled data,
``forensics sanitize`` to apply a remediation plan as a new dataset version (:mod:`forensics.remediation`),
``forensics verify`` to retrain on it and check the backdoor is gone (:mod:`forensics.verify`), and
``forensics versions`` to list, diff and restore those versions (:mod:`forensics.versions`).

``forensics scan DATA`` runs the same analysis as a notebook (:func:`forensics.investigate`, then
:func:`forensics.triggers.discover.find_triggers` when there is a model) and writes to ``--out``:

- ``report.html``: a self-contained report for a person (see :mod:`forensics.report`);
- ``flagged.csv`` and ``flagged.parquet``: the samples with suspicion >= the threshold, most suspicious first,
  keyed by the dataset's own sample ids, with the reasons (CSV cells neutralized against formula injection);
- ``investigation/``: the saved investigation; continue in a notebook with
  ``forensics.Investigation.load("<out>/investigation")``;
- ``manifest.parquet`` (and its checksum sidecar ``manifest.parquet.json``): the dataset's manifest, the
  ``--baseline`` of the next scan;
- ``changes.csv`` (with ``--baseline``): every sample added, removed or changed since the baseline, with its
  suspicion.

Exit status: 0 the scan passed; 1 more than ``--fail-above`` (a share, default 0.02) of the samples have
suspicion >= ``--threshold`` (default 2: about 1% of clean samples reach it by chance), or a trigger was
confirmed on the model (unless ``--ignore-triggers``); 2 bad input (a missing
or unreadable file, an invalid dataset or model, a bad option), with the reason in one line on stderr;
3 an internal error (with its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _io
from .errors import ForensicsError, InputError

if TYPE_CHECKING:
    from .investigation import Investigation

log = logging.getLogger("forensics.cli")

#: Exit statuses of ``forensics scan``.
EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
#: Default largest share of samples allowed at or above the threshold before the scan fails.
DEFAULT_FAIL_ABOVE = 0.02
#: Where ``forensics demo`` writes unless told otherwise.
DEMO_OUT = "forensics-demo"

_TEXT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


# ---------------------------------------------------------------------------------------------- inputs
def load_dataset(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                 id_column: str = "sample_id", source_column: str | None = None, mode: str | None = None,
                 size: tuple[int, int] | None = None, sources_file: str | os.PathLike | None = None):
    """A :class:`~forensics.data.Dataset` from a path as ``forensics scan`` reads it.

    A folder is an image folder (``root/<class>/<image>``; ``size`` resizes its images, ``sources_file`` is a CSV
    of ``sample_id,source`` naming each image's contributor); ``.npz`` holds arrays ``images`` (uint8),
    ``labels`` and optionally ``ids``, ``sources``, ``class_names`` (read without pickles); ``.csv`` and
    ``.jsonl`` hold texts (the columns named). ``source_column=None`` uses a ``source`` column when there is one.
    """
    from .data import Dataset

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        sources = _read_sources_file(Path(sources_file)) if sources_file is not None else None
        return Dataset.from_image_folder(p, mode=mode, size=size, sources=sources)
    if sources_file is not None:
        raise InputError(f"--sources names each image's source for an image folder; {p} is a file (give its "
                         "sources in a column: --source-column)")
    if not p.is_file():  # a FIFO or a device would block the read, or never end
        raise InputError(f"{p}: not a regular file or folder")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p)
    if suffix in _TEXT_SUFFIXES:
        kind = _TEXT_SUFFIXES[suffix]
        if source_column is None:
            source_column = "source" if "source" in _first_columns(p, kind) else None
        reader = Dataset.from_csv if kind == "csv" else Dataset.from_jsonl
        return reader(p, text_column=text_column, label_column=label_column, id_column=id_column,
                      source_column=source_column)
    raise InputError(f"{p}: unknown data format {suffix or '(no extension)'!r}; give an image folder, a .npz file "
                     "(images, labels, ids, sources, class_names), or texts as .csv or .jsonl")


def _read_sources_file(path: Path) -> dict[str, str]:
    """``sample_id,source`` rows of a CSV file (a header names the two columns) as a mapping."""
    import csv

    if not path.is_file():
        raise InputError(f"{path}: no such file (--sources)")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV file of sources ({e})") from e
    if not rows or not {"sample_id", "source"} <= set(rows[0]):
        raise InputError(f"{path}: a sources file needs the columns sample_id and source")
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        sid, source = row.get("sample_id"), row.get("source")
        if not sid or source is None:
            raise InputError(f"{path}: line {line} has no sample_id or no source")
        if sid in out:
            raise InputError(f"{path}: line {line} names {sid[:60]!r} a second time")
        out[sid] = source
    return out


def _parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (``32x32``) as (height, width)."""
    h, sep, w = text.lower().partition("x")
    if not (sep and h.strip().isdecimal() and w.strip().isdecimal() and int(h) > 0 and int(w) > 0):
        raise argparse.ArgumentTypeError(f"give the size as HEIGHTxWIDTH, e.g. 32x32; got {text!r}")
    return int(h), int(w)


def _load_npz(p: Path):
    import numpy as np

    from .data import Dataset

    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("images", "labels") if k not in keys]
            if missing:
                raise InputError(f"{p}: no array {missing[0]!r}; a .npz dataset holds images, labels and optionally "
                                 f"ids, sources, class_names (it has {sorted(keys)[:10]})")
            arrays = {k: z[k] for k in ("images", "labels", "ids", "sources", "class_names") if k in keys}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise InputError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from e
    except InputError:
        raise
    except ValueError as e:  # an object array needs pickle, which is refused
        raise InputError(f"{p}: cannot be read without pickle ({e}); store ids, sources and class_names as "
                         "fixed-width string arrays (np.array(list_of_str) gives dtype '<U...')") from e
    return Dataset.from_numpy(arrays["images"], arrays["labels"], ids=_strings(arrays.get("ids"), "ids"),
                              class_names=_strings(arrays.get("class_names"), "class_names"),
                              sources=_strings(arrays.get("sources"), "sources"))


def _strings(a: Any, name: str = "ids") -> list[str] | None:
    """Strings of an array; bytes (numpy's ``S`` dtype) are decoded as UTF-8, never shown as ``"b'...'"``."""
    if a is None:
        return None
    out = []
    for i, v in enumerate(a.tolist()):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{name}[{i}] is bytes that are not UTF-8 text ({e.reason} at byte {e.start})") from e
        out.append(str(v))
    return out


def _first_columns(p: Path, kind: str) -> list[str]:
    """The header of a CSV file, or the keys of the first object of a JSONL file."""
    import csv
    import json

    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            if kind == "csv":
                return next(csv.reader(f), [])
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return list(obj) if isinstance(obj, dict) else []
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except (csv.Error, json.JSONDecodeError) as e:
        raise InputError(f"{p}: cannot read its first row ({e})") from e
    return []


def load_entry_model(spec: str):
    """Call ``module:function`` (the user's own code: it runs with this process's rights) and return its model."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise InputError(f"--model-entry must be 'module:function' (e.g. mypkg.models:build); got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module beside the data, as `python -m` would find it
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"--model-entry {spec}: cannot import {module_name!r} ({e})") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise InputError(f"--model-entry {spec}: {module_name} has no function {func_name!r}")
    model = fn()
    if not callable(getattr(model, "named_modules", None)):
        raise InputError(f"--model-entry {spec} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def _load_model(args: argparse.Namespace, bundled: Any = None):
    """(model or None, description) from --model / --model-entry, else the bundled sample's model."""
    if args.model and args.model_entry:
        raise InputError("give --model or --model-entry, not both")
    if args.model:
        from .models import load_model

        _require_model_files(args.model)
        model, _ = load_model(args.model)
        return model, f"model {args.model}"
    if args.model_entry:
        return load_entry_model(args.model_entry), f"model from {args.model_entry}"
    if bundled is not None:
        model, _ = bundled.model()
        return model, f"bundled model {bundled.model_path}"
    return None, "reference model trained on the data"


def _require_model_files(path: str) -> None:
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    for suffix in (".safetensors", ".json"):
        f = base.with_name(base.name + suffix)
        if not f.is_file():
            raise InputError(f"--model {path}: {f} is missing (a model is <name>.safetensors plus its card "
                             "<name>.json, as forensics.models.save_model writes)")


# ---------------------------------------------------------------------------------------------- scan
def _scan(args: argparse.Namespace) -> int:
    import numpy as np

    from . import integrity
    from .analysis import investigate
    from .report import render_report, scan_verdict
    from .triggers.discover import find_triggers

    t0 = time.perf_counter()
    tty = sys.stderr.isatty()
    if args.fail_above is not None and not 0.0 <= args.fail_above <= 1.0:
        raise InputError(f"--fail-above must be a share between 0 and 1 (0.02 = 2%); got {args.fail_above}")
    bundled = None
    if args.sample:
        if args.data:
            raise InputError("give DATA or --sample, not both")
        from . import sample_data

        bundled = sample_data.load(args.sample)
        dataset, data_name = bundled.train, f"bundled sample {args.sample} (train split)"
    elif args.data:
        dataset, data_name = _read(args, args.data), str(args.data)
    else:
        raise InputError("give DATA (an image folder, .npz, .csv or .jsonl) or --sample NAME")
    baseline = integrity.load_manifest(args.baseline) if args.baseline else None
    canaries = None
    if args.canaries:
        canaries = _as_classes(_read(args, args.canaries, with_sources=False), dataset.class_names)
    model, model_name = _load_model(args, bundled)
    baseline_model = None
    if args.baseline_model:
        if canaries is None:
            raise InputError("--baseline-model compares predictions on canaries: give --canaries too")
        from .models import load_model

        _require_model_files(args.baseline_model)
        baseline_model, _ = load_model(args.baseline_model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create the folder ({e.strerror or e})") from e
    log.info("scanning %s: %s, %s", data_name, dataset, model_name)

    log.info("extracting activations and running the signals")
    # The canaries are a trusted set: their labels around each sample, and (500 or more) the anchor of the nulls.
    inv = investigate(dataset, model, layer=args.layer, random_state=args.seed, progress=tty,
                      cache_dir=args.cache_dir, signals=_signal_selection(args.signals, args.signal_param),
                      trusted=canaries)
    if inv.model is not None:
        log.info("searching for triggers and confirming them on the model")
        # Trusted held-out samples take the add test, where the model has not memorized any label.
        holdout = canaries if canaries is not None else (bundled.test if bundled is not None else None)
        find_triggers(inv, holdout=holdout, random_state=args.seed)
    canary_rep = None
    if canaries is not None:
        canary_rep = _canaries(inv.model, canaries, baseline_model)
    threshold = args.threshold
    verdict = scan_verdict(inv, threshold=threshold, fail_above=args.fail_above,
                           fail_on_trigger=not args.ignore_triggers)

    manifest = integrity.make_manifest(dataset, previous=baseline)
    integrity.save_manifest(manifest, out / "manifest.parquet")
    diff = None
    if baseline is not None:
        diff = integrity.diff(baseline, manifest)
        _write_changes(inv, diff, out / "changes.csv")
    flagged = inv.signals["suspicion"].to_numpy(dtype=np.float64) >= threshold
    if flagged.any():
        inv.flag(flagged, note=f"scan: suspicion >= {threshold:g}", who="forensics scan")
    inv.export(out / "flagged.csv")
    inv.export(out / "flagged.parquet")
    if not args.no_map:
        log.info("building the map (UMAP) and clusters")
    run_info = {"command": "forensics " + " ".join(args.argv), "data": data_name, "model": model_name,
                "fail_above": args.fail_above, "threshold": threshold}
    html = render_report(inv, diff=diff, canaries=canary_rep, title=f"Data poisoning scan: {data_name}",
                         threshold=threshold, fail_above=args.fail_above,
                         fail_on_trigger=not args.ignore_triggers, include_map=not args.no_map,
                         run_info=run_info)
    _io.atomic_write_text(out / "report.html", html)  # a full disk leaves the previous report, never half of one
    inv.save(out / "investigation", overwrite=True)
    seconds = time.perf_counter() - t0
    print(verdict.text)
    print(f"Wrote {out / 'report.html'} ({len(html.encode()) / 1e6:.1f} MB), flagged.csv, flagged.parquet, "
          f"manifest.parquet, investigation/ in {out} ({seconds:.0f} s)")
    return EXIT_FAIL if verdict.failed else EXIT_PASS


def _read(args: argparse.Namespace, path: str, *, with_sources: bool = True):
    return load_dataset(path, text_column=args.text_column, label_column=args.label_column,
                        id_column=args.id_column, source_column=args.source_column, mode=args.image_mode,
                        size=args.image_size, sources_file=args.sources if with_sources else None)


def _as_classes(canaries: Any, class_names: tuple[str, ...]):
    """The canaries with their labels renumbered into the scanned dataset's class list (matched by name)."""
    from .data import Dataset

    if canaries.class_names == class_names:
        return canaries
    names = [canaries.class_names[i] for i in canaries.labels]
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise InputError(f"--canaries has labels {unknown[:5]} that are not classes of the data "
                         f"{list(class_names)[:20]}")
    return Dataset(kind=canaries.kind, ids=canaries.ids, labels=names, class_names=class_names,
                   sources=canaries.sources, images=canaries.images, texts=canaries.texts, hashes=canaries.hashes)


def _canaries(model: Any, canaries: Any, baseline_model: Any):
    from . import integrity
    from .models import predict_proba

    if model is None:
        raise InputError("--canaries needs a model")
    base = None if baseline_model is None else predict_proba(baseline_model, canaries)
    return integrity.canary_report(lambda ds: predict_proba(model, ds), canaries, baseline_predictions=base)


def _write_changes(inv: Investigation, diff: Any, path: Path) -> None:
    from .export import export_table

    table = diff.to_frame()
    table["suspicion"] = inv.signals["suspicion"].reindex(table.index.astype(str)).to_numpy()
    table = table.sort_values("suspicion", ascending=False, na_position="last", kind="stable")
    table["time_added"] = table["time_added"].astype("str")
    export_table(table, path, meta={"what": "changes since the baseline manifest", "summary": diff.summary()})


def _signal_selection(names: str | None, settings: list[str] | None) -> dict[str, dict[str, Any]] | None:
    """``--signals a,b`` and ``--signal-param a.k=20`` as investigate's ``signals`` mapping (None: the defaults)."""
    from .signals.registry import default_signals

    if names is None and not settings:
        return None
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names is not None else list(default_signals())
    if not chosen:
        raise InputError("--signals names no signal; give names separated by commas")
    selection: dict[str, dict[str, Any]] = {name: {} for name in chosen}
    for setting in settings or ():
        key, sep, raw = setting.partition("=")
        name, dot, param = key.partition(".")
        if not (sep and dot and name and param):
            raise InputError(f"--signal-param {setting!r}: write SIGNAL.PARAMETER=VALUE, e.g. knn_disagreement.k=20")
        if name not in selection:
            raise InputError(f"--signal-param {setting!r}: {name!r} is not among the signals that run {chosen}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word: a string parameter such as metric=euclidean
        selection[name][param] = value
    return selection


# ---------------------------------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    args.sample = args.sample or "image_backdoor"
    args.data = None
    for name in ("model", "model_entry", "layer", "baseline", "canaries", "baseline_model", "image_mode",
                 "image_size", "sources",
                 "cache_dir", "signals", "signal_param"):
        setattr(args, name, None)
    args.text_column, args.label_column, args.id_column, args.source_column = "text", "label", "sample_id", None
    args.threshold, args.seed, args.ignore_triggers = _threshold_default(), 0, False
    status = _scan(args)
    from . import sample_data

    card = sample_data.describe().loc[args.sample]
    print(f"The bundled reference model ({card['model']}): clean accuracy {card['clean_accuracy']:.1%} on the test "
          f"split; with the planted trigger added, {card['attack_success']:.1%} of the test samples of other classes "
          "that it gets right go to the target class (attack success).")
    print(f"Demo finished: the scan would exit with status {status} "
          f"({'poison found' if status == EXIT_FAIL else 'clean'}).")
    print(f"Open {Path(args.out).resolve() / 'report.html'}")
    print(f"Demo folder: {Path(args.out).resolve()}")
    return 0


def _threshold_default() -> float:
    from .signals.combine import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forensics", description="Forensics for data poisoning.")
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser(
        "scan", help="scan a dataset: HTML report, flagged list, saved investigation; non-zero exit when poisoned",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Scan a training set for poisoned samples, as a pipeline step.",
        epilog=(
            "exit status:\n"
            "  0  passed: at most --fail-above of the samples have suspicion >= --threshold and no\n"
            "     trigger was confirmed on the model\n"
            "  1  failed: more than --fail-above of the samples have suspicion >= --threshold, or a\n"
            "     trigger was confirmed on the model (unless --ignore-triggers)\n"
            "  2  bad input (missing or unreadable file, invalid data or model, bad option); reason on stderr\n"
            "  3  internal error\n\n"
            "suspicion is -log10 of the estimated share of clean samples scoring as high: threshold 2 flags\n"
            "about 1% of clean samples by chance, so a clean set has roughly 0.3-1% flagged.\n\n"
            "--model-entry imports and calls your own code (module:function returning a torch nn.Module):\n"
            "use it only with code you trust. --model reads safetensors weights and a JSON card, no code."),
    )
    scan.add_argument("data", nargs="?", metavar="DATA",
                      help="image folder (root/<class>/<image>), .npz (images, labels[, ids, sources, class_names]), "
                           "or texts as .csv / .jsonl")
    _scan_options(scan)
    scan.set_defaults(func=_scan)
    demo = sub.add_parser("demo", help="scan the bundled image data (a patch backdoor and a label bot) and "
                                       "write the report to a folder")
    demo.add_argument("--out", default=DEMO_OUT, help=f"output folder (default {DEMO_OUT})")
    demo.add_argument("--sample", choices=("image_backdoor", "text_trigger"), default="image_backdoor",
                      help="bundled dataset to scan (default image_backdoor)")
    demo.add_argument("--no-map", action="store_true", help="skip the 2-D map and clusters (faster)")
    demo.add_argument("--fail-above", type=float, default=DEFAULT_FAIL_ABOVE, help=argparse.SUPPRESS)
    demo.set_defaults(func=_demo)
    sanitize = sub.add_parser(
        "sanitize", help="plan what to remove, relabel or quarantine from a saved investigation; apply it as a new "
                         "dataset version",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a saved investigation (forensics scan --out DIR writes DIR/investigation) into a "
                    "remediation plan, print its dry run, write the plan, and unless --dry-run apply it as a new "
                    "version of a version store (the investigated data is committed first when the store is empty).",
        epilog="exit status:\n  0  the plan was written (and applied unless --dry-run)\n"
               "  2  bad input (missing investigation, changed data, unknown source or cluster); reason on stderr\n"
               "  3  internal error")
    sanitize.add_argument("investigation", metavar="INVESTIGATION", help="a saved investigation folder")
    sanitize.add_argument("--versions", metavar="STORE", help="version store folder (required unless --dry-run)")
    sanitize.add_argument("--plan-out", metavar="FILE", help="write the plan here (.csv, .parquet or .json)")
    sanitize.add_argument("--threshold", type=float, default=_threshold_default(),
                          help="relabel or remove samples whose suspicion reaches it (default %(default)s)")
    sanitize.add_argument("--no-suspicion", action="store_true", help="the suspicion chooses nothing")
    sanitize.add_argument("--source", action="append", default=[], metavar="NAME",
                          help="remove every sample of this source (repeatable)")
    sanitize.add_argument("--cluster", action="append", default=[], type=int, metavar="ID",
                          help="remove every sample of this map cluster (repeatable)")
    sanitize.add_argument("--no-triggers", action="store_true", help="keep the carriers of confirmed triggers")
    sanitize.add_argument("--no-review", action="store_true", help="ignore the review decisions")
    sanitize.add_argument("--no-relabel", action="store_true", help="remove instead of relabelling")
    sanitize.add_argument("--pairs", action="store_true",
                          help="relabel back the samples of each one-way relabelling found (the most likely ones)")
    sanitize.add_argument("--dry-run", action="store_true", help="print the plan's cost; write no version")
    sanitize.add_argument("--note", default="", help="why (recorded with the new version)")
    sanitize.set_defaults(func=_sanitize)
    check = sub.add_parser(
        "verify", help="retrain on the investigated data and on a sanitized version; fail when a confirmed trigger "
                       "still works or clean accuracy dropped",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the reference model on the data a saved investigation examined and on a version of a "
                    "version store (default: the current one), measure both on held-out data (clean accuracy, per "
                    "class, and the attack success rate of every confirmed trigger), and print them side by side.",
        epilog="exit status:\n  0  every confirmed trigger's attack success is at most --max-asr on the sanitized "
               "model and\n     clean accuracy fell by at most --max-accuracy-drop\n  1  otherwise\n"
               "  2  bad input; reason on stderr\n  3  internal error")
    check.add_argument("investigation", metavar="INVESTIGATION", help="a saved investigation folder")
    check.add_argument("--versions", metavar="STORE", required=True, help="the version store of the sanitized data")
    check.add_argument("--version", metavar="V", help="the sanitized version (default: the current one)")
    check.add_argument("--holdout", metavar="DATA", required=True,
                       help="held-out samples with the same classes (same formats as scan's DATA)")
    check.add_argument("--max-asr", type=float, default=0.05, help="largest attack success left (default 0.05)")
    check.add_argument("--max-accuracy-drop", type=float, default=0.01,
                       help="largest fall of clean accuracy (default 0.01, one point)")
    check.add_argument("--table-out", metavar="FILE",
                       help="write the side-by-side table here (.csv, .parquet or .json)")
    check.add_argument("--report", metavar="FILE", help="write an HTML report with the before/after section")
    check.add_argument("--seed", type=int, default=0, help="seed of the reference models (default 0)")
    check.add_argument("--text-column", default="text", help="CSV/JSONL column of the texts (default text)")
    check.add_argument("--label-column", default="label", help="CSV/JSONL column of the labels (default label)")
    check.set_defaults(func=_verify)
    versions = sub.add_parser("versions", help="list, diff and restore the dataset versions of a version store",
                              description="Dataset versions written by forensics.versions.VersionStore: list them, "
                                          "show what changed between two, or make an earlier one current again "
                                          "(a rollback, recorded in the store's audit log).")
    versions.add_argument("store", metavar="STORE", help="the version store's folder")
    versions.add_argument("action", nargs="?", choices=("list", "diff", "restore", "readmit"), default="list",
                          help="list (default); diff OLD NEW; restore VERSION; readmit SAMPLE_ID... (quarantined "
                               "samples reviewed and found clean, back in as a new version)")
    versions.add_argument("version", nargs="*", metavar="ARG", help="version ids (v0001, ...), or sample ids")
    versions.add_argument("--note", default="", help="why (recorded with a restore or a readmission)")
    versions.set_defaults(func=_versions)
    clients = sub.add_parser(
        "clients", help="score the clients of a recorded federated run; exit 1 when any is flagged",
        description="The clients of a federation recorded by forensics.federated.UpdateRecorder (a folder): each\n"
                    "one's suspicion and reasons over the last rounds (norm, dissent, Krum distance, sybil groups,\n"
                    "stale and non-finite updates), printed. --report also writes a self-contained HTML page for a\n"
                    "person: the verdict, the flagged clients with their reasons, the sybil groups with their\n"
                    "members, a map of the clients and each flagged client's suspicion round by round (every round\n"
                    "scored on the recording as it stood then, as a guard would have).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status:\n  0  no client reaches --threshold\n  1  at least one client is flagged\n"
               "  2  bad input (not a recording, a damaged round file, an unwritable --report path); reason on stderr\n"
               "  3  internal error")
    clients.add_argument("recording", metavar="RECORDING", help="the recorder's folder")
    clients.add_argument("--window", type=int, default=3, help="rounds analysed, counted back from the last (3)")
    clients.add_argument("--threshold", type=float, default=2.0, help="suspicion that flags a client (2)")
    clients.add_argument("--min-group", type=int, default=10, help="smallest sybil group (10)")
    clients.add_argument("--table-out", metavar="FILE", help="write the per-client table (.csv, .parquet, .json)")
    clients.add_argument("--top", type=int, default=15, help="clients printed (15)")
    clients.add_argument("--report", metavar="FILE",
                         help="write an HTML report here: verdict, flagged clients, sybil groups, client map, "
                              "suspicion round by round (self-contained, about 5 MB)")
    clients.add_argument("--timeline-rounds", type=int, default=100, metavar="N",
                         help="the report's timeline analyses at most N rounds, evenly spaced, the first and the last "
                              "among them (100; each is one analysis of the recording as it stood then)")
    clients.set_defaults(func=_clients)
    return parser


def _clients(args: argparse.Namespace) -> int:
    from .export import export_table
    from .federated import UpdateRecorder, analyze_clients

    if args.report:  # a path that cannot be written is refused before the analysis
        from ._validate import check_int
        from .federated.report import check_report_path

        check_report_path(args.report, "--report")
        check_int(args.timeline_rounds, "--timeline-rounds", low=2)
    rec = UpdateRecorder.load(args.recording, attach=False)
    report = analyze_clients(rec, window=args.window, threshold=args.threshold, min_group=args.min_group)
    table = report.table
    flagged = report.flagged
    rounds = report.params.get("rounds", [])
    print(f"{len(table)} clients over round(s) {', '.join(map(str, rounds))}: {len(flagged)} flagged at suspicion "
          f">= {args.threshold:g}")
    for g, row in report.sybil_groups.iterrows():
        print(f"sybil group {g}: {int(row['size'])} clients since round {int(row['first_round'])}")
    shown = table.head(args.top)[["suspicion", "is_flagged", "reasons"]]
    print(shown.to_string(max_colwidth=90))
    if args.table_out:
        path = export_table(table, args.table_out, meta={"recording": str(args.recording), "params": report.params})
        print(f"table written to {path}")
    if args.report:
        from .federated.report import write_client_report
        from .federated.views import timeline_rounds

        # Each round scored on the recording as it stood then, as a guard would have: the suspicion round by round
        # (on a long recording, evenly spaced rounds: one analysis each).
        last = rec.rounds[-1]
        reports = {r: analyze_clients(rec.until(r), window=args.window, threshold=args.threshold,
                                      min_group=args.min_group)
                   for r in timeline_rounds(rec.rounds, args.timeline_rounds) if r != last}
        reports[last] = report
        page = write_client_report(args.report, report, rec, title=f"Federated clients: {args.recording}",
                                   reports=reports)
        print(f"report written to {page}")
    return EXIT_FAIL if flagged else EXIT_PASS


def _sanitize(args: argparse.Namespace) -> int:
    from .export import export_table
    from .investigation import Investigation
    from .versions import VersionStore

    if not args.dry_run and not args.versions:
        raise InputError("sanitize needs --versions STORE to write the sanitized data to (or --dry-run)")
    inv = Investigation.load(args.investigation)
    plan = inv.plan(threshold=None if args.no_suspicion else args.threshold, triggers=not args.no_triggers,
                    sources=args.source, clusters=args.cluster, review=not args.no_review,
                    relabel=not args.no_relabel, pairs=args.pairs)
    print(plan.summary())
    if args.plan_out:
        path = export_table(plan.to_frame(), args.plan_out, meta={"investigation": inv.id, "policy": plan.policy})
        print(f"plan written to {path}")
    if args.dry_run:
        return EXIT_PASS
    store = VersionStore(args.versions)
    if store.current is None:
        store.commit(inv.dataset, note="as investigated")
    current = store.load()
    if current.content_hash != inv.dataset.content_hash:
        raise InputError(f"the current version {store.current} of {args.versions} is not the investigated data; "
                         "investigate it, or restore the version that was investigated")
    vid = store.commit(plan.apply(current), note=args.note or f"sanitized from investigation {inv.id[:12]}")
    print(f"{vid} written to {args.versions} and made current ({len(store.load(vid))} samples)")
    return EXIT_PASS


def _verify(args: argparse.Namespace) -> int:
    from .export import export_table
    from .investigation import Investigation
    from .verify import verify
    from .versions import VersionStore

    inv = Investigation.load(args.investigation)
    if not Path(args.versions).is_dir():
        raise InputError(f"{args.versions}: no such version store (a folder)")
    sanitized = VersionStore(args.versions).load(args.version)
    holdout = load_dataset(args.holdout, text_column=args.text_column, label_column=args.label_column)
    result = verify(inv, sanitized, holdout=holdout, random_state=args.seed)
    print(result.summary())
    if args.table_out:
        print(f"table written to {export_table(result.table.rename_axis('model'), args.table_out)}")
    if args.report:
        from .report import render_report

        page = render_report(inv, title="Remediation verified", include_map=False, verification=result)
        _io.atomic_write_text(args.report, page)
        print(f"report written to {args.report}")
    t = result.table
    asr = [c for c in t.columns if c.startswith("asr ")]
    still = [c[4:] for c in asr if t.loc["sanitized", c] > args.max_asr]
    drop = float(t.loc["original", "accuracy"] - t.loc["sanitized", "accuracy"])
    failures = [f"{name} still works (attack success above {args.max_asr:g})" for name in still]
    if drop > args.max_accuracy_drop:
        failures.append(f"clean accuracy fell by {drop:.3f}")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return EXIT_FAIL
    print("PASS: no confirmed trigger works on the sanitized model and clean accuracy held")
    return EXIT_PASS


def _versions(args: argparse.Namespace) -> int:
    from .versions import VersionStore

    if not Path(args.store).is_dir():
        raise InputError(f"{args.store}: no such version store (a folder)")
    store = VersionStore(args.store)
    if args.action == "readmit":
        if not args.version:
            raise InputError("versions readmit takes the ids of the quarantined samples to put back")
        vid = store.readmit(args.version, note=args.note)
        print(f"{vid} written and made current: {len(args.version)} sample(s) readmitted from the quarantine")
        return EXIT_PASS
    wanted = {"list": 0, "diff": 2, "restore": 1}[args.action]
    if len(args.version) != wanted:
        raise InputError(f"versions {args.action} takes {wanted} version id(s); got {len(args.version)}")
    if args.action == "list":
        table = store.list()
        print("no versions yet" if table.empty else table.drop(columns=["content_hash"]).to_string())
    elif args.action == "diff":
        print(store.diff(*args.version).summary())
    else:
        previous = store.current
        ds = store.restore(args.version[0], note=args.note)
        print(f"{args.version[0]} is current again ({len(ds)} samples, content hash {ds.content_hash}); "
              f"it was {previous}")
    return EXIT_PASS


def _scan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", choices=("image_backdoor", "text_trigger"),
                   help="scan a bundled dataset's training split (and its model) instead of DATA")
    p.add_argument("--model", metavar="PATH", help="model saved by forensics.models.save_model: PATH.safetensors "
                                                   "plus the card PATH.json (PATH may end in either)")
    p.add_argument("--model-entry", metavar="MODULE:FUNCTION",
                   help="your own code returning a torch nn.Module (runs that code; the module is imported from "
                        "the current folder or PYTHONPATH). Without a model a reference model is trained")
    p.add_argument("--layer", help="layer whose activations are analysed (default: the input of the last Linear)")
    p.add_argument("--out", metavar="DIR", help="output folder (default forensics-scan; created if missing)")
    p.add_argument("--threshold", type=float, default=_threshold_default(),
                   help="suspicion at which a sample is flagged (default %(default)s: about 1%% of clean samples)")
    p.add_argument("--fail-above", type=float, default=DEFAULT_FAIL_ABOVE, metavar="SHARE",
                   help="exit 1 when more than this share (0..1) of the samples have suspicion >= --threshold "
                        "(default %(default)s, i.e. 2%%)")
    p.add_argument("--ignore-triggers", action="store_true",
                   help="do not fail on a trigger confirmed on the model (only the share flagged counts)")
    p.add_argument("--baseline", metavar="MANIFEST",
                   help="manifest.parquet of an earlier scan: report what was added, removed, relabelled or "
                        "modified since, by source, and rank the changed samples")
    p.add_argument("--canaries", metavar="DATA", help="trusted samples with known labels (same formats as DATA), "
                                                      "kept out of DATA: the trusted signals compare the data with "
                                                      "them (500 or more also anchor the signals' nulls), the "
                                                      "report gives the model's accuracy on them, and trigger "
                                                      "candidates are pasted into them to be confirmed")
    p.add_argument("--baseline-model", metavar="PATH",
                   help="an earlier model (safetensors + card): list the canaries whose prediction changed")
    p.add_argument("--text-column", default="text", help="CSV/JSONL column of the texts (default text)")
    p.add_argument("--label-column", default="label", help="CSV/JSONL column of the labels (default label)")
    p.add_argument("--id-column", default="sample_id",
                   help="CSV/JSONL column of the sample ids (default sample_id; rows are numbered without it)")
    p.add_argument("--source-column", default=None,
                   help="CSV/JSONL column of the sources (default: 'source' when present)")
    p.add_argument("--image-mode", choices=("L", "RGB"), help="convert every image of a folder to this mode")
    p.add_argument("--image-size", type=_parse_size, metavar="HxW",
                   help="resize every image of a folder to HEIGHTxWIDTH (bilinear), e.g. 32x32")
    p.add_argument("--sources", metavar="CSV",
                   help="for an image folder: a CSV of sample_id,source naming each image's contributor")
    p.add_argument("--no-map", action="store_true",
                   help="skip the 2-D map and clusters (about half a minute per 10,000 samples)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep the activations and the map here: a rescan of the same data and model reads them back")
    p.add_argument("--seed", type=int, default=0, help="random seed of every step (default 0)")
    p.add_argument("--signals", metavar="NAME,NAME", help="signals to run, separated by commas (default: the "
                   "default set; see forensics.signals.registered_signals())")
    p.add_argument("--signal-param", metavar="SIGNAL.PARAM=VALUE", action="append",
                   help="a signal's parameter, e.g. knn_disagreement.k=20 (repeatable; VALUE is read as JSON)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or a usage error (2: bad input), already explained on stderr
        return int(e.code or 0)
    args.argv = argv
    if getattr(args, "out", "") is None:
        args.out = "forensics-scan"
    tty = sys.stderr.isatty()
    # Progress reaches a CI log too: stage lines with the time when the output is not a terminal (no progress bars
    # there), plain lines and progress bars on a terminal.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if tty else "%(asctime)s %(message)s", "%H:%M:%S"))
    package = logging.getLogger("forensics")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        return args.func(args)
    except (ForensicsError, OSError) as e:
        reason = str(e) if isinstance(e, ForensicsError) else f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        print(f"error: {' '.join(reason.split())}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not the input: keep the traceback and never exit 1, which means "poisoned"
        traceback.print_exc()
        return EXIT_INTERNAL
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


if __name__ == "__main__":
    raise SystemExit(main())
