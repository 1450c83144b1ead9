"""Datasets keyed by the user's own sample ids.

A :class:`Dataset` is an immutable table of samples: a stable string ``sample_id`` per sample (the user's own,
never a row position), an integer ``label`` into ``class_names``, an optional ``source`` (contributor,
annotator, device, shard), the payload (images as a uint8 array, or texts) and a content hash of each payload.

Everything is validated once, here, at construction; later stages trust a ``Dataset``. That is why the
loaders and their checks of hostile input live here together, past 600 lines.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._validate import check_images, check_int
from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Upper bound on the pixels of one image file, checked from its header before decoding (decompression bombs).
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096

# Bidirectional overrides and isolates: they make an id or a name display as something else than it is.
_BIDI_CONTROLS = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def _hash_bytes(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def image_hash(image: np.ndarray) -> str:
    """Content hash of one image: its shape and its pixel bytes (32 hex characters)."""
    image = np.ascontiguousarray(image)
    return _hash_bytes(str(image.shape).encode(), image.tobytes())


def text_hash(text: str) -> str:
    """Content hash of one text: its UTF-8 bytes (32 hex characters)."""
    return _hash_bytes(text.encode("utf-8", "surrogatepass"))


def _check_encodable(s: str, what: str) -> None:
    """Refuse lone surrogates: they cannot be written as UTF-8 (Parquet, CSV, JSON all fail on them later)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} holds a lone surrogate (U+{ord(s[e.start]):04X} at character {e.start}), "
                         "which is not valid Unicode text") from e


#: Class indices above this (and above the number of samples) are taken for ids, not classes.
MAX_CLASS_INDEX = 65_536


def _unsafe_characters(s: str) -> list[str]:
    return [c for c in s if c in _BIDI_CONTROLS or unicodedata.category(c) == "Cc"]


def _check_shown_text(s: str, what: str, *, layout_ok: bool = True) -> None:
    """Refuse what can take over a terminal or reorder what is read (control characters, bidirectional overrides)
    in a name people read. Names may hold tabs and line feeds (``layout_ok``): harmless on a terminal, and exports
    neutralize them where a spreadsheet would read a formula. Ids may not: they key files and exported lists."""
    bad = [c for c in _unsafe_characters(s) if not (layout_ok and c in "\t\n")]
    if bad:
        raise InputError(
            f"{what} = {s[:60]!r} contains control or bidirectional characters "
            f"{sorted({f'U+{ord(c):04X}' for c in bad})}; names are shown to people in terminals, reports and files"
        )


def _visible_form(s: str) -> str:
    """What a reader sees: compatibility-normalized, without invisible format characters (zero-width space,
    joiners, word joiner, byte-order mark)."""
    return "".join(c for c in unicodedata.normalize("NFKC", s) if unicodedata.category(c) != "Cf")


def check_ids(ids: Sequence[Any], n: int) -> np.ndarray:
    if len(ids) != n:
        raise InputError(f"ids has {len(ids)} entries but there are {n} samples")
    out = np.empty(n, dtype=object)
    for i, v in enumerate(ids):
        if type(v) is str and v.isascii() and v.isprintable() and v.strip():
            out[i] = v  # the common case: printable ASCII passes every check below
            continue
        if isinstance(v, (float, np.floating)) and not isinstance(v, bool):
            if not (np.isfinite(v) and float(v).is_integer()):
                raise InputError(f"ids[{i}] is the float {v!r}; sample ids must be text or integers")
            v = int(v)
        if isinstance(v, (bytes, bytearray)):
            raise InputError(f"ids[{i}] is bytes ({v[:40]!r}); sample ids must be text or integers")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer)):
            raise InputError(f"ids[{i}] is a {type(v).__name__} ({str(v)[:40]!r}); sample ids must be text or integers")
        s = str(int(v)) if isinstance(v, (int, np.integer)) else str(v)
        _check_encodable(s, f"ids[{i}]")
        if not s.strip():
            raise InputError(f"ids[{i}] is empty; every sample needs a non-empty id")
        _check_shown_text(s, f"ids[{i}]", layout_ok=False)
        out[i] = s
    uniq, counts = np.unique(out.astype(str), return_counts=True)
    if (counts > 1).any():
        dups = uniq[counts > 1]
        raise InputError(
            f"ids must be unique; {len(dups)} id(s) occur more than once, for example {list(dups[:5])!r}"
        )
    seen: dict[str, int] = {}
    for i, s in enumerate(out):
        j = seen.setdefault(s if s.isascii() else _visible_form(s), i)  # ASCII text is its own visible form
        if j != i:
            raise InputError(
                f"ids[{j}] = {out[j][:60]!r} and ids[{i}] = {s[:60]!r} look the same to a reader (they differ only by "
                "invisible or compatibility characters); an exported list would be ambiguous"
            )
    return out


def _check_labels(
    labels: Sequence[Any] | np.ndarray, n: int, class_names: Sequence[Any] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise InputError(f"labels must be one-dimensional; got shape {raw.shape}")
    if len(raw) != n:
        raise InputError(f"labels has {len(raw)} entries but there are {n} samples")
    if class_names is not None:
        names = tuple(str(c) for c in class_names)
        if len(names) == 0:
            raise InputError("class_names is empty; give at least one class")
        if len(set(names)) != len(names):
            raise InputError(f"class_names has duplicates: {list(names)!r}")
        for i, name in enumerate(names):
            _check_shown_text(name, f"class_names[{i}]")
    else:
        names = None

    if raw.dtype.kind in "iu" or (raw.dtype.kind == "b"):
        out = raw.astype(np.int64)
        if names is None:
            k = int(out.max()) + 1 if n else 0
            if n and out.min() < 0:
                raise InputError(f"labels must be >= 0; found {int(out.min())}")
            if k > max(n, MAX_CLASS_INDEX):
                raise InputError(
                    f"labels has the class index {k - 1}, far more classes than samples ({n}); labels must be "
                    "class indices 0..k-1 (renumber them) or class names"
                )
            names = tuple(str(i) for i in range(k))
        bad = (out < 0) | (out >= len(names))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"labels[{i}] = {int(out[i])} is outside the class list (0..{len(names) - 1}, "
                f"{len(names)} classes); {int(bad.sum())} label(s) are out of range"
            )
        return out, names
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise InputError("labels are floats that are not whole numbers; give class indices or names")
        return _check_labels(raw.astype(np.int64), n, names)
    # Labels given as names.
    for i, v in enumerate(raw):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise InputError(f"labels[{i}] is missing; every sample needs a label")
    as_str = np.array([str(v) for v in raw], dtype=object)
    if names is None:
        names = tuple(sorted(set(as_str)))
        for name in names:
            _check_shown_text(name, "a label")
    index = {c: i for i, c in enumerate(names)}
    out = np.empty(n, dtype=np.int64)
    for i, v in enumerate(as_str):
        if v not in index:
            raise InputError(f"labels[{i}] = {v[:60]!r} is not in class_names {list(names)[:20]!r}")
        out[i] = index[v]
    return out, names


def _check_sources(sources: Sequence[Any] | None, n: int) -> np.ndarray | None:
    if sources is None:
        return None
    if isinstance(sources, (str, bytes)):
        raise InputError("sources must be a sequence with one source per sample, not one string")
    if len(sources) != n:
        raise InputError(f"sources has {len(sources)} entries but there are {n} samples")
    out = np.empty(n, dtype=object)
    for i, s in enumerate(sources):
        if type(s) is str and s.isascii() and s.isprintable():
            out[i] = s  # the common case: printable ASCII passes the checks below
            continue
        if s is None or (isinstance(s, float) and np.isnan(s)):
            raise InputError(f"sources[{i}] is missing; give every sample a source, or give no sources at all")
        out[i] = str(s)
        _check_encodable(out[i], f"sources[{i}]")
        _check_shown_text(out[i], f"sources[{i}]")
    return out


def _torch_items(dataset: Any) -> Iterable[tuple[Any, Any]]:
    """(x, label) pairs of a map-style torch dataset, or of a DataLoader's batches taken apart, in order."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        for i in range(len(dataset)):
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise InputError(f"item {i} of the torch dataset is not an (x, label) pair")
            yield item[0], item[1]
        return
    if not hasattr(dataset, "__iter__") or not hasattr(dataset, "batch_size"):
        raise InputError(f"from_torch takes a torch Dataset (len and indexing) or a DataLoader; got "
                         f"{type(dataset).__name__}")
    sampler = getattr(dataset, "sampler", None)
    if type(sampler).__name__ in ("RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler"):
        raise InputError(f"the DataLoader draws its samples in random order ({type(sampler).__name__}); ids would "
                         "not stay attached to their samples: build it with shuffle=False, or pass its dataset")
    for b, batch in enumerate(dataset):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise InputError(f"batch {b} of the DataLoader is not an (x, labels) pair")
        x, y = batch[0], batch[1]
        ys = y.tolist() if hasattr(y, "tolist") else list(y)
        if len(x) != len(ys):
            raise InputError(f"batch {b} of the DataLoader has {len(x)} inputs but {len(ys)} labels")
        yield from zip(x, ys)


def _fit_image(im: Any, size: tuple[int, int], fit: str) -> Any:
    """A PIL image brought to ``size`` (height, width): stretched, or covered and centre-cropped."""
    from PIL import Image

    if fit == "stretch":
        return im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    scale = max(size[0] / im.height, size[1] / im.width)
    w, h = max(size[1], round(im.width * scale)), max(size[0], round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size[1]) // 2, (h - size[0]) // 2
    return im.crop((left, top, left + size[1], top + size[0]))


class Dataset:
    """An immutable set of samples keyed by ``sample_id``.

    Build one with a constructor (:meth:`from_numpy`, :meth:`from_image_folder`, :meth:`from_texts`,
    :meth:`from_csv`, :meth:`from_jsonl`, :meth:`from_torch`) rather than calling ``Dataset(...)`` directly.

    Attributes
    ----------
    kind : {"image", "text"}
    ids : ndarray of str, shape (n,)
        The user's sample ids, in the dataset's order.
    labels : ndarray of int64, shape (n,)
        Index into ``class_names``.
    class_names : tuple of str
    sources : ndarray of str, shape (n,), or None
    images : ndarray of uint8, shape (n, h, w) or (n, h, w, 3), or None
    texts : ndarray of str (object), shape (n,), or None
    hashes : ndarray of str, shape (n,)
        Content hash of each payload (image pixels or text bytes).
    """

    __slots__ = ("kind", "ids", "labels", "class_names", "sources", "images", "texts", "hashes",
                 "paths", "_index", "_content_hash")

    def __init__(
        self,
        *,
        kind: Literal["image", "text"],
        ids: Sequence[Any],
        labels: Sequence[Any],
        class_names: Sequence[Any] | None = None,
        sources: Sequence[Any] | None = None,
        images: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        hashes: Sequence[str] | None = None,
    ) -> None:
        if kind == "image":
            if images is None or texts is not None:
                raise InputError("an image dataset takes images and no texts")
            images = np.ascontiguousarray(check_images(images))
            n = len(images)
        elif kind == "text":
            if texts is None or images is not None:
                raise InputError("a text dataset takes texts and no images")
            texts = _check_texts(texts)
            n = len(texts)
        else:
            raise InputError(f"kind must be 'image' or 'text'; got {kind!r}")
        if n == 0:
            raise InputError("the dataset is empty; give at least one sample")
        self.kind = kind
        self.images = images
        self.texts = texts
        self.ids = check_ids(ids, n)
        self.labels, self.class_names = _check_labels(labels, n, class_names)
        self.sources = _check_sources(sources, n)
        self.paths = None if paths is None else np.asarray([str(p) for p in paths], dtype=object)
        if self.paths is not None and len(self.paths) != n:
            raise InputError(f"paths has {len(self.paths)} entries but there are {n} samples")
        if hashes is None:
            if kind == "image":
                hashes = [image_hash(im) for im in images]
            else:
                hashes = [text_hash(t) for t in texts]
        self.hashes = np.asarray(hashes, dtype=object)
        self._index: dict[str, int] | None = None
        self._content_hash: str | None = None
        for a in (self.ids, self.labels, self.hashes, self.sources, self.texts, self.paths, self.images):
            if isinstance(a, np.ndarray):
                a.flags.writeable = False

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_numpy(
        cls,
        images: np.ndarray,
        labels: Sequence[Any],
        *,
        ids: Sequence[Any] | None = None,
        class_names: Sequence[Any] | None = None,
        sources: Sequence[Any] | None = None,
    ) -> Dataset:
        """Images from a uint8 array of shape (n, h, w) or (n, h, w, c).

        Without ``ids`` the samples are named ``"0"``, ``"1"``, ...: pass your own ids to keep them stable.
        """
        images = np.ascontiguousarray(check_images(images))
        if ids is None:
            ids = [str(i) for i in range(len(images))]
        return cls(kind="image", ids=ids, labels=labels, class_names=class_names, sources=sources,
                   images=images)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        labels: Sequence[Any],
        *,
        ids: Sequence[Any] | None = None,
        class_names: Sequence[Any] | None = None,
        sources: Sequence[Any] | None = None,
    ) -> Dataset:
        """Texts from a list of strings."""
        texts = _check_texts(texts)
        if ids is None:
            ids = [str(i) for i in range(len(texts))]
        return cls(kind="text", ids=ids, labels=labels, class_names=class_names, sources=sources, texts=texts)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        *,
        text_column: str = "text",
        label_column: str = "label",
        id_column: str | None = "sample_id",
        source_column: str | None = None,
        class_names: Sequence[Any] | None = None,
    ) -> Dataset:
        """Texts from a CSV file with a header row.

        ``id_column`` and ``source_column`` may be None; a missing id column numbers the rows.
        """
        path = Path(path)
        rows = list(_read_csv_rows(path))
        return cls._from_records(rows, path, text_column, label_column, id_column, source_column, class_names)

    @classmethod
    def from_jsonl(
        cls,
        path: str | os.PathLike,
        *,
        text_column: str = "text",
        label_column: str = "label",
        id_column: str | None = "sample_id",
        source_column: str | None = None,
        class_names: Sequence[Any] | None = None,
    ) -> Dataset:
        """Texts from a JSON-lines file, one object per line."""
        path = Path(path)
        rows = list(_read_jsonl_rows(path))
        return cls._from_records(rows, path, text_column, label_column, id_column, source_column, class_names)

    @classmethod
    def _from_records(cls, rows, path, text_column, label_column, id_column, source_column, class_names):
        if not rows:
            raise InputError(f"{path}: no rows; the dataset is empty")
        needed = [c for c in (text_column, label_column, id_column, source_column) if c is not None]
        # Every row decides which columns exist (a JSON-lines file may omit a key on its first line only).
        present = dict.fromkeys(k for row in rows for k in row)
        for c in needed:
            if c not in present:
                if c == id_column == "sample_id":
                    continue  # the default id column is optional
                raise InputError(f"{path}: no column {c!r}; columns are {list(present)[:20]!r}")
        has_ids = id_column is not None and id_column in present
        texts, labels, ids, sources = [], [], [], []
        first_line = 2 if path.suffix.lower() == ".csv" else 1  # a CSV header takes line 1
        for row_no, row in enumerate(rows):
            line_no = row_no + first_line
            for c in needed:
                if c in present and (c not in row or row[c] is None):
                    if c == id_column:
                        raise InputError(
                            f"{path}: the row at line {line_no} has no {c!r} while other rows have one; give "
                            "every row an id, or none (rows are then numbered from 0)")
                    raise InputError(f"{path}: row at line {line_no} has no value for {c!r}")
            t = row[text_column]
            if not isinstance(t, str):
                raise InputError(f"{path}: line {line_no}: {text_column!r} must be text; got {type(t).__name__}")
            texts.append(t)
            labels.append(row[label_column])
            ids.append(row[id_column] if has_ids else str(row_no))
            if source_column is not None:
                sources.append(row[source_column])
        return cls(kind="text", ids=ids, labels=_record_labels(labels, class_names, where=(path, first_line)),
                   class_names=class_names,
                   sources=sources if source_column is not None else None, texts=texts)

    @classmethod
    def from_image_folder(
        cls,
        root: str | os.PathLike,
        *,
        sources: dict[str, str] | None = None,
        mode: Literal["L", "RGB"] | None = None,
        size: tuple[int, int] | None = None,
        fit: Literal["stretch", "crop"] = "stretch",
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> Dataset:
        """Images from a folder with one sub-folder per class (``root/<class>/<file>``).

        The sample id is the file's path relative to ``root`` with forward slashes (``"cat/001.png"``).
        Every file must decode; a file that does not is named in the error, as is one whose header declares more
        than ``max_pixels`` pixels (checked before decoding). All images must share one size, or be resized to
        ``size``. With ``mode=None`` they must also share one colour mode; pass ``mode="L"`` or ``mode="RGB"`` to
        convert them all.

        Parameters
        ----------
        sources : dict, optional
            Maps sample id to source.
        size : (height, width), optional
            Resize every image of another size to this one (bilinear), as the model expects; declared, never
            guessed.
        fit : {"stretch", "crop"}
            How an image of another shape reaches ``size``: ``"stretch"`` resizes it to ``size`` as it is;
            ``"crop"`` keeps its proportions, resizing it until it covers ``size`` and cutting the centre out (as
            torchvision's ``Resize`` then ``CenterCrop`` do for most pretrained networks). Normalization is the
            preprocess's (:func:`forensics.image_preprocess`).
        """
        from PIL import Image, UnidentifiedImageError

        if size is not None:
            if not isinstance(size, (tuple, list)) or len(size) != 2:
                raise InputError(f"size must be (height, width); got {size!r}")
            size = (check_int(size[0], "size[0]", low=1), check_int(size[1], "size[1]", low=1))
        if fit not in ("stretch", "crop"):
            raise InputError(f"fit must be 'stretch' or 'crop'; got {fit!r}")
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"image folder {root} does not exist or is not a folder")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise InputError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
        images, labels, ids, paths = [], [], [], []
        first: tuple[str, tuple[int, int], str] | None = None
        inside = root.resolve()
        for label, cdir in enumerate(class_dirs):
            for f in sorted(cdir.rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                if not f.resolve().is_relative_to(inside):
                    raise InputError(f"{f}: a link to {f.resolve()}, outside the image folder {root}; links are "
                                     "followed only within it")
                rel = f.relative_to(root).as_posix()
                try:
                    with Image.open(f) as im:
                        w, h = im.size
                        if w * h > max_pixels:
                            raise InputError(
                                f"{f}: declares {w}x{h} = {w * h} pixels, above max_pixels={max_pixels}; "
                                "refusing to decode it (possible decompression bomb)"
                            )
                        im_mode = im.mode
                        if mode is not None:
                            im = im.convert(mode)
                        elif im_mode not in ("L", "RGB"):
                            raise InputError(
                                f"{f}: colour mode {im_mode!r}; pass mode='L' or mode='RGB' to convert images"
                            )
                        if size is not None and (h, w) != size:
                            im = _fit_image(im, size, fit)
                            h, w = size
                        arr = np.asarray(im, dtype=np.uint8)
                except Image.DecompressionBombError as e:
                    raise InputError(
                        f"{f}: declares more pixels than max_pixels={max_pixels} ({e}); refusing to decode it "
                        "(possible decompression bomb)"
                    ) from e
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    if isinstance(e, InputError):
                        raise
                    raise InputError(f"{f}: not a readable image ({type(e).__name__}: {e})") from e
                key = (mode or im_mode, (h, w), rel)
                if first is None:
                    first = key
                elif key[1] != first[1]:
                    raise InputError(
                        f"{f}: size {w}x{h} differs from {first[2]} ({first[1][1]}x{first[1][0]}); "
                        "all images must share one size: pass size=(height, width) to resize them all"
                    )
                elif key[0] != first[0]:
                    raise InputError(
                        f"{f}: colour mode {im_mode!r} differs from {first[2]} ({first[0]!r}); "
                        "pass mode='L' or mode='RGB' to convert them all"
                    )
                images.append(arr)
                labels.append(label)
                ids.append(rel)
                paths.append(str(f))
        if not images:
            raise InputError(f"image folder {root} holds no image files")
        src = None
        if sources is not None:
            missing = [i for i in ids if i not in sources]
            if missing:
                raise InputError(f"sources has no entry for {len(missing)} image(s), for example {missing[:3]!r}")
            src = [sources[i] for i in ids]
        return cls(kind="image", ids=ids, labels=labels, class_names=[d.name for d in class_dirs], sources=src,
                   images=np.stack(images), paths=paths)

    @classmethod
    def from_torch(
        cls,
        dataset: Any,
        *,
        class_names: Sequence[Any] | None = None,
        ids: Sequence[Any] | None = None,
        sources: Sequence[Any] | None = None,
    ) -> Dataset:
        """Samples from a torch-style dataset whose items are ``(x, label)``, or from a ``DataLoader`` over one.

        ``x`` may be a string (text), a uint8 image (a PIL image too, as a torchvision dataset without a transform
        gives), or a float image in [0, 1] (``ToTensor()``; a normalizing transform must be left out, as
        normalization belongs to the preprocess); images in channels-first layout (``(1|3, h, w)``) are moved to
        channels-last. Float pixels are scaled by 255 and rounded. A ``DataLoader`` is read batch by batch in its
        order, which must be fixed (``shuffle=False``) so that the ids stay attached to their samples.
        """
        xs, ys = [], []
        for x, y in _torch_items(dataset):
            xs.append(x)
            ys.append(int(y) if not isinstance(y, str) else y)
        if not xs:
            raise InputError("the torch dataset is empty")
        if all(isinstance(x, str) for x in xs):
            return cls.from_texts(xs, ys, ids=ids, class_names=class_names, sources=sources)
        arrays = []
        for i, x in enumerate(xs):
            a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
            if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
                a = np.moveaxis(a, 0, -1)
            if a.dtype.kind == "f":
                if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
                    raise InputError(
                        f"item {i}: float pixels must lie in [0, 1]; got range "
                        f"[{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]"
                    )
                a = np.round(a * 255).astype(np.uint8)
            elif a.dtype != np.uint8:
                raise InputError(f"item {i}: image dtype {a.dtype}; give uint8 or float in [0, 1]")
            if arrays and a.shape != arrays[0].shape:
                raise InputError(f"item {i}: image shape {a.shape} differs from item 0 ({arrays[0].shape})")
            arrays.append(a)
        return cls.from_numpy(np.stack(arrays), ys, ids=ids, class_names=class_names, sources=sources)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        src = "no sources" if self.sources is None else f"{len(set(self.sources))} sources"
        shape = f", images {self.images.shape[1:]}" if self.kind == "image" else ""
        return f"Dataset({self.kind}, {len(self)} samples, {len(self.class_names)} classes, {src}{shape})"

    @property
    def index(self) -> dict[str, int]:
        """Row position of each sample id."""
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids)}
        return self._index

    def positions(self, ids: Iterable[Any]) -> np.ndarray:
        """Row positions of the given sample ids; unknown ids raise :class:`InputError`."""
        return positions_in(self.index, ids)

    def payload(self, sample_id: Any) -> np.ndarray | str:
        """The image array or the text of one sample."""
        i = int(self.positions([sample_id])[0])
        return self.images[i] if self.kind == "image" else self.texts[i]

    @property
    def content_hash(self) -> str:
        """One hash of the whole dataset: ids, labels, class names, sources and payload hashes, in order."""
        if self._content_hash is None:
            self._content_hash = content_hash_of(self.kind, self.class_names, self.ids, self.labels, self.hashes,
                                                 self.sources)
        return self._content_hash

    def to_frame(self) -> pd.DataFrame:
        """The sample table indexed by ``sample_id``: label, label_name, source, content_hash (and path)."""
        df = pd.DataFrame(
            {
                "label": self.labels,
                "label_name": np.asarray(self.class_names, dtype=object)[self.labels],
                "source": self.sources if self.sources is not None else None,
                "content_hash": self.hashes,
            },
            index=pd.Index(self.ids, name="sample_id", dtype=object),
        )
        if self.paths is not None:
            df["path"] = self.paths
        return df

    # ------------------------------------------------------------------ derivation
    def subset(self, ids_or_mask: Iterable[Any] | np.ndarray) -> Dataset:
        """The samples with the given ids (in that order), or where a boolean mask of length n is true."""
        sel = np.asarray(ids_or_mask) if not isinstance(ids_or_mask, np.ndarray) else ids_or_mask
        if sel.dtype == bool:
            if len(sel) != len(self):
                raise InputError(f"mask has {len(sel)} entries but the dataset has {len(self)} samples")
            pos = np.flatnonzero(sel)
        else:
            pos = self.positions(sel.tolist())
        return self._take(pos)

    def _take(self, pos: np.ndarray) -> Dataset:
        if len(pos) == 0:
            raise InputError("the selection is empty; a dataset needs at least one sample")
        return Dataset(
            kind=self.kind,
            ids=self.ids[pos],
            labels=self.labels[pos],
            class_names=self.class_names,
            sources=None if self.sources is None else self.sources[pos],
            images=None if self.images is None else self.images[pos],
            texts=None if self.texts is None else self.texts[pos],
            paths=None if self.paths is None else self.paths[pos],
            hashes=self.hashes[pos],
        )

    def replace(
        self,
        *,
        labels: Sequence[Any] | None = None,
        sources: Sequence[Any] | None = None,
        images: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        ids: Sequence[Any] | None = None,
    ) -> Dataset:
        """A new dataset with some columns replaced (same class names); hashes are recomputed for new payloads."""
        new_payload = images is not None or texts is not None
        return Dataset(
            kind=self.kind,
            ids=self.ids if ids is None else ids,
            labels=self.labels if labels is None else labels,
            class_names=self.class_names,
            sources=self.sources if sources is None else sources,
            images=self.images if (self.kind == "image" and images is None) else images,
            texts=self.texts if (self.kind == "text" and texts is None) else texts,
            paths=None if new_payload else self.paths,
            hashes=None if new_payload else self.hashes,
        )


def content_hash_of(kind: str, class_names: Sequence[str], ids: np.ndarray, labels: np.ndarray, hashes: np.ndarray,
                    sources: np.ndarray | None) -> str:
    """:attr:`Dataset.content_hash` from the columns it covers (a stored dataset is checked without its payloads)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([kind, list(class_names)]).encode())
    no_sources = np.array([], dtype=object)
    for col in (ids, np.asarray(labels).astype(str), hashes, no_sources if sources is None else sources):
        h.update("\x1f".join(map(str, col)).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


def positions_in(index: dict[str, int], ids: Iterable[Any], *, where: str = "dataset") -> np.ndarray:
    """Row positions of ``ids`` in ``index`` (sample id -> row); an unknown id raises :class:`InputError` naming it
    and ``where`` it was looked for."""
    out = []
    for s in ids:
        s = str(s)
        if s not in index:
            raise InputError(f"sample id {s[:60]!r} is not in this {where}")
        out.append(index[s])
    return np.asarray(out, dtype=np.int64)


def concat(datasets: Sequence[Dataset]) -> Dataset:
    """Join datasets of the same kind and classes; ids must stay unique across them."""
    if not datasets:
        raise InputError("concat needs at least one dataset")
    first = datasets[0]
    for d in datasets[1:]:
        if d.kind != first.kind or d.class_names != first.class_names:
            raise InputError("concat needs datasets of the same kind and class_names")
        if (d.sources is None) != (first.sources is None):
            raise InputError("concat needs all datasets with sources or all without")
    return Dataset(
        kind=first.kind,
        ids=np.concatenate([d.ids for d in datasets]),
        labels=np.concatenate([d.labels for d in datasets]),
        class_names=first.class_names,
        sources=None if first.sources is None else np.concatenate([d.sources for d in datasets]),
        images=None if first.images is None else np.concatenate([d.images for d in datasets]),
        texts=None if first.texts is None else np.concatenate([d.texts for d in datasets]),
        hashes=np.concatenate([d.hashes for d in datasets]),
    )


def _record_labels(labels: list[Any], class_names: Sequence[Any] | None, *, where: tuple[Path, int]) -> np.ndarray:
    """Labels read from a file: integers stay indices; strings are class names, or indices when all digits
    and not names of the given classes."""
    def whole(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())

    odd = next((i for i, v in enumerate(labels)
                if isinstance(v, bool) or not isinstance(v, (str, int, float, np.integer, np.floating))
                or (isinstance(v, (float, np.floating)) and not whole(v))), None)
    if odd is not None:
        # JSON's 1.5, NaN or true is a number, not a class name; "1.5" in quotes is a name.
        path, first_line = where
        raise InputError(f"{path}: line {odd + first_line}: label {labels[odd]!r} is not a class; labels must be "
                         "class names (text) or whole numbers")
    if all(whole(v) for v in labels):
        return np.asarray([int(v) for v in labels], dtype=np.int64)
    as_str = [str(v) for v in labels]
    names = None if class_names is None else {str(c) for c in class_names}
    # Only plain ASCII digits of a plausible class number are indices ("²" is a digit to Python, and a 20-digit
    # number is an id or a code): anything else is a class name.
    indices = all(v.strip().isascii() and v.strip().isdecimal() for v in as_str) and \
        max(int(v) for v in as_str) < max(len(as_str), 1 << 16)
    if (names is None or not set(as_str) <= names) and indices:
        return np.asarray([int(v) for v in as_str], dtype=np.int64)
    return np.asarray(as_str, dtype=object)


def _check_texts(texts: Sequence[Any]) -> np.ndarray:
    if isinstance(texts, str):
        raise InputError("texts must be a sequence of strings, not one string")
    if not hasattr(texts, "__len__"):
        texts = list(texts)
    out = np.empty(len(texts), dtype=object)
    for i, t in enumerate(texts):
        if type(t) is str and t.isascii():
            out[i] = t  # the common case: ASCII is valid UTF-8
            continue
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"texts[{i}] is not valid UTF-8 ({e.reason} at byte {e.start})") from e
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is a {type(t).__name__}, not a string")
        _check_encodable(t, f"texts[{i}]")
        out[i] = t
    return out


def _open_text(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which would otherwise become part of the
    # first column's name (and hide the id column).
    return open(path, encoding="utf-8-sig", newline="")


#: Largest CSV field read (Python's default is 128 KiB, smaller than some real reviews).
CSV_FIELD_LIMIT = 64 * 2**20


def _read_csv_rows(path: Path):
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return
            twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
            if twice:
                raise InputError(f"{path}: the header names column(s) {twice} more than once; which copy is "
                                 "meant cannot be told")
            yield from reader
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e


def _read_jsonl_rows(path: Path):
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {line_no} is not valid JSON ({e.msg})") from e
                except RecursionError as e:
                    raise InputError(f"{path}: line {line_no} is nested too deeply to read") from e
                if not isinstance(obj, dict):
                    raise InputError(f"{path}: line {line_no} is not a JSON object")
                yield obj
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
