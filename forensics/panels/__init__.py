"""Interactive panels over an :class:`~forensics.investigation.Investigation` (ipywidgets + plotly).

>>> dash = forensics.panels.dashboard(inv)     # or inv.dashboard()
>>> dash                                        # map, preview, clusters, loss, triggers, sources, review

Each panel also works alone (``MapPanel(inv)``, ``PreviewPanel(inv, state)``, ...) and shares a
:class:`PanelState` (selection, colour mode, page, status) with the others. Behaviour lives in plain methods
(``select``, ``choose``, ``decide``, ``export``) that the widgets call, so it runs without a browser.
"""

from .clients import ClientPanel
from .clusters import ClusterPanel
from .dashboard import Dashboard, dashboard
from .losses import LossPanel
from .map import COLOR_MODES, MapPanel
from .preview import PreviewPanel
from .review import ReviewPanel
from .sources import SourcePanel
from .state import Change, PanelState
from .triggers import TriggerPanel
from .verification import VerificationPanel

__all__ = [
    "COLOR_MODES", "Change", "ClientPanel", "ClusterPanel", "Dashboard", "LossPanel", "MapPanel", "PanelState",
    "PreviewPanel", "ReviewPanel", "SourcePanel", "TriggerPanel", "VerificationPanel", "dashboard",
]
