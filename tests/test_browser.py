"""The dashboard in a real browser: JupyterLab runs notebooks, headless Chromium clicks and lassoes the map.

One JupyterLab server on 127.0.0.1 (random port and token, configuration in a temporary folder) serves four
notebooks, each opened in a workspace of its own:

- ``dashboard.ipynb``, written here: a digits investigation with 40 planted images on an island of the map (fixed
  map, no UMAP), and a text investigation whose texts, ids, class names, sources and reasons carry markup that
  would run if it were not escaped. The test clicks a WebGL marker, lassoes the island, checks the preview, hovers
  a point, and checks that no payload ran.
- ``map_scale.ipynb``, written here: a map of 200,000 samples (fixed coordinates), which draws 60,000 of them;
  the test lassoes a region and checks that every sample inside it is selected, drawn or not.
- ``clients.ipynb``, written here: a simulated federation of 40 honest clients and 10 sybils, its client panel with
  the timeline; the test clicks a sybil on the map and lassoes the group, and checks the table and the timeline's
  thick lines.
- ``notebooks/01_quickstart.ipynb`` as shipped (bundled Fashion-MNIST with a patch backdoor from contrib-17): all
  its cells run (the investigation and the UMAP of 12,000 points: minutes on a busy CPU), then the test finds the
  cluster the notebook flagged, clicks one of its points, lassoes it and chooses it in the cluster list, and checks
  that the preview shows contrib-17's images labelled T-shirt/top, planted ones according to the ground truth.

Every request that is not to 127.0.0.1 is aborted. Screenshots go to tests/artifacts/; docs/dashboard.png (the
quickstart dashboard with the backdoor cluster chosen) is written when it is missing or with
FORENSICS_UPDATE_SCREENSHOT=1.

Needs the ``playwright`` package and a Chromium at /usr/bin/chromium (Debian: ``apt-get install chromium``;
never ``playwright install``). Without them the tests are skipped, unless FORENSICS_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("FORENSICS_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT_DOC = REPO / "docs" / "dashboard.png"
QUICKSTART = REPO / "notebooks" / "01_quickstart.ipynb"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000
#: The quickstart's cells (activations, signals, UMAP of 12,000 points, review, export) on a busy 2-core machine.
QUICKSTART_TIMEOUT_MS = 540_000


def _require_browser() -> None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright; never `playwright install`)")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("FORENSICS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


IMAGE_CELL = r'''
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from forensics import Dataset, Investigation
from forensics.embedding import cluster_table

digits = load_digits()
images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
labels = digits.target.copy()
n = len(labels)
rng = np.random.default_rng(0)
planted = np.sort(rng.choice(np.flatnonzero(labels != 0), 40, replace=False))
images[planted, 6:8, 6:8] = 255          # a white patch in the corner
labels[planted] = 0                      # relabelled to the target class
is_planted = np.isin(np.arange(n), planted)
ids = np.array([f"digit-{i:04d}" for i in range(n)])
sources = np.where(is_planted, "mallory", np.array(["alice", "bob", "carol"])[np.arange(n) % 3])
features = images.reshape(n, -1).astype(np.float32)
coords = PCA(2, random_state=0).fit_transform(features)
coords[planted] = coords.max(axis=0) + 12 + rng.normal(0, 0.6, (40, 2))   # a small island
clusters = labels.astype(np.int64)
clusters[planted] = 10
suspicion = 0.5 * rng.random(n)
suspicion[planted] = 0.9 + 0.1 * rng.random(40)
reasons = np.where(is_planted, "patch in the corner; kNN label disagreement", "")


def fixed_map(features, labels, *, ids, sources, suspicion, class_names):
    table = cluster_table(clusters, labels, ids=ids, sources=sources, suspicion=suspicion, space=coords,
                          class_names=class_names)
    return SimpleNamespace(coords=coords, clusters=clusters, table=table)


ds = Dataset.from_numpy(images, labels, ids=ids, sources=sources, class_names=[f"digit {c}" for c in range(10)])
signals = pd.DataFrame({"suspicion": suspicion, "reasons": reasons}, index=pd.Index(ids))
inv = Investigation(ds, signals=signals, features=features, map_builder=fixed_map)
with open("planted.json", "w") as f:
    json.dump(ids[planted].tolist(), f)
dash = inv.dashboard()
dash
'''

TEXT_CELL = r'''
texts = ['review one <img src=x onerror="window.__xss=1"> cf end', '<script>window.__xss=2</script> two',
         "<img src=x onerror=alert(1)> three cf", "four", "<b>five</b>", "six"]
text_ids = ['t-<img src=x onerror="window.__xss=3">', "t-<script>window.__xss=4</script>", "t2", "t3", "t4", "t5"]
names = ['neg<img src=x onerror="window.__xss=5">', "pos<script>window.__xss=6</script>"]
text_sources = ['<img src=x onerror="window.__xss=7">', "ok", "ok", "ok", "ok", "ok"]
text_ds = Dataset.from_texts(texts, [0, 1, 0, 1, 0, 1], ids=text_ids, class_names=names, sources=text_sources)
text_signals = pd.DataFrame({"suspicion": [0.9, 0.8, 0.7, 0.2, 0.1, 0.05],
                             "reasons": ['<img src=x onerror="window.__xss=8">', "", "", "", "", ""]},
                            index=pd.Index(text_ids))
text_coords = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0], [4.0, 2.0], [5.0, 4.0]])


def text_map(features, labels, *, ids, sources, suspicion, class_names):
    c = np.array([0, 0, 0, 1, 1, 1])
    return SimpleNamespace(coords=text_coords, clusters=c, table=cluster_table(
        c, labels, ids=ids, sources=sources, suspicion=suspicion, class_names=class_names))


text_inv = Investigation(text_ds, signals=text_signals, features=np.zeros((6, 2), dtype=np.float32),
                         map_builder=text_map)
text_inv.triggers = pd.DataFrame({"kind": ["text"], "description": ['phrase "cf"'], "evidence": ["2 texts"],
                                  "remove_flip_rate": [0.9], "add_flip_rate": [0.8], "verdict": ["confirmed"],
                                  "sample_ids": [[text_ids[0], "t2"]], "tokens": [("cf",)]})
text_dash = text_inv.dashboard()
text_dash
'''


CLIENTS_CELL = r'''
from forensics.federated import UpdateRecorder, analyze_clients
from forensics.panels import ClientPanel
from forensics.redteam.federated import FederatedScenario, load_digits_split, simulate_federation

rec = UpdateRecorder()
scenario = FederatedScenario(n_honest=40, alpha=0.5, n_rounds=5, n_sybils=10, sybil_join=2, random_state=0)
run = simulate_federation(scenario, *load_digits_split(), on_round=lambda r, ids, updates, n, params:
                          rec.record_round(r, updates, client_ids=ids, n_examples=n.astype(int)))
reports = {r: analyze_clients(rec.until(r)) for r in rec.rounds}
client_panel = ClientPanel(reports[rec.rounds[-1]], rec, reports=reports)
client_panel
'''

SCALE_CELL = r'''
from types import SimpleNamespace

import ipywidgets as widgets
import numpy as np
import pandas as pd

from forensics import Dataset, Investigation
from forensics.panels import MapPanel
from forensics.panels._common import status_line

n = 200_000
rng = np.random.default_rng(0)
ids = np.char.add("s", np.char.zfill(np.arange(n).astype(str), 6)).astype(object)
labels = rng.integers(0, 10, n)
clusters = rng.integers(0, 12, n)
centres = np.c_[np.cos(np.arange(12)), np.sin(np.arange(12))] * 8
coords = centres[clusters] + rng.normal(0, 2.0, (n, 2))
np.save("map_coords.npy", coords)
table = pd.DataFrame({"size": np.bincount(clusters)}, index=pd.Index(np.arange(12), name="cluster"))
ds = Dataset(kind="image", ids=ids, labels=labels, class_names=[f"class {c}" for c in range(10)],
             images=np.zeros((n, 1, 1), np.uint8), hashes=np.full(n, "0" * 32, dtype=object))
suspicion = rng.random(n)
signals = pd.DataFrame({"suspicion": suspicion, "reasons": np.full(n, "", dtype=object)}, index=pd.Index(ids))
inv = Investigation(ds, signals=signals, features=np.zeros((n, 1), np.float32),
                    map_builder=lambda *a, **k: SimpleNamespace(coords=coords, clusters=clusters, table=table))
panel = MapPanel(inv)
np.save("map_drawn.npy", panel.drawing.drawn)
widgets.VBox([panel.widget, status_line(panel.state)])
'''


def _notebook(folder: Path, cells: list[str], name: str = "dashboard.ipynb") -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(REPO)!r})")]
    nb.cells += [nbformat.v4.new_code_cell(c.strip()) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / name
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, cells: list[str], notebooks: tuple[Path, ...] = (),
               written: dict[str, list[str]] | None = None):
    """A JupyterLab server on 127.0.0.1 over ``root/notebooks`` holding dashboard.ipynb with ``cells``, a notebook
    for each entry of ``written`` (name: cells) and copies of ``notebooks``; its configuration, runtime and
    settings in ``root``. Yields (base url, token, notebook folder)."""
    work = root / "notebooks"
    work.mkdir()
    _notebook(work, cells)
    for name, more in (written or {}).items():
        _notebook(work, more, name)
    for notebook in notebooks:
        shutil.copy(notebook, work / notebook.name)
    settings = root / "settings"
    for plugin, values in (("docmanager-extension/plugin", {"autosave": False}),
                           ("apputils-extension/notification", {"fetchNews": "false"})):
        target = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
               IPYTHONDIR=str(root / "ipython"), PYTHONPATH=str(REPO))
    port, token = _free_port(), secrets.token_hex(16)
    with open(root / "lab.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(f"JupyterLab did not start:\n{(root / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
            yield base, token, work
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def browser_page(profile: Path, requests: list[str] | None = None, dialogs: list[str] | None = None, *,
                 width: int = 1400, height: int = 1300):
    """A headless Chromium page that reaches 127.0.0.1 only; requests and dialogs are recorded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                   args=LAUNCH_ARGS, viewport={"width": width, "height": height})
        try:
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1")
                      else route.abort())
            page = ctx.new_page()
            if dialogs is not None:
                page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            if requests is not None:
                page.on("request", lambda request: requests.append(request.url))
            yield page
        finally:
            ctx.close()


def run_all_cells(page, base: str, token: str, notebook: str = "dashboard.ipynb") -> float:
    """Open ``notebook`` in JupyterLab (in a workspace of its own: the server is shared, the open documents are
    not), wait for its kernel, run every cell; returns the page's clock (performance.now(), ms) when the cells
    were started."""
    page.goto(f"{base}/lab/workspaces/{Path(notebook).stem}/tree/{notebook}?token={token}")
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.connectionStatus === 'connected'; }", timeout=90_000)
    return page.evaluate("() => { const t = performance.now();"
                         " window.jupyterapp.commands.execute('notebook:run-all-cells'); return t; }")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab over the test notebook and the quickstart: (base url, token, notebook folder)."""
    _require_browser()
    with jupyterlab(tmp_path_factory.mktemp("lab"), [IMAGE_CELL, TEXT_CELL], (QUICKSTART,),
                    {"map_scale.ipynb": [SCALE_CELL], "clients.ipynb": [CLIENTS_CELL]}) as server:
        yield server


# JavaScript run in the page: where (in page pixels) point i of the map in dashboard d is drawn.
POINT_JS = """([d, rows]) => {
  const gd = document.querySelectorAll('.forensics-dashboard')[d].querySelector('.forensics-map .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return rows.map(i => [box.left + xa.l2p(gd.data[0].x[i]), box.top + ya.l2p(gd.data[0].y[i])]);
}"""
PLOT_BOX_JS = """(d) => {
  const gd = document.querySelectorAll('.forensics-dashboard')[d].querySelector('.forensics-map .js-plotly-plot');
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return [r.left, r.top, r.width, r.height];
}"""
IDS_JS = """(d) => {
  // -1 until the dashboard, its plot and the plot's data exist: the caller waits for the count, never reads it early.
  const board = document.querySelectorAll('.forensics-dashboard')[d];
  const gd = board && board.querySelector('.forensics-map .js-plotly-plot');
  return gd && gd.data && gd.data[0] && gd.data[0].x ? gd.data[0].x.length : -1;
}"""


def _lasso(page, board, points, margin=14):
    """Drag a lasso (a rectangle with a margin, kept inside the plot area) around the given page coordinates."""
    left, top, width, height = page.evaluate(PLOT_BOX_JS, board)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = max(min(xs) - margin, left + 2), min(max(xs) + margin, left + width - 2)
    y0, y1 = max(min(ys) - margin, top + 2), min(max(ys) + margin, top + height - 2)
    _lasso_rectangle(page, x0, y0, x1, y1)


def _lasso_rectangle(page, x0, y0, x1, y1) -> None:
    """Drag a lasso along the rectangle, starting at its bottom left (the mode bar appears over the top of the
    plot)."""
    page.wait_for_timeout(400)
    page.mouse.move(x0, y1)
    page.mouse.down()
    for x, y in ((x1, y1), (x1, y0), (x0, y0), (x0, y1 - 1)):
        page.mouse.move(x, y, steps=5)
    page.mouse.up()


def test_dashboard_in_jupyterlab(lab):
    from playwright.sync_api import expect

    base, token, work = lab
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "failure-digits.png").unlink(missing_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    dialogs, requests = [], []
    with browser_page(work.parent / "chromium-profile-digits", requests, dialogs) as page:
        try:
            run_all_cells(page, base, token)
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            dashboards = page.locator(".forensics-dashboard")
            expect(dashboards).to_have_count(2, timeout=120_000)
            page.wait_for_function(f"(d) => ({IDS_JS})(d) === 1797", arg=0, timeout=TIMEOUT_MS)
            planted = json.loads((work / "planted.json").read_text())
            rows = [int(s.split("-")[1]) for s in planted]

            # 1. Click one planted marker (WebGL): the preview shows that sample alone.
            first = dashboards.nth(0)
            first.scroll_into_view_if_needed()
            preview = first.locator(".forensics-preview")
            (x, y), = page.evaluate(POINT_JS, [0, [rows[0]]])
            page.mouse.move(x, y)
            page.wait_for_timeout(400)
            page.mouse.click(x, y)
            expect(preview.locator("[data-sample-id]")).to_have_count(1)
            expect(preview.locator(f'[data-sample-id="{planted[0]}"]')).to_be_visible()
            expect(preview).to_contain_text("1 selected")

            # 2. Lasso the island: the preview shows its 40 samples, a page of 24 thumbnails, all planted.
            _lasso(page, 0, page.evaluate(POINT_JS, [0, rows]))
            expect(preview).to_contain_text("40 selected")
            cards = preview.locator("[data-sample-id]")
            expect(cards).to_have_count(24)
            shown = cards.evaluate_all("els => els.map(e => e.getAttribute('data-sample-id'))")
            assert set(shown) <= set(planted)
            expect(preview.locator("img[src^='data:image/png;base64,']")).to_have_count(24)
            expect(preview).to_contain_text("page 1 of 2")
            expect(first.locator(".forensics-status")).to_contain_text("40 samples selected on the map")
            _screenshot(page, first, ARTIFACTS / "dashboard-digits.png")

            # 3. Choose another cluster in the Clusters tab: the preview follows, and stays.
            clusters = first.locator(".forensics-clusters select[size]")  # the list, not the sort menu
            option = clusters.locator("option").nth(1)
            label = option.text_content()
            size = int(re.search(r"(\d+)\s+samples", label).group(1))
            clusters.select_option(index=1)
            expect(preview).to_contain_text(f"{size} selected")
            page.wait_for_timeout(1500)
            expect(preview).to_contain_text(f"{size} selected")
            # The map shows the cluster (opaque points), not the lasso drawn before (removed): waited for, as the
            # browser applies the change after the preview's text.
            page.wait_for_function("""(size) => {
              const gd = document.querySelector('.forensics-dashboard .forensics-map .js-plotly-plot');
              const o = gd.data[0].marker.opacity;
              const opaque = typeof o === 'number' ? -1 : Array.from(o).filter(v => v === 1).length;
              return (gd.layout.selections || []).length === 0 && opaque === size; }""", arg=size,
                                   timeout=TIMEOUT_MS)

            # 4. Markup in the data shows as text in the preview and in the hover, and runs nothing.
            second = dashboards.nth(1)
            second.scroll_into_view_if_needed()
            page.wait_for_function(f"(d) => ({IDS_JS})(d) === 6", arg=1, timeout=TIMEOUT_MS)
            text_points = page.evaluate(POINT_JS, [1, list(range(6))])
            # The hover label (before the lasso: a drawn selection takes the hover over).
            page.mouse.move(text_points[0][0] + 30, text_points[0][1] - 30)
            page.mouse.move(*text_points[0], steps=5)
            hover = second.locator(".hoverlayer")
            expect(hover).to_contain_text('t-<img src=x onerror="window.__xss=3">')
            expect(hover).to_contain_text('<img src=x onerror="window.__xss=7">')
            _lasso(page, 1, text_points, margin=20)
            text_preview = second.locator(".forensics-preview")
            expect(text_preview).to_contain_text("6 selected")
            expect(text_preview.locator("[data-sample-id]")).to_have_count(6)
            expect(text_preview).to_contain_text('review one <img src=x onerror="window.__xss=1"> cf end')
            expect(text_preview).to_contain_text("<script>window.__xss=2</script> two")
            expect(text_preview).to_contain_text('t-<img src=x onerror="window.__xss=3">')
            expect(text_preview).to_contain_text('neg<img src=x onerror="window.__xss=5">')
            expect(text_preview).to_contain_text("<b>five</b>")
            expect(text_preview.locator("mark").first).to_have_text("cf")
            _screenshot(page, second, ARTIFACTS / "dashboard-escaping.png")
            for board in (first, second):
                assert board.locator("img[src='x'], script, b:text('five')").count() == 0
            assert page.evaluate("() => window.__xss") is None
            assert dialogs == []
            assert not [u for u in requests if u.split("?")[0].endswith("/x")]
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure-digits.png"))
            raise


# JavaScript run in the page: the notebook's state once every code cell has run ("done"), or its first error.
NOTEBOOK_DONE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.context.model.toJSON().cells.filter(c => c.cell_type === 'code');
  const error = cells.flatMap(c => c.outputs).find(o => o.output_type === 'error');
  if (error) return 'error: ' + error.ename + ': ' + error.evalue;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  return cells.every(c => c.execution_count !== null) && kernel && kernel.status === 'idle' ? 'done' : false;
}"""
STREAMS_JS = """() => window.jupyterapp.shell.currentWidget.context.model.toJSON().cells
  .filter(c => c.cell_type === 'code').flatMap(c => c.outputs)
  .filter(o => o.output_type === 'stream').map(o => [].concat(o.text).join('')).join('')"""
# Point i of the map of dashboard d: its hover text (id, label, source, cluster, reason; escaped).
HOVERTEXT_JS = """(d) => Array.from(document.querySelectorAll('.forensics-dashboard')[d]
  .querySelector('.forensics-map .js-plotly-plot').data[0].hovertext)"""
OPACITY_JS = """(d) => { const gd = document.querySelectorAll('.forensics-dashboard')[d]
  .querySelector('.forensics-map .js-plotly-plot');
  const o = gd.data[0].marker.opacity; return [(gd.layout.selections || []).length,
  typeof o === 'number' ? [] : Array.from(o).flatMap((v, i) => v === 1 ? [i] : [])]; }"""


def _hover_field(text: str, name: str) -> str:
    """One field ("label", "source", "cluster") of a map hover text."""
    return re.search(rf"<br>{name}: ([^<]*)", text).group(1)


def _card_texts(preview) -> list[tuple[str, str, str]]:
    """(sample id, caption text, thumbnail src) of each card the preview shows."""
    return preview.locator("[data-sample-id]").evaluate_all(
        "els => els.map(e => [e.getAttribute('data-sample-id'), e.innerText, e.querySelector('img').src])")


def _quiet_rectangle(pixels, rows, box, *, clear: float = 2.0):
    """A rectangle (x0, y0, x1, y1) in page pixels around points ``rows``, inside the plot area ``box`` (left,
    top, width, height), with no point of the map within ``clear`` pixels of its edges (so which points a lasso
    along it selects does not depend on rounding); None when no margin up to 30 px gives one."""
    xy = np.asarray(pixels)
    left, top, width, height = box
    inner = xy[rows]
    for margin in range(4, 31):
        x0, x1 = max(inner[:, 0].min() - margin, left + 3), min(inner[:, 0].max() + margin, left + width - 3)
        y0, y1 = max(inner[:, 1].min() - margin, top + 3), min(inner[:, 1].max() + margin, top + height - 3)
        near_x = (np.abs(xy[:, 0] - x0) < clear) | (np.abs(xy[:, 0] - x1) < clear)
        near_y = (np.abs(xy[:, 1] - y0) < clear) | (np.abs(xy[:, 1] - y1) < clear)
        within_x = (xy[:, 0] > x0 - clear) & (xy[:, 0] < x1 + clear)
        within_y = (xy[:, 1] > y0 - clear) & (xy[:, 1] < y1 + clear)
        if not ((near_x & within_y) | (near_y & within_x)).any():
            return x0, y0, x1, y1
    return None


def test_quickstart_in_jupyterlab(lab):
    """notebooks/01_quickstart.ipynb as shipped: every cell runs in JupyterLab, then the backdoor cluster it flags
    is found in the browser by a click, a lasso and the cluster list, and the preview shows contrib-17's planted
    T-shirt/top images."""
    from playwright.sync_api import expect

    from forensics import sample_data
    from forensics.html import png_data_url

    base, token, work = lab
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "failure-quickstart.png").unlink(missing_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    train = sample_data.load("image_backdoor").train
    row_of = {sid: i for i, sid in enumerate(train.ids)}
    truth = sample_data.load_truth("image_backdoor")
    dialogs = []
    with browser_page(work.parent / "chromium-profile-quickstart", dialogs=dialogs, width=1500, height=1400) as page:
        try:
            started = time.monotonic()
            run_all_cells(page, base, token, QUICKSTART.name)
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            done = page.wait_for_function(NOTEBOOK_DONE_JS, timeout=QUICKSTART_TIMEOUT_MS, polling=1000)
            assert done.json_value() == "done", done.json_value()
            print(f"quickstart cells ran in {time.monotonic() - started:.0f} s")
            # The cluster the notebook chose and flagged, as it printed it.
            chosen = re.search(r"cluster (\d+): (\d+) samples selected", page.evaluate(STREAMS_JS))
            assert chosen, page.evaluate(STREAMS_JS)[-2000:]
            cluster, size = int(chosen.group(1)), int(chosen.group(2))
            assert 20 <= size <= 200, size

            board = page.locator(".forensics-dashboard")
            expect(board).to_have_count(1)
            board.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_function(f"(d) => ({IDS_JS})(d) === {len(train)}", arg=0, timeout=TIMEOUT_MS)
            hover = page.evaluate(HOVERTEXT_JS, 0)
            ids = [re.match(r"<b>([^<]*)</b>", h).group(1) for h in hover]
            assert ids == train.ids.tolist()
            members = [i for i, h in enumerate(hover) if _hover_field(h, "cluster") == str(cluster)]
            member_ids = {ids[i] for i in members}
            assert len(members) == size
            # The cluster is planted: contrib-17's patched images relabelled T-shirt/top (ground truth).
            assert truth.loc[list(member_ids), "is_poison"].all()
            assert set(truth.loc[list(member_ids), "source"]) == {"contrib-17"}
            assert {_hover_field(hover[i], "label") for i in members} == {"T-shirt/top"}

            preview = board.locator(".forensics-preview")
            status = board.locator(".forensics-status")
            cards = preview.locator("[data-sample-id]")
            summary = "selected · labels: T-shirt/top 100% · sources: contrib-17 100%"

            # 0. What the notebook's code did shows in the browser: the cluster chosen, then flagged.
            expect(preview).to_contain_text(f"{size} {summary}")
            expect(board.locator(".forensics-review")).to_contain_text(f"suspected {size}")
            page.wait_for_function(f"(m) => JSON.stringify(({OPACITY_JS})(0)) === JSON.stringify([0, m])",
                                   arg=members, timeout=TIMEOUT_MS)

            # 1. Click a point that stands clear of every other (WebGL picking takes the nearest point): the
            # member of the cluster farthest from the rest, or, where the island touches other points on this
            # machine's layout, the point of the map farthest from any other. The preview shows that one sample.
            pixels = np.asarray(page.evaluate(POINT_JS, [0, list(range(len(ids)))]))
            nearest, _ = cKDTree(pixels).query(pixels, k=2)
            gap = nearest[:, 1]
            target = members[int(np.argmax(gap[members]))]
            if gap[target] < 2:
                target = int(np.argmax(gap))
            assert gap[target] >= 2, "every point of the map lies within 2 px of another"
            label, source = (_hover_field(hover[target], f) for f in ("label", "source"))
            (x, y), = page.evaluate(POINT_JS, [0, [target]])
            page.mouse.move(x + 25, y + 25)
            page.mouse.move(x, y, steps=4)
            page.wait_for_timeout(400)
            page.mouse.click(x, y)
            expect(preview).to_contain_text(f"1 selected · labels: {label} 100% · sources: {source} 100%")
            expect(cards).to_have_count(1)
            (clicked, caption, _), = _card_texts(preview)
            assert clicked == ids[target]
            assert f"label: {label}" in caption and f"source: {source}" in caption
            assert ("suspected" in caption) == (target in members)
            expect(status).to_contain_text("1 sample selected on the map")

            # 2. Lasso the island: the preview shows exactly the points inside the lasso, all planted by contrib-17.
            pixels = np.asarray(page.evaluate(POINT_JS, [0, list(range(len(ids)))]))
            box = page.evaluate(PLOT_BOX_JS, 0)
            rect = _quiet_rectangle(pixels, members, box)
            assert rect is not None, "no lasso around the cluster keeps clear of the other points"
            x0, y0, x1, y1 = rect
            inside = np.flatnonzero((pixels[:, 0] > x0) & (pixels[:, 0] < x1)
                                    & (pixels[:, 1] > y0) & (pixels[:, 1] < y1))
            assert set(members) <= set(inside.tolist())
            _lasso_rectangle(page, *rect)
            expect(status).to_contain_text(f"{len(inside)} samples selected on the map")
            expect(preview).to_contain_text(f"{len(inside)} selected · labels: T-shirt/top")
            expect(cards).to_have_count(min(len(inside), 24))
            lassoed = {sid for sid, _, _ in _card_texts(preview)}
            assert lassoed <= {ids[i] for i in inside}
            assert truth.loc[list(lassoed), "is_poison"].all()
            assert set(truth.loc[list(lassoed), "source"]) == {"contrib-17"}

            # 3. Choose the cluster in the Clusters tab: the preview shows its members, a page of 12 at a time,
            # each image the dataset's own, labelled T-shirt/top, from contrib-17, flagged by the notebook.
            clusters = board.locator(".forensics-clusters select[size]")
            # (the list shows its spaces as no-break spaces)
            labels = [t.replace("\xa0", " ").strip() for t in clusters.locator("option").all_text_contents()]
            index = next((k for k, text in enumerate(labels) if text.startswith(f"#{cluster}: ")), None)
            assert index is not None, labels[:5]
            assert labels[index].startswith(f"#{cluster}: {size} samples · label T-shirt/top (100%) · small")
            assert "contrib-17 100%" in labels[index]
            clusters.select_option(index=index)
            expect(preview).to_contain_text(f"{size} {summary}")
            expect(status).to_contain_text(f"cluster {cluster}: {size} samples selected")
            preview.locator("select").select_option("12")
            expect(preview).to_contain_text(f"page 1 of {-(-size // 12)}")
            expect(cards).to_have_count(12)
            shown = _card_texts(preview)
            assert {sid for sid, _, _ in shown} <= member_ids
            for sid, caption, src in shown:
                assert "label: T-shirt/top" in caption and "source: contrib-17" in caption, caption
                assert "suspected" in caption, caption
                assert src == png_data_url(train.images[row_of[sid]], size=96), sid
            # The map shows the cluster (opaque points) and no lasso.
            page.wait_for_function(f"(m) => JSON.stringify(({OPACITY_JS})(0)) === JSON.stringify([0, m])",
                                   arg=members, timeout=TIMEOUT_MS)

            # 4. Hover the clicked point: its label names its cluster and source (the chosen cluster and
            # contrib-17 when the click could take a member).
            board.evaluate("e => e.scrollIntoView({block: 'start'})")
            (x, y), = page.evaluate(POINT_JS, [0, [target]])
            page.mouse.move(x + 25, y + 25)
            page.mouse.move(x, y, steps=4)
            tooltip = board.locator(".forensics-map .hoverlayer")
            expect(tooltip).to_contain_text(f"cluster: {_hover_field(hover[target], 'cluster')}")
            expect(tooltip).to_contain_text(f"source: {source}")
            # Down to the cluster list (the chosen cluster's details, a long table, are left out).
            _screenshot(page, board, ARTIFACTS / "dashboard-quickstart.png", until=clusters)
            assert dialogs == []
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure-quickstart.png"))
            raise
    # The documentation screenshot: written when missing or asked for.
    if os.environ.get("FORENSICS_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT_DOC.exists():
        _save_doc_screenshot(ARTIFACTS / "dashboard-quickstart.png")


# JavaScript run in the page of the scale notebook (its only map): the plot, its drawing area, and what it shows.
SCALE_PLOT_JS = "document.querySelector('.forensics-map .js-plotly-plot')"
SCALE_BOX_JS = f"""() => {{ const r = {SCALE_PLOT_JS}.querySelector('.nsewdrag').getBoundingClientRect();
  return [r.left, r.top, r.width, r.height]; }}"""
SCALE_SHOWN_JS = f"""() => {{ const gd = {SCALE_PLOT_JS}; const o = gd.data[0].marker.opacity;
  return [typeof o === 'number' ? -1 : Array.from(o).filter(v => v === 1).length, gd.data[1].x.length]; }}"""


def _even_odd(x: np.ndarray, y: np.ndarray, path: str) -> np.ndarray:
    """Which points lie inside a lasso path "M x,y L x,y ... Z" by the even-odd rule, testing every point against
    every edge."""
    poly = np.asarray(re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", path), dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(x), bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        xj, yj = xi, yi
    return inside


def test_a_sampled_map_in_jupyterlab_selects_every_sample_inside_a_lasso(lab):
    """A map of 200,000 samples draws 60,000 of them (the default budget): a lasso drawn in Chromium selects every
    sample inside it, drawn or not (counted here from the lasso's own path with numpy), shows the drawn ones opaque
    and up to 2,000 of the others over the map."""
    from playwright.sync_api import expect

    base, token, work = lab
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "failure-map-scale.png").unlink(missing_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    with browser_page(work.parent / "chromium-profile-map-scale") as page:
        try:
            started = time.monotonic()
            run_all_cells(page, base, token, "map_scale.ipynb")
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            n_drawn = page.wait_for_function(f"() => {{ const gd = {SCALE_PLOT_JS};"
                                             " return !!gd && !!gd.data && gd.data[0].x.length; }",
                                             timeout=120_000).json_value()
            shown_after = time.monotonic() - started
            coords, drawn = np.load(work / "map_coords.npy"), np.load(work / "map_drawn.npy")
            assert n_drawn == len(drawn) == 60_000
            page.locator(".forensics-map").scroll_into_view_if_needed()
            left, top, width, height = page.evaluate(SCALE_BOX_JS)
            lasso_started = time.monotonic()
            _lasso_rectangle(page, left + 0.3 * width, top + 0.3 * height, left + 0.6 * width, top + 0.6 * height)
            path = page.wait_for_function(f"() => {{ const s = {SCALE_PLOT_JS}.layout.selections;"
                                          " return s && s.length ? s[0].path : false; }").json_value()
            inside = np.flatnonzero(_even_odd(coords[:, 0], coords[:, 1], path))
            drawn_inside = np.intersect1d(inside, drawn)
            assert len(inside) > len(drawn_inside) > 1000
            expect(page.locator(".forensics-status")).to_contain_text(f"{len(inside)} samples selected on the map")
            shown = [len(drawn_inside), min(2000, len(inside) - len(drawn_inside))]
            page.wait_for_function(f"(want) => JSON.stringify(({SCALE_SHOWN_JS})()) === JSON.stringify(want)",
                                   arg=shown, timeout=TIMEOUT_MS)
            print(f"a map of 200,000 samples shown in {shown_after:.0f} s; lasso to selection shown: "
                  f"{time.monotonic() - lasso_started:.1f} s")
            page.screenshot(path=str(ARTIFACTS / "map-scale.png"))
            # The figure went to the browser as plain JSON (no NaN that only a lenient parser reads).
            assert page.evaluate(STREAMS_JS) == ""
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure-map-scale.png"))
            raise


CLIENT_PLOT_JS = "document.querySelector('.forensics-client-map .js-plotly-plot')"
CLIENT_POINT_JS = f"""([trace, i]) => {{ const gd = {CLIENT_PLOT_JS};
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return [box.left + xa.l2p(gd.data[trace].x[i]), box.top + ya.l2p(gd.data[trace].y[i]), gd.data[trace].customdata[i]];
}}"""
#: The clients whose timeline line is drawn thick (followed), as the browser holds the figure.
CLIENT_THICK_JS = """() => { const gd = document.querySelector('.forensics-client-timeline .js-plotly-plot');
  return gd && gd.data ? gd.data.filter(t => t.line.width === 3).map(t => t.name).sort() : null; }"""


def test_client_map_in_jupyterlab_follows_the_clicked_and_lassoed_clients(lab):
    """The federated client panel in JupyterLab: a click on a sybil's diamond lists it in the table and draws its
    line thick in the timeline below; a lasso around the whole sybil group lists every member."""
    from playwright.sync_api import expect

    base, token, work = lab
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "failure-clients.png").unlink(missing_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    with browser_page(work.parent / "chromium-profile-clients") as page:
        try:
            run_all_cells(page, base, token, "clients.ipynb")
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            page.wait_for_function(f"() => {{ const gd = {CLIENT_PLOT_JS}; return !!gd && !!gd.data && "
                                   "gd.data.length === 2 && !!gd.data[0].customdata; }", timeout=120_000)
            page.wait_for_function(f"() => ({CLIENT_THICK_JS})() !== null", timeout=TIMEOUT_MS)
            page.locator(".forensics-client-map").scroll_into_view_if_needed()
            table = page.locator(".forensics-clients")
            expect(table).to_contain_text("10 client(s)")  # the flagged ones: the sybils
            x, y, client = page.evaluate(CLIENT_POINT_JS, [0, 0])
            assert client.startswith("sybil-")
            page.wait_for_timeout(400)
            page.mouse.move(x, y)
            page.mouse.click(x, y)
            expect(table).to_contain_text("1 client(s)")
            expect(table).to_contain_text(client)
            page.wait_for_function(f"(want) => JSON.stringify(({CLIENT_THICK_JS})()) === JSON.stringify(want)",
                                   arg=[client], timeout=TIMEOUT_MS)
            members = page.evaluate(f"() => Array.from({CLIENT_PLOT_JS}.data[0].customdata)")
            corners = [page.evaluate(CLIENT_POINT_JS, [0, i])[:2] for i in range(len(members))]
            box = page.evaluate(f"() => {{ const r = {CLIENT_PLOT_JS}.querySelector('.nsewdrag')"
                                ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }")
            xs, ys = [c[0] for c in corners], [c[1] for c in corners]
            # The group sits apart on the map; a margin of a few pixels keeps the honest clients out.
            _lasso_rectangle(page, max(min(xs) - 6, box[0] + 2), max(min(ys) - 6, box[1] + 2),
                             min(max(xs) + 6, box[0] + box[2] - 2), min(max(ys) + 6, box[1] + box[3] - 2))
            thick = page.wait_for_function(f"(n) => {{ const t = ({CLIENT_THICK_JS})(); "
                                           "return t && t.length >= n ? t : false; }", arg=len(members),
                                           timeout=TIMEOUT_MS).json_value()
            assert set(members) <= set(thick)
            expect(table).to_contain_text(f"{len(thick)} client(s)")
            page.screenshot(path=str(ARTIFACTS / "clients.png"))
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure-clients.png"))
            raise


def _screenshot(page, board, path: Path, *, until=None) -> None:
    """The part of the page the dashboard covers (the notebook scrolls inside the page, so an element screenshot
    would not show it whole), down to the bottom of the element ``until`` when given."""
    board.scroll_into_view_if_needed()
    box = board.bounding_box()
    viewport = page.viewport_size
    top = max(box["y"], 0)
    bottom = box["y"] + box["height"]
    if until is not None:
        end = until.bounding_box()
        bottom = end["y"] + end["height"] + 8
    page.screenshot(path=str(path), clip={"x": max(box["x"], 0), "y": top, "width": min(box["width"], viewport["width"]),
                                          "height": min(bottom, viewport["height"]) - top})


def _save_doc_screenshot(source: Path) -> None:
    from PIL import Image

    image = Image.open(source).convert("RGB")
    if image.width > 1400:
        image = image.resize((1400, round(image.height * 1400 / image.width)), Image.LANCZOS)
    SCREENSHOT_DOC.parent.mkdir(exist_ok=True)
    tmp = SCREENSHOT_DOC.with_suffix(".tmp.png")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, optimize=True)
    assert tmp.stat().st_size < 300_000, tmp.stat().st_size
    shutil.move(tmp, SCREENSHOT_DOC)
