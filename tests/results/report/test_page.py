"""report_page.py: the page's tables and templates (the page in a browser: test_report_browser.py)."""

from __future__ import annotations

import fnmatch
import re

import optuna
import pytest
from optuna.trial import TrialState
from paths import REPO
from report_studies import add, const, cos

from deepsc_tune.results.report._files import build_report_data
from deepsc_tune.results.report._page import _stability_html, render_index, render_report

optuna.logging.set_verbosity(optuna.logging.ERROR)

ROOT = REPO


def test_stability_hint_names_the_study():
    class Row:
        number, label, value, last_epochs_std = 0, "x", 0.5, 0.0
        runs = (object(),)
        seed_mean = seed_std = test_accuracy_mean = test_accuracy_std = None

    html = _stability_html([Row()], name="baron")
    assert "deepsc-tune repeat baron --top 3" in html and "repeat NAME" not in html


def test_values_put_into_the_templates_are_escaped():
    study = optuna.create_study(direction="maximize", study_name="a<b>&c")
    study.set_user_attr("description", "<script>alert(1)</script>")
    add(study, TrialState.COMPLETE, const(1e-4), [0.4, 0.6], epochs=2)
    add(study, TrialState.COMPLETE, cos(1e-3), [0.5, 0.7], epochs=2)
    add(study, TrialState.FAIL, cos(1e-2), [0.1], epochs=2, fail_reason="loss <NaN> & more")
    page = render_report(build_report_data(study))
    assert "<title>a&lt;b&gt;&amp;c: deepsc-tune report</title>" in page
    assert "<h1>deepsc-tune report: a&lt;b&gt;&amp;c</h1>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "loss &lt;NaN&gt; &amp; more" in page
    # the six sections in order, every placeholder filled
    headings = re.findall(r"<h2>(\d)\. ", page)
    assert headings == ["1", "2", "3", "4", "5", "6"]
    assert page.count("* plotly.js v") == 1


def test_a_study_without_finished_trials_gets_the_short_page():
    study = optuna.create_study(direction="maximize", study_name="<new>")
    page = render_report(build_report_data(study))
    assert "<h1>deepsc-tune report: &lt;new&gt;</h1>" in page and "<h2>Summary</h2>" in page
    assert "<h2>1. " not in page and "plotly" not in page
    assert "no finished trial yet" in page


def test_index_escapes_studies_and_errors():
    page = render_index([], errors=[("<db>", "cannot read & stop")])
    assert "<div class=note>&lt;db&gt;: cannot read &amp; stop</div>" in page
    assert "<title>deepsc-tune studies</title>" in page and "no study found" not in page
    assert "no study found: run <code>deepsc-tune run NAME</code>" in render_index([])


def test_templates_are_installed_with_the_package():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = ROOT / "deepsc_tune" / "results" / "report"
    templates = sorted(p.relative_to(package).as_posix() for p in (package / "templates").iterdir())
    assert {"templates/page.html", "templates/report.html", "templates/index.html"} <= set(templates)
    for name in templates:
        assert any(
            fnmatch.fnmatch(name, pattern) for pattern in setuptools["package-data"]["deepsc_tune.results.report"]
        )
