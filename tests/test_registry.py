"""Registry: the one way named choices are registered and looked up, and the places that read it."""

from __future__ import annotations

import pytest

from optimum_resp.architectures import ARCHITECTURES, UnsupportedArchitectureError, get_architecture
from optimum_resp.calibration import GENERATORS, HFGenerator
from optimum_resp.commands.cli import build_parser
from optimum_resp.evaluation.tasks import TASKS, get_task
from optimum_resp.importance import SCORERS
from optimum_resp.registry import Registry


class Thing:
    name = ""


def test_register_as_decorator_and_as_call_and_lookup():
    seen = []
    reg: Registry[type] = Registry("widget", on_register=lambda n, e: seen.append(n), name_attr="name")

    @reg.register("b")
    class B(Thing):
        pass

    a = reg.register("a", type("A", (Thing,), {}), aliases=("alpha",))
    assert list(reg) == ["b", "a"] and len(reg) == 2  # registration order; aliases are not listed
    assert reg.lookup("b") is B and B.name == "b" and a.name == "a"
    assert reg["alpha"] is a and "alpha" in reg and reg.lookup("alpha") is a
    assert seen == ["b", "a"]
    assert reg.register("b", B) is B and seen == ["b", "a"]  # the same entry again: nothing happens
    with pytest.raises(ValueError, match=r"A widget named 'b' is already registered"):
        reg.register("b", type("Other", (Thing,), {}))
    with pytest.raises(ValueError, match=r"A widget named 'alpha' is already registered"):
        reg.register("alpha", B)
    with pytest.raises(ValueError, match=r"Unknown widget 'c'; choose one of \['b', 'a'\]\."):
        reg.lookup("c")
    with pytest.raises(KeyError):
        reg["c"]
    assert reg.get("c") is None and "c" not in reg
    assert reg.unregister("a") is a and "alpha" not in reg and list(reg) == ["b"]


def test_lookup_error_type_hint_and_normalization():
    class Missing(ValueError):
        pass

    reg: Registry[int] = Registry("task", error=Missing, hint="Add one.", normalize=lambda s: s.lower())
    reg.register("gsm8k", 1)
    assert reg.lookup("GSM8K") == 1 and reg["GsM8k"] == 1
    with pytest.raises(Missing, match=r"Unknown task 'x'; choose one of \['gsm8k'\]\. Add one\."):
        reg.lookup("x")


def test_every_registry_of_the_package_is_a_registry_and_looks_up_alike():
    for reg in (ARCHITECTURES, SCORERS, GENERATORS, TASKS):
        assert isinstance(reg, Registry)
        with pytest.raises(ValueError, match=r"Unknown .* 'nope'; choose one of \["):
            reg.lookup("nope")
    assert GENERATORS.lookup("hf") is HFGenerator and HFGenerator.name == "hf"
    assert all(SCORERS[name].name == name for name in SCORERS)
    assert get_task("Math-QA").name == "mathqa" and get_task("GSM_8K").name == "gsm8k"
    # A pruned checkpoint's type is an alias of its stock architecture.
    assert ARCHITECTURES["resp_qwen3"] is ARCHITECTURES["qwen3"]
    with pytest.raises(UnsupportedArchitectureError, match="register_architecture"):
        get_architecture(type("C", (), {"model_type": "gpt2"})())


def test_cli_choices_come_from_the_registries():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "resp_command").choices
    prune = {a.dest: a for a in sub["prune"]._actions}
    evaluate = {a.dest: a for a in sub["eval"]._actions}
    assert list(prune["generator"].choices) == list(GENERATORS)
    assert list(prune["task"].choices) == list(TASKS) == list(evaluate["task"].choices)
