"""RESPConfig: validation with helpful messages, JSON and folder round trips."""

from __future__ import annotations

import json

import pytest

from optimum_resp.configuration_resp import CONFIG_NAME, RESPConfig


def test_defaults_follow_the_paper():
    c = RESPConfig()
    assert c.loss == "decode" and c.calibration_source == "self" and c.importance == "taylor"
    g = c.generation
    assert g.temperature == 0.6 and g.top_p == 0.95 and g.top_k == 20 and g.thinking and g.do_sample
    assert c.filter_correct is False and c.keep_truncated is True
    assert c.regeneration_milestones == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert c.protected_for(28) == [0, 1, 27] and c.protected_for(10) == [0, 9]


def test_round_trip_dict_json_and_folder(tmp_path):
    c = RESPConfig(
        target_sparsity=0.3,
        structures=["channels", "query_heads"],
        num_stages=4,
        regeneration_milestones=[0.2, 0.1],
        protected_layers=[5, 0, 5],
        selection_length_quantiles=[0.25, 0.75],
    )
    assert c.structures == ["query_heads", "channels"]  # canonical order
    assert c.regeneration_milestones == [0.1, 0.2] and c.protected_layers == [0, 5]
    assert RESPConfig.from_dict(c.to_dict()) == c
    assert RESPConfig.from_dict(json.loads(c.to_json_string())) == c
    path = c.save_pretrained(tmp_path / "run")
    assert path.name == CONFIG_NAME and not list((tmp_path / "run").glob("*.tmp"))
    assert RESPConfig.from_pretrained(tmp_path / "run") == c
    assert RESPConfig.from_pretrained(path) == c


def test_stage_sparsities_are_a_linear_ramp():
    assert RESPConfig(target_sparsity=0.4, num_stages=4).stage_sparsities() == pytest.approx(
        [0.1, 0.2, 0.3, 0.4]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_sparsity": 0.0}, r"target_sparsity must be a number in \(0.0, 1.0\); got 0.0"),
        ({"target_sparsity": 1.2}, r"target_sparsity must be a number in \(0.0, 1.0\)"),
        ({"target_sparsity": "0.4"}, r"target_sparsity must be a number"),
        ({"structures": []}, r"structures must be a non-empty list"),
        (
            {"structures": ["rows"]},
            r"each of structures must be one of \['query_heads', 'kv_heads', 'channels'\]",
        ),
        ({"allocation": "local"}, r"allocation must be one of \['global', 'uniform'\]"),
        ({"protected_layers": [-1]}, r"protected_layers must be a list of layer indices >= 0"),
        ({"num_stages": 0}, r"num_stages must be an integer >= 1; got 0"),
        ({"channel_multiple": 0}, r"channel_multiple must be an integer >= 1; got 0"),
        ({"regeneration_milestones": [0.0]}, r"each regeneration milestone must be a number in \(0.0, 1.0\)"),
        ({"calibration_source": "c4"}, r"calibration_source must be one of \['self', 'gold', 'text'\]"),
        ({"num_calibration_prompts": 0}, r"num_calibration_prompts must be an integer >= 1"),
        ({"generation": {"temperature": 0.0}}, r"temperature must be a number in \(0.0, 100.0\]"),
        ({"generation": {"top_p": 1.5}}, r"top_p must be a number in \(0.0, 1.0\]"),
        ({"generation": {"top_k": -1}}, r"top_k must be an integer >= 0"),
        ({"generation": {"max_new_tokens": 0}}, r"max_new_tokens must be an integer >= 1"),
        ({"generation": {"max_tokens": 5}}, r"Unknown generation setting\(s\) \['max_tokens'\]"),
        ({"selection_keep_fraction": 0.5}, r"needs selection_difficulty_samples > 0"),
        ({"selection_length_quantiles": [0.8, 0.2]}, r"two numbers 0 <= low < high <= 1"),
        ({"filter_correct": True, "calibration_source": "gold"}, r"use calibration_source='self'"),
        ({"calibration_source": "text"}, r"plain-text calibration has no prompt: use loss='full'"),
        ({"importance": "random"}, r"importance must be one of \[.*'taylor'.*\]; got 'random'"),
        ({"loss": "prompt"}, r"loss must be one of \['decode', 'full'\]"),
        ({"taylor_abs_after": "sample"}, r"taylor_abs_after must be one of"),
        ({"normalization": "l2"}, r"normalization must be one of \['resp', 'params', 'none'\]"),
        ({"export": "gguf"}, r"export must be one of \['uniform', 'per_layer'\]"),
        (
            {"export": "uniform"},
            r"export='uniform' needs the same sizes in every layer: set allocation='uniform'",
        ),
        ({"export": "uniform", "allocation": "uniform"}, r"set protected_layers=\[\]"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
        ({"bf16_autocast": "yes"}, r"bf16_autocast must be"),
        ({"seed": -3}, r"seed must be an integer >= 0"),
    ],
)
def test_invalid_values_are_refused_with_the_valid_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RESPConfig(**kwargs)


def test_uniform_export_is_allowed_with_uniform_allocation_and_no_protection():
    c = RESPConfig(export="uniform", allocation="uniform", protected_layers=[])
    assert c.protected_for(12) == []


def test_unknown_keys_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown RESPConfig keys \['sparsity'\]; valid keys:"):
        RESPConfig.from_dict({"sparsity": 0.4})
    with pytest.raises(FileNotFoundError, match="No resp_config.json in"):
        RESPConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        RESPConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="protected_layers \\[30\\] do not exist: the model has 28 layers"):
        RESPConfig(protected_layers=[30]).protected_for(28)
    # A local path that does not exist, or a Hub id while offline: refused at once, never a minute of retries.
    with pytest.raises(FileNotFoundError, match=r"nosuch\.json does not exist, and that is a local path"):
        RESPConfig.from_pretrained("nosuch.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set, so it is not looked up on the Hub"):
        RESPConfig.from_pretrained("someone/some-resp-recipe")


def test_generation_is_one_settings_object_shared_with_evaluation(tmp_path):
    from optimum_resp.evaluation import EvalConfig
    from optimum_resp.generation import GenerationSettings

    c = RESPConfig(generation={"max_new_tokens": 64})
    # A dict is laid over the calibration defaults (sampling, 32 prompts a batch), not the greedy ones.
    assert c.generation == GenerationSettings(max_new_tokens=64, do_sample=True, batch_size=32)
    assert RESPConfig().generation is not RESPConfig().generation  # no shared mutable default
    assert json.loads(c.to_json_string())["generation"]["max_new_tokens"] == 64
    assert RESPConfig.from_dict(c.to_dict()) == c
    e = EvalConfig(generation={"max_new_tokens": 64})
    assert type(e.generation) is GenerationSettings and not e.generation.do_sample
    assert EvalConfig.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match=r"generation must be a GenerationSettings or a dict"):
        RESPConfig(generation=64)


def test_config_files_written_before_generation_settings_still_load(tmp_path):
    """resp_config.json from earlier versions had the decoding keys at the top level: a resume reads them."""
    old = {k: v for k, v in RESPConfig().to_dict().items() if k != "generation"}
    old.update(max_new_tokens=384, generation_batch_size=64, do_sample=True, temperature=0.7, thinking=True)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(old))
    loaded = RESPConfig.from_pretrained(tmp_path)
    assert loaded.generation.max_new_tokens == 384 and loaded.generation.batch_size == 64
    assert loaded.generation.temperature == 0.7 and loaded == RESPConfig(
        generation={"max_new_tokens": 384, "batch_size": 64, "temperature": 0.7}
    )
