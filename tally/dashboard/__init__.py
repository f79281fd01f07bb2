"""Tally's dashboard: a static page (plain HTML + JS modules, uPlot vendored from npm by
``./dev setup``) served by the query API at ``/``, plus the small endpoints its panels need
(``/api/v1/tally/quality``, ``/api/v1/tally/histogram``); see ``tally.dashboard.routes``.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Files copied from node_modules by ./dev setup (git-ignored, needed offline).
VENDORED = ("vendor/uPlot.esm.js", "vendor/uPlot.min.css")
