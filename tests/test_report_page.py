"""report_page.py: the page's tables and templates (the page in a browser: test_report_browser.py)."""

from __future__ import annotations

from deepsc_tune.report_page import _stability_html


def test_stability_hint_names_the_study():
    class Row:
        number, label, value, last_epochs_std = 0, "x", 0.5, 0.0
        runs = (object(),)
        seed_mean = seed_std = test_accuracy_mean = test_accuracy_std = None

    html = _stability_html([Row()], name="baron")
    assert "deepsc-tune repeat baron --top 3" in html and "repeat NAME" not in html
