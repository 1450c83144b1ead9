"""Record client updates round by round: a sketch and the exact norm of each, saved atomically to a folder.

The full updates are never kept. Each round stores, per client, the fixed random sketch of its update
(:func:`forensics.federated.sketch.sketch`), its exact L2 norm, its number of examples, whether it was finite and a
checksum of its bytes (so that a client resending an old update is seen). A non-finite update (NaN or inf) is
itself evidence: it is recorded as an anomaly, its sketch is taken over its finite entries, and the analysis flags
the client. Updates that cannot be read (the wrong number of parameters, a client whose shape changed, a round
recorded twice) raise :class:`~forensics.errors.InputError` before anything of the round is kept, or, with
``bad_shape="record"``, are left out of the round and recorded as anomalies, so that a server loop never stops.

With a ``folder``, every round is written as it is recorded (``rounds/round-<r>.npz``, then ``recorder.json``,
each atomically, the manifest holding the checksum of every round file), so a crash loses at most the round being
written. :meth:`UpdateRecorder.load` reads it back and checks the checksums.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write_bytes, atomic_write_text, file_digest
from .._validate import check_choice, check_int, check_random_state
from ..errors import InputError, IntegrityError
from .sketch import SKETCH_DIM, Layout, flatten_update, sketch

FORMAT_VERSION = 1
MANIFEST = "recorder.json"


@dataclass(frozen=True)
class RoundRecord:
    """One recorded round: per client (in the order given) its sketch, norm, examples, finiteness and checksum."""

    round: int
    client_ids: np.ndarray
    sketches: np.ndarray
    norms: np.ndarray
    n_examples: np.ndarray
    finite: np.ndarray
    digests: np.ndarray


def _round_path(folder: Path, r: int) -> Path:
    return folder / "rounds" / f"round-{r:06d}.npz"


class UpdateRecorder:
    """Keeps every round's client updates as sketches and norms, optionally persisted to ``folder``.

    Parameters
    ----------
    folder : path, optional
        Where every round is written as it is recorded. It must not already hold a recording (use
        :meth:`load` to continue one).
    k : int
        Sketch dimension.
    random_state : int
        Seed of the projection.

    Examples
    --------
    >>> rec = UpdateRecorder("runs/fl-audit")
    >>> rec.record_round(0, {"phone-1": delta_1, "phone-2": delta_2}, metadata={"phone-1": {"region": "EU"}})
    """

    def __init__(self, folder: str | os.PathLike | None = None, *, k: int = SKETCH_DIM, random_state: int = 0):
        self.k = check_int(k, "k", low=2)
        self.random_state = check_random_state(random_state)
        self.folder = None if folder is None else Path(folder)
        self.n_params: int | None = None
        self.layout: Layout | None = None
        self._rounds: dict[int, RoundRecord] = {}
        self._clients: dict[str, dict[str, Any]] = {}
        self._anomalies: list[dict[str, Any]] = []
        self._digests: dict[int, str] = {}
        if self.folder is not None:
            if (self.folder / MANIFEST).exists():
                raise InputError(f"folder {self.folder} already holds a recording; continue it with "
                                 "UpdateRecorder.load(folder)")
            (self.folder / "rounds").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------- recording
    def record_round(
        self,
        round: int,
        updates: Mapping[str, Any] | np.ndarray,
        *,
        client_ids: Sequence[str] | None = None,
        n_examples: Mapping[str, int] | Sequence[int] | None = None,
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
        bad_shape: str = "raise",
    ) -> RoundRecord:
        """Record one round of client updates.

        Parameters
        ----------
        round : int >= 0
            Each round is recorded once.
        updates : mapping client_id -> update, or ndarray of shape (n_clients, n_params) with ``client_ids``
            An update is anything :func:`~forensics.federated.sketch.flatten_update` reads: a flat array, a
            sequence of arrays, a ``state_dict`` delta, a Flower ``Parameters`` or ``ArrayRecord``.
        client_ids : sequence of str, optional
            Needed with a 2-D array of updates, one per row.
        n_examples : mapping or sequence of int, optional
            Examples each client trained on (default 1 each).
        metadata : mapping client_id -> dict, optional
            Kept per client the first time it is given (e.g. ``device``, ``region``, ``first_seen``).
        bad_shape : "raise" or "record"
            What an update of the wrong size does: raise before anything is kept, or be left out of the round and
            recorded as an anomaly.

        Returns
        -------
        RoundRecord
        """
        r = check_int(round, "round", low=0)
        check_choice(bad_shape, "bad_shape", ("raise", "record"))
        if r in self._rounds:
            raise InputError(f"round {r} is already recorded; each round is recorded once")
        ids, flats, layouts = self._read_updates(updates, client_ids)
        n_ex = self._read_examples(n_examples, ids)
        anomalies: list[dict[str, Any]] = []
        # The expected size: the recording's, else the most common one of this round.
        sizes = [f.size for f in flats]
        n_params = self.n_params if self.n_params is not None else max(set(sizes), key=sizes.count)
        keep = []
        for i, (cid, f) in enumerate(zip(ids, flats)):
            known = self._clients.get(cid, {}).get("n_params")
            if f.size != n_params:
                if known is not None and known != f.size:
                    msg = (f"client {cid!r} sent {f.size} parameters in round {r} but {known} before; a client id "
                           "must keep one model shape")
                else:
                    msg = f"the update of client {cid!r} in round {r} has {f.size} parameters; expected {n_params}"
                if bad_shape == "raise":
                    raise InputError(msg)
                anomalies.append(dict(round=r, client_id=cid, kind="bad_shape", detail=msg))
                continue
            keep.append(i)
        if not keep:
            raise InputError(f"round {r} has no update of the expected size ({n_params} parameters)")
        ids_k = [ids[i] for i in keep]
        # A 2-D array is used as it is (no copy of 400 x 100k values); mappings are stacked.
        if isinstance(updates, np.ndarray) and len(keep) == len(flats):
            x = updates if updates.dtype.kind == "f" else updates.astype(np.float64)
        else:
            x = np.stack([flats[i] for i in keep])
        finite = np.isfinite(x).all(axis=1)
        for row in np.flatnonzero(~finite).tolist():
            bad = int((~np.isfinite(x[row])).sum())
            anomalies.append(dict(round=r, client_id=ids_k[row], kind="non_finite",
                                  detail=f"{bad} NaN or infinite value(s) of {x.shape[1]}"))
        clean = x if finite.all() else np.where(np.isfinite(x), x, 0)
        # Exact norms, accumulated in float64 a few rows at a time.
        norms = np.concatenate([np.linalg.norm(clean[s:s + 16].astype(np.float64), axis=1)
                                for s in range(0, len(clean), 16)])
        norms = np.where(finite, norms, np.nan)
        sk = sketch(clean, k=self.k, random_state=self.random_state)
        digests = np.array([hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in x], dtype=object)
        rec = RoundRecord(round=r, client_ids=np.array(ids_k, dtype=object), sketches=sk, norms=norms,
                          n_examples=n_ex[keep], finite=finite, digests=digests)
        # Commit: nothing above changed the recorder.
        if self.n_params is None:
            self.n_params = int(n_params)
            self.layout = layouts[keep[0]]
        for cid in ids_k:
            c = self._clients.setdefault(cid, dict(client_id=cid, n_params=int(n_params), first_round=r))
            c["first_round"] = min(c["first_round"], r)
            if metadata and cid in metadata and "metadata" not in c:
                c["metadata"] = {str(k): v for k, v in dict(metadata[cid]).items()}
        self._rounds[r] = rec
        self._anomalies.extend(anomalies)
        if self.folder is not None:
            self._write_round(rec)
            self._write_manifest()
        return rec

    def _read_updates(self, updates: Any, client_ids: Any) -> tuple[list[str], list[np.ndarray], list[Layout]]:
        if isinstance(updates, Mapping):
            if client_ids is not None:
                raise InputError("client_ids is only for a 2-D array of updates; a mapping names its clients")
            ids = [str(c) for c in updates]
            pairs = [flatten_update(u, name=f"updates[{c!r}]") for c, u in updates.items()]
        else:
            arr = np.asarray(updates)
            if arr.ndim != 2:
                raise InputError(f"updates must be a mapping client_id -> update or a 2-D array (n_clients, "
                                 f"n_params); got shape {arr.shape}")
            if client_ids is None or len(client_ids) != len(arr):
                raise InputError(f"client_ids must name each of the {len(arr)} rows of updates; got "
                                 f"{None if client_ids is None else len(client_ids)}")
            if arr.dtype.kind not in "fiub":
                raise InputError(f"updates must be numeric; got dtype {arr.dtype}")
            ids = [str(c) for c in client_ids]
            if arr.dtype.kind != "f":
                arr = arr.astype(np.float64)
            pairs = [(row, [("", (arr.shape[1],))]) for row in arr]  # views of arr
        if not ids:
            raise InputError("updates is empty; a round needs at least one client update")
        if len(set(ids)) != len(ids):
            dup = sorted({c for c in ids if ids.count(c) > 1})
            raise InputError(f"client ids must be unique within a round; repeated: {dup[:5]}")
        return ids, [p[0] for p in pairs], [p[1] for p in pairs]

    @staticmethod
    def _read_examples(n_examples: Any, ids: list[str]) -> np.ndarray:
        if n_examples is None:
            return np.ones(len(ids), dtype=np.int64)
        if isinstance(n_examples, Mapping):
            missing = [c for c in ids if c not in n_examples]
            if missing:
                raise InputError(f"n_examples has no count for client(s) {missing[:5]}")
            vals = [n_examples[c] for c in ids]
        else:
            vals = list(n_examples)
            if len(vals) != len(ids):
                raise InputError(f"n_examples has {len(vals)} entries for {len(ids)} clients")
        return np.array([check_int(v, "n_examples", low=0) for v in vals], dtype=np.int64)

    # ---------------------------------------------------------------------------------------------- reading
    @property
    def rounds(self) -> list[int]:
        """The recorded rounds, in increasing order."""
        return sorted(self._rounds)

    def round(self, r: int) -> RoundRecord:
        """The record of round ``r``."""
        if r not in self._rounds:
            raise InputError(f"round {r} is not recorded; recorded rounds: {self.rounds[:10]}")
        return self._rounds[r]

    def until(self, last_round: int) -> UpdateRecorder:
        """The recording as it stood once ``last_round`` was recorded: an in-memory recorder holding the rounds up
        to it (the round records are shared, not copied), e.g. to score a saved run round by round as a guard
        would have."""
        r = check_int(last_round, "last_round", low=0)
        kept = {q: rec for q, rec in self._rounds.items() if q <= r}
        if not kept:
            raise InputError(f"no round up to {r} is recorded; recorded rounds: {self.rounds[:10]}")
        view = UpdateRecorder(k=self.k, random_state=self.random_state)
        view.n_params, view.layout = self.n_params, self.layout
        view._rounds = kept
        view._clients = {cid: dict(c) for cid, c in self._clients.items() if c["first_round"] <= r}
        view._anomalies = [dict(a) for a in self._anomalies if a["round"] <= r]
        view._digests = {q: d for q, d in self._digests.items() if q <= r}
        return view

    @property
    def clients(self) -> pd.DataFrame:
        """One row per client: ``first_round``, ``n_rounds``, ``n_params`` and its metadata's keys as columns."""
        counts: dict[str, int] = {}
        for rec in self._rounds.values():
            for c in rec.client_ids:
                counts[c] = counts.get(c, 0) + 1
        rows = []
        for cid, c in self._clients.items():
            rows.append(dict(client_id=cid, first_round=c["first_round"], n_rounds=counts.get(cid, 0),
                             n_params=c["n_params"], **c.get("metadata", {})))
        cols = ["client_id", "first_round", "n_rounds", "n_params"]
        return pd.DataFrame(rows, columns=None if rows else cols).set_index("client_id")

    @property
    def anomalies(self) -> pd.DataFrame:
        """Recorded anomalies: ``round``, ``client_id``, ``kind`` ("non_finite", "bad_shape"), ``detail``."""
        return pd.DataFrame(self._anomalies, columns=["round", "client_id", "kind", "detail"])

    # ------------------------------------------------------------------------------------------- persistence
    def _write_round(self, rec: RoundRecord, folder: Path | None = None) -> None:
        folder = self.folder if folder is None else folder
        assert folder is not None
        buf = io.BytesIO()
        np.savez(buf, client_ids=rec.client_ids.astype(str), sketches=rec.sketches, norms=rec.norms,
                 n_examples=rec.n_examples, finite=rec.finite, digests=rec.digests.astype(str))
        self._digests[rec.round] = atomic_write_bytes(_round_path(folder, rec.round), buf.getvalue())

    def _manifest(self) -> dict[str, Any]:
        return dict(format_version=FORMAT_VERSION, k=self.k, random_state=self.random_state, n_params=self.n_params,
                    layout=[[n, list(s)] for n, s in (self.layout or [])],
                    rounds={str(r): self._digests[r] for r in self.rounds},
                    clients=list(self._clients.values()), anomalies=self._anomalies)

    def _write_manifest(self, folder: Path | None = None) -> None:
        folder = self.folder if folder is None else folder
        assert folder is not None
        atomic_write_text(folder / MANIFEST, json.dumps(self._manifest(), indent=1, default=_json_default))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the whole recording to ``folder`` (round files first, the manifest last); return the folder."""
        path = Path(folder)
        (path / "rounds").mkdir(parents=True, exist_ok=True)
        for r in self.rounds:
            self._write_round(self._rounds[r], path)
        self._write_manifest(path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike, *, attach: bool = True) -> UpdateRecorder:
        """Read a recording back, checking every round file against the manifest's checksum.

        With ``attach`` (default) later rounds are written to the same folder.
        """
        path = Path(folder)
        man_path = path / MANIFEST
        if not man_path.is_file():
            raise InputError(f"folder {path} holds no recording ({MANIFEST} is missing)")
        man = json.loads(man_path.read_text(encoding="utf-8"))
        if man.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{man_path}: format_version {man.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}, the one this version reads")
        rec = cls(None, k=man["k"], random_state=man["random_state"])
        rec.n_params = man["n_params"]
        rec.layout = [(n, tuple(s)) for n, s in man["layout"]] or None
        rec._clients = {c["client_id"]: c for c in man["clients"]}
        rec._anomalies = list(man["anomalies"])
        for r_text, digest in man["rounds"].items():
            r = int(r_text)
            f = _round_path(path, r)
            if not f.is_file():
                raise IntegrityError(f"{f} is missing though {MANIFEST} lists round {r}")
            if file_digest(f) != digest:
                raise IntegrityError(f"{f} does not match its checksum in {MANIFEST}")
            with np.load(f, allow_pickle=False) as z:
                rec._rounds[r] = RoundRecord(
                    round=r, client_ids=z["client_ids"].astype(object), sketches=z["sketches"], norms=z["norms"],
                    n_examples=z["n_examples"], finite=z["finite"], digests=z["digests"].astype(object))
            rec._digests[r] = digest
        if attach:
            rec.folder = path
        return rec


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    return str(value)


__all__ = ["MANIFEST", "RoundRecord", "UpdateRecorder"]
