"""What deepsc-tune reads from a DeepSC checkout (deepsc_tune/backends/command/deepsc/_checkout.py): the entry
module, the Hydra config and its keys, the output folder.

Against DeepSC's real code at 2416d85 and abcf2be (../shared/deepsc/DeepSC-*, read only). Other
commits are simulated in temporary copies: abcf2be without cell_type_annotation.py (2227f88),
2416d85 with finetune.py renamed run_cta.py (cc84b98), the output-folder line patched. The
fixtures ``checkout``, ``checkout_abcf2be`` and their ``copy`` are in conftest.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deepsc_tune.backends.command.deepsc import _checkout as deepsc_checkout
from deepsc_tune.errors import ConfigError

MODULE = "src.deepsc.finetune.finetune"
RUN_CTA = "src.deepsc.finetune.run_cta"


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


def test_entry_module_of_the_real_checkouts(checkout, checkout_abcf2be):
    assert deepsc_checkout.detect_commit(checkout).name == "2416d85"
    assert deepsc_checkout.detect_commit(checkout_abcf2be).name == "abcf2be"
    assert deepsc_checkout.entry_module_problems(checkout, ["python", "-m", MODULE]) == []
    assert deepsc_checkout.entry_module_problems(checkout, ["torchrun", "-m", "deepsc.finetune.finetune"]) == []
    assert deepsc_checkout.entry_module_problems(checkout, ["python", "train.py"]) == []  # not DeepSC
    assert deepsc_checkout.entry_module_problems(checkout_abcf2be, ["python", "-m", RUN_CTA]) == []
    assert deepsc_checkout.entry_module_problems(checkout_abcf2be, ["torchrun", "-m", "deepsc.finetune.run_cta"]) == []


def test_the_other_commits_entry_point_names_the_right_one(checkout, checkout_abcf2be):
    # abcf2be's team still launches finetune in scripts/finetune/run_cta.sh (stale): say what to run.
    [problem] = deepsc_checkout.entry_module_problems(checkout_abcf2be, ["python", "-m", MODULE])
    text = str(problem)
    assert problem.key == "finetune.command" and "\n" not in text
    assert "finetune.py does not exist" in text and "this checkout is DeepSC abcf2be" in text
    assert f"expected finetune.command [python, -m, {RUN_CTA}]" in text and "checkout 2416d85" in text

    [problem] = deepsc_checkout.entry_module_problems(checkout, ["python", "-m", RUN_CTA])
    text = str(problem)
    assert "run_cta.py does not exist" in text and "this checkout is DeepSC 2416d85" in text
    assert f"[python, -m, {MODULE}]" in text and f"git -C {checkout} checkout abcf2be" in text


def test_broken_checkouts_name_the_commit_to_check_out(copy, copy_abcf2be):
    # 2227f88: e7ab02e deleted cell_type_annotation.py, which run_cta.py still imports.
    (copy_abcf2be / deepsc_checkout.TRAINER_FILE).unlink()
    assert deepsc_checkout.detect_commit(copy_abcf2be) is None
    [problem] = deepsc_checkout.entry_module_problems(copy_abcf2be, ["python", "-m", RUN_CTA])
    text = str(problem)
    assert "2227f88" in text and "cannot run cell-type fine-tuning" in text and "\n" not in text
    assert text.endswith(f"git -C {copy_abcf2be} checkout abcf2be")
    [problem] = deepsc_checkout.entry_module_problems(copy_abcf2be, ["python", "-m", MODULE])
    assert "2227f88" in problem.message and problem.message.endswith(f"git -C {copy_abcf2be} checkout 2416d85")

    # cc84b98: finetune.py renamed run_cta.py, the trainer still writing to the hard-coded folder.
    (copy / deepsc_checkout.ENTRY_FILE).rename(copy / deepsc_checkout.RUN_CTA_FILE)
    assert deepsc_checkout.detect_commit(copy) is None
    [problem] = deepsc_checkout.entry_module_problems(copy, ["python", "-m", RUN_CTA])
    assert "between cc84b98 and b3348a3" in problem.message and problem.message.endswith("checkout abcf2be")

    (copy / deepsc_checkout.RUN_CTA_FILE).unlink()
    [problem] = deepsc_checkout.entry_module_problems(copy, ["python", "-m", MODULE])
    assert "neither" in problem.message and problem.message.endswith("checkout 2416d85")


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


def test_load_deepsc_config_of_abcf2be_is_its_own(checkout_abcf2be):
    # abcf2be's config (configs/finetune/finetune.yaml) differs from 2416d85's: read, not assumed.
    config = deepsc_checkout.load_deepsc_config(checkout_abcf2be)
    assert config["seperated_train_eval_dataset"] is True and config["learning_rate"] == "3e-4"
    assert config["hydra"]["run"]["dir"].startswith("/home/angli/DeepSC/results/cell_type_annotation/")
    assert config["model"]["_target_"] == "src.deepsc.models.deepsc.model.DeepSC"
    assert config["model"]["num_layers"] == 10 and config["lr_scheduler_type"] == "constant"


def test_defaults_order_decides_who_wins(copy_abcf2be):
    # abcf2be lists _self_ after the model group: the primary file's values win over the group's.
    path = copy_abcf2be / "configs/finetune/finetune.yaml"
    path.write_text(path.read_text() + "model:\n  num_layers: 3\n")
    assert deepsc_checkout.load_deepsc_config(copy_abcf2be)["model"]["num_layers"] == 3
    path.write_text(path.read_text().replace("  - model: deepsc\n  - _self_\n", "  - _self_\n  - model: deepsc\n"))
    assert deepsc_checkout.load_deepsc_config(copy_abcf2be)["model"]["num_layers"] == 10


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


def test_output_notes_of_abcf2be(checkout_abcf2be, tmp_path):
    found = deepsc_checkout.output_notes(checkout_abcf2be)
    assert found.problems == []
    [where, checkpoints] = found.notes
    assert "into Hydra's run directory, which deepsc-tune sets to the trial's folder" in where
    assert "/home/angli/DeepSC/results/cell_type_annotation/${now:%Y-%m-%d}/${now:%H-%M-%S} is not used" in where
    assert "two full checkpoints" in checkpoints


def test_abcf2be_without_the_run_dir_override_writes_to_its_config_folder(copy_abcf2be, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    path = copy_abcf2be / "configs/finetune/finetune.yaml"
    text, n = re.subn(r"dir: /home/angli/\S*", f"dir: {blocker}/runs/${{now:%H-%M-%S}}", path.read_text())
    assert n == 1
    path.write_text(text)
    found = deepsc_checkout.output_notes(copy_abcf2be, run_dir_override=None)
    [problem] = found.problems
    assert problem.key == "finetune.run_dir_override" and f"{blocker}/runs" in problem.message
    assert "PermissionError" in problem.message and "expected run_dir_override: hydra.run.dir" in problem.message
    assert any("same second" in n for n in found.notes)
    assert deepsc_checkout.output_notes(copy_abcf2be).problems == []  # the trial's folder instead
