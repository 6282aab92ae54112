"""RESPPruner end to end on a tiny random Qwen3: stages, regeneration, checkpoints, resume, bad input."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from optimum_resp.calibration import as_prompts
from optimum_resp.configuration_resp import RESPConfig
from optimum_resp.pruner import RESPPruner, compose_plans
from optimum_resp.run_folder import RunFolder
from optimum_resp.surgery import PruningPlan, prune_model
from optimum_resp.testing_utils import random_plan, tiny_config

REPO = str(Path(__file__).resolve().parent.parent)  # subprocesses import this checkout, not an installed copy
PROMPTS = [f"What is {a} plus {b}?" for a, b in [(2, 3), (7, 5), (10, 4), (6, 6), (9, 1), (3, 8)]]


pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**overrides) -> RESPConfig:
    base = dict(
        target_sparsity=0.3,
        num_stages=3,
        regeneration_milestones=[0.1],
        num_calibration_prompts=6,
        generation={"max_new_tokens": 10, "batch_size": 6},
        batch_size=2,
        protected_layers=[0],
        allow_unfinished_traces=True,  # a random-weight model rarely ends its answer
    )
    return RESPConfig(**{**base, **overrides})


def test_prune_runs_all_stages_regenerates_and_checkpoints(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    dense_logits_input = torch.randint(3, 200, (2, 9))
    pruner = RESPPruner(model, tokenizer, small_config(), generator="hf")
    result = pruner.prune(PROMPTS, output_dir=tmp_path / "run")

    stages = result.stages
    assert [s.stage for s in stages] == [1, 2, 3]
    # The scoring pass trains through the Trainer (use_cache off); the export keeps the user's setting.
    assert model.config.use_cache is True and result.model.config.use_cache is True

    assert [s.target_sparsity for s in stages] == pytest.approx([0.1, 0.2, 0.3])
    for s in stages:  # each stage reaches its target, overshooting by less than a few structures
        assert s.target_sparsity <= s.sparsity < s.target_sparsity + 0.05
        assert s.calibration_loss > 0 and s.num_traces == 6
    assert [s.regenerated for s in stages] == [False, True, False]  # milestone 0.1 crossed after stage 1
    assert result.report.sparsity == pytest.approx(stages[-1].sparsity)
    assert result.report.size.pruned_layers[0] == result.report.size.dense_layers[0]  # protected layer 0
    assert type(result.model).__name__ == "RESPQwen3ForCausalLM"

    # The progressively pruned model is exactly the dense model cut down by the composed keep-sets.
    direct = prune_model(model, result.plan, export="per_layer")
    with torch.no_grad():
        assert torch.equal(direct(dense_logits_input).logits, result.model(dense_logits_input).logits)

    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["stage_003"]  # a resume needs only the last
    for stage in (run / "stages").iterdir():
        assert {p.name for p in stage.iterdir()} == {
            "plan.json",
            "traces.jsonl",
            "rng.pt",
            "record.json",
        }
    assert RESPConfig.from_pretrained(run) == pruner.config

    out = pruner.save_pretrained(tmp_path / "saved")
    report = json.loads((out / "resp_report.json").read_text())
    assert report["sparsity"] == result.report.sparsity and len(report["stages"]) == 3
    assert (out / "resp_config.json").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True  # as the dense model had it
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(reloaded(dense_logits_input).logits, result.model(dense_logits_input).logits)


def test_traces_are_the_models_own_and_decode_only(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    pruner = RESPPruner(
        model, tokenizer, small_config(num_stages=1, regeneration_milestones=[]), generator="hf"
    )
    pruner.prune(PROMPTS, output_dir=tmp_path)
    from optimum_resp.calibration import load_traces

    traces = load_traces(tmp_path / "stages" / "stage_001" / "traces.jsonl")
    assert [t.question for t in traces] == PROMPTS
    for t in traces:
        assert t.prompt.startswith("<|im_start|>user\n") and t.prompt.endswith("<|im_start|>assistant\n")
        assert 1 <= t.num_tokens <= 10
        assert t.completion.endswith("<|im_end|>") != t.truncated


def test_uniform_export_gives_a_stock_model():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    config = small_config(
        export="uniform", allocation="uniform", protected_layers=[], regeneration_milestones=[]
    )
    result = RESPPruner(model, tokenizer, config, generator="hf").prune(PROMPTS)
    assert type(result.model).__name__ == "Qwen3ForCausalLM"
    assert len(set(result.report.pruned_layers)) == 1


def test_channel_multiple_holds_through_every_stage():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    config = small_config(
        target_sparsity=0.2, channel_multiple=16, structures=["channels"], regeneration_milestones=[]
    )
    result = RESPPruner(model, tokenizer, config, generator="hf").prune(PROMPTS)
    widths = [len(keep.channels) for keep in result.plan.layers]
    assert widths[0] == model.config.intermediate_size  # protected
    assert any(w < model.config.intermediate_size for w in widths)
    assert all(w % 16 == 0 for w in widths), widths
    assert result.report.sparsity >= 0.2


def test_compose_plans_matches_two_step_surgery():
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval()
    first = random_plan(model.config, 0.3, per_layer=True, seed=1)
    once = prune_model(model, first)
    second = random_plan(once.config, 0.3, per_layer=True, seed=2)
    twice = prune_model(once, second)
    composed = prune_model(model, compose_plans(first, second))
    x = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        assert torch.equal(twice(x).logits, composed(x).logits)


# ------------------------------------------------------------------------------------------------
# Resume after a real SIGKILL.
# ------------------------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from conftest import tiny_model, tiny_tokenizer
    from test_pruner import PROMPTS, small_config
    from optimum_resp.importance import TaylorScorer
    from optimum_resp.pruner import RESPPruner

    class SlowSecondStage(TaylorScorer):
        calls = 0
        def score(self, model, examples=None, **kw):
            scores = super().score(model, examples, **kw)
            SlowSecondStage.calls += 1
            if SlowSecondStage.calls == 2:  # mid-stage 2: scored, not yet pruned or checkpointed
                open(sys.argv[2], "w").write("ready")
                time.sleep(600)
            return scores

    tokenizer = tiny_tokenizer()
    config = small_config()
    scorer = SlowSecondStage(abs_after=config.scoring.abs_after, batch_size=config.scoring.batch_size,
                             seed=config.seed, progress=False)
    RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf", scorer=scorer).prune(PROMPTS, sys.argv[1])
    """
)


PRUNE = textwrap.dedent(
    """
    import pickle, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from conftest import tiny_model, tiny_tokenizer
    from test_pruner import PROMPTS, small_config
    from optimum_resp.pruner import RESPPruner

    tokenizer = tiny_tokenizer()
    run = sys.argv[2] if len(sys.argv) > 2 else None
    result = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, small_config(), generator="hf").prune(PROMPTS, run)
    with open(sys.argv[1], "wb") as f:
        pickle.dump({{"plan": result.plan, "sparsities": [s.sparsity for s in result.stages]}}, f)
    """
)


def _prune_in_subprocess(out: Path, run_dir: Path | None) -> dict:
    tests_dir = str(Path(__file__).parent)
    script = out.with_suffix(".py")
    script.write_text(PRUNE.format(tests=tests_dir))
    cmd = [sys.executable, str(script), str(out)] + ([str(run_dir)] if run_dir else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, REPO]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out, "rb") as f:
        return pickle.load(f)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_keep_sets(tmp_path):
    tests_dir = str(Path(__file__).parent)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=tests_dir))
    marker = tmp_path / "ready"
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, REPO]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "worker never reached stage 2"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run_dir / "stages").iterdir()) == ["stage_001"]  # stage 2 never landed

    # The resumed and the fresh prune run in processes like the killed one: float kernels may round a last bit
    # differently with another thread count or heap layout, which can flip a near-tie of this tiny random model.
    resumed, fresh = (
        _prune_in_subprocess(tmp_path / name, run) for name, run in (("r", run_dir), ("f", None))
    )
    assert resumed["plan"] == fresh["plan"]
    assert resumed["sparsities"] == fresh["sparsities"]
    assert sorted(p.name for p in (run_dir / "stages").iterdir()) == ["stage_003"]


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors before any expensive work.
# ------------------------------------------------------------------------------------------------


class _NoGeneration:
    """A generator that must never be reached (the refusal has to come first)."""

    def generate(self, *args, **kwargs):
        raise AssertionError("generation started before the bad input was refused")


def test_bad_inputs_are_refused_before_work(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(ValueError, match="'gpt2' is not supported.*qwen3"):
        RESPPruner(gpt2, tokenizer, small_config())
    small_vocab = AutoModelForCausalLM.from_config(tiny_config("qwen3", vocab_size=100))
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the model's embedding has 100 rows"):
        RESPPruner(small_vocab, tokenizer, small_config())
    with pytest.raises(ValueError, match=r"at most .* can go\. Lower target_sparsity, protect fewer layers"):
        RESPPruner(model, tokenizer, small_config(target_sparsity=0.9, protected_layers=[0, 1, 2]))
    with pytest.raises(ValueError, match="pass task='gsm8k' or 'mathqa'"):
        RESPPruner(model, tokenizer, small_config(filter_correct=True))
    pruner = RESPPruner(model, tokenizer, small_config(), generator="hf")
    with pytest.raises(ValueError, match="No calibration prompts"):
        pruner.prune([])
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
        pruner.prune(["a question", "  "])
    # One bare prompt is refused, never split into its characters (or a dict into its keys).
    with pytest.raises(ValueError, match=r"one str was passed \('What is 2\+2\?'\)\. Wrap it in a list"):
        pruner.prune("What is 2+2?")
    with pytest.raises(ValueError, match=r"one dict was passed"):
        pruner.prune({"question": "What is 2+2?"})
    # Prompts that leave no trace token to score, or no position to generate in: refused before generating.
    long = "x" * 300  # byte-level tokenizer: 300+ tokens with the chat template
    never = RESPPruner(model, tokenizer, small_config(max_length=200), generator=_NoGeneration())
    with pytest.raises(
        ValueError, match=r"Calibration prompts \[1\] are \d+ tokens or more .* max_length=200"
    ):
        never.prune(["short", long], tmp_path / "never")
    assert not (tmp_path / "never").exists()  # no run folder was written either
    # max_length above the model's positions is clamped to them (default 4096 vs 256 here), so a prompt
    # filling every position is refused the same way.
    clamped = RESPPruner(model, tokenizer, small_config(), generator=_NoGeneration())
    assert clamped.config.max_length == 256
    with pytest.raises(ValueError, match=r"prompts \[0\] are \d+ tokens or more .* max_length=256"):
        clamped.prune([long * 2])
    # A channel multiple wider than the MLP (96 here) could never remove a channel: refused, not ignored.
    for multiple in (128, 96):  # equal to the width: widths stay multiples of it, so none can shrink either
        with pytest.raises(
            ValueError, match=rf"channel_multiple={multiple} is not below this model's narrowest MLP \(96"
        ):
            RESPPruner(model, tokenizer, small_config(channel_multiple=multiple))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty and holds no RESP run"):
        pruner.prune(PROMPTS, tmp_path / "busy")
    with pytest.raises(ValueError, match="Nothing to save yet"):
        pruner.save_pretrained(tmp_path / "out")


def test_the_output_folder_is_checked_before_the_memory_probes(tmp_path, monkeypatch):
    """The scoring-memory estimate runs three probe passes of the model: an unusable output_dir is refused first."""
    tokenizer = tiny_tokenizer()
    pruner = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, small_config(), generator=_NoGeneration())
    monkeypatch.setattr(
        "optimum_resp.importance.taylor.check_scoring_memory",
        lambda *a, **k: pytest.fail("probed before the folder check"),
    )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    for folder, message in (("busy", "is not empty and holds no RESP run"), ("file", "it is a file")):
        with pytest.raises(ValueError, match=message):
            pruner.prune(PROMPTS, tmp_path / folder)


def test_a_second_prune_into_a_busy_folder_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    pruner = RESPPruner(
        tiny_model(tokenizer=tokenizer), tokenizer, small_config(num_stages=1), generator="hf"
    )
    out = tmp_path / "run"
    with RunFolder(out).lock():  # what a running prune holds
        with pytest.raises(ValueError, match=rf"{out} is in use by another prune \(pid \d+\)"):
            pruner.prune(PROMPTS, out)
        assert [p.name for p in out.iterdir()] == [RunFolder.LOCK]  # the refused prune wrote nothing
    # A lock file left by a killed prune holds no lock (the OS dropped it): the next prune runs.
    (out / RunFolder.LOCK).write_text("pid 999999")
    result = pruner.prune(PROMPTS, out)
    assert result.report.sparsity > 0 and (out / RunFolder.LOCK).read_text() == ""  # kept, released


def test_a_run_folder_with_another_config_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    RESPPruner(
        model, tokenizer, small_config(num_stages=1, regeneration_milestones=[]), generator="hf"
    ).prune(PROMPTS, tmp_path)
    other = RESPPruner(
        model, tokenizer, small_config(num_stages=2, regeneration_milestones=[]), generator="hf"
    )
    with pytest.raises(ValueError, match=r"different config .*'num_stages': \(1, 2\)"):
        other.prune(PROMPTS, tmp_path)


def test_all_truncated_traces_without_keep_truncated_is_an_error():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    # A random model never says <|im_end|> within 3 tokens... make sure by banning it.
    model.generation_config.suppress_tokens = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    config = small_config(generation={"max_new_tokens": 3}, keep_truncated=False)
    with pytest.raises(
        ValueError, match="All 6 calibration traces hit max_new_tokens=3 and keep_truncated is False"
    ):
        RESPPruner(model, tokenizer, config, generator="hf").prune(PROMPTS)


def test_gold_and_text_sources(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    gold = small_config(calibration_source="gold", num_stages=1, regeneration_milestones=[])
    with pytest.raises(ValueError, match="needs a human-written solution for every prompt"):
        RESPPruner(model, tokenizer, gold, generator="hf").prune(PROMPTS)
    prompts = [{"question": q, "solution": f"{q} It is easy. #### 5", "gold": "5"} for q in PROMPTS]
    result = RESPPruner(model, tokenizer, gold, generator="hf").prune(prompts)
    assert result.stages[0].sparsity >= 0.3
    text = small_config(calibration_source="text", loss="full", num_stages=1, regeneration_milestones=[])
    result = RESPPruner(model, tokenizer, text, generator="hf").prune(["Some plain text about numbers."] * 4)
    assert result.stages[0].sparsity >= 0.3


def test_from_pretrained_loads_model_tokenizer_and_config(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    small_config(num_stages=2).save_pretrained(tmp_path / "cfg")
    pruner = RESPPruner.from_pretrained(tmp_path / "m", config=tmp_path / "cfg", generator="hf")
    assert pruner.config.num_stages == 2 and pruner.source == str(tmp_path / "m")
    assert PruningPlan.full(pruner.model.config).layers[0].sizes.num_attention_heads == 8


def test_stages_score_the_ids_the_model_was_prompted_with_and_generated(monkeypatch):
    from optimum_resp.generation import end_token_ids
    from optimum_resp.importance import TaylorScorer

    tokenizer = tiny_tokenizer(bos=True, name="adds-bos")  # the chat template renders no BOS
    model = tiny_model(tokenizer=tokenizer)
    ends, generated = set(end_token_ids(tokenizer, model)), []
    stock_generate = model.generate

    def recording_generate(input_ids, attention_mask, **kwargs):
        out = stock_generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        width = input_ids.shape[1]
        for row, mask, sequence in zip(input_ids.tolist(), attention_mask.tolist(), out.tolist()):
            new = sequence[width:]
            cut = next((i + 1 for i, t in enumerate(new) if t in ends), len(new))
            generated.append([t for t, m in zip(row, mask) if m] + new[:cut])
        return out

    class RecordingScorer(TaylorScorer):
        def score(self, model, examples=None):
            self.examples = examples
            return super().score(model, examples)

    monkeypatch.setattr(model, "generate", recording_generate)
    scorer = RecordingScorer(progress=False)
    config = small_config(num_stages=1, regeneration_milestones=[])
    RESPPruner(model, tokenizer, config, generator="hf", scorer=scorer).prune(PROMPTS)
    scored = [e["input_ids"] for e in scorer.examples]
    assert all(ids[0] == tokenizer.bos_token_id for ids in scored)
    assert sorted(scored) == sorted(generated) and len(scored) == len(PROMPTS)


def test_lora_recovery_is_merged_and_lowers_the_loss_on_dense_traces(tmp_path):
    from optimum_resp.calibration import load_traces, trace_token_ids
    from optimum_resp.importance import build_examples

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    config = small_config(
        num_stages=1,
        regeneration_milestones=[],
        recovery="lora",
        recovery_epochs=3.0,
        recovery_learning_rate=5e-3,
        generation={"max_new_tokens": 16},
    )
    plain = RESPPruner(
        model,
        tokenizer,
        small_config(num_stages=1, regeneration_milestones=[], generation={"max_new_tokens": 16}),
        generator="hf",
    ).prune(PROMPTS)
    pruner = RESPPruner(model, tokenizer, config, generator="hf")
    result = pruner.prune(PROMPTS, output_dir=tmp_path / "run")
    assert result.report.recovery.method == "lora" and result.report.recovery.trainable_parameters > 0
    assert not any("lora" in name for name, _ in result.model.named_parameters())
    assert type(result.model).__name__ == "RESPQwen3ForCausalLM"
    assert plain.plan == result.plan  # recovery changes weights, not structure

    traces = load_traces(tmp_path / "run" / "dense_traces.jsonl")
    examples = build_examples(*trace_token_ids(tokenizer, traces))

    def loss(m):
        with torch.no_grad():
            return sum(
                m(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss.item()
                for e in examples
            )

    assert loss(result.model) < loss(plain.model)
    pruner.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert not any("lora" in name for name in reloaded.state_dict())
    assert abs(loss(reloaded) - loss(result.model)) < 1e-4


def test_flap_compensation_survives_resume(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    config = small_config(importance="flap", num_stages=2, regeneration_milestones=[])
    first = RESPPruner(model, tokenizer, config, generator="hf").prune(PROMPTS, tmp_path / "run")
    assert first.model.config.down_proj_bias and first.model.model.layers[1].mlp.down_proj.bias is not None
    assert (tmp_path / "run" / "stages" / "stage_002" / "added_biases.safetensors").exists()
    again = RESPPruner(model, tokenizer, config, generator="hf").prune(PROMPTS, tmp_path / "run")  # resumes
    x = torch.randint(3, 200, (2, 9))
    with torch.no_grad():
        assert torch.equal(first.model(x).logits, again.model(x).logits)
    with pytest.raises(ValueError, match="export='per_layer'"):
        RESPPruner(
            model,
            tokenizer,
            small_config(importance="flap", export="uniform", allocation="uniform", protected_layers=[]),
        )


def test_difficulty_selection_is_kept_across_resume(tmp_path):
    from test_calibration import FakeGenerator

    from optimum_resp.calibration import prompts_from_task

    fixtures = Path(__file__).parent / "fixtures" / "gsm8k_sample.jsonl"
    prompts = prompts_from_task("gsm8k", str(fixtures), limit=4, seed=0)

    def script(call, prompt):  # prompt i is solved by the first i of the samples: 0 and 1 are the hardest
        i = next(i for i, p in enumerate(prompts) if p.question in prompt)
        return f"<think>\nwork\n</think>\n\n\\boxed{{{prompts[i].gold if call <= i else -1}}}", False

    tokenizer = tiny_tokenizer()
    config = small_config(
        num_stages=2,
        regeneration_milestones=[0.1],
        selection_difficulty_samples=3,
        selection_keep_fraction=0.5,
    )
    first = RESPPruner(
        tiny_model(tokenizer=tokenizer), tokenizer, config, task="gsm8k", generator=FakeGenerator(script)
    )
    first.prune(prompts, tmp_path)
    selected = json.loads((tmp_path / "selected_prompts.json").read_text())
    assert selected == [prompts[0].question, prompts[1].question]
    from optimum_resp.calibration import load_traces

    stage2 = tmp_path / "stages" / "stage_002"
    assert [t.question for t in load_traces(stage2 / "traces.jsonl")] == selected
    # Resume without the last stage (only the last is kept): the saved selection and dense traces are reused, and
    # stage 2 regenerates its traces, for the selected prompts only (no new selection, no dense generation).
    import shutil

    shutil.rmtree(stage2)
    resumed_gen = FakeGenerator(script)
    RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, task="gsm8k", generator=resumed_gen).prune(
        prompts, tmp_path
    )
    assert len(resumed_gen.calls) == 1  # one regeneration, no difficulty sampling
    assert [t.question for t in load_traces(stage2 / "traces.jsonl")] == selected


def test_partial_regeneration_replaces_only_a_fraction_of_traces(tmp_path):
    from optimum_resp.calibration import load_traces

    tokenizer = tiny_tokenizer()
    config = small_config(num_stages=2, regeneration_milestones=[0.1], regeneration_fraction=0.5)
    RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(PROMPTS, tmp_path)
    before = {t.question: t for t in load_traces(tmp_path / "dense_traces.jsonl")}
    after = load_traces(tmp_path / "stages" / "stage_002" / "traces.jsonl")
    assert sorted(t.question for t in after) == sorted(PROMPTS)
    unchanged = [t for t in after if t == before[t.question]]
    assert len(unchanged) == 3  # the other half was generated again by the pruned model (new seed, new model)


# ------------------------------------------------------------------------------------------------
# The scorer protocol: a new criterion is a subclass and a register_scorer line.
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def custom_scorer():
    from optimum_resp.importance import SCORERS, MagnitudeScorer, register_scorer

    @register_scorer("test-custom")
    class Custom(MagnitudeScorer):
        built: list = []
        surgeries: list = []
        prepared: list = []

        @classmethod
        def from_config(cls, config, seed=0):
            scorer = cls()
            scorer.seed = seed
            cls.built.append(scorer)
            return scorer

        def check(self, model_config, export):
            if export.channel_multiple > 1:
                raise ValueError("test-custom scores single channels only")

        def prepare(self, model, longest_sequence, reserve_bytes=0):
            Custom.prepared.append((model, longest_sequence, reserve_bytes))

        def after_surgery(self, model, pruned, plan):
            Custom.surgeries.append((model, pruned, plan))
            return pruned

    yield Custom
    SCORERS.unregister("test-custom")


def test_the_pruner_drives_a_registered_scorer_through_its_protocol(custom_scorer):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="single channels only"):  # check: before any generation
        RESPPruner(
            model,
            tokenizer,
            small_config(importance="test-custom", channel_multiple=2),
            generator=_NoGeneration(),
        )
    assert custom_scorer.prepared == []  # refused before its resources were looked at
    pruner = RESPPruner(model, tokenizer, small_config(importance="test-custom", seed=5), generator="hf")
    result = pruner.prune(PROMPTS)
    assert [s.seed for s in custom_scorer.built] == [0, 5]  # from_config, once per pruner
    # prepare: once per prune, for the longest prompt plus a full trace, with room for the dense model beside it.
    longest = pruner._check_prompt_lengths(as_prompts(PROMPTS))
    assert [(m, n) for m, n, _ in custom_scorer.prepared] == [(model, longest)]
    assert custom_scorer.prepared[0][2] > 0
    assert len(custom_scorer.surgeries) == 3  # after_surgery after every stage's cut
    first_model, first_pruned, first_step = custom_scorer.surgeries[0]
    assert first_model is model and first_pruned.config.per_layer_config is not None
    assert (
        compose_plans(compose_plans(first_step, custom_scorer.surgeries[1][2]), custom_scorer.surgeries[2][2])
        == result.plan
    )


# ------------------------------------------------------------------------------------------------
# Calibration traces that cannot be right: refused or warned about, and recorded in the report.
# ------------------------------------------------------------------------------------------------


class _ScriptedGenerator:
    """Answers every prompt with `text`, marked finished or cut at max_new_tokens."""

    def __init__(self, tokenizer, text: str, truncated: bool) -> None:
        self.tokenizer, self.text, self.truncated = tokenizer, text, truncated
        self.calls = 0

    def generate(self, model, tokenizer, prompts, settings, seed=0):
        from optimum_resp.generation import Completion

        self.calls += 1
        ids = tokenizer(self.text, add_special_tokens=False)["input_ids"]
        return [Completion(p, self.text, ids, len(ids), self.truncated) for p in prompts]


def test_dense_traces_that_never_finish_are_refused_unless_allowed(tmp_path, caplog):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    gen = _ScriptedGenerator(tokenizer, "<think>\nlet me see, 2 and 3 and 2 and 3", truncated=True)
    with pytest.raises(
        ValueError, match=r"None of the dense model's 6 calibration traces finished within max_new_tokens=10"
    ):
        RESPPruner(model, tokenizer, small_config(allow_unfinished_traces=False), generator=gen).prune(
            PROMPTS, output_dir=tmp_path / "run"
        )
    assert not (tmp_path / "run" / "stages").exists()  # refused before any stage ran
    caplog.set_level("WARNING", logger="optimum_resp")
    config = small_config(allow_unfinished_traces=True, num_stages=1, regeneration_milestones=[])
    result = RESPPruner(model, tokenizer, config, generator=gen).prune(PROMPTS)
    assert "100% of the dense model's 6 calibration traces hit max_new_tokens=10" in caplog.text
    assert result.report.stages[0].truncated_fraction == 1.0


def test_traces_that_are_almost_never_right_are_warned_about_and_reported(caplog):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    prompts = [{"question": q, "gold": "99"} for q in PROMPTS]
    wrong = _ScriptedGenerator(
        tokenizer, "<think>\nhm\n</think>\n\nThe answer is \\boxed{1}.", truncated=False
    )
    caplog.set_level("WARNING", logger="optimum_resp")
    config = small_config(num_stages=1, regeneration_milestones=[])
    result = RESPPruner(model, tokenizer, config, task="gsm8k", generator=wrong).prune(prompts)
    assert "Only 0 of the dense model's 6 judged calibration traces answer correctly" in caplog.text
    assert result.report.stages[0].correct_fraction == 0.0
    assert result.report.to_dict()["stages"][0]["correct_fraction"] == 0.0
    right = _ScriptedGenerator(
        tokenizer, "<think>\nhm\n</think>\n\nThe answer is \\boxed{99}.", truncated=False
    )
    caplog.clear()
    result = RESPPruner(model, tokenizer, config, task="gsm8k", generator=right).prune(prompts)
    assert "answer correctly" not in caplog.text and result.report.stages[0].correct_fraction == 1.0


def test_each_stage_records_its_phases_cost(tmp_path):
    from optimum_resp.report import PruneReport

    tokenizer = tiny_tokenizer()
    result = RESPPruner(
        tiny_model(tokenizer=tokenizer), tokenizer, small_config(num_stages=2), generator="hf"
    ).prune(PROMPTS, output_dir=tmp_path / "run")
    first, second = result.report.stages
    assert set(first.phases) == {"dense generation", "scoring", "allocation", "surgery", "checkpoint"}
    assert set(second.phases) == {"regeneration", "scoring", "allocation", "surgery", "checkpoint"}
    assert first.phases["dense generation"].tokens == round(first.mean_trace_tokens * first.num_traces)
    assert all(c.seconds >= 0 for s in (first, second) for c in s.phases.values())
    assert first.phases["scoring"].tokens > first.phases["dense generation"].tokens  # prompts are scored too
    if first.phases["scoring"].peak_memory_bytes is not None:  # Linux: the process's peak RSS in the phase
        assert first.phases["scoring"].peak_memory_bytes > 10 * 2**20
    again = PruneReport.from_dict(json.loads(json.dumps(result.report.to_dict())))
    assert again.stages[1].phases == second.phases


def test_every_generation_round_hands_its_freed_heap_back_before_scoring(monkeypatch):
    """Generation's KV caches and logits are freed into glibc's arenas; the scoring pass after it must not land
    beside them (measured on the 0.6B shape: benchmarks/bench_prune_cost.py)."""
    from optimum_resp import pruner as pruner_module

    events = []
    monkeypatch.setattr(pruner_module, "release_heap", lambda: events.append("release") or True)
    tokenizer = tiny_tokenizer()
    pruner = RESPPruner(
        tiny_model(tokenizer=tokenizer), tokenizer, small_config(num_stages=2), generator="hf"
    )
    score = pruner.scorer.score
    monkeypatch.setattr(pruner.scorer, "score", lambda *a, **k: events.append("score") or score(*a, **k))
    pruner.prune(PROMPTS)
    assert pruner.result.stages[1].regenerated
    assert events == ["release", "score", "release", "score"]  # dense traces, then the regenerated ones


# ------------------------------------------------------------------------------------------------
# Memory: a scoring pass that cannot fit is refused before any work; no dense copy beside the pruned one.
# ------------------------------------------------------------------------------------------------


def test_a_scoring_pass_that_cannot_fit_is_refused_before_generation(tmp_path, monkeypatch):
    from optimum_resp import memory

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    seen = {}

    def free(device):  # just too little, even with checkpointing, at the longest sequence the prune can meet
        return memory.estimate_scoring_memory(model, 2, seen["longest"], True).peak_bytes - 1

    longest = RESPPruner._check_prompt_lengths
    monkeypatch.setattr(
        RESPPruner,
        "_check_prompt_lengths",
        lambda self, prompts: seen.setdefault("longest", longest(self, prompts)),
    )
    monkeypatch.setattr(memory, "free_memory", free)
    config = small_config(generation={"max_new_tokens": 40})
    generator = _ScriptedGenerator(tokenizer, "4", truncated=False)
    with pytest.raises(memory.ScoringMemoryError, match=r"batch 2 x \d+ tokens.*Nothing was run"):
        RESPPruner(model, tokenizer, config, generator=generator).prune(PROMPTS, tmp_path / "run")
    chat = max(
        len(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True))
        for p in PROMPTS
    )
    assert seen["longest"] >= chat + 40 - 2  # the longest prompt with the chat template, plus a full trace
    assert generator.calls == 0 and not (tmp_path / "run").exists()


def test_a_pruner_that_loaded_its_model_frees_the_dense_weights(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    model.config.tie_word_embeddings = (
        True  # shared weights stay shared once freed (moving to meta unties them)
    )
    model.tie_weights()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    config = small_config(num_stages=2)
    owned = RESPPruner.from_pretrained(tmp_path / "m", config=config, generator="hf")
    result = owned.prune(PROMPTS, tmp_path / "run")
    assert all(p.device.type == "meta" for p in owned.model.parameters())  # freed after stage 1
    assert owned.model.config.num_hidden_layers == model.config.num_hidden_layers  # still describes it
    assert result.report.dense_total_params == sum(p.numel() for p in model.parameters())
    with pytest.raises(RuntimeError, match="freed its dense weights.*from_pretrained"):
        owned.prune(PROMPTS)
    # The same prune of a model passed in leaves that model alone, with the same keep-sets.
    given = RESPPruner(RESPPruner.from_pretrained(tmp_path / "m").model, tokenizer, config, generator="hf")
    assert given.prune(PROMPTS).plan == result.plan
    assert all(p.device.type == "cpu" for p in given.model.parameters())
    # A resume of the owned run loads the dense model afresh and rebuilds from the checkpoints.
    again = RESPPruner.from_pretrained(tmp_path / "m", config=config, generator="hf")
    assert again.prune(PROMPTS, tmp_path / "run").plan == result.plan


def test_scoring_turns_checkpointing_on_only_when_the_plain_pass_would_not_fit(monkeypatch):
    from optimum_resp import memory
    from optimum_resp.calibration import as_prompts
    from optimum_resp.importance.taylor import bf16_autocast_supported

    tokenizer = tiny_tokenizer()
    for fits, expected in ((True, False), (False, True)):
        model = tiny_model(tokenizer=tokenizer)
        pruner = RESPPruner(model, tokenizer, small_config(num_stages=1), generator="hf")
        longest = pruner._check_prompt_lengths(as_prompts(PROMPTS))
        autocast = bf16_autocast_supported(
            model
        )  # unset in the config: on where the device is faster in bf16
        plain = memory.estimate_scoring_memory(model, 2, longest, bf16_autocast=autocast)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        reserve = int(weights * (1 - pruner.config.stage_sparsities()[0]))  # the dense model beside the copy
        room = plain.peak_bytes * memory.HEADROOM + reserve + (10 * 2**30 if fits else -1)
        monkeypatch.setattr(memory, "free_memory", lambda device, room=room: room)
        pruner.prune(PROMPTS)
        # The scorer settled what its section left to it (`prepare`), and keeps the setting: a resume may choose again.
        assert pruner.scoring_memory is pruner.scorer.resources
        assert pruner.scoring_memory.gradient_checkpointing is expected
        assert pruner.scoring_memory.bf16_autocast is autocast
        assert pruner.scorer.gradient_checkpointing is None and pruner.scorer.bf16_autocast is None
        assert (
            pruner.config.scoring.gradient_checkpointing is None
            and pruner.config.scoring.bf16_autocast is None
        )


def test_gold_traces_are_checked_at_their_real_length_before_the_first_scoring(monkeypatch):
    """Traces that are data (gold solutions, text) are not bounded by generation: the check waits for their
    real lengths instead of refusing on max_length (4096 here would never fit a small machine's estimate)."""
    from optimum_resp import memory
    from optimum_resp.calibration import CalibrationPrompt

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    lengths = []
    check = memory.check_scoring_memory
    monkeypatch.setattr(
        "optimum_resp.importance.taylor.check_scoring_memory",
        lambda model, batch, longest, *a: lengths.append(longest) or check(model, batch, longest, *a),
    )
    prompts = [CalibrationPrompt(p, gold="4", solution="It is 4. #### 4") for p in PROMPTS]
    config = small_config(calibration_source="gold", num_stages=1, regeneration_milestones=[], max_length=200)
    pruner = RESPPruner(model, tokenizer, config, generator="hf")
    pruner.prune(prompts)
    assert len(lengths) == 1 and lengths[0] < 100  # the longest prompt + gold solution, not max_length
    assert pruner.scoring_memory is not None and pruner.scoring_memory.sequence_length == lengths[0]


# ------------------------------------------------------------------------------------------------
# A prune pruned further: "20% today, 40% tomorrow", sparsity against the original dense model.
# ------------------------------------------------------------------------------------------------


def _testbed_prompts(n: int = 4):
    from optimum_resp.calibration import prompts_from_task
    from optimum_resp.testbed import testbed_data_path

    return prompts_from_task("gsm8k", str(testbed_data_path("gsm8k", "train")), limit=n)


TESTBED_RECIPE = {  # a dict, as RESPPruner.from_pretrained now takes one
    "num_stages": 2,
    "regeneration_milestones": [0.1, 0.3],
    "num_calibration_prompts": 4,
    "generation": {"max_new_tokens": 12, "batch_size": 4},
    "batch_size": 2,
    "allow_unfinished_traces": True,
}
UNIFORM = {"export": "uniform", "allocation": "uniform", "protected_layers": []}


@pytest.mark.parametrize("export", ["per_layer", "uniform"])
def test_a_prune_is_pruned_further_against_the_original_dense_model(tmp_path, export):
    from optimum_resp.accounting import decoder_linear_params
    from optimum_resp.testbed import testbed_model_path

    prompts = _testbed_prompts()
    recipe = {**TESTBED_RECIPE, **(UNIFORM if export == "uniform" else {})}
    first = RESPPruner.from_pretrained(
        testbed_model_path(), config={**recipe, "target_sparsity": 0.2}, generator="hf"
    )
    dense_params = sum(decoder_linear_params(first.model.config))
    first.prune(prompts)
    first.save_pretrained(tmp_path / "p20")

    again = RESPPruner.from_pretrained(
        tmp_path / "p20", config={**recipe, "target_sparsity": 0.4}, generator="hf"
    )
    assert again.origin is not None and again.origin.dense_decoder_linear_params == dense_params
    result = again.prune(prompts, tmp_path / "run40")
    report = result.report
    assert (
        report.size.dense_decoder_linear_params == dense_params
    )  # the original dense model, not the 20% one
    assert 0.4 <= report.sparsity < 0.43 and report.size.dense_layers == first.result.report.size.dense_layers
    # The stages ramp from where the model was (20%), and the milestone it had passed is not regenerated again.
    assert [s.target_sparsity for s in result.stages] == pytest.approx([0.3, 0.4], abs=1e-3)
    assert [s.regenerated for s in result.stages] == [False, True]
    again.save_pretrained(tmp_path / "run40")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run40")
    assert reloaded.num_parameters() == report.pruned_total_params
    saved = json.loads((tmp_path / "run40" / "resp_report.json").read_text())
    assert saved["dense_decoder_linear_params"] == dense_params and saved["sparsity"] == report.sparsity

    # A target at or below where the model already is removes nothing: refused before any work.
    with pytest.raises(ValueError, match=r"already a prune at sparsity 20\.\d+% .* Set a target above 20"):
        RESPPruner.from_pretrained(tmp_path / "p20", config={**recipe, "target_sparsity": 0.15})
    if export == "per_layer":  # its layers differ: no uniform allocation makes them alike again
        with pytest.raises(
            ValueError, match="export='uniform' needs every layer alike, but this model's layers"
        ):
            RESPPruner.from_pretrained(tmp_path / "p20", config={**recipe, **UNIFORM, "target_sparsity": 0.4})


def test_config_may_be_a_dict_a_config_or_a_path(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    assert RESPPruner(model, tokenizer, {"target_sparsity": 0.25}).config.target_sparsity == 0.25
    small_config(num_stages=2).save_pretrained(tmp_path / "cfg")
    assert RESPPruner(model, tokenizer, tmp_path / "cfg").config.num_stages == 2
    with pytest.raises(
        ValueError, match=r"Unknown RESPConfig key\(s\) 'sparsity' \(did you mean 'target_sparsity'"
    ):
        RESPPruner(model, tokenizer, {"sparsity": 0.4})
    with pytest.raises(ValueError, match="config must be a RESPConfig, a dict of its fields"):
        RESPPruner(model, tokenizer, 0.4)


def test_from_pretrained_checks_the_recipe_before_the_weights_load(tmp_path, monkeypatch):
    """A recipe the model cannot take is refused from config.json alone: no minutes of loading an 8B model first."""
    tokenizer = tiny_tokenizer()
    folder = tmp_path / "dense"
    tiny_model(tokenizer=tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(
        "optimum_resp.pruner.load_model", lambda *a, **k: pytest.fail("the weights loaded before the check")
    )
    for config, message in (
        ({"channel_multiple": 96}, r"channel_multiple=96 is not below this model's narrowest MLP \(96"),
        ({"target_sparsity": 0.99}, r"target_sparsity=0\.99 asks to remove .* at most"),
        (
            {"importance": "flap", "export": "uniform", "allocation": "uniform", "protected_layers": []},
            r"FLAP bias compensation needs a bias on .*export=.uniform. cannot",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            RESPPruner.from_pretrained(folder, config=config)
    # What it returns is the recipe as the model fits it (max_length clamped to its positions), checked.
    model_config = AutoConfig.from_pretrained(folder)
    fitted = RESPPruner.check_recipe(model_config, {"max_length": 10**6})
    assert fitted.max_length == model_config.max_position_embeddings
    assert RESPPruner.check_recipe(model_config, fitted) == fitted
