"""Panels without a browser: selection, preview, colours, review, export, errors and escaping.

The plotly wiring tests feed the message plotly's browser code sends (``_js2py_pointsCallback``) and watch the
messages it sends back (``_py2js_*``): private API of plotly 6 and 7, hence the version check.
"""

from __future__ import annotations

import functools
import io
import re
from types import SimpleNamespace

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly
import pytest
from PIL import Image

from forensics.data import Dataset
from forensics.errors import InputError
from forensics.html import escape_html, highlight, png_bytes
from forensics.investigation import Investigation
from forensics.panels import COLOR_MODES, Dashboard, MapPanel, PanelState, PreviewPanel, dashboard
from forensics.panels._common import Columns
from forensics.panels.clusters import sort_clusters
from forensics.panels.map import categorical_coloring, hover_texts
from forensics.panels.preview import text_pattern
from forensics.panels.sources import source_summary

PLOTLY_MAJOR = int(plotly.__version__.split(".")[0])
plotly_messages = pytest.mark.skipif(PLOTLY_MAJOR not in (6, 7),
                                     reason="feeds plotly's private widget messages; checked on plotly 6 and 7")

XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>alert(2)</script>"


class FixedMap:
    """A map builder returning fixed coordinates and clusters (no UMAP)."""

    def __init__(self, coords: np.ndarray, clusters: np.ndarray, table: pd.DataFrame | None = None):
        self.coords, self.clusters, self.table = coords, clusters, table

    def __call__(self, features, labels, *, ids, sources, suspicion, class_names):
        table = self.table
        if table is None:
            from forensics.embedding import cluster_table

            table = cluster_table(self.clusters, labels, ids=ids, sources=sources, suspicion=suspicion,
                                  space=self.coords, class_names=class_names)
        return SimpleNamespace(coords=self.coords, clusters=self.clusters, table=table)


def image_investigation(n: int = 60) -> Investigation:
    """n 8x8 images in 3 classes; samples 0..9 carry a white corner patch, sit in cluster 3 at (10, 10), come
    from source "mallory" and have the highest suspicion (0.99 - 0.01 * i)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 100, (n, 8, 8), dtype=np.uint8)
    images[:10, :2, :2] = 255
    labels = np.arange(n) % 3
    labels[:10] = 2
    sources = np.where(np.arange(n) < 10, "mallory", np.where(np.arange(n) % 2, "alice", "bob"))
    ids = [f"img-{i:03d}" for i in range(n)]
    ds = Dataset.from_numpy(images, labels, ids=ids, class_names=["zero", "one", "two"], sources=sources)
    suspicion = np.linspace(0.5, 0.0, n)
    suspicion[:10] = 0.99 - 0.01 * np.arange(10)
    signals = pd.DataFrame({"loss_score": suspicion, "suspicion": suspicion,
                            "reasons": ["patch; knn"] * 10 + ["high loss"] * 5 + [""] * (n - 15)},
                           index=pd.Index(ids))
    samples = ds.to_frame()
    samples["prediction"] = labels
    samples["prediction_name"] = samples["label_name"]
    samples["loss"] = np.r_[np.full(10, 1e-4), np.linspace(0.01, 3.0, n - 10)]
    coords = np.c_[labels * 3.0 + rng.normal(0, 0.3, n), rng.normal(0, 0.3, n)]
    coords[:10] = 10 + rng.normal(0, 0.1, (10, 2))
    clusters = labels.astype(np.int64).copy()
    clusters[:10] = 3
    clusters[10] = -1
    return Investigation(ds, signals=signals, samples=samples, features=rng.random((n, 4)).astype(np.float32),
                         map_builder=FixedMap(coords, clusters))


def text_investigation() -> Investigation:
    """Texts, ids, class names, sources and reasons carrying markup."""
    texts = [f"A nice review {XSS_IMG} cf trigger here", f"{XSS_SCRIPT} bad & sad", "plain text cf",
             "fine words", "more words", "<b>bold?</b> words"]
    ids = [f"id-{XSS_SCRIPT}", f"id-{XSS_IMG}", "t2", "t3", "t4", 'q"uote']
    labels = [0, 1, 0, 1, 0, 1]
    ds = Dataset.from_texts(texts, labels, ids=ids, class_names=[f"neg{XSS_IMG}", f"pos{XSS_SCRIPT}"],
                            sources=[f"src{XSS_SCRIPT}", f"src{XSS_IMG}", "ok", "ok", "ok", "ok"])
    signals = pd.DataFrame({"suspicion": [0.9, 0.8, 0.3, 0.2, 0.1, 0.05],
                            "reasons": [f"why {XSS_IMG}; more", XSS_SCRIPT, "", "", "", ""]}, index=pd.Index(ids))
    coords = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]], dtype=float)
    clusters = np.array([0, 0, 1, 1, 1, -1])
    table = pd.DataFrame({"size": [1, 2, 3], "dominant_name": [XSS_SCRIPT, "a", "b"],
                          "top_sources": [XSS_IMG, "x", "y"]}, index=pd.Index([-1, 0, 1], name="cluster"))
    inv = Investigation(ds, signals=signals, features=np.zeros((6, 2), dtype=np.float32),
                        map_builder=FixedMap(coords, clusters, table))
    inv.triggers = pd.DataFrame({
        "trigger_id": ["text-1"], "kind": ["text"], "description": ['phrase "cf"'],
        "evidence": [f"2 texts {XSS_IMG}"], "remove_flip_rate": [0.9], "add_flip_rate": [0.8],
        "verdict": ["confirmed"], "sample_ids": [[ids[0], "t2"]], "tokens": [("cf",)],
    })
    return inv


def html_values(widget: widgets.Widget) -> list[str]:
    """The value of every HTML widget under ``widget``."""
    out = []
    if isinstance(widget, widgets.HTML):
        out.append(widget.value)
    for child in getattr(widget, "children", ()):
        out += html_values(child)
    return out


def assert_no_live_markup(html: str) -> None:
    assert "<script" not in html.lower()
    assert "<img src=x" not in html.lower()
    assert "<b>bold" not in html


# -------------------------------------------------------------------------------------------- escaping helpers
def test_escape_and_highlight_escape_data_and_mark_matches():
    assert escape_html('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    assert escape_html("<b>'", quote=False) == "&lt;b&gt;'"
    pattern = text_pattern(["cf"])
    out = highlight(f"x {XSS_IMG} cf <b>CF</b> cfx", pattern)
    assert out == "x &lt;img src=x onerror=alert(1)&gt; <mark>cf</mark> &lt;b&gt;<mark>CF</mark>&lt;/b&gt; cfx"
    # A window around the first match, cut on both sides.
    long = "a" * 500 + " cf " + "b" * 500
    snippet = highlight(long, pattern, max_chars=90)
    assert snippet.startswith("…") and snippet.endswith("…") and "<mark>cf</mark>" in snippet


def test_png_bytes_upscales_nearest_neighbour():
    image = np.array([[0, 255], [128, 7]], dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(image, size=8))))
    assert decoded.shape == (8, 8)
    np.testing.assert_array_equal(decoded[:4, :4], 0)
    np.testing.assert_array_equal(decoded[4:, 4:], 7)
    with pytest.raises(InputError, match="uint8"):
        png_bytes(image.astype(np.float32))


# -------------------------------------------------------------------------------------------- state
def test_state_selection_paging_and_observers():
    state = PanelState(["a", "b", "c", "d", "e"], page_size=2)
    seen = []
    state.observe(lambda ch: seen.append((ch.name, ch.origin)), ("selection", "page"))
    state.select(["d", "b", "d", "a"], origin="test")
    assert list(state.selection) == ["a", "b", "d"]
    assert state.n_pages == 2 and state.page == 0
    state.set_page(1)
    assert seen == [("selection", "test"), ("page", "api")]
    state.select(["e"])
    assert state.page == 0 and state.n_pages == 1
    with pytest.raises(InputError, match="'zz' is not in this investigation"):
        state.select(["zz"])
    with pytest.raises(InputError, match="page must be an integer in 0..0"):
        state.set_page(3)
    with pytest.raises(InputError, match="unknown field"):
        state.observe(print, "colour")


def test_observer_errors_are_shown_in_the_status_line():
    state = PanelState(["a", "b"])

    def broken(change):
        raise RuntimeError("boom")

    state.observe(broken, "selection")
    later = []
    state.observe(lambda ch: later.append(ch.name), "selection")
    state.select(["a"])
    assert state.status_is_error and state.status == "Error in broken: RuntimeError: boom"
    assert later == ["selection"]  # the other observers still ran


# -------------------------------------------------------------------------------------------- preview
def test_selection_updates_preview_pages_and_summary():
    inv = image_investigation()
    dash = dashboard(inv, page_size=4)
    preview = dash.preview
    assert preview.shown_ids == [] and "Nothing selected" in preview.summary.value
    chosen = [f"img-{i:03d}" for i in (12, 3, 0, 7, 5, 40)]
    dash.select(chosen)
    # Most suspicious first: 0 (0.99), 3, 5, 7, then 12 and 40 (linearly decreasing).
    assert preview.shown_ids == ["img-000", "img-003", "img-005", "img-007"]
    assert "page 1 of 2" in preview.page_label.value
    assert "<b>6</b> selected" in preview.summary.value
    assert "labels: two 67%, one 17%, zero 17%" in preview.summary.value and "mallory 67%" in preview.summary.value
    html = preview.html
    assert html.count('class="fx-card"') == 4 and 'data-sample-id="img-003"' in html
    assert html.count("data:image/png;base64,") == 4
    assert "suspicion 0.99 · unreviewed" in html and "patch" in html
    preview.next_button.click()
    assert preview.shown_ids == ["img-012", "img-040"] and "page 2 of 2" in preview.page_label.value
    assert preview.next_button.disabled and not preview.prev_button.disabled
    preview.size_menu.value = 12
    assert dash.state.page == 0 and len(preview.shown_ids) == 6
    dash.state.clear_selection()
    assert preview.shown_ids == [] and preview.html == ""


def test_preview_thumbnails_are_the_images():
    inv = image_investigation()
    preview = PreviewPanel(inv, thumb_size=32)
    preview.state.select(["img-001"])
    src = re.search(r'src="data:image/png;base64,([^"]+)"', preview.html).group(1)
    import base64

    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(src))))
    np.testing.assert_array_equal(decoded[::4, ::4], inv.dataset.images[1])


# -------------------------------------------------------------------------------------------- map
def test_map_colour_change_sends_marker_only():
    inv = image_investigation()
    panel = MapPanel(inv)
    fig, trace = panel.figure, panel.figure.data[0]
    x_before, y_before = fig._data[0]["x"], fig._data[0]["y"]
    x_values = np.array(trace.x, copy=True)
    sent = []
    fig.observe(lambda ch: ch["new"] and sent.append(ch["new"]), names=["_py2js_restyle", "_py2js_update",
                                                                        "_py2js_addTraces"])
    assert panel.modes == ("cluster", "label", "prediction", "suspicion", "source", "review")
    before = np.array(trace.marker.color, copy=True)
    panel.color_menu.value = "label"
    after = np.asarray(trace.marker.color)
    np.testing.assert_array_equal(after, inv.dataset.labels)  # class codes in the class order
    assert not np.array_equal(before, after)
    assert fig._data[0]["x"] is x_before and fig._data[0]["y"] is y_before
    np.testing.assert_array_equal(np.asarray(trace.x), x_values)
    assert len(sent) == 1
    keys = set(sent[0].get("style_data", sent[0].get("restyle_data", {})))
    assert keys and all(k.startswith("marker") for k in keys), keys
    panel.set_color("suspicion")
    np.testing.assert_allclose(np.asarray(trace.marker.color), inv.signals["suspicion"])
    assert trace.marker.showscale is True
    assert "img-" not in str(sent)  # hover texts and ids were never sent again
    with pytest.raises(InputError, match="'truth' is not available"):
        panel.set_color("truth")


@plotly_messages
def test_plotly_lasso_message_selects_those_samples():
    inv = image_investigation()
    dash = dashboard(inv)
    fig = dash.map.figure
    fig._js2py_pointsCallback = {
        "event_type": "plotly_selected",
        "points": {"trace_indexes": [0, 0, 0], "point_indexes": [4, 0, 9], "xs": [0, 0, 0], "ys": [0, 0, 0]},
        "selector": None, "device_state": None,
    }
    assert list(dash.selection) == ["img-000", "img-004", "img-009"]
    assert dash.preview.shown_ids == ["img-000", "img-004", "img-009"]
    assert dash.map.highlighted.tolist() == [0, 4, 9]
    assert dash.status.value.endswith("3 samples selected on the map</span>")
    # A click replaces the selection, a shift-click adds to it, a double-click clears it.
    click = {"event_type": "plotly_click", "selector": None,
             "points": {"trace_indexes": [0], "point_indexes": [20], "xs": [0], "ys": [0]},
             "device_state": {"shift": False, "ctrl": False, "alt": False, "meta": False, "button": 0, "buttons": 1}}
    fig._js2py_pointsCallback = click
    assert list(dash.selection) == ["img-020"]
    click["device_state"]["shift"] = True
    click["points"]["point_indexes"] = [21]
    fig._js2py_pointsCallback = click
    assert list(dash.selection) == ["img-020", "img-021"] and dash.map.highlighted.tolist() == [20, 21]
    fig._js2py_pointsCallback = {"event_type": "plotly_deselect", "selector": None, "device_state": None,
                                 "points": {"trace_indexes": [], "point_indexes": [], "xs": [], "ys": []}}
    assert len(dash.selection) == 0 and len(dash.map.highlighted) == 0 and fig.data[0].marker.opacity == 0.8


@plotly_messages
def test_lasso_shape_message_selects_the_points_inside():
    # The shape plotly leaves in layout.selections, as its browser code sends it (a lasso around the island).
    inv = image_investigation()
    dash = dashboard(inv)
    fig = dash.map.figure
    fig._js2py_relayout = {"source_view_id": "v1", "relayout_data": {"selections": [{
        "xref": "x", "yref": "y", "opacity": "_undefined_", "line": {"color": "_undefined_", "width": 1, "dash": "dot"},
        "type": "path", "path": "M9,9L11.5,9L11.5,11.5L9,11.5L9,9.1Z"}]}}
    assert list(dash.selection) == [f"img-{i:03d}" for i in range(10)]
    assert dash.map.highlighted.tolist() == list(range(10))
    # A box, and a point exactly on no shape.
    x, y = np.array([0.0, 1.0, 2.0, 0.5]), np.array([0.0, 1.0, 2.0, 1.8])
    from forensics.panels.map import points_in_selections

    assert points_in_selections(x, y, [{"type": "rect", "x0": 1.5, "x1": 0.9, "y0": 0.5, "y1": 2.5}]).tolist() == [1]
    triangle = {"type": "path", "path": "M-1,-1L2.5,-1L-1,2.5Z"}  # below x + y = 1.5
    assert points_in_selections(x, y, [triangle]).tolist() == [0]
    assert points_in_selections(x, y, [triangle, {"type": "rect", "x0": 0, "x1": 1, "y0": 1.5, "y1": 2}]).tolist() \
        == [0, 3]
    with pytest.raises(InputError, match="cannot read the selection path"):
        points_in_selections(x, y, [{"type": "path", "path": "M0,0C1,1,2,2"}])



def _even_odd(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Which points lie inside the polygon by the plain even-odd rule, every point against every edge."""
    inside = np.zeros(len(x), bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        xj, yj = xi, yi
    return inside

def test_a_lasso_of_many_vertices_selects_by_the_even_odd_rule():
    """The sorted index tests each edge against the points in its y range only: the same points as testing every
    point against every edge, vertices on points' y included."""
    from forensics.panels.map import PointIndex

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=50_000), rng.normal(size=50_000)
    y[:500] = np.round(y[:500], 1)
    angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    radius = 1 + 0.4 * np.sin(5 * angles)
    poly = np.round(np.c_[radius * np.cos(angles), radius * np.sin(angles)], 1)  # edges on the rounded y values
    path = "M" + "L".join(f"{a},{b}" for a, b in poly) + "Z"
    inside = _even_odd(x, y, poly)
    index = PointIndex(x, y)
    np.testing.assert_array_equal(index.inside([{"type": "path", "path": path}]), np.flatnonzero(inside))
    box = {"type": "rect", "x0": 0.5, "x1": -1.0, "y0": -0.3, "y1": 0.7}
    np.testing.assert_array_equal(index.inside([box]),
                                  np.flatnonzero((x >= -1) & (x <= 0.5) & (y >= -0.3) & (y <= 0.7)))
    assert 10_000 < inside.sum() < 40_000


@plotly_messages
def test_error_in_a_plotly_callback_reaches_the_status_line():
    dash = dashboard(image_investigation())
    dash.map.figure._js2py_pointsCallback = {
        "event_type": "plotly_selected", "selector": None, "device_state": None,
        "points": {"trace_indexes": [0], "point_indexes": [999], "xs": [0], "ys": [0]},
    }
    assert dash.state.status_is_error
    assert "position 999 is outside 0..59" in dash.status.value and "#b00020" in dash.status.value


def test_selection_sends_opacity_only_and_removes_the_lasso():
    inv = image_investigation()
    dash = dashboard(inv)
    fig = dash.map.figure
    sent = []  # messages to the browser that it did not send first (the echo of its own relayout is left out)
    fig.observe(lambda ch: ch["new"] and ch["new"].get("source_view_id") is None and sent.append(ch["new"]),
                names=["_py2js_restyle", "_py2js_update", "_py2js_relayout", "_py2js_addTraces"])
    fig._js2py_relayout = {"source_view_id": "v1", "relayout_data": {"selections": [
        {"xref": "x", "yref": "y", "type": "rect", "x0": 9, "x1": 11.5, "y0": 9, "y1": 11.5}]}}
    assert len(dash.selection) == 10 and dash.map.highlighted.tolist() == list(range(10))
    assert len(sent) == 1 and set(sent[0]["restyle_data"]) == {"marker.opacity"}  # the lasso stays drawn
    dash.select(["img-005", "img-002"])  # from elsewhere: the lasso is removed in the browser
    assert len(sent) == 2 and set(sent[1]["style_data"]) == {"marker.opacity"}
    assert sent[1]["layout_data"] == {"selections": []}
    assert dash.map.highlighted.tolist() == [2, 5]
    assert np.asarray(fig.data[0].marker.opacity).dtype == np.float32
    dash.state.clear_selection()
    assert fig.data[0].marker.opacity == 0.8 and len(sent) == 3


def test_truth_colour_mode():
    inv = image_investigation()
    truth = pd.Series(np.arange(60) < 10, index=inv.dataset.ids[::-1][::-1]).iloc[::-1]  # any order of ids
    dash = dashboard(inv, truth=truth)
    assert dash.map.modes[-1] == "truth"
    dash.map.set_color("truth")
    codes = np.asarray(dash.map.figure.data[0].marker.color)
    np.testing.assert_array_equal(codes, (np.arange(60) < 10).astype(float))
    assert "poison" in dash.map.legend.value and "(10)" in dash.map.legend.value
    with pytest.raises(InputError, match="pass one of them, e.g. truth\\['is_poison'\\]"):
        dashboard(inv, truth=pd.DataFrame({"is_poison": truth}))
    with pytest.raises(InputError, match="truth has no value for 1 sample"):
        dashboard(inv, truth=truth.iloc[1:])


def test_categorical_coloring_keeps_the_biggest_and_greys_the_rest():
    values = np.array(["a"] * 5 + ["b"] * 3 + ["c", "d"])
    c = categorical_coloring(values, title="t", max_categories=2)
    assert [name for name, _, _ in c.legend] == ["a", "b", "other"]
    np.testing.assert_array_equal(c.values, [0] * 5 + [1] * 3 + [2, 2])
    assert c.colorscale[-1] == [1.0, "#c7c7c7"] and (c.cmin, c.cmax) == (-0.5, 2.5)


# -------------------------------------------------------------------------------------------- other panels
def test_cluster_choice_selects_members_and_lists_suspicious_first():
    inv = image_investigation()
    dash = dashboard(inv)
    panel = dash.clusters
    assert panel.order[0] == 3 and panel.order[-1] == -1
    panel.list.value = 3
    assert list(dash.selection) == [f"img-{i:03d}" for i in range(10)]
    assert dash.map.highlighted.tolist() == list(range(10))
    assert "size" in panel.details.value and dash.preview.shown_ids[0] == "img-000"
    # Another panel's selection clears the choice, so the same cluster can be chosen again.
    dash.select(["img-030"])
    assert panel.list.value is None
    panel.list.value = 3
    assert len(dash.selection) == 10
    panel.sort_menu.value = "size"
    assert panel.order[0] == 2 and panel.order[-1] == -1  # 17 samples, then 16, 16, 10
    summary = panel.summary
    assert sort_clusters(summary, "smallness").index[0] == 3


def test_source_choice_and_summary():
    inv = image_investigation()
    dash = dashboard(inv)
    panel = dash.sources
    assert panel.list.options[0][1] == "mallory"
    panel.list.value = "mallory"
    assert list(dash.selection) == [f"img-{i:03d}" for i in range(10)]
    assert "this source" in panel.details.value
    table = source_summary(np.array(["a", "a", "b", "b"]), np.array([0, 0, 0, 1]), np.array([0.9, 0.7, 0.1, 0.2]),
                           np.array([True, False, False, False]), n_classes=2)
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "share_marked"] == 0.5 and table.loc["a", "label_distance"] == pytest.approx(0.5)
    # "Flagged" means what it means in the scan and the report: suspicion at or above the threshold.
    table = source_summary(np.array(["a", "a", "b"]), np.array([0, 0, 1]), np.array([2.5, 1.9, 3.0]),
                           np.zeros(3, bool), n_classes=2)
    assert table.loc["a", "share_flagged"] == 0.5 and table.loc["b", "share_flagged"] == 1.0
    assert (table["share_marked"] == 0).all()
    # A review decision changes the share marked shown in the list, not the share flagged.
    before = panel.list.options[0][0]
    dash.review.decide("flag")
    assert "marked 100%" in panel.list.options[0][0]
    assert before.split(" · flagged ")[1].split(" · ")[0] == panel.list.options[0][0].split(" · flagged ")[1].split(
        " · ")[0]


def test_trigger_choice_selects_carriers_and_shows_the_phrase():
    inv = text_investigation()
    dash = dashboard(inv)
    dash.triggers.list.value = 0
    assert list(dash.selection) == [inv.dataset.ids[0], "t2"]
    assert "<mark>cf</mark>" in dash.triggers.details.value
    assert "<mark>cf</mark>" in dash.preview.html  # the phrase is highlighted in the texts


def test_image_trigger_pattern_is_the_carriers_median_in_the_box():
    inv = image_investigation()
    inv.triggers = pd.DataFrame({
        "trigger_id": ["image-1"], "kind": ["image"], "description": ["fixed patch"], "evidence": ["10 of 10"],
        "remove_flip_rate": [np.nan], "add_flip_rate": [np.nan], "verdict": ["untested"],
        "sample_ids": [[f"img-{i:03d}" for i in range(10)]], "box": [(0, 0, 2, 2)],
    })
    dash = dashboard(inv)
    dash.triggers.choose(0)
    assert len(dash.selection) == 10
    assert "reconstructed pattern at rows 0..1, columns 0..1" in dash.triggers.details.value
    assert "data:image/png;base64," in dash.triggers.details.value


def test_an_image_wide_trigger_shows_its_stored_difference():
    inv = image_investigation()
    inv.triggers = pd.DataFrame({
        "trigger_id": ["image-1"], "kind": ["image"], "description": ["no local pattern"], "evidence": ["wide"],
        "remove_flip_rate": [0.9], "add_flip_rate": [0.8], "verdict": ["confirmed"],
        "sample_ids": [[f"img-{i:03d}" for i in range(10)]], "box": [None], "local": [False],
    })
    difference = np.sin(np.arange(64, dtype=np.float32)).reshape(8, 8) * 20
    inv.trigger_arrays = {"image-1": difference}
    dash = dashboard(inv)
    dash.triggers.choose(0)
    shown = dash.triggers.details.value
    assert "image-wide difference from the images the group looks like" in shown
    assert "data:image/png;base64," in shown
    assert dash.triggers.patterns["image-1"].dtype == np.uint8 and dash.triggers.patterns["image-1"].min() < 128


def test_loss_panel_selects_extremes_and_ranges():
    inv = image_investigation()
    dash = dashboard(inv)
    losses = dash.losses
    losses.class_menu.value = 2
    assert losses.info.value == "27 samples with a loss"
    losses.low_button.click()  # 1% of 27 rounds to one sample: the lowest loss of class two
    assert list(dash.selection) == ["img-000"]
    losses.select_extreme(10 / 27, highest=False)
    assert list(dash.selection) == [f"img-{i:03d}" for i in range(10)]
    losses.select_range(-5, -3)
    assert len(dash.selection) == 10 and "loss 1e-05 – 0.001" in losses.info.value
    assert len(losses.figure.layout.shapes) == 1


# -------------------------------------------------------------------------------------------- review
def test_review_buttons_counts_undo_and_export(tmp_path):
    inv = image_investigation()
    dash = dashboard(inv, export_path=str(tmp_path / "out.csv"))
    review = dash.review
    review.buttons["flag"].click()  # nothing selected: an error in the status line
    assert dash.state.status_is_error and "nothing is selected" in dash.status.value
    dash.clusters.choose(3)
    review.note.value = "corner patch"
    review.buttons["flag"].click()
    assert "suspected <b>10</b>" in review.counter.value
    assert set(inv.review.index[inv.review["status"] == "suspected"]) == {f"img-{i:03d}" for i in range(10)}
    assert (inv.review.loc["img-000", "note"]) == "corner patch"
    assert "suspected" in dash.preview.html and dash.status.value.endswith("(corner patch)</span>")
    dash.select(["img-000"])
    review.buttons["confirm"].click()
    assert inv.counts()["confirmed"] == 1 and "confirmed <b>1</b>" in review.counter.value
    review.undo_button.click()
    assert inv.counts()["confirmed"] == 0 and inv.counts()["suspected"] == 10
    review.export_button.click()
    written = pd.read_csv(tmp_path / "out.csv")
    assert sorted(written["sample_id"]) == [f"img-{i:03d}" for i in range(10)]
    assert "Exported 10 samples (marked)" in review.message.value and str(tmp_path) in review.message.value
    review.path.value = str(tmp_path / "all.parquet")
    review.include.value = "all"
    review.export_button.click()
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == 60
    dash.map.set_color("review")
    assert "suspected" in dash.map.legend.value and "(10)" in dash.map.legend.value


# -------------------------------------------------------------------------------------------- escaping
def test_markup_in_data_is_escaped_everywhere():
    inv = text_investigation()
    dash = inv.dashboard()
    assert isinstance(dash, Dashboard) and isinstance(dash, widgets.VBox)
    dash.select(inv.dataset.ids)
    html = dash.preview.html
    assert_no_live_markup(html)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert 'data-sample-id="id-&lt;script&gt;alert(2)&lt;/script&gt;"' in html
    assert 'data-sample-id="q&quot;uote"' in html
    assert "neg&lt;img src=x onerror=alert(1)&gt;" in html and "src&lt;script&gt;" in html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html
    hover = list(dash.map.figure.data[0].hovertext)
    assert all("<script" not in h and "<img" not in h for h in hover)
    assert "<b>id-&lt;script&gt;alert(2)&lt;/script&gt;</b>" in hover[0] and "why &lt;img" in hover[0]
    assert 'q"uote' in hover[5]  # plotly shows &quot; literally: quotes are left as they are
    for mode in dash.map.modes:
        dash.map.set_color(mode)
        assert_no_live_markup(dash.map.legend.value)
    dash.clusters.choose(-1)
    dash.sources.choose(f"src{XSS_SCRIPT}")
    dash.triggers.choose(0)
    with pytest.raises(InputError):
        dash.sources.choose("<script>nope</script>")
    dash.state.run(dash.sources.choose, "<script>nope</script>")
    assert "&lt;script&gt;nope" in dash.status.value
    for value in html_values(dash):
        assert_no_live_markup(value)


def test_hover_texts_escape_each_piece():
    out = hover_texts(np.array(["<a>"], dtype=object), np.array(["<i>x</i>"], dtype=object),
                      np.array(["s&1"], dtype=object), np.array([""], dtype=object), np.array([-1]))
    assert out[0] == "<b>&lt;a&gt;</b><br>label: &lt;i&gt;x&lt;/i&gt;<br>source: s&amp;1<br>cluster: noise"


def test_dashboard_needs_an_investigation_and_lists_modes():
    with pytest.raises(InputError, match="inv must be a forensics.Investigation"):
        dashboard(object())
    assert COLOR_MODES[:3] == ("cluster", "label", "prediction")


def test_triggers_found_after_the_dashboard_show_up_on_refresh():
    inv = text_investigation()
    table = inv.triggers
    inv.triggers = table.iloc[:0]
    dash = dashboard(inv)
    assert "No trigger candidates yet" in dash.triggers.widget.children[0].value
    dash.select(["t2"])
    assert "<mark>" not in dash.preview.html
    inv.triggers = table
    dash.refresh()
    assert dash.triggers.list.options[0][0].startswith("text-1: phrase \"cf\" · confirmed")
    assert "<mark>cf</mark>" in dash.preview.html
    fixed = PreviewPanel(inv, highlight=["plain"])
    fixed.state.select(["t2"])
    assert "<mark>plain</mark> text cf" in fixed.html
    fixed.state.bump_revision()
    assert "<mark>plain</mark> text cf" in fixed.html


def test_new_signals_after_the_dashboard_show_up_on_refresh():
    """``inv.replace_signals`` (as ``find_triggers`` calls it on a confirmation): after ``refresh`` the preview,
    the map's colours and hover texts, the cluster list and the source list rank by the new suspicion."""
    inv = image_investigation()
    dash = dashboard(inv)
    dash.map.set_color("suspicion")
    dash.select(inv.dataset.ids)
    assert dash.preview.shown_ids[0] == "img-000"
    assert dash.clusters.order[0] == 3 and dash.sources.list.options[0][1] == "mallory"
    # The last ten samples (cluster 1 or 2 or 0, alice and bob) become the most suspicious.
    n = len(inv.dataset)
    suspicion = np.linspace(0.0, 0.5, n)
    suspicion[-10:] = 5.0 + np.arange(10)
    reasons = np.array([""] * n, dtype=object)
    reasons[-10:] = "carries a confirmed trigger; high loss"
    inv.replace_signals(inv.signals.assign(suspicion=suspicion, reasons=reasons))
    dash.refresh()
    assert dash.preview.shown_ids[0] == f"img-{n - 1:03d}"
    np.testing.assert_allclose(np.asarray(dash.map.trace.marker.color), suspicion)
    assert "carries a confirmed trigger" in dash.map.trace.hovertext[n - 1]
    assert "patch" not in dash.map.trace.hovertext[0]
    assert dash.clusters.order[0] != 3 and dash.clusters.summary.loc[3, "max_suspicion"] < 1
    assert dash.sources.list.options[0][1] != "mallory"
    # A refresh without new signals changes nothing of this.
    order = dash.clusters.order
    dash.refresh()
    assert dash.clusters.order == order and dash.preview.shown_ids[0] == f"img-{n - 1:03d}"


def test_choosing_a_cluster_says_what_sets_it_apart():
    inv = image_investigation()
    dash = dashboard(inv)
    dash.clusters.choose(3)
    details = dash.clusters.details.value
    assert "stands out by" in details
    assert "source mallory: 100% here, 17% overall" in details  # the ten patched images all come from mallory
    dash.clusters.choose(0)  # the map's cluster 0 is the class "zero" (of the 50 unpatched images)
    assert "label zero: 100% here, 27% overall" in dash.clusters.details.value


def test_the_sources_tab_shows_the_source_signal_per_source():
    inv = image_investigation()
    signals = inv.signals.copy()
    # The source signal is calibrated among the sources where it is computed: one value per source.
    among = {"mallory": 5.2, "alice": 0.4, "bob": 0.0}
    signals.insert(0, "source_score", [among[s] for s in inv.dataset.sources])
    inv.replace_signals(signals)
    panel = dashboard(inv).sources
    table = panel.summary()
    assert table["suspicion_among_sources"].to_dict() == pytest.approx(among)
    panel.list.value = "mallory"
    assert "suspicion among sources" in panel.details.value and "5.2" in panel.details.value
    assert "suspicion_among_sources" not in dashboard(image_investigation()).sources.summary()  # no source signal


def test_verification_panel_draws_before_and_after():
    from forensics.panels import VerificationPanel
    from forensics.verify import Verification

    hostile = "<img src=x onerror=alert(1)>"
    table = pd.DataFrame({"n_train": [1000, 940], "accuracy": [0.88, 0.885], "flagged": [0.06, 0.004],
                          f"asr {hostile}": [0.998, 0.0]}, index=["original", "sanitized"])
    per_class = pd.DataFrame({"original": [0.9, 0.8, 0.95], "sanitized": [0.92, 0.75, 0.95]},
                             index=["shirt", hostile, "bag"])
    panel = VerificationPanel(Verification(table, per_class))
    original, sanitized = panel.figure.data
    assert list(original.y) == [0.88, 0.06, 0.998] and list(sanitized.y) == [0.885, 0.004, 0.0]
    assert original.x[2] == f"attack success of {escape_html(hostile, quote=False)}"  # no live HTML in a tick
    html = panel.table_html()
    assert "<img" not in html and "1,000" in html and "99.8%" in html and "0.0%" in html
    assert html.index(escape_html(hostile)) < html.index("shirt")  # the class that fell most comes first
    assert "-5.0 points" in html
    with pytest.raises(InputError, match="verification must be what forensics.verify.verify returns"):
        VerificationPanel(table)


# -------------------------------------------------------------------------------------------- the map at scale
LARGE_N = 300_000
TINY_CLUSTER = 19  # 30 samples, far from the rest


@functools.lru_cache(maxsize=1)
def _large_parts():
    """The immutable parts of a 300,000-sample investigation with a fixed map (no UMAP): 20 clusters of unequal
    sizes around their own centres, among them cluster 19 of 30 samples at (40, 40), 2% noise, and suspicion
    uniform in [0, 1) with 1,000 samples unscored (NaN)."""
    n = LARGE_N
    rng = np.random.default_rng(0)
    ids = np.char.add("s", np.char.zfill(np.arange(n).astype(str), 6)).astype(object)
    labels = rng.integers(0, 10, n)
    sources = np.array(["alice", "bob", "carol"], dtype=object)[rng.integers(0, 3, n)]
    ds = Dataset(kind="image", ids=ids, labels=labels, class_names=[f"class {c}" for c in range(10)],
                 sources=sources, images=np.zeros((n, 1, 1), np.uint8), hashes=np.full(n, "0" * 32, dtype=object))
    weights = np.r_[np.geomspace(1, 0.01, 19), 0]
    clusters = rng.choice(19, size=n, p=weights[:19] / weights[:19].sum())
    clusters[rng.random(n) < 0.02] = -1
    clusters[n // 2: n // 2 + 30] = TINY_CLUSTER
    centres = np.c_[np.cos(np.arange(20)), np.sin(np.arange(20))] * 10
    centres[TINY_CLUSTER] = 40
    coords = centres[clusters] + rng.normal(0, 1.5, (n, 2))
    coords[clusters == TINY_CLUSTER] = 40 + rng.normal(0, 0.2, (30, 2))
    suspicion = rng.random(n)
    suspicion[rng.choice(n, 1000, replace=False)] = np.nan
    reasons = np.where(suspicion > 0.99, "high loss; knn", "").astype(object)
    table = pd.DataFrame({"size": np.bincount(clusters + 1)[1:]}, index=pd.Index(np.arange(20), name="cluster"))
    return ds, suspicion, reasons, coords, clusters, table


def large_investigation() -> Investigation:
    ds, suspicion, reasons, coords, clusters, table = _large_parts()
    signals = pd.DataFrame({"loss_score": suspicion, "suspicion": suspicion, "reasons": reasons},
                           index=pd.Index(ds.ids))
    return Investigation(ds, signals=signals, features=np.zeros((len(ds), 1), np.float32),
                         map_builder=FixedMap(coords, clusters, table))


def test_a_map_past_max_points_draws_every_suspicious_reviewed_and_selected_sample():
    inv = large_investigation()
    n = LARGE_N
    s = inv.signals["suspicion"].to_numpy()
    clusters = inv.map["cluster"].to_numpy()
    flagged = inv.dataset.ids[[5, 77_777, 299_999]]
    inv.flag(flagged)
    state = PanelState(inv.dataset.ids)
    state.select_positions([123, 124])
    panel = MapPanel(inv, state, max_points=20_000)
    drawing = panel.drawing
    drawn = drawing.drawn
    assert drawing.sampled and len(drawn) == 20_000 and np.all(np.diff(drawn) > 0)
    # The 2,000 most suspicious (NaN never among them), the reviewed and the selected samples are all drawn.
    top = np.flatnonzero(np.isfinite(s))[np.argsort(-s[np.isfinite(s)], kind="stable")[:2000]]
    assert drawing.n_top == 2000 and np.isin(top, drawn).all()
    assert np.isin([5, 77_777, 299_999, 123, 124], drawn).all()
    assert drawing.n_keep == drawing.n_kept == len(np.setdiff1d([5, 77_777, 299_999, 123, 124], top))
    # The rest is sampled by cluster: the cluster of 30 is drawn whole, every cluster keeps at least 200 points.
    assert np.isin(np.flatnonzero(clusters == TINY_CLUSTER), drawn).all()
    sizes, drawn_sizes = np.bincount(clusters + 1), np.bincount(clusters[drawn] + 1, minlength=21)
    assert (drawn_sizes >= np.minimum(sizes, 200)).all()
    # One point per drawn sample, everything per point in the drawn order; the same subset every time.
    trace = panel.figure.data[0]
    np.testing.assert_array_equal(trace.x, inv.map["x"].to_numpy()[drawn])
    assert len(trace.hovertext) == len(trace.marker.color) == len(trace.marker.opacity) == 20_000
    assert trace.hovertext[0].startswith(f"<b>{inv.dataset.ids[drawn[0]]}</b>")
    np.testing.assert_array_equal(MapPanel(inv, state, max_points=20_000).drawing.drawn, drawn)
    # The selection is shown; the density of all the samples lies under the points; the info line says it all.
    assert panel.highlighted.tolist() == [123, 124]
    density = panel.figure.data[2]
    assert density.type == "heatmap" and density.hoverinfo == "skip"
    assert np.expm1(np.asarray(density.z, dtype=np.float64)).sum() == pytest.approx(n, rel=1e-4)
    assert np.isfinite(np.asarray(density.z)).all()  # JSON has no NaN
    assert (f"300,000 samples · 20,000 drawn (all 2,000 most suspicious, all {drawing.n_keep} reviewed or selected, "
            "the rest sampled by cluster") in panel.info.value
    # Up to max_points nothing is sampled: point i is sample i.
    small = MapPanel(image_investigation())
    assert not small.drawing.sampled and len(small.figure.data) == 1


def test_drawing_subset_and_stratified_sample_are_exact():
    from forensics.panels.map import drawing_subset, stratified_sample

    strata = np.r_[np.zeros(1000, int), np.ones(50, int), np.full(10, 2)]
    rng = np.random.default_rng(0)
    picked = stratified_sample(np.arange(1060), strata, 300, rng=rng, floor=200)
    # A floor of 100 each (300 // 3 strata), all of the two small ones, the remaining 140 to the big one.
    assert np.bincount(strata[picked]).tolist() == [240, 50, 10] and len(np.unique(picked)) == 300
    assert stratified_sample(np.arange(5), strata, 10, rng=rng).tolist() == list(range(5))
    # Samples to keep past the budget are sampled by cluster too, after the top ones.
    suspicion = np.linspace(0, 1, 5000)
    keep = np.zeros(5000, bool)
    keep[:3000] = True
    d = drawing_subset(suspicion, np.arange(5000) % 7, max_points=2000, keep=keep)
    assert len(d.drawn) == 2000 and d.n_top == 200 and (d.n_kept, d.n_keep) == (1800, 3000)
    assert np.isin(np.arange(4800, 5000), d.drawn).all()
    assert drawing_subset(suspicion, np.zeros(5000, int), max_points=5000).sampled is False


def test_max_points_is_checked():
    inv = image_investigation()
    for bad in (999, 1.5e5, True, "100000"):
        with pytest.raises(InputError, match=re.escape(f"max_points must be an integer >= 1000; got {bad!r}")):
            MapPanel(inv, max_points=bad)


@plotly_messages
def test_a_box_or_lasso_on_a_sampled_map_selects_every_sample_inside():
    inv = large_investigation()
    dash_state = PanelState(inv.dataset.ids)
    panel = MapPanel(inv, dash_state, max_points=20_000)
    x, y = inv.map["x"].to_numpy(), inv.map["y"].to_numpy()
    drawn = panel.drawing.drawn
    fig = panel.figure
    # A box around the biggest cluster, as plotly's browser code sends it (layout.selections).
    fig._js2py_relayout = {"source_view_id": "v1", "relayout_data": {"selections": [
        {"xref": "x", "yref": "y", "type": "rect", "x0": 12.5, "x1": 7.0, "y0": -2.0, "y1": 3.0}]}}
    inside = np.flatnonzero((x >= 7) & (x <= 12.5) & (y >= -2) & (y <= 3))
    assert len(inside) > 10_000 and not np.isin(inside, drawn).all()
    np.testing.assert_array_equal(dash_state.positions, inside)
    # Drawn as selected: the drawn samples inside (opaque), and up to 2,000 of the others over the map.
    opacity = np.asarray(panel.trace.marker.opacity)
    assert len(opacity) == len(drawn)
    np.testing.assert_array_equal(drawn[opacity == 1.0], np.intersect1d(inside, drawn))
    overlay = panel._overlay
    assert len(overlay) == 2000 and np.isin(overlay, inside).all() and not np.isin(overlay, drawn).any()
    np.testing.assert_array_equal(panel.figure.data[1].x, x[overlay])
    assert len(panel.figure.data[1].hovertext) == 2000
    # plotly's points message for the same box (its drawn points only, with the selector) changes nothing.
    some = np.flatnonzero(opacity == 1.0)[:5].tolist()
    fig._js2py_pointsCallback = {
        "event_type": "plotly_selected", "device_state": None,
        "selector": {"type": "box", "selector_state": {"xrange": [7.0, 12.5], "yrange": [-2.0, 3.0]}},
        "points": {"trace_indexes": [0] * 5, "point_indexes": some, "xs": [0] * 5, "ys": [0] * 5}}
    np.testing.assert_array_equal(dash_state.positions, inside)
    # A lasso (a hexagon around the tiny far cluster and a slice of the rest): the even-odd rule over every sample.
    angles = np.linspace(0, 2 * np.pi, 7)[:-1]
    hexagon = np.c_[38 + 30 * np.cos(angles), 38 + 30 * np.sin(angles)]
    path = "M" + "L".join(f"{a:.3f},{b:.3f}" for a, b in hexagon) + "Z"
    fig._js2py_relayout = {"source_view_id": "v1", "relayout_data": {"selections": [
        {"xref": "x", "yref": "y", "type": "path", "path": path}]}}
    poly = np.round(hexagon, 3)
    inside = _even_odd(x, y, poly)
    np.testing.assert_array_equal(dash_state.positions, np.flatnonzero(inside))
    assert 30 < inside.sum() < 20_000
    assert dash_state.status == f"{inside.sum()} samples selected on the map"
    # A selection from elsewhere removes the lasso; clearing empties the overlay.
    dash_state.select(inv.dataset.ids[[0, 1]], origin="api")
    assert fig.layout.to_plotly_json().get("selections") in (None, [], ())
    dash_state.clear_selection()
    assert len(panel.figure.data[1].x) == 0 and panel.trace.marker.opacity == 0.8 and len(panel.highlighted) == 0


@plotly_messages
def test_a_point_of_a_sampled_map_is_the_drawn_sample():
    inv = large_investigation()
    panel = MapPanel(inv, max_points=20_000)
    drawn, fig, state = panel.drawing.drawn, panel.figure, panel.state
    click = {"event_type": "plotly_click", "selector": None,
             "points": {"trace_indexes": [0], "point_indexes": [1234], "xs": [0], "ys": [0]},
             "device_state": {"shift": False, "ctrl": False, "alt": False, "meta": False, "button": 0, "buttons": 1}}
    fig._js2py_pointsCallback = click
    assert state.positions.tolist() == [drawn[1234]] and drawn[1234] != 1234
    click["device_state"]["shift"] = True
    click["points"]["point_indexes"] = [7]
    fig._js2py_pointsCallback = click
    assert state.positions.tolist() == sorted([drawn[1234], drawn[7]])
    assert panel.highlighted.tolist() == sorted([drawn[1234], drawn[7]])
    panel.select_points([0, 19_999])
    assert state.positions.tolist() == [drawn[0], drawn[-1]]
    fig._js2py_pointsCallback = {"event_type": "plotly_selected", "selector": None, "device_state": None,
                                 "points": {"trace_indexes": [0], "point_indexes": [20_000], "xs": [0], "ys": [0]}}
    assert state.status_is_error and "point index 20000 is outside 0..19999 (the 20000 points drawn)" in state.status
    # A sample selected elsewhere but not drawn shows over the map, and clicking it there selects it.
    hidden = np.setdiff1d(np.arange(LARGE_N), drawn)[[10, 20]]
    state.select_positions(hidden)
    np.testing.assert_array_equal(panel._overlay, hidden)
    assert panel.highlighted.tolist() == hidden.tolist()
    click["device_state"]["shift"] = False
    click["points"] = {"trace_indexes": [1], "point_indexes": [1], "xs": [0], "ys": [0]}
    fig._js2py_pointsCallback = click
    assert state.positions.tolist() == [hidden[1]]


def test_colours_of_a_sampled_map_are_those_of_the_drawn_samples():
    inv = large_investigation()
    panel = MapPanel(inv, max_points=20_000)
    drawn = panel.drawing.drawn
    sent = []
    panel.figure.observe(lambda ch: ch["new"] and sent.append(ch["new"]), names=["_py2js_restyle", "_py2js_update"])
    panel.set_color("label")
    np.testing.assert_array_equal(np.asarray(panel.trace.marker.color), inv.dataset.labels[drawn])
    assert len(sent) == 1 and len(panel.trace.marker.color) == 20_000
    # The legend counts every sample, drawn or not.
    counts = np.bincount(inv.dataset.labels)
    assert f"class 0 <span style=\"color:#777\">({counts[0]})</span>" in panel.legend.value
    panel.set_color("suspicion")
    s = inv.signals["suspicion"].to_numpy()
    np.testing.assert_allclose(np.asarray(panel.trace.marker.color), np.where(np.isnan(s), np.nanmin(s), s)[drawn])
    assert panel.trace.marker.cmax == np.nanmax(s)
    # The samples drawn over the map take the colour too (without a second colour bar).
    hidden = np.setdiff1d(np.arange(LARGE_N), drawn)[:3]
    panel.state.select_positions(hidden)
    np.testing.assert_allclose(np.asarray(panel.overlay.marker.color), s[hidden])
    assert panel.overlay.marker.showscale is False
    panel.set_color("cluster")
    codes = np.asarray(panel.trace.marker.color)
    clusters = inv.map["cluster"].to_numpy()
    assert len(np.unique(codes)) == len(np.unique(clusters[drawn]))
    assert (codes[clusters[drawn] == TINY_CLUSTER] == codes[clusters[drawn] == TINY_CLUSTER][0]).all()


def test_new_suspicion_redraws_a_sampled_map_with_its_most_suspicious_samples():
    inv = large_investigation()
    dash_map = MapPanel(inv, max_points=20_000)
    old = dash_map.drawing.drawn
    new_top = np.setdiff1d(np.arange(LARGE_N), old)[:50]
    suspicion = inv.signals["suspicion"].to_numpy().copy()
    suspicion[new_top] = 5.0
    inv.replace_signals(inv.signals.assign(suspicion=suspicion))
    dash_map.use_columns(Columns.of(inv))
    drawn = dash_map.drawing.drawn
    assert np.isin(new_top, drawn).all() and len(drawn) == 20_000
    np.testing.assert_array_equal(dash_map.trace.x, inv.map["x"].to_numpy()[drawn])
    assert len(dash_map.trace.hovertext) == 20_000


# -------------------------------------------------------------------------------------------- selection by query
def test_query_selects_exactly_what_pandas_selects():
    from forensics.panels.query import sample_table

    inv = large_investigation()
    inv.flag(inv.dataset.ids[:7])
    panel = MapPanel(inv, max_points=20_000)
    table = sample_table(inv)
    assert list(table.columns[:4]) == ["sample_id", "label", "label_name", "source"]
    assert {"loss_score", "suspicion", "reasons", "x", "y", "cluster", "status"} <= set(table.columns)
    for query in ("suspicion > 0.99 and label_name == 'class 3'", "cluster in [19, -1] and source != 'bob'",
                  "status == 'suspected'", "reasons.str.contains('knn') and x > 0", "suspicion.isna()",
                  "`loss_score` >= 0.5 & y < -8"):
        panel.select_query(query)
        expected = table.query(query).index.to_numpy()
        assert len(expected) > 0, query
        np.testing.assert_array_equal(panel.state.positions, expected)
    assert panel.state.status == f"{len(expected)} samples where `loss_score` >= 0.5 & y < -8"
    # Shown: every drawn sample of the selection, and up to 2,000 others over the map.
    shown = panel.highlighted
    assert np.isin(shown, expected).all() and np.isin(np.intersect1d(expected, panel.drawing.drawn), shown).all()
    assert len(shown) == len(np.intersect1d(expected, panel.drawing.drawn)) + 2000
    # The query box does the same.
    panel.query_box.value = "sample_id == 's000042'"
    assert panel.state.positions.tolist() == [42]
    panel.select_query("suspicion > 2")
    assert len(panel.state.positions) == 0 and panel.state.status == "no sample where suspicion > 2"


def test_a_bad_query_says_what_is_wrong_and_runs_nothing(tmp_path):
    inv = image_investigation()
    dash = dashboard(inv)
    panel = dash.map
    dash.select_query("label_name == 'two' and source == 'mallory'")
    assert dash.preview.shown_ids[:3] == ["img-000", "img-001", "img-002"] and "<b>10</b> selected" in \
        dash.preview.summary.value
    before = panel.state.positions.copy()
    target = tmp_path / "written"
    for query, message in [
        ("suspicion >", "cannot read the query 'suspicion >': invalid syntax"),
        ("suspicious > 3", "names 'suspicious', which is not a column; columns are"),
        ("suspicion + 1", "must say true or false for each sample; it gives values of type float64"),
        ("label_name > 3", "cannot run the query 'label_name > 3': TypeError"),
        (f"x.values.tofile({str(target)!r})", "uses the method 'tofile'; a query may use column names"),
        ("suspicion.__class__ == 1", "uses the attribute '__class__'"),
        ("__import__('os')", "uses a function call"),
        ("@inv", "cannot read the query '@inv'"),
        ("", "query is empty"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            panel.select_query(query)
    with pytest.raises(InputError, match="query must be a str"):
        panel.select_query(3)
    assert not target.exists()
    np.testing.assert_array_equal(panel.state.positions, before)
    # From the box, the error shows in the status line.
    panel.query_box.value = "suspicious > 3"
    assert panel.state.status_is_error and "'suspicious', which is not a column" in panel.state.status
