"""Model cards and Hub upload: the card of a real tiny prune, and pushes to a local fake Hub."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from conftest import single_torch_thread, tiny_model, tiny_tokenizer
from hub_server import FakeHub
from huggingface_hub import ModelCard, constants
from transformers import AutoModelForCausalLM

from optimum_resp.accounting import size_report
from optimum_resp.configuration_resp import RESPConfig
from optimum_resp.hub import HubPushError, push_to_hub
from optimum_resp.model_card import (
    base_model_license,
    build_eval_results,
    export_mode,
    render_model_card,
    write_model_card,
)
from optimum_resp.pruner import RESPPruner
from optimum_resp.surgery import prune_model
from optimum_resp.testing_utils import random_plan, tiny_config

BASE = "Qwen/Qwen3-0.6B"
REPO = "tester/qwen3-tiny-resp"
LOCAL_DATA = "data/mathqa_test.jsonl"
EVALS = [
    {
        "task": "gsm8k",
        "n": 50,
        "accuracy": 0.62,
        "ci_low": 0.4814,
        "ci_high": 0.7408,
        "mean_generated_tokens": 812.34,
        "truncated_fraction": 0.04,
        "tokens_per_second": 95.0,
        "config": {"task": "gsm8k", "data": None, "split": "test", "num_fewshot": 0, "thinking": True,
                   "do_sample": False, "max_new_tokens": 2048},
    },
    {
        "task": "mathqa",
        "n": 20,
        "accuracy": 0.35,
        "ci_low": 0.1812,
        "ci_high": 0.5671,
        "mean_generated_tokens": 640.0,
        "truncated_fraction": 0.0,
        "tokens_per_second": 90.0,
        "config": {"task": "mathqa", "data": LOCAL_DATA, "split": "test", "num_fewshot": 0, "thinking": True,
                   "do_sample": True, "temperature": 0.6, "max_new_tokens": 1024},
    },
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_credentials_no_offline(monkeypatch, tmp_path):
    """Every test starts logged out and online, whatever the machine has: tokens come only from tests."""
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny Qwen3 really pruned by RESP (1 stage, per_layer export) and saved: (folder, report)."""
    tokenizer = tiny_tokenizer()
    with single_torch_thread():
        model = tiny_model(tokenizer=tokenizer)
        resp = RESPConfig(
            target_sparsity=0.3,
            num_stages=1,
            regeneration_milestones=[],
            num_calibration_prompts=3,
            generation={"max_new_tokens": 6, "batch_size": 3},
            batch_size=3,
            protected_layers=[0],
            allow_unfinished_traces=True,
        )
        pruner = RESPPruner(model, tokenizer, resp, generator="hf", source=BASE)
        result = pruner.prune([f"What is {a} plus {b}?" for a, b in [(2, 3), (7, 5), (1, 1)]])
        folder = pruner.save_pretrained(tmp_path_factory.mktemp("pruned") / "model")
    return folder, result.report.to_dict()


@pytest.fixture(scope="module")
def uniform_report():
    """The report of a uniform (stock Qwen3) export, built from size_report of a real pruned model."""
    config = tiny_config("qwen3")
    torch.manual_seed(1)
    dense = AutoModelForCausalLM.from_config(config)
    small = prune_model(dense, random_plan(config, 0.25, per_layer=False), export="uniform")
    report = size_report(dense, small).to_dict()
    report.update(
        stages=[],
        source=BASE,
        resp_config=RESPConfig(
            target_sparsity=0.25, allocation="uniform", export="uniform", protected_layers=[]
        ).to_dict(),
    )
    return report


def _card_folder(pruned, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(pruned[0], folder)
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _layer_table(text: str) -> list[tuple[int, ...]]:
    row = re.compile(r"^\| (\d+) \| (\d+) → (\d+) \| (\d+) → (\d+) \| (\d+) → (\d+) \|", re.M)
    return [tuple(int(x) for x in m.groups()) for m in row.finditer(text)]


# ----------------------------------------------------------------------------------------------
# Model card.
# ----------------------------------------------------------------------------------------------


def test_card_metadata_round_trips_and_body_reports_the_prune(pruned, tmp_path):
    folder = _card_folder(pruned, tmp_path)
    report = pruned[1]
    readme = write_model_card(
        folder, base_model=BASE, eval_results=EVALS, license="apache-2.0", model_id=REPO, command="x"
    )
    assert readme == folder / "README.md"
    assert not [p for p in folder.iterdir() if p.name.startswith(".README")]  # no temp file left

    card = ModelCard.load(readme)
    data = card.data
    assert data.base_model == BASE
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "text-generation"
    assert data.library_name == "transformers"
    assert set(data.tags) == {"pruned", "structured-pruning", "resp", "reasoning", "qwen3"}
    # model-index is parsed back into EvalResult entries by huggingface_hub itself.
    assert data.model_name == REPO
    gsm8k, mathqa = data.eval_results
    assert (gsm8k.task_type, gsm8k.dataset_type, gsm8k.dataset_config, gsm8k.dataset_split) == (
        "text-generation",
        "openai/gsm8k",
        "main",
        "test",
    )
    assert (gsm8k.metric_type, gsm8k.metric_value) == ("accuracy", 0.62)
    assert (mathqa.dataset_type, mathqa.metric_value, mathqa.dataset_config) == (LOCAL_DATA, 0.35, None)
    assert data.eval_results == build_eval_results(EVALS)

    text = card.text
    # Per-layer table: one row per layer, dense -> pruned for heads, KV heads and channels.
    expected = [
        (
            layer["layer"],
            layer["dense"]["num_attention_heads"],
            layer["pruned"]["num_attention_heads"],
            layer["dense"]["num_key_value_heads"],
            layer["pruned"]["num_key_value_heads"],
            layer["dense"]["intermediate_size"],
            layer["pruned"]["intermediate_size"],
        )
        for layer in report["layers"]
    ]
    assert _layer_table(text) == expected and len(expected) == 4
    assert expected[0][1::2] == expected[0][2::2]  # protected layer 0 keeps its size
    # Parameter counts before and after, with the sparsity definition.
    linear = f"| decoder-linear parameters | {report['dense_decoder_linear_params']:,} | "
    assert linear + f"{report['pruned_decoder_linear_params']:,} |" in text
    total = f"| all parameters | {report['dense_total_params']:,} | {report['pruned_total_params']:,} |"
    assert total in text
    assert report["sparsity_definition"] in text and f"{100 * report['sparsity']:.2f}%" in text
    # Stage history and recipe.
    stage = report["stages"][0]
    assert f"| 1 | 30.0% | {100 * stage['sparsity']:.2f}% | no | 3 |" in text
    config_block = re.search(r"```json\n(.*?)\n```", text, re.S).group(1)
    assert json.loads(config_block) == report["resp_config"] == RESPConfig.from_pretrained(folder).to_dict()
    # Evaluation table: accuracy with its 95% interval, n and mean generated tokens.
    assert "| GSM8K | test | 50 | 62.0% | 48.1% – 74.1% | 812.3 | 4.0% |" in text
    assert f"| MathQA ({LOCAL_DATA}) | test | 20 | 35.0% | 18.1% – 56.7% | 640.0 |" in text
    assert "license could not be determined" not in text
    assert "**Recipe:** 1 stage(s) to target sparsity 0.3, global allocation, decode-token Taylor" in text
    assert "traces sampled at T=0.6 up to 6 new tokens, thinking on" in text


def test_loading_instructions_follow_the_export_mode(pruned, uniform_report):
    per_layer = str(render_model_card(pruned[1], BASE, model_id=REPO))
    uniform = str(render_model_card(uniform_report, BASE, model_id=REPO))

    # per_layer: the saved checkpoint really is a resp_* model with auto_map, and the card says so.
    saved = json.loads((pruned[0] / "config.json").read_text())
    assert "auto_map" in saved and f"model_type: {saved['model_type']}" in per_layer
    assert "import optimum_resp" in per_layer
    assert (
        f'AutoModelForCausalLM.from_pretrained("{REPO}", dtype="auto", trust_remote_code=True)' in per_layer
    )
    # uniform: plain transformers, no package import, no remote code.
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", dtype="auto")' in uniform
    assert "import optimum_resp" not in uniform and "trust_remote_code" not in uniform
    # Both say how to serve with vLLM: the per_layer one through optimum-resp's plugin.
    assert f"vllm serve {REPO}" in per_layer and "pip install optimum-resp vllm" in per_layer
    assert f"vllm serve {REPO}" in uniform and "plugin" not in uniform
    qwen2 = {**uniform_report, "model_type": "qwen2"}
    assert any(
        x["pruned"]["num_attention_heads"] < x["dense"]["num_attention_heads"] for x in qwen2["layers"]
    )
    qwen2_card = str(render_model_card(qwen2, BASE, model_id=REPO))
    assert "vllm serve" not in qwen2_card and "lost query heads" in qwen2_card
    assert "`uniform` export" in uniform and "`per_layer` export" in per_layer
    # Without a resp_config, the mode comes from whether the pruned layers differ.
    assert export_mode({k: v for k, v in pruned[1].items() if k != "resp_config"}) == "per_layer"
    assert export_mode({k: v for k, v in uniform_report.items() if k != "resp_config"}) == "uniform"
    assert len(_layer_table(uniform)) == 4  # stock export: every layer the same size, still all listed
    assert len({row[1:] for row in _layer_table(uniform)}) == 1


def test_command_section_only_when_given(pruned):
    command = "optimum-resp prune --model Qwen/Qwen3-0.6B --target-sparsity 0.3 --name `whoami`"
    with_command = str(render_model_card(pruned[1], BASE, command=command))
    without = str(render_model_card(pruned[1], BASE))
    assert "## Reproduce" in with_command and f"```bash\n{command}\n```" in with_command
    assert "## Reproduce" not in without and "optimum-resp prune" not in without
    assert "No evaluation results were attached" in without
    assert ModelCard(without).data.eval_results is None and "model_name" not in without


def test_unknown_license_is_other_with_a_note_and_local_paths_are_not_base_model_ids(pruned, caplog):
    card = render_model_card(pruned[1], "/models/Qwen3-0.6B")
    assert card.data.license == "other" and card.data.base_model is None
    assert "license could not be determined" in card.text and "`/models/Qwen3-0.6B`" in card.text
    assert "is not a Hub model id" in caplog.text
    # The default title names the base model and the sparsity.
    assert card.text.lstrip().startswith("# Qwen3-0.6B-RESP-30")


def test_base_model_license_from_local_readme_hub_info_or_none(tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    assert base_model_license(str(base)) is None  # a folder without README.md
    (base / "README.md").write_text("---\nlicense: mit\ntags:\n- text-generation\n---\n# Base\n")
    assert base_model_license(str(base)) == "mit"

    models = {"org/base": {"cardData": {"license": "apache-2.0"}}, "org/tagged": {"tags": ["license:mit"]}}
    with FakeHub(models=models) as hub:
        assert base_model_license("org/base", endpoint=hub.url) == "apache-2.0"
        assert base_model_license("org/tagged", endpoint=hub.url) == "mit"
        assert base_model_license("org/missing", endpoint=hub.url) is None  # 401/404: unknown, no crash
        asked = len(hub.requests)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert base_model_license("org/base", endpoint=hub.url) is None
        assert len(hub.requests) == asked  # offline: not even asked


def test_write_model_card_defaults_from_the_saved_folder(pruned, tmp_path):
    folder = _card_folder(pruned, tmp_path)
    base = tmp_path / "Qwen3-0.6B"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    report = json.loads((folder / "resp_report.json").read_text())
    report["source"] = str(base)
    (folder / "resp_report.json").write_text(json.dumps(report))
    (folder / "README.md").write_text("old card")

    write_model_card(folder)  # report, base model and license all from the folder and the base's README

    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0"
    assert len(_layer_table(card.text)) == len(report["layers"])
    with pytest.raises(FileNotFoundError, match="resp_report.json"):
        write_model_card(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# Upload.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "create-commit"])
def test_push_uploads_exactly_the_saved_folder(pruned, tmp_path, monkeypatch, xet):
    # huggingface_hub takes a different upload route with and without hf_xet; both must deliver.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    folder = _card_folder(pruned, tmp_path)
    write_model_card(folder, base_model=BASE, eval_results=EVALS, license="apache-2.0", model_id=REPO)
    before = _snapshot(folder)

    with FakeHub() as hub:
        url = push_to_hub(folder, REPO, private=True, token=hub.token, endpoint=hub.url)
        uploaded = hub.repos[REPO]["main"]
        assert url.startswith(f"{hub.url}/{REPO}/commit/") and url.endswith(hub.commits[-1]["oid"])
        assert hub.visibility[REPO] == "private"
        assert hub.unhandled == []
        # Again, into the now existing repo (create_repo answers 409, exist_ok passes it), with the token
        # taken from the environment as after `hf auth login` / HF_TOKEN.
        monkeypatch.setenv("HF_TOKEN", hub.token)
        push_to_hub(folder, REPO, endpoint=hub.url, commit_message="second push")
        assert [c["summary"] for c in hub.commits][-1] == "second push"

    assert {path: content for path, (content, _) in before.items()} == uploaded
    assert {"config.json", "model.safetensors", "README.md", "modeling_per_layer.py"} <= set(uploaded)
    assert _snapshot(folder) == before  # the local folder is only read


def test_push_to_a_branch_or_pull_request_leaves_run_files_behind(pruned, tmp_path):
    folder = _card_folder(pruned, tmp_path)
    write_model_card(folder, base_model=BASE, license="apache-2.0")
    model_files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    (folder / "stages" / "stage_001").mkdir(parents=True)  # a RESP run's resume checkpoints
    (folder / "stages" / "stage_001" / "plan.json").write_text("{}")
    (folder / "resp_run.json").write_text("{}")
    (folder / ".resp_report.json.abc.tmp").write_text("interrupted write")

    with FakeHub() as hub:
        push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url)
        push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url, revision="sparsity-30")
        pr_url = push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url, create_pr=True)
        branches = hub.repos[REPO]
        assert set(branches) == {"main", "sparsity-30", "refs/pr/1"}
        assert all(set(files) == model_files for files in branches.values())
        assert pr_url.startswith(f"{hub.url}/{REPO}/commit/")
        with pytest.raises(HubPushError, match="drop revision"):
            push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url, create_pr=True, revision="x")


def test_push_refusals_happen_before_any_request(pruned, tmp_path, monkeypatch):
    folder = _card_folder(pruned, tmp_path)
    (folder / "README.md").unlink()  # RESPPruner.save_pretrained writes one; a folder without it is refused
    with FakeHub() as hub:
        # No README.md yet.
        with pytest.raises(HubPushError, match=r"missing: README\.md"):
            push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url)
        write_model_card(folder, base_model=BASE, license="apache-2.0")
        # Not logged in: say how to log in.
        with pytest.raises(HubPushError, match=r"hf auth login.*HF_TOKEN") as err:
            push_to_hub(folder, REPO, endpoint=hub.url)
        assert REPO in str(err.value)
        # Offline, even with a token.
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
            push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        # Missing folder; folder without weights; folder without config.
        with pytest.raises(HubPushError, match="does not exist"):
            push_to_hub(tmp_path / "nowhere", REPO, token=hub.token, endpoint=hub.url)
        (folder / "model.safetensors").rename(tmp_path / "weights.safetensors")
        with pytest.raises(HubPushError, match="missing: weights"):
            push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url)
        (tmp_path / "weights.safetensors").rename(folder / "model.safetensors")
        (folder / "config.json").unlink()
        with pytest.raises(HubPushError, match="missing: config.json"):
            push_to_hub(folder, REPO, token=hub.token, endpoint=hub.url)
        assert hub.requests == []


def test_push_failures_name_the_repo_and_keep_the_folder(pruned, tmp_path):
    folder = _card_folder(pruned, tmp_path)
    write_model_card(folder, base_model=BASE, license="apache-2.0")
    before = _snapshot(folder)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HubPushError, match=rf"{REPO}.*local folder is complete.*push again"):
        push_to_hub(folder, REPO, token="hf_anything", endpoint=dead)
    with FakeHub() as hub:  # a token the Hub refuses: nothing is stored
        with pytest.raises(HubPushError, match=rf"{REPO}.*401"):
            push_to_hub(folder, REPO, token="hf_wrong", endpoint=hub.url)
        assert hub.repos == {}
    assert _snapshot(folder) == before


def test_pruner_push_to_hub_saves_and_uploads_the_folder(tmp_path, monkeypatch):
    """RESPPruner.push_to_hub: refuses before writing without a token; otherwise the Hub gets the saved folder."""
    from optimum_resp.hub import HubPushError

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    resp = RESPConfig(
        target_sparsity=0.2,
        num_stages=1,
        regeneration_milestones=[],
        num_calibration_prompts=2,
        generation={"max_new_tokens": 6},
        protected_layers=[0],
        allow_unfinished_traces=True,
    )
    pruner = RESPPruner(model, tokenizer, resp, generator="hf", source=BASE)
    pruner.prune(["What is 2 plus 3?", "What is 4 plus 4?"])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
    with pytest.raises(HubPushError, match="No Hugging Face token"):
        pruner.push_to_hub(REPO, save_directory=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    # A token, but no Hub to answer (or one that refuses it): refused before anything is written, too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HubPushError, match=rf"Hub at {dead} cannot be reached or refuses the token"):
        pruner.push_to_hub(REPO, save_directory=tmp_path / "never", token="hf_anything", endpoint=dead)
    with FakeHub() as hub:
        with pytest.raises(HubPushError, match="401"):
            pruner.push_to_hub(REPO, save_directory=tmp_path / "never", token="hf_wrong", endpoint=hub.url)
    assert not (tmp_path / "never").exists()
    with FakeHub() as hub:
        url = pruner.push_to_hub(
            REPO, save_directory=tmp_path / "out", token=hub.token, endpoint=hub.url, license="apache-2.0"
        )
        stored = hub.repos[REPO]["main"]
    saved = {
        p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    }
    assert stored == saved and "README.md" in stored and "resp_report.json" in stored and url
