"""``deepsc-tune report``: plot data computed from the study, drawn by plotly, put in a page.

``_data`` computes every plot's data (frontier, learning curves, history, stability) as plain
tuples, without plotly, and ``_parameters`` the parameters' importances and contour; ``_summary`` reads a study once into
:class:`ReportData`; ``_figures`` draws each figure from its data only; ``_page`` fills the HTML
templates (every value escaped); ``_files`` writes ``report.html``, ``trials.csv`` and
``best.yaml`` into the study's folder, and the index of every study.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_files": ["write_index", "write_report"],
        "_summary": ["build_report_data"],
    },
)
