"""GSM8K / MathQA evaluation harness: task registry, answer extraction, scoring and the `evaluate` metric."""

from .extraction import (
    Extraction,
    extract_choice_answer,
    extract_gsm8k_gold,
    extract_numeric_answer,
    normalize_number,
    numbers_equal,
    parse_mathqa_options,
    split_thinking,
)
from .fidelity import FidelityResult, answer_fidelity
from .harness import EvalConfig, EvalResult, evaluate_model, load_eval_rows, wilson_interval
from .metrics import metric_path
from .tasks import TASKS, TaskDataError, TaskSpec, get_task, load_task_dataset

__all__ = [
    "TASKS",
    "EvalConfig",
    "EvalResult",
    "Extraction",
    "FidelityResult",
    "TaskDataError",
    "TaskSpec",
    "answer_fidelity",
    "evaluate_model",
    "extract_choice_answer",
    "extract_gsm8k_gold",
    "extract_numeric_answer",
    "get_task",
    "load_eval_rows",
    "load_task_dataset",
    "metric_path",
    "normalize_number",
    "numbers_equal",
    "parse_mathqa_options",
    "split_thinking",
    "wilson_interval",
]
