"""RESPConfig: sections, validation with helpful messages, JSON and folder round trips, old flat files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import LoraConfig

from optimum_resp.calibration import CalibrationConfig
from optimum_resp.configuration_resp import CONFIG_NAME, LEGACY_KEYS, RESPConfig
from optimum_resp.importance import ActivationScoringConfig, ScoringConfig, TaylorConfig
from optimum_resp.recovery import LoraRecoveryConfig
from optimum_resp.runtimes import ExportConfig

FLAT_FILE = Path(__file__).parent / "fixtures" / "resp_config_flat.json"
"""A resp_config.json written by the flat RESPConfig (main at 9f53417), before the sections."""


def test_defaults_follow_the_paper():
    c = RESPConfig()
    assert c.loss == "decode" and c.calibration.source == "self" and c.importance == "taylor"
    g = c.calibration.generation
    assert g.temperature == 0.6 and g.top_p == 0.95 and g.top_k == 20 and g.thinking and g.do_sample
    assert c.calibration.filter_correct is False and c.calibration.keep_truncated is True
    assert c.regeneration_milestones == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert c.scoring == TaylorConfig(abs_after="batch", batch_size=4) and c.recovery is None
    assert c.export == ExportConfig(mode="per_layer", allocation="global", protected_layers=None)
    assert c.export.protected_for(28) == [0, 1, 27] and c.export.protected_for(10) == [0, 9]


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
    assert c.regeneration_milestones == [0.1, 0.2] and c.export.protected_layers == [0, 5]
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
        ({"allocation": "local"}, r"export: allocation must be one of \['global', 'uniform'\]"),
        ({"protected_layers": [-1]}, r"protected_layers must be a list of layer indices >= 0"),
        ({"num_stages": 0}, r"num_stages must be an integer >= 1; got 0"),
        ({"channel_multiple": 0}, r"channel_multiple must be an integer >= 1; got 0"),
        ({"regeneration_milestones": [0.0]}, r"each regeneration milestone must be a number in \(0.0, 1.0\)"),
        ({"calibration_source": "c4"}, r"calibration: source must be one of \['self', 'gold', 'text'\]"),
        ({"num_calibration_prompts": 0}, r"calibration: num_prompts must be an integer >= 1"),
        ({"generation": {"temperature": 0.0}}, r"temperature must be a number in \(0.0, 100.0\]"),
        ({"generation": {"top_p": 1.5}}, r"top_p must be a number in \(0.0, 1.0\]"),
        ({"generation": {"top_k": -1}}, r"top_k must be an integer >= 0"),
        ({"generation": {"max_new_tokens": 0}}, r"max_new_tokens must be an integer >= 1"),
        (
            {"generation": {"max_tokens": 5}},
            r"Unknown GenerationSettings key\(s\) 'max_tokens' \(did you mean 'max_new_tokens'\?\)",
        ),
        ({"selection_keep_fraction": 0.5}, r"needs selection_difficulty_samples > 0"),
        ({"selection_length_quantiles": [0.8, 0.2]}, r"two numbers 0 <= low < high <= 1"),
        ({"filter_correct": True, "calibration_source": "gold"}, r"use calibration source='self'"),
        ({"calibration_source": "text"}, r"plain-text calibration has no prompt: use loss='full'"),
        ({"importance": "random"}, r"importance must be one of \[.*'taylor'.*\]; got 'random'"),
        ({"loss": "prompt"}, r"loss must be one of \['decode', 'full'\]"),
        ({"taylor_abs_after": "sample"}, r"scoring: abs_after must be one of \['batch', 'all'\]"),
        ({"normalization": "l2"}, r"normalization must be one of \['resp', 'params', 'none'\]"),
        ({"export": "gguf"}, r"export must be one of \['uniform', 'per_layer'\]"),
        (
            {"export": "uniform", "allocation": "global"},
            r"export='uniform' needs the same sizes in every layer: set allocation='uniform'",
        ),
        (
            {"export": "uniform", "protected_layers": [0]},
            r"no layer can be protected: leave protected_layers",
        ),
        ({"batch_size": 0}, r"scoring: batch_size must be an integer >= 1"),
        ({"recovery": "lora", "lora_r": 0}, r"recovery: lora r must be an integer >= 1"),
        ({"recovery": "qlora"}, r"Unknown recovery method 'qlora'; choose one of \['distill', 'lora'\]"),
        ({"scoring": {"abs_after": "all", "batch_sise": 2}}, r"'batch_sise' \(did you mean 'batch_size'\?\)"),
        ({"bf16_autocast": "yes"}, r"bf16_autocast must be"),
        ({"seed": -3}, r"seed must be an integer >= 0"),
    ],
)
def test_invalid_values_are_refused_with_the_valid_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RESPConfig(**kwargs)


def test_a_uniform_export_takes_the_allocation_and_protection_it_needs():
    """One rule (`runtimes.export_target`): a uniform export allocates uniformly and protects no layer, whether
    asked for in full or by its mode alone (the command line's --export uniform)."""
    for c in (
        RESPConfig(export="uniform", allocation="uniform", protected_layers=[]),
        RESPConfig(export="uniform"),
    ):
        assert (c.export.allocation, c.export.protected_layers, c.export.protected_for(12)) == (
            "uniform",
            [],
            [],
        )
    assert RESPConfig(allocation="uniform").export.allocation == "uniform"  # per_layer may allocate uniformly


def test_unknown_keys_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(
        ValueError,
        match=r"Unknown RESPConfig key\(s\) 'sparsity' \(did you mean 'target_sparsity'\?\); valid keys:",
    ):
        RESPConfig.from_dict({"sparsity": 0.4})
    with pytest.raises(
        ValueError, match=r"Unknown CalibrationConfig key\(s\) 'num_prompt' \(did you mean 'num_prompts'"
    ):
        RESPConfig(calibration={"num_prompt": 4})
    with pytest.raises(FileNotFoundError, match="No resp_config.json in"):
        RESPConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        RESPConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="protected_layers \\[30\\] do not exist: the model has 28 layers"):
        RESPConfig(protected_layers=[30]).export.protected_for(28)
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
    assert c.calibration.generation == GenerationSettings(max_new_tokens=64, do_sample=True, batch_size=32)
    assert RESPConfig().calibration.generation is not RESPConfig().calibration.generation  # no shared default
    assert json.loads(c.to_json_string())["calibration"]["generation"]["max_new_tokens"] == 64
    assert RESPConfig.from_dict(c.to_dict()) == c
    e = EvalConfig(generation={"max_new_tokens": 64})
    assert type(e.generation) is GenerationSettings and not e.generation.do_sample
    assert EvalConfig.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match=r"generation must be a GenerationSettings or a dict"):
        RESPConfig(generation=64)


def test_config_files_written_before_generation_settings_still_load(tmp_path):
    """resp_config.json from earlier versions had the decoding keys at the top level: a resume reads them."""
    old = {k: v for k, v in RESPConfig().to_flat_dict().items() if k != "generation"}
    old.update(max_new_tokens=384, generation_batch_size=64, do_sample=True, temperature=0.7, thinking=True)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(old))
    loaded = RESPConfig.from_pretrained(tmp_path)
    generation = loaded.calibration.generation
    assert generation.max_new_tokens == 384 and generation.batch_size == 64
    assert generation.temperature == 0.7 and loaded == RESPConfig(
        generation={"max_new_tokens": 384, "batch_size": 64, "temperature": 0.7}
    )


def test_a_flat_config_file_of_the_last_flat_version_loads_into_the_sections(tmp_path):
    """The fixture is a real resp_config.json of the flat RESPConfig: every key lands in its section, and the
    recipe reads back under the same flat names (`to_flat_dict`), so nothing of an old run's recipe is lost."""
    old = json.loads(FLAT_FILE.read_text())
    (tmp_path / CONFIG_NAME).write_text(FLAT_FILE.read_text())
    c = RESPConfig.from_pretrained(tmp_path)
    assert (c.target_sparsity, c.num_stages, c.regeneration_milestones, c.seed) == (0.3, 2, [0.1], 0)
    assert c.calibration == CalibrationConfig(
        num_prompts=6, generation={"max_new_tokens": 10, "batch_size": 6}, allow_unfinished_traces=True
    )
    assert c.scoring == TaylorConfig(abs_after="all", batch_size=2, gradient_checkpointing=True)
    assert c.recovery == LoraRecoveryConfig(lora={"r": 4}, epochs=2.0, batch_size=2)
    assert isinstance(c.recovery.lora, LoraConfig) and (
        c.recovery.lora.lora_alpha,
        c.recovery.lora.lora_dropout,
    ) == (
        16,
        0.05,
    )
    assert c.export == ExportConfig(protected_layers=[0], runtimes=["vllm"])
    old.pop("optimum_resp_version")
    flat = c.to_flat_dict()
    assert {k: flat[k] for k in old} == old
    assert set(flat) - set(old) == {"recovery_tokens"}  # the one flat name added since (None: not asked)
    assert flat["recovery_tokens"] is None
    saved = json.loads(c.to_json_string())  # written back in sections, read again unchanged
    assert set(saved) >= {"calibration", "scoring", "recovery", "export"} and "lora_r" not in saved
    assert RESPConfig.from_dict(saved) == c


def test_flat_keyword_arguments_land_in_their_sections():
    c = RESPConfig(
        batch_size=8,
        recovery="lora",
        lora_alpha=32,
        export="uniform",
        runtimes=["llama.cpp"],
        channel_multiple=2,
    )
    assert c.scoring.batch_size == 8 and c.recovery.batch_size == 8 and c.recovery.lora.lora_alpha == 32
    assert (c.export.mode, c.export.allocation, c.export.runtimes) == ("uniform", "uniform", ["llama.cpp"])
    assert RESPConfig(**c.to_flat_dict()) == c
    # Sections as instances or dicts, with flat names laid over them.
    d = RESPConfig(scoring=TaylorConfig(batch_size=2), calibration={"num_prompts": 7}, taylor_abs_after="all")
    assert d.scoring == TaylorConfig(abs_after="all", batch_size=2) and d.calibration.num_prompts == 7
    # Every flat name of the old files is a setting of some section.
    assert {p.split(".")[0] for paths in LEGACY_KEYS.values() for p in paths} == {
        "calibration",
        "scoring",
        "recovery",
        "export",
    }


def test_each_criterion_has_its_own_scoring_section():
    assert RESPConfig.for_method("wanda-sp", batch_size=8).scoring == ActivationScoringConfig(batch_size=8)
    assert type(RESPConfig.for_method("magnitude").scoring) is ScoringConfig  # magnitude needs no setting
    # A setting of another criterion, as a flat name (as the old files hold them all), has no section to go to.
    flap = RESPConfig.for_method("flap", taylor_abs_after="all", gradient_checkpointing=True)
    assert flap.scoring == ActivationScoringConfig() and "taylor_abs_after" not in flap.to_flat_dict()
    # A recipe switched to another criterion keeps the settings they share.
    switched = RESPConfig(batch_size=3, taylor_abs_after="all").override(importance="wanda-sp")
    assert switched.scoring == ActivationScoringConfig(batch_size=3)
    with pytest.raises(ValueError, match=r"Unknown ActivationScoringConfig key\(s\) 'abs_after'"):
        RESPConfig(importance="wanda-sp", scoring={"abs_after": "all"})


def test_override_changes_only_what_it_names():
    base = RESPConfig(recovery="lora", lora_r=4, generation={"max_new_tokens": 64}, runtimes=["vllm"])
    c = base.override(recovery="lora", generation={"top_k": 5}, export="uniform", allocation="uniform")
    assert c.recovery.lora.r == 4  # the section's other settings stay
    assert (c.calibration.generation.max_new_tokens, c.calibration.generation.top_k) == (64, 5)
    assert (c.export.mode, c.export.runtimes, c.export.protected_layers) == ("uniform", ["vllm"], [])
    assert base.override(recovery="none").recovery is None
    assert base.override() == base and base.recovery.lora.r == 4  # a copy: the original is untouched


def test_no_module_imports_back_up_the_package_and_the_criteria_do_not_import_the_recipe():
    """`__version__` and every other name of `optimum_resp/__init__.py` stay out of the package's own modules (only
    submodules are imported from it), and the criteria take their sections, so importance -> config is no cycle."""
    import ast

    import optimum_resp

    root = Path(optimum_resp.__file__).parent
    submodules = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if p.is_dir()}
    for path in root.rglob("*.py"):
        package = path.relative_to(root).parent.parts
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0 or node.module is not None:
                continue
            if node.level - 1 == len(package):  # `from .. import x` that lands on optimum_resp itself
                names = {alias.name for alias in node.names}
                assert names <= submodules, (
                    f"{path.relative_to(root)} imports {names - submodules} from optimum_resp"
                )
    for path in (root / "importance").glob("*.py"):
        assert "configuration_resp" not in path.read_text(), path.name
    assert optimum_resp.__version__  # from the installed metadata, or the source tree's fallback
