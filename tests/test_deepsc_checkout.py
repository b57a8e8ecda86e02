"""What deepsc-tune reads from a DeepSC checkout (deepsc_tune/deepsc_checkout.py): the entry
module, the Hydra config and its keys, the output folder.

Against DeepSC's real code at 2416d85 (../shared/deepsc/DeepSC-2416d85, read only). Other
commits are simulated in temporary copies: finetune.py deleted and run_cta.py added (b3348a3),
cell_type_annotation.py deleted too (2227f88), the output-folder line patched. The fixtures
``checkout`` and ``copy`` are in conftest.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deepsc_tune import deepsc_checkout
from deepsc_tune.errors import ConfigError

MODULE = "src.deepsc.finetune.finetune"


# ----------------------------------------------------------------------------- entry point


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python", "-m", MODULE, "epoch=1"], True),
        (["/opt/env/bin/python", "-u", "-m", "deepsc.finetune.finetune"], True),
        (["torchrun", "--nproc_per_node=1", "-m", "deepsc.finetune.finetune"], True),
        (["python", "-msrc.deepsc.finetune.finetune"], True),
        (["python", "src/deepsc/finetune/finetune.py"], True),
        (["python", "-m", "src.deepsc.finetune.run_cta"], True),
        (["python", "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "deepsc.finetune.finetune"], True),
        (["python", "tests/fake_deepsc.py"], False),
        (["python", "-m", "mypackage.train"], False),
        (["python", "-c", "print(1)"], False),
    ],
)
def test_is_deepsc_command(command, expected):
    assert deepsc_checkout.is_deepsc_command(command) is expected


def test_entry_module_of_the_real_checkout(checkout):
    assert deepsc_checkout.entry_module_problems(checkout, ["python", "-m", MODULE]) == []
    assert deepsc_checkout.entry_module_problems(checkout, ["torchrun", "-m", "deepsc.finetune.finetune"]) == []
    assert deepsc_checkout.entry_module_problems(checkout, ["python", "train.py"]) == []  # not DeepSC


def test_entry_module_says_what_was_found_instead(copy):
    (copy / deepsc_checkout.ENTRY_FILE).unlink()
    (copy / deepsc_checkout.RUN_CTA_FILE).write_text("from deepsc.finetune.cell_type_annotation import x\n")
    [problem] = deepsc_checkout.entry_module_problems(copy, ["python", "-m", MODULE])
    assert problem.key == "finetune.command"
    text = str(problem)
    assert "run_cta.py" in text and "b3348a3" in text and "not supported" in text
    assert f"git -C {copy} checkout 2416d85" in text and "\n" not in text

    # Running run_cta itself is refused the same way.
    [problem] = deepsc_checkout.entry_module_problems(copy, ["python", "-m", "src.deepsc.finetune.run_cta"])
    assert "does not support" in problem.message and "2416d85" in problem.message

    (copy / deepsc_checkout.TRAINER_FILE).unlink()  # DeepSC's newest commit: run_cta imports a deleted module
    [problem] = deepsc_checkout.entry_module_problems(copy, ["python", "-m", MODULE])
    assert "2227f88" in problem.message and "cannot run cell-type fine-tuning" in problem.message

    (copy / deepsc_checkout.RUN_CTA_FILE).unlink()
    [problem] = deepsc_checkout.entry_module_problems(copy, ["python", "-m", MODULE])
    assert "neither" in problem.message and "checkout 2416d85" in problem.message


def test_entry_module_outside_a_checkout(tmp_path):
    [problem] = deepsc_checkout.entry_module_problems(tmp_path, ["python", "-m", MODULE])
    assert problem.key == "finetune.cwd" and "not a DeepSC checkout" in problem.message


# ----------------------------------------------------------------------------- config and keys


def test_load_deepsc_config_merges_the_model_group(checkout):
    config = deepsc_checkout.load_deepsc_config(checkout)
    assert "defaults" not in config
    assert config["model"]["num_layers"] == 10 and config["model"]["moe"]["n_moe_layers"] == 4
    assert config["model"]["num_bins"] == "${num_bin}"  # interpolations stay text
    assert config["obs_celltype_col"] == "celltype" and config["epoch"] == 10
    assert config["lr_scheduler_type"] == "constant"


def test_load_deepsc_config_errors_name_the_file(tmp_path, copy):
    with pytest.raises(ConfigError, match="finetune.yaml: cannot read"):
        deepsc_checkout.load_deepsc_config(tmp_path)
    (copy / "configs/finetune/model/deepsc.yaml").unlink()
    with pytest.raises(ConfigError, match="model/deepsc.yaml"):
        deepsc_checkout.load_deepsc_config(copy)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("learning_rate", None),
        ("model.num_layers", None),
        ("model.moe.dim", None),
        ("hydra.run.dir", None),
        ("hydra.job.chdir", None),
        ("+my_key", None),
        ("new_one", None),
        ("learnig_rate", "learning_rate"),
        ("model.num_layer", "model.num_layers"),
        ("embedding_dim", "model.embedding_dim"),
        ("data_pth", "data_path"),
        ("model.num_layers.extra", "model.num_layers"),
        ("zzzz", ""),
    ],
)
def test_unknown_keys(checkout, key, suggestion):
    config = deepsc_checkout.load_deepsc_config(checkout)
    problems = deepsc_checkout.unknown_keys(config, {key: f"finetune.overrides.{key}"}, new_keys=["new_one"])
    if suggestion is None:
        assert problems == []
        return
    [problem] = problems
    assert problem.key == f"finetune.overrides.{key}"
    assert f"'{key}' is not a key of DeepSC's config" in problem.message
    assert "finetune.new_keys" in problem.message
    if suggestion:
        assert f"did you mean '{suggestion}'?" in problem.message
    else:
        assert "did you mean" not in problem.message


# ----------------------------------------------------------------------------- outputs


def test_output_notes_of_the_real_checkout(checkout):
    found = deepsc_checkout.output_notes(checkout)
    base = "/home/angli/DeepSC/results/cell_type_annotation"
    # Read from DeepSC's source, not assumed: the line holds the same folder.
    line = (checkout / deepsc_checkout.TRAINER_FILE).read_text().splitlines()[69]
    assert base in line
    assert any(f"{base}/<YYYYmmdd_HHMMSS>/" in n and "cell_type_annotation.py:70" in n for n in found.notes)
    assert any("two full checkpoints" in n for n in found.notes)
    assert any("same second" in n for n in found.notes)
    # Said plainly, even for root, who could create it: it is another user's home.
    [home] = [n for n in found.notes if "another user's home" in n]
    assert base in home and "'angli'" in home and "cell_type_annotation.py:70" in home and "abcf2be" in home


def _patch_base_dir(copy: Path, value: str) -> None:
    path = copy / deepsc_checkout.TRAINER_FILE
    text, n = re.subn(r'base_dir = "[^"]*"', f'base_dir = "{value}"', path.read_text())
    assert n == 1
    path.write_text(text)


def test_output_folder_that_cannot_be_created_is_a_problem(copy, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _patch_base_dir(copy, f"{blocker}/results")  # even root cannot create a folder under a file
    found = deepsc_checkout.output_notes(copy)
    [problem] = found.problems
    assert problem.key == "finetune.cwd" and "PermissionError" in problem.message
    assert f"{blocker}/results" in problem.message and "change that line" in problem.message


def test_patched_output_folder_is_reported_as_patched(copy, tmp_path):
    _patch_base_dir(copy, str(tmp_path / "outs"))
    found = deepsc_checkout.output_notes(copy)
    assert found.problems == [] and any(str(tmp_path / "outs") in n for n in found.notes)
    assert not any("another user's home" in n for n in found.notes)
    _patch_base_dir(copy, str(Path.home() / "deepsc-outs"))  # one's own home is fine
    assert not any("another user's home" in n for n in deepsc_checkout.output_notes(copy).notes)
    _patch_base_dir(copy, "results/cta")  # relative: lands where DeepSC runs
    assert any("relative to the directory it runs in" in n for n in deepsc_checkout.output_notes(copy).notes)
