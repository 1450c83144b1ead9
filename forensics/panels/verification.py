"""Before and after a remediation: what a model trained on the original data and one trained on the sanitized data
do on held-out samples (:func:`forensics.verify.verify`), drawn side by side."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from ..errors import InputError
from ..html import escape_html
from ._common import Panel

_COLOURS = {"original": "#9e9e9e", "sanitized": "#1b7837"}


class VerificationPanel(Panel):
    """Clean accuracy and each confirmed trigger's attack success rate, original against sanitized (bars), the
    table of every measure, and the classes whose accuracy changed most.

    Parameters
    ----------
    verification : Verification
        What :func:`forensics.verify.verify` (or ``inv.verify``) returned.
    """

    def __init__(self, verification: Any) -> None:
        from ..verify import Verification

        if not isinstance(verification, Verification):
            raise InputError(f"verification must be what forensics.verify.verify returns; got "
                             f"{type(verification).__name__}")
        self.verification = verification
        self.figure = go.FigureWidget(self.bars())
        self.table = widgets.HTML(self.table_html())
        self.table.add_class("forensics-verification")
        self.widget = widgets.VBox([self.figure, self.table])

    def bars(self) -> go.Figure:
        """Grouped bars of the rates (accuracy, attack success, share flagged), original then sanitized."""
        rates = [r for r in self.verification.rows() if r[0] != "n_train"]
        # Trigger ids and labels come from data: plotly renders a little HTML in tick labels, so they are escaped.
        names = [escape_html(label, quote=False) for _, label, _, _ in rates]
        fig = go.Figure()
        for i, model in enumerate(("original", "sanitized")):
            values = [r[2 + i] for r in rates]
            fig.add_bar(name=f"trained on {model}", x=names, y=values, marker_color=_COLOURS[model],
                        text=[f"{v:.1%}" for v in values], textposition="outside")
        fig.update_layout(barmode="group", height=320, margin=dict(l=40, r=10, t=30, b=40),
                          yaxis=dict(range=[0, 1.1], tickformat=".0%"), title="Retrained: before and after")
        return fig

    def table_html(self) -> str:
        """Every measure, and the three classes whose accuracy fell most; every cell escaped."""
        body = "".join(
            f"<tr><td>{escape_html(label)}</td>"
            + "".join(f"<td style='text-align:right'>{int(v):,}</td>" if column == "n_train" else
                      f"<td style='text-align:right'>{100 * v:.1f}%</td>" for v in (before, after)) + "</tr>"
            for column, label, before, after in self.verification.rows())
        classes = ", ".join(f"{escape_html(str(name))} {100 * change:+.1f} points"
                            for name, change in self.verification.worst_classes(3).items())
        return ("<table style='font-size:12px'><tr><th></th><th>original</th><th>sanitized</th></tr>" + body
                + f"</table><p style='font-size:12px'>Classes whose accuracy fell most: {classes}</p>")
