"""Calibration data: prompts, the model's own traces (or gold / plain text), and their selection."""

from ..generators import GENERATORS, AutoGenerator, HFGenerator, TraceGenerator, VLLMGenerator, get_generator
from .build import (
    build_traces,
    chat_prompts,
    check_traces,
    prompts_from_task,
    select_by_difficulty,
    select_traces,
)
from .config import CALIBRATION_GENERATION, CalibrationConfig
from .traces import CalibrationPrompt, Trace, as_prompts, load_traces, save_traces, trace_token_ids

__all__ = [
    "CALIBRATION_GENERATION",
    "GENERATORS",
    "CalibrationConfig",
    "AutoGenerator",
    "CalibrationPrompt",
    "HFGenerator",
    "Trace",
    "TraceGenerator",
    "VLLMGenerator",
    "as_prompts",
    "build_traces",
    "chat_prompts",
    "check_traces",
    "get_generator",
    "load_traces",
    "prompts_from_task",
    "save_traces",
    "select_by_difficulty",
    "select_traces",
    "trace_token_ids",
]
