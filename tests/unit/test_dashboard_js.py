"""The dashboard's query building (static/api.js), run in Node: selectors, escaping, steps."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tally.dashboard import STATIC_DIR

SCRIPT = """
const m = await import(process.argv[1]);
console.log(JSON.stringify({
  plain: m.buildQuery("http_requests", {}, "", ""),
  filtered: m.buildQuery("lat", {region: ["eu"]}, "sum", ""),
  grouped: m.buildQuery("lat", {region: ["eu", "us.west"], host: []}, "avg", "host"),
  quoted: m.selector("x", {path: ['/a"b\\\\c']}),
  steps: [900, 3600, 21600, 86400, 604800].map(m.autoStep),
}));
"""


def test_queries_and_steps_built_by_the_page():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: ./dev setup needs Node.js and npm for the dashboard")
    out = subprocess.run([node, "--input-type=module", "-e", SCRIPT, str(STATIC_DIR / "api.js")],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    got = json.loads(out)
    assert got["plain"] == "http_requests"
    assert got["filtered"] == 'sum(lat{region="eu"})'
    assert got["grouped"] == 'avg by (host) (lat{region=~"eu|us\\\\.west"})'
    assert got["quoted"] == 'x{path="/a\\"b\\\\c"}'
    assert got["steps"] == [5, 15, 120, 300, 3600]  # about 300 points per range
