"""What a DeepSC checkout accepts, checked on a search space (deepsc_tune/backends/command/deepsc/_space.py), and
`validate`/`run` refusing what DeepSC would refuse.

Against DeepSC's real code at 2416d85 (../shared/deepsc/DeepSC-2416d85, read only; the
fixtures ``checkout`` and ``copy`` are in conftest.py). What is read from the checkout itself
(entry module, config, output folder) is tested in test_deepsc_checkout.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from deepsc_setup import deepsc_loop_steps, write_labels
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.backends.command.deepsc import _checkout as deepsc_checkout
from deepsc_tune.backends.command.deepsc import _space as deepsc
from deepsc_tune.backends.command.deepsc._space import Setting
from deepsc_tune.cli import app
from deepsc_tune.config._search_space import ParamSpec, build_search_space, load_search_space
from deepsc_tune.errors import ConfigError

MODULE = "src.deepsc.finetune.finetune"
runner = CliRunner()


# ----------------------------------------------------------------------------- schedule


def spec(name, **kw) -> ParamSpec:
    kind = kw.pop("kind", "float")
    return ParamSpec(name, kind, **kw)


LR_SEARCH = {"lr_scheduler_type": spec("lr_scheduler_type", kind="categorical", choices=("constant", "cosine"))}


def test_total_steps_is_deepscs_formula():
    # cell_type_annotation.py: epoch * ceil(100000 / (batch_size * world_size * grad_acc))
    assert deepsc.total_steps(epoch=10, batch_size=32, grad_acc=20) == 10 * math.ceil(100000 / 640) == 1570
    assert deepsc.total_steps(epoch=2, batch_size=8, grad_acc=1, world_size=2) == 2 * 6250


def test_searched_warmup_from_zero_is_clipped_to_one_step():
    settings = {"epoch": 10, "batch_size": 32, "grad_acc": 20}
    search = {
        **LR_SEARCH,
        "warmup_ratio": spec("warmup_ratio", low=0.0, high=0.2, when={"lr_scheduler_type": ("cosine",)}),
    }
    found = deepsc.schedule_problems(settings, search)
    assert found.problems == []
    low = found.lows["warmup_ratio"]
    assert low == pytest.approx(1 / 1570)
    assert math.ceil(1570 * low) >= 1 and 3 * math.ceil(1570 * low) > 0  # T_0 positive
    [note] = found.notes
    assert note.startswith("search.warmup_ratio: low end 0 clipped to 0.0006369") and "1570" in note

    # On a stepped range the new low end stays on the grid.
    search["warmup_ratio"] = spec("warmup_ratio", low=0.0, high=0.2, step=0.01)
    assert deepsc.schedule_problems(settings, search).lows["warmup_ratio"] == pytest.approx(0.01)

    # A searched batch size: clipped for the largest number of steps (smallest batch).
    search["batch_size"] = spec("batch_size", kind="int", low=8, high=64)
    search["warmup_ratio"] = spec("warmup_ratio", low=0.0, high=0.2)
    assert deepsc.schedule_problems(settings, search).lows["warmup_ratio"] == pytest.approx(
        1 / deepsc.total_steps(epoch=10, batch_size=8, grad_acc=20)
    )


def test_warmup_not_clipped_when_cosine_cannot_happen():
    search = {
        "lr_scheduler_type": spec("lr_scheduler_type", kind="categorical", choices=("constant",)),
        "warmup_ratio": spec("warmup_ratio", low=0.0, high=0.2),
    }
    found = deepsc.schedule_problems({"epoch": 10}, search)
    assert found.lows == {} and found.problems == []
    search = {
        **LR_SEARCH,
        "warmup_ratio": spec("warmup_ratio", low=0.0, high=0.2, when={"lr_scheduler_type": ("constant",)}),
    }
    assert deepsc.schedule_problems({}, search).lows == {}


@pytest.mark.parametrize(
    ("settings", "search", "enqueue", "key"),
    [
        ({"lr_scheduler_type": "cosine", "warmup_ratio": 0}, {}, [], "finetune.warmup_ratio"),
        (
            {"warmup_ratio": Setting(0.0, "finetune.overrides.warmup_ratio")},
            LR_SEARCH,
            [],
            "finetune.overrides.warmup_ratio",
        ),
        (
            {"lr_scheduler_type": "cosine"},
            {"warmup_ratio": spec("warmup_ratio", kind="categorical", choices=(0.0, 0.05))},
            [],
            "search.warmup_ratio.choices",
        ),
        (
            {"lr_scheduler_type": "cosine"},
            {"warmup_ratio": spec("warmup_ratio", low=0.0, high=0.2, grid=(0.0, 0.1))},
            [],
            "search.warmup_ratio.grid",
        ),
        (
            {"warmup_ratio": 0.03},
            {**LR_SEARCH, "warmup_ratio": spec("warmup_ratio", low=0.01, high=0.2)},
            [{"lr_scheduler_type": "cosine", "warmup_ratio": 0.0}],
            "study.enqueue[0].warmup_ratio",
        ),
        ({"warmup_ratio": -0.1}, LR_SEARCH, [{"lr_scheduler_type": "cosine"}], "study.enqueue[0].lr_scheduler_type"),
    ],
)
def test_cosine_with_zero_warmup_is_refused(settings, search, enqueue, key):
    found = deepsc.schedule_problems(settings, search, enqueue=enqueue)
    assert key in [p.key for p in found.problems]
    problem = next(p for p in found.problems if p.key == key)
    assert "Expected positive integer T_0" in problem.message and "\n" not in str(problem)


def test_unknown_scheduler_type_is_refused():
    search = {"lr_scheduler_type": spec("lr_scheduler_type", kind="categorical", choices=("constant", "linear"))}
    [problem] = deepsc.schedule_problems({}, search).problems
    assert problem.key == "search.lr_scheduler_type" and "'linear'" in problem.message


def test_one_gpu_per_trial():
    assert deepsc.device_problems({"num_device": 1, "num_nodes": 1}, {}) == []
    [problem] = deepsc.device_problems({"num_device": Setting(2, "finetune.overrides.num_device")}, {})
    assert problem.key == "finetune.overrides.num_device" and "--gpus" in problem.message
    [problem] = deepsc.device_problems({}, {"num_device": spec("num_device", kind="int", low=1, high=2)})
    assert problem.key == "search.num_device"


def test_input_problems(tmp_path):
    there = tmp_path / "train.h5ad"
    there.write_text("")
    config = Setting("/nowhere/model.ckpt", "configs/finetune/finetune.yaml: pretrained_model_path")
    ok = {
        "data_path": str(there),
        "csv_path": "relative/map.csv",  # relative: the backend resolves it
        "seperated_train_eval_dataset": True,
        "data_path_eval": str(there),
        "load_pretrained_model": False,
        "pretrained_model_path": config,
    }
    assert deepsc.input_problems(ok) == []
    [problem] = deepsc.input_problems({**ok, "load_pretrained_model": True})
    assert problem.key == "finetune.overrides.pretrained_model_path"
    assert (
        "DeepSC's default '/nowhere/model.ckpt'" in problem.message
        and "load_pretrained_model: false" in problem.message
    )
    [problem] = deepsc.input_problems({**ok, "data_path": str(tmp_path / "gone.h5ad")})
    assert problem.key == "finetune.data_path" and "no such file" in problem.message
    [problem] = deepsc.input_problems({**ok, "seperated_train_eval_dataset": False})
    assert problem.key == "finetune.data_path_eval" and "is ignored" in problem.message


# ----------------------------------------------------------------------------- search spaces


FILES = {"data_path": "train.h5ad", "data_path_eval": "val.h5ad", "csv_path": "map.csv"}
#: Training cells of deepsc_space: 200 batches of 32 an epoch, 10 optimizer steps with grad_acc 20.
N_TRAIN = 6400
REAL_STEPS = 2 * 10  # epoch 2


def deepsc_space(
    checkout: Path,
    tmp_path: Path,
    *,
    finetune: dict | None = None,
    search: dict | None = None,
    study: dict | None = None,
) -> Path:
    inputs = {key: str(tmp_path / name) for key, name in FILES.items()}
    (tmp_path / "map.csv").write_text("")  # only its existence is checked
    # DeepSC's two files: their labels set the real optimizer steps (N_TRAIN cells).
    write_labels(tmp_path / "train.h5ad", ["a", "b"] * (N_TRAIN // 2), column="bulk_labels")
    write_labels(tmp_path / "val.h5ad", ["a", "b", "b"] * 10, column="bulk_labels")
    raw = {
        "name": "dsc",
        "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
        "finetune": {
            "backend": "command",
            "command": [sys.executable, "-m", MODULE],
            "cwd": str(checkout),
            "epoch": 2,
            "batch_size": 32,
            "grad_acc": 20,
            "overrides": {
                "obs_celltype_col": "bulk_labels",
                "num_device": 1,
                **inputs,
                "seperated_train_eval_dataset": True,
                "load_pretrained_model": False,
            },
            **(finetune or {}),
        },
        "search": search
        if search is not None
        else {
            "lr_scheduler_type": {"choices": ["constant", "cosine"]},
            "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
            "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
        },
        "study": study or {"n_trials": 4, "sampler": {"type": "random", "seed": 0}},
    }
    path = tmp_path / "dsc.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_clipped_range_is_what_the_study_samples(checkout, tmp_path):
    path = deepsc_space(checkout, tmp_path)
    space = load_search_space(str(path))
    # One warmup step of the real run (a fraction of its optimizer steps, DeepSC's loop re-enacted).
    assert deepsc_loop_steps(N_TRAIN, epoch=2, batch_size=32, grad_acc=20) == REAL_STEPS
    low = 1 / REAL_STEPS
    assert space.params["warmup_ratio"].distribution() == optuna.distributions.FloatDistribution(low, 0.2)
    assert any(n.startswith("search.warmup_ratio") for n in space.notes)

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial)
        study.tell(trial, 0.5)
        if "warmup_ratio" in values:
            assert values["warmup_ratio"] >= low
            assert trial.distributions["warmup_ratio"].low == pytest.approx(low)

    # The hash is of the file: the same file opens the same study, a changed range does not.
    from deepsc_tune.study._study import open_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(space, storage=url, study_name="dsc")
    open_study(load_search_space(str(path)), storage=url, study_name="dsc")
    changed = load_search_space(str(path), ["search.warmup_ratio.high=0.3"])
    with pytest.raises(ConfigError, match="different search space"):
        open_study(changed, storage=url, study_name="dsc")


def test_problems_only_when_checking(checkout, tmp_path):
    path = deepsc_space(checkout, tmp_path, finetune={"learnig_rate": 1e-4})
    assert load_search_space(str(path)).name == "dsc"  # split, finetune: no DeepSC refusal
    with pytest.raises(ConfigError) as info:
        load_search_space(str(path), check_deepsc=True)
    assert "finetune.learnig_rate: 'learnig_rate' is not a key" in str(info.value)


def test_run_dir_override_key_is_checked(checkout, tmp_path):
    path = deepsc_space(checkout, tmp_path, finetune={"run_dir_override": "output_dirr"})
    with pytest.raises(ConfigError, match=r"finetune.run_dir_override: 'output_dirr' .*did you mean 'output_dir'"):
        load_search_space(str(path), check_deepsc=True)


def test_not_deepsc_is_not_checked(tmp_path):
    raw = {
        "name": "other",
        "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
        "finetune": {"backend": "command", "command": [sys.executable, "train.py"], "whatever": 1},
        "search": {"warmup_ratio": {"low": 0.0, "high": 0.2}},
    }
    space = build_search_space(raw, check_deepsc=True)
    assert space.params["warmup_ratio"].low == 0.0 and space.notes == []


# ----------------------------------------------------------------------------- CLI


def cli(*args: str):
    return runner.invoke(app, list(args))


def test_validate_lists_every_deepsc_problem_on_one_line_each(checkout, tmp_path):
    path = deepsc_space(
        checkout,
        tmp_path,
        finetune={
            "model.num_layer": 2,
            "overrides": {
                "data_pth": "x.h5ad",
                "num_device": 2,
                "obs_celltype_col": "bulk_labels",
                "data_path_eval": str(tmp_path / "val.h5ad"),
                "load_pretrained_model": False,
            },
            "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.0,
        },
        search={"learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True}},
    )
    result = cli("validate", str(path))
    assert result.exit_code == 2
    out = result.output
    assert "Traceback" not in out and "ok:" not in out
    assert out.startswith(f"error: {path}: 7 problems:")
    lines = out.strip().splitlines()[1:]
    assert len(lines) == 7 and all(line.startswith("  - ") for line in lines)
    assert any(
        line.startswith("  - finetune.overrides.data_pth:") and "did you mean 'data_path'?" in line for line in lines
    )
    assert any(
        line.startswith("  - finetune.model.num_layer:") and "did you mean 'model.num_layers'?" in line
        for line in lines
    )
    assert any(line.startswith("  - finetune.warmup_ratio: 0.0 with lr_scheduler_type cosine") for line in lines)
    assert any(line.startswith("  - finetune.overrides.num_device: 2:") for line in lines)
    # DeepSC's defaults point at its authors' machine; the eval file is ignored without the flag.
    assert any(
        line.startswith("  - finetune.overrides.data_path: not set, and DeepSC's default '/home/angli/")
        for line in lines
    )
    assert any(line.startswith("  - finetune.overrides.csv_path: not set") for line in lines)
    assert any(
        line.startswith("  - finetune.overrides.data_path_eval:")
        and "is ignored" in line
        and "seperated_train_eval_dataset: true" in line
        for line in lines
    )


def test_validate_ok_prints_notes(checkout, tmp_path):
    path = deepsc_space(checkout, tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["finetune"]["overrides"]["ckpt_dir"] = "{run_dir}/ckpts"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli("validate", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"ok: {path}: searches lr_scheduler_type, learning_rate, warmup_ratio")
    notes = "\n".join(lines[1:])
    assert "note: search.warmup_ratio: low end 0 clipped to 0.05" in notes  # 1 of 20 real steps
    assert "note: search.warmup_ratio is a fraction of the real run (20 optimizer steps" in notes
    assert "/home/angli/DeepSC/results/cell_type_annotation/<YYYYmmdd_HHMMSS>/" in notes
    assert "finetune.overrides.ckpt_dir: DeepSC never reads ckpt_dir" in notes


def test_validate_names_the_wrong_checkout(copy, tmp_path):
    (copy / deepsc_checkout.ENTRY_FILE).unlink()
    (copy / deepsc_checkout.RUN_CTA_FILE).write_text("")
    result = cli("validate", str(deepsc_space(copy, tmp_path)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    # One problem: one line, naming the file, the key and what was found instead.
    assert len(result.output.strip().splitlines()) == 1
    assert "dsc.yaml: finetune.command: runs src.deepsc.finetune.finetune, but" in result.output
    assert "run_cta.py" in result.output


def test_run_refuses_before_any_trial(checkout, tmp_path):
    path = deepsc_space(checkout, tmp_path, finetune={"learnig_rate": 1e-4})
    results = tmp_path / "results"
    db = results / "dsc" / "study.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="dsc", storage=f"sqlite:///{db}")
    study.enqueue_trial({"learning_rate": 1e-4})
    before = [(t.number, t.state, t.params) for t in study.trials]
    result = cli("run", str(path), "--results-dir", str(results))
    assert result.exit_code == 2, result.output
    assert "finetune.learnig_rate: 'learnig_rate' is not a key" in result.output
    assert "did you mean 'learning_rate'?" in result.output and "Traceback" not in result.output
    after = optuna.load_study(study_name="dsc", storage=f"sqlite:///{db}").trials
    assert [(t.number, t.state, t.params) for t in after] == before


def test_validate_still_checks_other_spaces(tmp_path):
    # A builtin space is untouched by the DeepSC checks.
    path = tmp_path / "b.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: b
        data: {train: "builtin:pbmc68k_reduced", label_key: bulk_labels}
        search:
          warmup_ratio: {low: 0.0, high: 0.2}
        """)
    )
    result = cli("validate", str(path))
    assert result.exit_code == 0 and "note:" not in result.output


# ----------------------------------------------------------------------------- DeepSC's own code

_SCHEDULER_PROBE = """
import sys, types
from types import SimpleNamespace
root, ratio = sys.argv[1], float(sys.argv[2])
sys.path[:0] = [root, root + "/src"]
try:
    import wandb  # noqa: F401  (imported by DeepSC's utils, unused by its scheduler)
except ImportError:
    sys.modules["wandb"] = types.ModuleType("wandb")
import torch
from deepsc.finetune.cell_type_annotation import CellTypeAnnotation

args = SimpleNamespace(lr_scheduler_type="cosine", epoch=10, batch_size=32, grad_acc=20,
                       warmup_ratio=ratio, learning_rate=1e-4)
optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
CellTypeAnnotation.create_scheduler(SimpleNamespace(world_size=1, is_master=True, args=args), optimizer, args)
"""


@pytest.mark.slow  # two imports of DeepSC's trainer, ~10 s each
def test_clipped_low_end_runs_in_deepscs_own_scheduler(checkout, tmp_path):
    # DeepSC's real CellTypeAnnotation.create_scheduler (2416d85), called on a stand-in `self`:
    # the clipped low end gives 1 warmup step; 0 is the error deepsc-tune refuses up front.
    pytest.importorskip("torch")
    search = {**LR_SEARCH, "warmup_ratio": spec("warmup_ratio", low=0.0, high=0.2)}
    low = deepsc.schedule_problems({"epoch": 10, "batch_size": 32, "grad_acc": 20}, search).lows["warmup_ratio"]
    probe = tmp_path / "probe.py"
    probe.write_text(_SCHEDULER_PROBE)

    def run(ratio):
        return subprocess.run(
            [sys.executable, str(probe), str(checkout), repr(ratio)],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )

    ok = run(low)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "  - Warmup steps: 1\n" in ok.stdout and "  - Total steps: 1570\n" in ok.stdout
    bad = run(0.0)
    assert bad.returncode != 0 and "ValueError: Expected positive integer T_0, but got 0" in bad.stderr


def test_shipped_example_validates_against_the_real_checkout(tmp_path, monkeypatch, checkout):
    """examples/deepsc-hpancreas.yaml runs as written, its four PATH lines aside: with them
    pointing at DeepSC 2416d85 and existing files, validate passes and clips the warmup range."""
    example = REPO / "examples" / "deepsc-hpancreas.yaml"
    for name in ("demo_train.h5ad", "gene_map_tp10k.csv", "DeepSC_11_0.ckpt", "python"):
        (tmp_path / name).write_text("")
    (tmp_path / "python").chmod(0o755)
    (tmp_path / "split" / "hpancreas").mkdir(parents=True)
    # What split writes (labels under obs_celltype_col): hPancreas-sized, 10,000 training cells.
    write_labels(tmp_path / "split" / "hpancreas" / "train.h5ad", ["alpha", "beta"] * 5000)
    write_labels(tmp_path / "split" / "hpancreas" / "val.h5ad", ["alpha", "beta", "beta"] * 300)
    text = example.read_text()
    for old, new in {
        "data/hPancreas/demo_train.h5ad": str(tmp_path / "demo_train.h5ad"),
        "/opt/conda/envs/deepsc/bin/python": str(tmp_path / "python"),
        "/home/me/DeepSC/gene_map_tp10k.csv": str(tmp_path / "gene_map_tp10k.csv"),
        "/home/me/DeepSC/ckpts/DeepSC_11_0.ckpt": str(tmp_path / "DeepSC_11_0.ckpt"),
        "/home/me/DeepSC": str(checkout),
    }.items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "deepsc-hpancreas.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "deepsc-hpancreas.yaml"])
    assert result.exit_code == 0, result.output
    assert "warmup_ratio" in result.output and "/home/angli/DeepSC/results/cell_type_annotation" in result.output
    # 10 epochs x (313 batches // grad_acc 20) = 150 real steps, of DeepSC's planned 1570.
    assert "search.warmup_ratio is a fraction of the real run (150 optimizer steps" in result.output
