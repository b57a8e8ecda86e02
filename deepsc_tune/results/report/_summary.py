"""What a report shows besides its plots, and everything it shows gathered from one read of a study.

``summary_data`` computes the summary table (the chosen configuration, its metrics over seeds,
trial counts, failures with reasons, epochs spent and the lines to paste into DeepSC);
``build_report_data`` reads the study once and computes every section (:class:`ReportData`), the
plot data with :mod:`deepsc_tune.results.report._data`; ``index_row`` is a study's row in
``RESULTS_DIR/index.html``. No plotly, no HTML: :mod:`deepsc_tune.results.report._page` draws the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.data import BASELINE_ATTR, CHANCE_ATTR
from deepsc_tune.results._export import format_best, reference_notes
from deepsc_tune.results.report._data import (
    TOP_CONFIGS,
    Curve,
    EpochBudget,
    Frontier,
    HistoryPoint,
    StabilityRow,
    epoch_budget,
    epochs_set,
    frontier_data,
    is_repeat,
    learning_curves,
    optimization_history,
    search_only,
    setting,
    stability_data,
)
from deepsc_tune.results.report._parameters import ContourData, Importances, contour_data, param_importances
from deepsc_tune.study import (
    RETRY_OF,
    SEARCH_SPACE_NAME,
    StudyFolder,
    command_args,
    config_value,
    failure_reason,
    format_reported,
    select,
    state_counts,
    study_fixed,
    study_metric,
    trial_result,
)


class FailedTrial(NamedTuple):
    number: int
    reason: str
    retried_as: int | None


@dataclass
class Summary:
    """The summary table: best configuration, counts, epochs, and the lines to paste into DeepSC."""

    study_name: str
    metric: str
    counts: dict[str, int]  # search trials by state name
    repeat_counts: dict[str, int]  # repeats by state name
    budget: EpochBudget
    failed: list[FailedTrial]
    best_number: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_set: int | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    override_line: str | None = None
    yaml_block: str | None = None
    seeds: int = 1  # runs of the chosen configuration over seeds (search trial + COMPLETE repeats)
    seeds_mean: float | None = None  # the study metric, mean and sd over those seeds
    seeds_sd: float | None = None
    seeds_test_accuracy: str | None = None  # "mean ± sd" over seeds, reported only
    seeds_test_macro_f1: str | None = None
    leader: str | None = None  # whether the pick is distinguishable from the runner-up
    references: list[str] = field(default_factory=list)  # against chance and the baseline (validation)
    space_name: str | None = None  # the search space's name: `NAME --study-name STUDY` in hints

    @property
    def command_args(self) -> str:
        """How the study is named on the command line (``SPACE`` or ``SPACE --study-name STUDY``)."""
        return command_args(self.space_name or self.study_name, self.study_name)

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def _counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    return {s.name: n for s, n in state_counts(trials).items()}


def summary_data(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    *,
    backend: str = "builtin",
    record_dir: StudyFolder | Path | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Summary:
    """Best configuration and its metrics, trial counts, failures with reasons, epochs spent.

    ``record_dir``: the study's folder (a DeepSC study's export reads its search space and
    trial records there); ``fixed``: the search space's fixed settings, if read already."""
    fixed = study_fixed(study, record_dir) if fixed is None else fixed
    search = search_only(trials)
    retries = {int(t.user_attrs[RETRY_OF]): t.number for t in trials if RETRY_OF in t.user_attrs}
    failed = [
        FailedTrial(t.number, (failure_reason(t) or "").strip(), retries.get(t.number))
        for t in trials
        if t.state == TrialState.FAIL
    ]
    default_epochs = config_value(study.user_attrs, "epoch")
    summary = Summary(
        study_name=study.study_name,
        metric=study_metric(study.user_attrs),
        counts=_counts(search),
        repeat_counts=_counts([t for t in trials if is_repeat(t)]),
        budget=epoch_budget(trials, default_epochs=default_epochs),
        failed=failed,
        space_name=study.user_attrs.get(SEARCH_SPACE_NAME),
    )
    selection = select(trials)
    if selection.best is None:
        return summary
    chosen = selection.best
    best = chosen.trial
    summary.seeds, summary.seeds_mean, summary.seeds_sd = chosen.n, chosen.mean, chosen.sd
    summary.seeds_test_accuracy = format_reported(chosen.test_accuracy)
    summary.seeds_test_macro_f1 = format_reported(chosen.test_macro_f1)
    summary.leader = selection.leader_test.reason if selection.leader_test is not None else None
    summary.references = reference_notes(study, selection, chosen.number, metric=summary.metric)
    result = trial_result(best)
    summary.best_number = best.number
    summary.best_params = dict(best.params)
    summary.best_value = best.value
    summary.best_epoch = result.best_epoch
    summary.epochs_set = epochs_set(best, default_epochs)
    summary.val_accuracy = result.val_accuracy
    summary.val_macro_f1 = result.val_macro_f1
    summary.test_accuracy = result.test_accuracy
    summary.test_macro_f1 = result.test_macro_f1
    summary.override_line = _strip_comments(
        format_best(study, best, fmt="hydra", backend=backend, selection=selection, folder=record_dir, fixed=fixed)
    )
    summary.yaml_block = format_best(
        study, best, fmt="yaml", backend=backend, selection=selection, folder=record_dir, fixed=fixed
    )
    return summary


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


class ReportData(NamedTuple):
    """Everything a report shows, computed from one read of the study."""

    summary: Summary
    frontier: Frontier
    curves: list[Curve]
    history: list[HistoryPoint]
    importances: Importances
    contour: ContourData
    stability: list[StabilityRow]
    trials: list[FrozenTrial]
    description: str
    dataset: str
    notes: list[str]  # what the page cannot show yet, and why (also printed by the CLI)
    fixed: dict[str, Any] = {}  # the search space's fixed settings (a trial's others are its params)


def dataset_name(study_user_attrs: Mapping[str, Any]) -> str:
    """``pbmc68k_reduced`` for ``builtin:pbmc68k_reduced``, the file's stem for a path."""
    return str(config_value(study_user_attrs, "dataset") or "-")


def build_report_data(
    study: optuna.Study,
    *,
    backend: str = "builtin",
    top: int = TOP_CONFIGS,
    record_dir: StudyFolder | Path | None = None,
) -> ReportData:
    """Read the study once and compute the data of every section (``record_dir``: the study's
    folder, as in :func:`summary_data`)."""
    trials = list(study.get_trials(deepcopy=False))
    fixed = study_fixed(study, record_dir)
    summary = summary_data(study, trials, backend=backend, record_dir=record_dir, fixed=fixed)
    importances = param_importances(trials)
    contour = contour_data(trials, fixed=fixed)
    notes = []
    if summary.finished == 0:
        running = summary.counts["RUNNING"]
        notes.append(
            f"study '{study.study_name}' has no finished trial yet ({len(trials)} trials: "
            f"{running} running, {summary.counts['WAITING']} waiting, {summary.counts['FAIL']} failed)"
        )
    else:
        if summary.best_number is None:
            notes.append("no trial has completed yet (pruned only): no best configuration")
        if importances.note:
            notes.append(importances.note)
        from deepsc_tune.data import chance_note

        if (chance := chance_note(study, trials)) is not None:
            notes.append(chance)
    return ReportData(
        summary=summary,
        frontier=frontier_data(
            trials,
            metric=summary.metric,
            chance=study.user_attrs.get(CHANCE_ATTR),
            baseline=study.user_attrs.get(BASELINE_ATTR),
            fixed=fixed,
        ),
        curves=learning_curves(trials, fixed=fixed),
        history=optimization_history(trials),
        importances=importances,
        contour=contour,
        stability=stability_data(trials, top=top, fixed=fixed),
        trials=trials,
        description=str(config_value(study.user_attrs, "description") or ""),
        dataset=dataset_name(study.user_attrs),
        notes=notes,
        fixed=fixed,
    )


class IndexRow(NamedTuple):
    """One study in ``results/index.html``."""

    name: str
    dataset: str
    report: str  # relative link to the study's report
    trials: int
    scheduler: str | None
    learning_rate: float | None
    warmup_ratio: float | None
    epochs: int | None
    best_epoch: int | None
    val_accuracy: float | None
    val_macro_f1: float | None
    test_accuracy: float | None
    test_macro_f1: float | None
    stability: str  # "± 0.0123 over 3 seeds" or "± 0.0040 last 3 epochs"
    note: str | None


def stability_text(row: StabilityRow | None) -> str:
    """The spread of the best configuration: across seeds when repeated, else over last epochs."""
    if row is None:
        return "-"
    if row.seed_std is not None:
        return f"± {row.seed_std:.4f} over {len(row.runs)} seeds"
    if row.last_epochs_std is not None:
        return f"± {row.last_epochs_std:.4f} last {len(row.last_values)} epochs"
    return "-"


def index_row(data: ReportData, *, report: str) -> IndexRow:
    """The index row of one study's report data."""
    s = data.summary
    best = next((t for t in data.trials if t.number == s.best_number), None)
    stab = next((r for r in data.stability if r.number == s.best_number), None)
    return IndexRow(
        name=s.study_name,
        dataset=data.dataset,
        report=report,
        trials=len(search_only(data.trials)),
        scheduler=setting(best, "lr_scheduler_type", fixed=data.fixed) if best else None,
        learning_rate=setting(best, "learning_rate", fixed=data.fixed) if best else None,
        warmup_ratio=setting(best, "warmup_ratio", fixed=data.fixed)
        if best and setting(best, "lr_scheduler_type", fixed=data.fixed) != "constant"
        else None,
        epochs=s.epochs_set,
        best_epoch=s.best_epoch,
        val_accuracy=s.val_accuracy,
        val_macro_f1=s.val_macro_f1,
        test_accuracy=s.test_accuracy,
        test_macro_f1=s.test_macro_f1,
        stability=stability_text(stab),
        note=data.notes[0] if data.notes else None,
    )


__all__ = [
    "FailedTrial",
    "IndexRow",
    "ReportData",
    "Summary",
    "build_report_data",
    "dataset_name",
    "index_row",
    "stability_text",
    "summary_data",
]
