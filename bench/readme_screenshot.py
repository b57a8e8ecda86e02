"""Regenerate the README's report screenshot: results/screenshots/report-pbmc68k.png.

    python bench/readme_screenshot.py            # the shipped pbmc68k search, about a minute on 2 cores
    python bench/readme_screenshot.py --keep /tmp/readme   # keep the study and report there

Runs ``deepsc-tune run pbmc68k`` (the shipped space, default settings) into a fresh results
folder, ``deepsc-tune report pbmc68k``, and takes a headless-Chromium picture of the top of the
page (title, summary, frontier, learning curves) with the network off. Needs Debian's
``chromium`` (``apt-get install -y chromium``). Prints what the frontier shows, so whoever
regenerates it can check the picture against the numbers.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "screenshots" / "report-pbmc68k.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Headless, sandbox-free (containers), and nothing that reaches the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
)
#: The part of the page shown: the title, summary, frontier and learning curves.
WINDOW = "1280,1700"


def find_chromium() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def screenshot(chromium: str, page: Path, out: Path, *, window: str = WINDOW, profile: Path) -> None:
    """A picture of ``page`` (figures drawn first: virtual time budget) written to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            f"--window-size={window}",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="results folder to use and keep (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("readme_screenshot: no Chromium found (apt-get install -y chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        results = args.keep or Path(tmp) / "results"
        cli = [sys.executable, "-c", "from deepsc_tune.cli import entry; entry()"]
        for command in (["run", "pbmc68k"], ["report", "pbmc68k"]):
            subprocess.run([*cli, *command, "--results-dir", str(results)], check=True)
        screenshot(chromium, results / "pbmc68k" / "report.html", args.out, profile=Path(tmp) / "profile")

        import optuna

        from deepsc_tune.results.report import build_report_data

        study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{results / 'pbmc68k' / 'study.db'}")
        frontier = build_report_data(study).frontier
        print(f"wrote {args.out}")
        print(f"chosen trial #{frontier.chosen}; chance {frontier.chance}; baseline {frontier.baseline}")
        for scheduler, line in frontier.lines.items():
            print(f"{scheduler}: " + ", ".join(f"{s.learning_rate:.2g}->{s.value:.3f}" for s in line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
