"""Run settings that Lightning or the data loaders would reject mid-run are one line (exit 2) before anything
loads, and nothing is written."""
import pytest

from benchmark.cli import main as cli

TINY = ["backbone=tiny-bert", "wandb=disabled", "progress=false", "method=lora", "task=rotten_tomatoes"]


@pytest.mark.parametrize("setting, says", [
    ("num_workers=-1", "num_workers=-1"),
    ("seed=99999999999", "seed=99999999999"),
    ("devices=abc", "devices='abc'"),
    ("devices=0", "devices='0'"),
    ("strategy=bogus", "strategy='bogus'"),
    ("accelerator=quantum", "accelerator='quantum'"),
])
def test_a_bad_trainer_setting_is_one_line_before_anything_loads(setting, says, tmp_path, capsys):
    assert cli(["run", *TINY, setting, f"results_dir={tmp_path / 'results'}", f"run_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_a_gpu_asked_for_where_there_is_none_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # whatever this machine has
    assert cli(["run", *TINY, "accelerator=gpu", f"results_dir={tmp_path / 'results'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "accelerator=cpu" in err[0]


def test_good_trainer_settings_pass():
    from benchmark.config import RunConfig

    for kw in ({"devices": "auto"}, {"devices": "2"}, {"devices": "0,1"}, {"strategy": "ddp"},
               {"strategy": "fsdp"}, {"accelerator": "cpu"}, {"seed": 2**32 - 1}):
        RunConfig(**kw).check_trainer()
