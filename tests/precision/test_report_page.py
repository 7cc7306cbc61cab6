"""The precision report as people read it: the Markdown opens with the summary and shows
every ε beside its bounds, the HTML page renders in headless Chromium with every op's
section and plots, and ``--compare`` lists what moved.

The report runs once (in a subprocess, one cheap case per op, about 40 s on one core);
every test of this module shares it (one xdist group).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tops.precision import compare, ledger, plots, registry, report, webpage
from tops.precision.testing import requires_gpu

pytestmark = [pytest.mark.xdist_group("report_page"), requires_gpu]

ROOT = Path(__file__).resolve().parents[2]
# One inexpensive case of every op; the softmax name selects its gradient's case too.
CASES = (
    "float32_B5_V1000_T1.0",
    "bfloat16_B5_V1000_Tmixed",
    "float32_B3_V127_k8",
    "float32_B2_T1_H4_K64_V64_C64_g_gamma_h0_hT",
    "bfloat16_B2_T63_H4_K64_V64_C64_both_hT",
    "float32_B2_T1_H4_K64_V64_C64_g_h0_hT",
    "mix_float32_B13_V1000_bounded64",
)
OPS = tuple(registry.ops())
# Where the set-up installs Chromium (scripts/run-tests.sh) the page test must not skip.
BROWSER_REQUIRED = os.environ.get("TOPS_REQUIRE_BROWSER") == "1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    args = [sys.executable, "-m", "tops.precision", "report", "--out", str(out)]
    for case in CASES:
        args += ["--case", case]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision.html" in done.stdout
    return out


def test_markdown_opens_with_the_summary_and_shows_each_bound(written):
    text = (written / "precision.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings == ["Summary", "Failures", "Moved against the baseline", "Legend", *OPS]
    assert text.splitlines()[2] == f"**All {_outputs(written)} outputs pass rules 1-3.**"
    assert "tpu: tpu-interpret, gpu: gpu-interpret" in text and "jax " in text
    for term in ("ε", "floor", "rule 1", "rule 2", "rule 3", "use"):
        assert f"- **{term}**: " in text
    # A simple GLA row: ε_TPU, ε_GPU, floor, then each rule's bound with the share used.
    row = next(line for line in text.splitlines() if line.startswith("| float32_B2_T1_H4"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert re.fullmatch(r"\S+ \(TPU [\d.<]+%, GPU [\d.<]+%\)", cells[5]), cells
    assert all(re.fullmatch(r"\S+ \([\d.<]+%\)", cell) for cell in cells[6:9]), cells


def _outputs(written: Path) -> int:
    return len(json.loads((written / "precision.json").read_text())["rows"])


def test_json_keeps_every_bound_and_the_comparison(written):
    record = json.loads((written / "precision.json").read_text())
    assert record["ok"] and {"python", "jax", "numpy"} <= record["versions"].keys()
    for row in record["rows"]:
        for verdict in row["verdicts"]:
            value, bound = verdict["value"], verdict["bound"]
            if bound is None:
                assert verdict["rule"] == 3 and verdict["used"] is None
            elif bound == 0:  # exact outputs
                assert verdict["used"] == (0.0 if value == 0 else math.inf)
            else:
                assert verdict["used"] == pytest.approx(value / bound)
            if bound is not None and verdict["rule"] != 1:
                assert verdict["ok"] == (value <= bound)
    assert record["compare"]["baseline"] == str(ledger.LEDGER_PATH)
    counted = record["compare"]["unchanged"] + record["compare"]["new"]
    assert counted + len(record["compare"]["moved"]) == 2 * len(record["rows"])
    simple_gla = next(row for row in record["rows"] if row["op"] == "simple_gla")
    expected = {"dtype": "float32", "T": 1, "chunk_size": 64, "gate": "g_gamma"}
    assert simple_gla["parameters"] == expected


class _Page(HTMLParser):
    """Each ``<section id=...>``'s ``<svg>`` and ``<figure class="plot">`` counts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, int]] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section":
            self.current = attributes.get("id")
            self.sections[self.current] = {"svg": 0, "plot": 0}
        elif self.current and tag == "svg":
            self.sections[self.current]["svg"] += 1
        elif self.current and tag == "figure" and attributes.get("class") == "plot":
            self.sections[self.current]["plot"] += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


def _browser() -> str | None:
    """``TOPS_BROWSER`` if set (a name on PATH or a path), else the first of
    :data:`BROWSERS` found; None when there is none."""
    names = [os.environ["TOPS_BROWSER"]] if os.environ.get("TOPS_BROWSER") else BROWSERS
    return next(filter(None, map(shutil.which, names)), None)


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_page_renders_in_headless_chromium_with_every_section_and_plot(written, tmp_path):
    """Chromium parses the page (``--dump-dom`` prints the DOM it built) and paints it
    (``--screenshot``): every op has its section with plots, and the picture is not blank."""
    browser = _browser()
    if browser is None:
        message = "no Chromium (apt-get install chromium; scripts/run-tests.sh installs it)"
        if BROWSER_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    page = (written / "precision.html").resolve()
    # Self-contained: nothing to fetch (XML namespace URIs are names, not fetches).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\((?!#)""", page.read_text())
    dumped = _headless(browser, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parsed = _Page()
    parsed.feed(dumped.stdout)
    for name in ("summary", "failures", "compare", "legend"):
        assert name in parsed.sections
    for op in OPS:
        section = parsed.sections[f"op-{op}"]
        assert section["plot"] >= 1 and section["svg"] >= section["plot"], (op, section)
    shot = tmp_path / "page.png"
    painted = _headless(browser, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert painted.returncode == 0 and shot.exists(), painted.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert image.size == (1280, 2400) and high - low > 100  # text and plots, not a blank page


def test_page_without_matplotlib_keeps_every_table(written, monkeypatch):
    record = json.loads((written / "precision.json").read_text())
    monkeypatch.setattr(plots, "available", lambda: False)
    page = webpage.render(record)
    assert "<svg" not in page and "pip install 'tops[report]'" in page
    assert all(f'id="op-{op}"' in page for op in OPS)


def test_compare_lists_what_moved_largest_ratio_first(written, tmp_path):
    record = json.loads((written / "precision.json").read_text())
    rows = record["rows"][:3]
    keys = [
        (ledger.key(r["op"], r["case"], r["output"], m["mode"]), m["rel_l2"])
        for r in rows
        for m in r["measurements"].values()
    ]
    baseline = {key: eps for key, eps in keys}
    (first, e1), (second, e2), (third, _) = keys[:3]
    baseline[first] = e1 / 2  # moved up 2x
    baseline[second] = e2 * 4  # moved down 4x
    del baseline[third]
    found = compare.moved(rows, baseline, "b.json")
    assert [e["ratio"] for e in found["moved"]] == [pytest.approx(2.0), pytest.approx(0.25)]
    assert found["new"] == 1 and found["unchanged"] == len(keys) - 3
    # Both file formats: a ledger and an earlier report.
    (tmp_path / "ledger.json").write_text(
        json.dumps({"version": 1, "entries": {k: {"eps": v, "floor": 0} for k, v in keys}})
    )
    assert compare.load(tmp_path / "ledger.json") == dict(keys)
    assert compare.load(written / "precision.json")[first] == e1
    assert compare.ratio(0.0, 0.0) == 1.0 and math.isinf(compare.ratio(0.0, 1e-9))


@pytest.mark.parametrize("content", [None, "{}", "not json"], ids=["missing", "neither", "bad"])
def test_compare_refuses_a_file_that_is_no_baseline(tmp_path, capsys, content):
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    argv = ["--case", CASES[0], "--compare", str(path), "--out", str(tmp_path / "out")]
    assert report.main(argv) == 2
    assert f"error: --compare {path}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
