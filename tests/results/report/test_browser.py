"""The report in a real browser: headless Chromium, offline, no console errors, every figure drawn.

Chromium opens ``report.html`` from disk with networking off. Two runs:

1. the page as written, with Chromium's console log on stderr (``--enable-logging=stderr``):
   the page must log nothing; a screenshot is saved to ``results/browser/report-ci.png``
   (ignored by git; CI keeps it as an artifact);
2. a copy with a probe script first in ``<head>``: it records console errors and warnings,
   uncaught errors and every resource the page fetched, then, after the page has loaded, counts
   each figure's drawn elements (``.main-svg``, scatter points, bars, contour paths) and writes
   them as JSON into the DOM, which ``--dump-dom`` prints.

The counts are compared with the report's own plot data. Needs Debian's ``chromium`` package
(``.ci/run`` installs it); in CI (``CI=true``) a missing browser fails the test, elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from guards import missing
from optuna.trial import TrialState
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.results.report._files import build_report_data
from deepsc_tune.results.report._parameters import MIN_CONTOUR_SHADING

pytestmark = pytest.mark.browser

ROOT = REPO
#: Where the screenshot of the test report goes (``results/*`` is ignored by git).
ARTIFACT = ROOT / "results" / "browser" / "report-ci.png"


def _screenshot_script():
    """bench/readme_screenshot.py: the one place that says how headless Chromium is started."""
    spec = importlib.util.spec_from_file_location("readme_screenshot", ROOT / "bench" / "readme_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Browsers looked for, and headless, sandbox-free flags that reach no network (the README
#: screenshot's, so the picture and the test see the same page).
_SCRIPT = _screenshot_script()
BROWSERS, FLAGS = _SCRIPT.BROWSERS, _SCRIPT.FLAGS
FIGURES = ("fig-frontier", "fig-curves", "fig-history", "fig-importances", "fig-contour", "fig-stability")

PROBE = """
window.__probe = {errors: []};
['error', 'warn'].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__probe.errors.push(level + ': ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
});
window.addEventListener('error', function (e) {
  window.__probe.errors.push('uncaught: ' + (e.message || (e.target && (e.target.src || e.target.href)) || e.type));
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__probe.errors.push('rejection: ' + e.reason); });
window.addEventListener('load', function () {
  setTimeout(function () {
    var figures = Array.prototype.map.call(document.querySelectorAll('.plotly-graph-div'), function (d) {
      var box = d.getBoundingClientRect();
      var q = function (s) { return d.querySelectorAll(s).length; };
      return {id: d.id, main_svg: q('.main-svg'), plot_container: q('.plot-container'),
              traces: (d.data || []).length, points: q('.scatterlayer .point'),
              bars: q('.barlayer .point'), contours: q('.contourlayer path'), annotations: q('.annotation'),
              width: box.width, height: box.height};
    });
    var pre = document.createElement('pre');
    pre.id = 'deepsc-probe';
    pre.textContent = JSON.stringify({
      errors: window.__probe.errors, figures: figures,
      resources: performance.getEntriesByType('resource').map(function (r) { return r.name; }),
      plotly: window.Plotly ? window.Plotly.version : null,
      page_height: document.documentElement.scrollHeight});
    document.body.appendChild(pre);
  }, 1000);
});
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of a Chromium binary; fails in CI and skips elsewhere when there is none."""
    override = os.environ.get("DEEPSC_TUNE_CHROMIUM")
    found = override or next((p for p in map(shutil.which, BROWSERS) if p), None)
    if not found:
        message = (
            "headless Chromium not found (looked for " + ", ".join(BROWSERS) + "); "
            "Debian/Ubuntu: apt-get install -y chromium, or set DEEPSC_TUNE_CHROMIUM"
        )
        missing(f"browser tests: {message}")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, optuna.Study]:
    """A report of a real small search (8 trials, 4 epochs) with one repeat of its best trial."""
    results = tmp_path_factory.mktemp("browser") / "results"
    runner = CliRunner()
    common = ["--results-dir", str(results), "--threads", "1"]
    for args in (
        ["run", "pbmc68k", *common, "study.n_trials=8", "finetune.epoch=4", "finetune.hidden=[32]"],
        ["repeat", "pbmc68k", "--top", "1", "--seeds", "1", *common],
        ["report", "pbmc68k", "--results-dir", str(results)],
    ):
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{results / 'pbmc68k' / 'study.db'}")
    return results / "pbmc68k" / "report.html", study


def run_chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def console_lines(stderr: str) -> list[str]:
    """Lines Chromium logs for the page's console (any level: the report should log nothing)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_draws_offline_without_errors(chromium, report, tmp_path):
    page, study = report
    data = build_report_data(study)

    # 1. the page as written: no console output at all, and a screenshot
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.unlink(missing_ok=True)
    shot = run_chromium(
        chromium,
        tmp_path,
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,4400",
        f"--screenshot={ARTIFACT}",
        page.as_uri(),
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert console_lines(shot.stderr) == []
    assert ARTIFACT.is_file() and ARTIFACT.stat().st_size > 50_000, "screenshot missing or blank"

    # 2. a probed copy: errors, fetched resources and what each figure drew
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", f"<head><script>{PROBE}</script>", 1))
    dump = run_chromium(chromium, tmp_path, "--window-size=1280,2000", "--dump-dom", probed.as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    match = re.search(r'<pre id="deepsc-probe">(.*?)</pre>', dump.stdout, re.S)
    assert match, "the probe did not run: " + dump.stdout[-500:]
    probe = json.loads(html.unescape(match.group(1)))

    assert probe["errors"] == []
    assert probe["resources"] == []  # plotly.js is inline: the page fetches nothing
    assert probe["plotly"]
    figures = {f["id"]: f for f in probe["figures"]}
    # A figure the study cannot fill yet (importances, contour from too few trials) is one line instead.
    drawn = {"fig-importances": bool(data.importances.values), "fig-contour": data.contour.note is None}
    assert sorted(figures) == sorted(f for f in FIGURES if drawn.get(f, True))
    text = html.unescape(page.read_text())
    for note in (data.importances.note, data.contour.note):
        assert note is None or f"<div class=note>{note}</div>" in text
    for f in figures.values():
        assert f["main_svg"] >= 1 and f["plot_container"] == 1 and f["traces"] >= 1, f
        assert f["width"] > 200 and f["height"] > 200, f

    search = [t for t in study.get_trials() if "repeat_of" not in t.user_attrs]
    finished = [t for t in search if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # one marker per finished search trial, a ring around each confirmed one (the repeated best);
    # the usage guide's two configs labelled
    rings = sum(p.seeds > 1 for ps in data.frontier.points.values() for p in ps)
    assert rings == 1
    star = int(data.frontier.chosen is not None)  # the chosen configuration, drawn once more
    assert figures["fig-frontier"]["points"] == len(finished) + rings + star
    levels = sum(x is not None for x in (data.frontier.chance, data.frontier.baseline))
    assert figures["fig-frontier"]["annotations"] == 2 + levels  # the guide's two, chance, baseline
    assert figures["fig-curves"]["points"] == sum(len(c.values) for c in data.curves)
    assert figures["fig-curves"]["traces"] == len(data.curves)
    assert figures["fig-history"]["points"] == 2 * len([h for h in data.history if h.value is not None])
    if drawn["fig-importances"]:
        assert figures["fig-importances"]["bars"] == len(data.importances.values) >= 2
    if drawn["fig-contour"]:  # shaded: MIN_CONTOUR_SHADING trials or more
        assert figures["fig-contour"]["contours"] > 0
        assert figures["fig-contour"]["points"] == len(data.contour.numbers) >= MIN_CONTOUR_SHADING
    stability = sum(len(r.last_values) + len(r.runs) for r in data.stability)
    assert figures["fig-stability"]["points"] == stability
    assert len(data.stability[0].runs) == 2  # the repeat shows as a second seed
