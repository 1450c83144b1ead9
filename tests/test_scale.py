"""Out of core and on a cluster: the chunked activation store (resume, full disk) and ``client=`` on a LocalCluster."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import forensics
from forensics import _chunkstore
from forensics.activations import extract_activations
from forensics.data import Dataset
from forensics.errors import InputError
from forensics.signals.compute import compute_signals

N = 230  # three chunks of 100, the last one short


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CountingPreprocess:
    """Counts the samples it prepares; fails (once) on the samples of ``fail_at``; stable cache key."""

    cache_key = "tests.counting"

    def __init__(self, fail_at: int | None = None) -> None:
        self.samples = 0
        self.fail_at = fail_at

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        self.samples += len(images)
        if self.fail_at is not None and self.samples > self.fail_at:
            self.fail_at = None
            raise RuntimeError("the process was stopped")
        return torch.from_numpy(images.astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, N)
    images = (rng.integers(0, 60, (N, 8, 8)) + 60 * labels[:, None, None]).astype(np.uint8)
    return Dataset.from_numpy(images, labels, class_names=["a", "b", "c"], sources=[f"s{i % 4}" for i in range(N)])


def _same(a, b, atol: float = 0.0) -> None:
    np.testing.assert_allclose(a.feature(), b.feature(), atol=atol, rtol=0)
    for name in ("logits", "probs", "loss"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=0)
    np.testing.assert_array_equal(a.predictions, b.predictions)


# ------------------------------------------------------------------------------------------- the chunked store


def test_a_chunked_run_equals_one_pass_and_stores_plain_files(data, tmp_path):
    model = TinyNet()
    whole = extract_activations(model, data, preprocess=CountingPreprocess(), progress=False)
    stored = extract_activations(model, data, preprocess=CountingPreprocess(), chunk_size=100, batch_size=32,
                                 cache_dir=tmp_path, progress=False)
    _same(stored, whole, atol=1e-6)
    assert isinstance(stored.feature(), np.memmap)  # on disk, not in memory
    (entry,) = tmp_path.iterdir()
    assert not (entry / "partial").exists()
    again = extract_activations(model, data, preprocess=CountingPreprocess(), chunk_size=100, cache_dir=tmp_path,
                                progress=False)
    assert again.meta["from_cache"]


def test_a_stopped_run_resumes_from_its_finished_chunks(data, tmp_path):
    model = TinyNet()
    reference = extract_activations(model, data, preprocess=CountingPreprocess(), chunk_size=100, progress=False)
    stopping = CountingPreprocess(fail_at=150)  # dies inside the second chunk
    with pytest.raises(RuntimeError, match="stopped"):
        extract_activations(model, data, preprocess=stopping, chunk_size=100, batch_size=25, cache_dir=tmp_path,
                            progress=False)
    (entry,) = tmp_path.iterdir()
    progress = json.loads((entry / "partial" / "progress.json").read_text())
    assert list(progress["finished"]) == ["0"]  # the half-done second chunk is not recorded

    resumed = CountingPreprocess()
    result = extract_activations(model, data, preprocess=resumed, chunk_size=100, batch_size=25,
                                 cache_dir=tmp_path, progress=False)
    assert resumed.samples == N - 100  # chunk 0 was not recomputed
    _same(result, reference, atol=1e-6)


def test_a_damaged_finished_chunk_is_recomputed(data, tmp_path, caplog):
    model = TinyNet()
    reference = extract_activations(model, data, preprocess=CountingPreprocess(), chunk_size=100, progress=False)
    with pytest.raises(RuntimeError):
        extract_activations(model, data, preprocess=CountingPreprocess(fail_at=210), chunk_size=100,
                            cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.iterdir()
    logits = entry / "partial" / "logits.npy"
    raw = bytearray(logits.read_bytes())
    raw[200] ^= 0xFF  # inside chunk 0's rows
    logits.write_bytes(bytes(raw))
    again = CountingPreprocess()
    with caplog.at_level("WARNING", logger="forensics._chunkstore"):
        result = extract_activations(model, data, preprocess=again, chunk_size=100, cache_dir=tmp_path,
                                     progress=False)
    assert "chunk 0 does not match its checksum" in caplog.text
    assert again.samples == 100 + 30  # chunk 0 again, and the unfinished last one
    _same(result, reference, atol=1e-6)


def test_a_store_whose_files_are_gone_starts_afresh(data, tmp_path):
    model = TinyNet()
    with pytest.raises(RuntimeError):
        extract_activations(model, data, preprocess=CountingPreprocess(fail_at=150), chunk_size=100,
                            cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.iterdir()
    for f in (entry / "partial").glob("*.npy"):
        f.unlink()  # progress.json says chunk 0 is done; its files are gone
    again = CountingPreprocess()
    result = extract_activations(model, data, preprocess=again, chunk_size=100, cache_dir=tmp_path, progress=False)
    assert again.samples == N
    _same(result, extract_activations(model, data, preprocess=CountingPreprocess(), progress=False), atol=1e-6)


def test_a_store_the_disk_cannot_hold_is_refused_before_writing(data, tmp_path, monkeypatch):
    real = shutil.disk_usage

    def nearly_full(path):
        return real(path)._replace(free=1000)

    monkeypatch.setattr(_chunkstore.shutil, "disk_usage", nearly_full)
    # 100 bytes a row: 16 features, 3 logits and 3 probabilities in float32, an int64 prediction, a float32 loss.
    with pytest.raises(_chunkstore.StoreFullError, match=r"activation store .*partial needs 23\.0 KB for 230 rows; "
                                                          r"its disk has 1\.0 KB free"):
        extract_activations(TinyNet(), data, preprocess=CountingPreprocess(), cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.iterdir()
    assert not list((entry / "partial").glob("*.npy"))
    assert isinstance(_chunkstore.StoreFullError("x"), InputError)


def test_a_disk_that_fills_mid_run_names_the_store_and_keeps_the_finished_chunks(data, tmp_path, monkeypatch):
    model = TinyNet()
    real_open = open
    writes = []

    def filling_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if mode == "r+b":
            writes.append(path)
            if len(writes) > 5:  # chunk 0's five arrays fit; the disk is full after
                f.close()
                raise OSError(28, "No space left on device")
        return f

    monkeypatch.setattr("builtins.open", filling_open)
    with pytest.raises(OSError, match=r"could not write chunk 1 into the activation store .*partial \(No space left "
                                      r"on device\); the chunks finished before it \(1\) are kept"):
        extract_activations(model, data, preprocess=CountingPreprocess(), chunk_size=100, cache_dir=tmp_path,
                            progress=False)
    monkeypatch.undo()
    resumed = CountingPreprocess()
    result = extract_activations(model, data, preprocess=resumed, chunk_size=100, cache_dir=tmp_path, progress=False)
    assert resumed.samples == N - 100
    _same(result, extract_activations(model, data, preprocess=CountingPreprocess(), progress=False), atol=1e-6)


def test_chunk_size_is_checked(data):
    with pytest.raises(InputError, match="chunk_size must be a positive integer; got 0"):
        extract_activations(TinyNet(), data, chunk_size=0, progress=False)


# ------------------------------------------------------------------------------------------- a Dask cluster


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # Two worker processes, as on a real cluster: the model and the chunks are pickled to them.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="1GiB") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.slow
def test_extraction_on_a_cluster_equals_a_local_run(data, client, tmp_path):
    model = TinyNet()
    local = extract_activations(model, data, preprocess=CountingPreprocess(), progress=False)
    remote = extract_activations(model, data, preprocess=CountingPreprocess(), chunk_size=50, client=client,
                                 cache_dir=tmp_path, progress=False)
    _same(remote, local, atol=1e-6)
    assert remote.meta["device"] == "cpu"


class DyingPreprocess(CountingPreprocess):
    """Kills the worker process that first prepares a batch (a machine lost mid-run)."""

    cache_key = "tests.dying"

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        try:  # created atomically: when both workers start a batch at once, only one of them dies
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().__call__(images)
        os._exit(1)


@pytest.mark.slow
def test_a_worker_that_dies_mid_run_does_not_change_the_result(data, client, tmp_path):
    model = TinyNet()
    local = extract_activations(model, data, preprocess=CountingPreprocess(), progress=False)
    marker = tmp_path / "died"
    remote = extract_activations(model, data, preprocess=DyingPreprocess(marker), chunk_size=50, client=client,
                                 progress=False)
    assert marker.exists()  # a worker did die
    _same(remote, local, atol=1e-6)


@pytest.mark.slow
def test_signals_on_a_cluster_equal_a_local_run(data, client):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(N, 12)).astype(np.float32) + data.labels[:, None]
    probs = rng.dirichlet(np.ones(3), N).astype(np.float32)
    local, local_info = compute_signals(features, data.labels, probs=probs, dataset=data)
    remote, remote_info = compute_signals(features, data.labels, probs=probs, dataset=data, client=client)
    assert list(remote.columns) == list(local.columns)
    np.testing.assert_allclose(remote.drop(columns="reasons").to_numpy(), local.drop(columns="reasons").to_numpy())
    assert remote["reasons"].tolist() == local["reasons"].tolist()
    assert remote_info["skipped"] == local_info["skipped"]
    np.testing.assert_array_equal(remote_info["duplicate_groups"], local_info["duplicate_groups"])
    # With a trusted set large enough to anchor the nulls: its run with the data goes to the cluster too.
    trusted = (rng.normal(size=(500, 12)).astype(np.float32) + np.arange(500)[:, None] % 3,
               np.arange(500) % 3, rng.dirichlet(np.ones(3), 500).astype(np.float32))
    chosen = ("spectral", "knn_disagreement", "low_loss", "duplicates")
    local, local_info = compute_signals(features, data.labels, probs=probs, dataset=data, trusted=trusted,
                                        signals=chosen)
    remote, remote_info = compute_signals(features, data.labels, probs=probs, dataset=data, trusted=trusted,
                                          signals=chosen, client=client)
    assert remote_info["anchored"] == local_info["anchored"] == ["knn_disagreement", "low_loss", "spectral"]
    np.testing.assert_allclose(remote.drop(columns="reasons").to_numpy(), local.drop(columns="reasons").to_numpy())


def test_signals_are_sent_again_when_a_worker_leaves_with_their_arrays(data, client, monkeypatch):
    from distributed.client import FutureCancelledError

    features = np.random.default_rng(2).normal(size=(N, 6)).astype(np.float32) + data.labels[:, None]
    local, _ = compute_signals(features, data.labels, signals=("spectral", "knn_disagreement"))
    real, calls = client.gather, []

    def gather_once_lost(futures, *args, **kwargs):
        calls.append(len(futures))
        if len(calls) == 1:  # as when the worker holding the scattered arrays dies before the tasks read them
            raise FutureCancelledError("x", reason="lost dependencies")
        return real(futures, *args, **kwargs)

    monkeypatch.setattr(client, "gather", gather_once_lost)
    remote, _ = compute_signals(features, data.labels, signals=("spectral", "knn_disagreement"), client=client)
    assert len(calls) == 2
    np.testing.assert_allclose(remote.drop(columns="reasons").to_numpy(), local.drop(columns="reasons").to_numpy())


@pytest.mark.slow
def test_investigate_with_a_client(data, client):
    model = TinyNet()
    local = forensics.investigate(data, model, preprocess=CountingPreprocess(), progress=False)
    remote = forensics.investigate(data, model, preprocess=CountingPreprocess(), client=client, chunk_size=64,
                                   progress=False)
    np.testing.assert_allclose(remote.signals["suspicion"], local.signals["suspicion"], atol=1e-6)
    assert remote.signals.index.equals(local.signals.index)


def test_a_client_that_is_not_one_is_refused(data):
    with pytest.raises(InputError, match="client must be a dask.distributed.Client; got str"):
        compute_signals(np.zeros((N, 4), np.float32) + np.arange(N)[:, None], data.labels, client="tcp://x:8786")


def test_a_cluster_without_workers_is_waited_for_then_named(monkeypatch):
    distributed = pytest.importorskip("distributed")
    from forensics import distributed as fd

    monkeypatch.setattr(fd, "WORKER_WAIT_S", 0.5)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        with pytest.raises(InputError, match=r"has no workers \(none joined in 0.5 s\)"):
            fd.check_client(c)
        cluster.scale(1)  # a worker that joins while the check waits is used
        monkeypatch.setattr(fd, "WORKER_WAIT_S", 30.0)
        assert fd.check_client(c) is c
