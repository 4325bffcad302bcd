"""Bad input: one line naming the problem and the fix, exit code 2, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("arg,listed", [("method=nope", "full"), ("task=nope", "rotten_tomatoes"),
                                        ("backbone=nope", "minilm")])
def test_unknown_names_list_the_valid_ones(capsys, arg, listed):
    code, err = run_cli(capsys, "run", "method=lora", arg, "wandb=disabled")
    assert code == 2
    assert len(err.splitlines()) == 1 and listed in err and "nope" in err


@pytest.mark.parametrize("arg,word", [("lr=-1", "lr"), ("epochs=abc", "epochs"), ("batch_size=0", "batch_size"),
                                      ("nosuchkey=1", "nosuchkey"), ("precision=17", "precision"), ("bogus", "key=value")])
def test_bad_overrides_are_refused_before_training(capsys, tmp_path, arg, word):
    code, err = run_cli(capsys, "run", "method=lora", arg, f"results_dir={tmp_path}", f"run_dir={tmp_path}/runs")
    assert code == 2 and word in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_exit_code_and_no_traceback_from_a_real_process():
    env = {**os.environ, "WANDB_MODE": "disabled"}
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", "method=nope"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0
    assert "did you mean" in p.stderr.lower() or "valid methods" in p.stderr.lower()


def test_list_prints_all_three_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("methods:", "tasks:", "backbones", "lora", "full", "minilm"):
        assert word in out
    assert "sherl            v3  " in out and "variant=: late-layer" in out  # each method's code version


def test_key_value_flags_become_overrides():
    from benchmark.cli import as_overrides

    flags = {"--quick", "--help"}.__contains__
    assert as_overrides(["--method", "lora", "--quick", "--seed=3", "--batch-size", "8", "lr=1e-3", "--official",
                         "--lr", "-1", "--", "--x"], flags) == \
        ["method=lora", "--quick", "seed=3", "batch_size=8", "lr=1e-3", "official=true", "lr=-1", "--", "--x"]


@pytest.mark.parametrize("argv", [["--method", "lora", "--quick", "--seed", "3"], ["--quick", "--method=lora", "seed=3"],
                                  ["method=lora", "--seed=3", "--quick"]])
def test_method_lora_written_either_way_gets_a_run(monkeypatch, argv):
    import benchmark.run
    from benchmark.cli import QUICK

    seen = {}
    monkeypatch.setattr(benchmark.run, "run", lambda overrides: seen.update(overrides))
    assert main(["run", *argv]) == 0
    assert seen == {**QUICK, "method": "lora", "seed": "3"}


def test_a_bad_value_after_a_flag_style_key_is_one_line(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--method=lora", "--lr", "-1", f"--results-dir={tmp_path}")
    assert code == 2 and "lr" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv,word", [(["nope"], "valid commands: run, list"), (["lst"], "did you mean 'list'"),
                                       (["advise"], "budget"), (["paper", "--seeds", "x"], "--seeds"),
                                       (["quant-report", "--bits", "x"], "--bits")])
def test_unknown_command_and_bad_input_of_any_command_is_one_line_exit_2(capsys, argv, word):
    code, err = run_cli(capsys, *argv)
    assert code == 2 and word in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_every_command_resolves_and_no_arguments_print_the_list(capsys):
    from benchmark.cli import commands, command

    assert "quant-report" in commands()  # a method's own tool, declared by its card
    assert all(callable(command(name)) for name in commands())
    assert main([]) == 2 and "quant-report" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "leaderboard" in capsys.readouterr().out


def test_a_hub_backbone_without_network_fails_before_torch_loads(tmp_path):
    """One line, exit 2, and decided before the heavy imports (what made it take 10-17 s)."""
    code = ("import sys\nfrom benchmark.cli import main\n"
            "rc = main(['run', 'backbone=someone/some-model', 'method=lora'])\n"
            "print('torch' in sys.modules, rc)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["False", "2"], (p.stdout, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "someone/some-model" in err[0] and "unreachable" in err[0]
