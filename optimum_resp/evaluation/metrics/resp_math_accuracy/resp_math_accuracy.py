"""RESP math accuracy: answer extraction + exact scoring for GSM8K (numbers) and MathQA (option letters)."""

import datasets
import evaluate

from optimum_resp.evaluation.tasks import TASKS, get_task

_CITATION = """\
@article{cobbe2021gsm8k,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and others},
  journal={arXiv preprint arXiv:2110.14168},
  year={2021}
}
@inproceedings{amini2019mathqa,
  title={MathQA: Towards Interpretable Math Word Problem Solving with Operation-Based Formalisms},
  author={Amini, Aida and others},
  booktitle={NAACL},
  year={2019}
}
"""

_DESCRIPTION = """\
Accuracy of raw model completions on math word problems, using optimum-resp's deterministic answer
extraction: for GSM8K the last \\boxed{} answer, else '#### N', else 'the answer is N', else the last number
after the thinking block (numbers inside <think>...</think> are ignored; an unclosed thinking block only
counts a \\boxed{} answer); compared numerically. For MathQA the option letter (a-e) in a box, after
'the answer is', or alone, else the option whose value equals the numeric answer.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): raw model completions (may contain <think>...</think>).
    references (`list` of `str`): gold answers: GSM8K numbers (or full GSM8K answers with '####'),
        MathQA option letters a-e.
    task (`str`, optional): "gsm8k" or "mathqa"; defaults to the config name if that is a task, else "gsm8k".
    options (`list`, optional): MathQA options per item ('a ) 38 , b ) ...' or a list), used to match
        numeric answers to option letters.
    think_open (`bool`, optional): the prompts ended inside an open <think> block. Defaults to False.
Returns:
    accuracy (`float`): fraction of predictions whose extracted answer equals the reference.
    num_extracted (`int`): how many predictions yielded an answer at all.
Examples:
    >>> metric = evaluate.load(metric_path())
    >>> metric.compute(predictions=["<think>2+2</think> \\\\boxed{4}"], references=["4"], task="gsm8k")
    {'accuracy': 1.0, 'num_extracted': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RespMathAccuracy(evaluate.Metric):
    """`evaluate` wrapper around the optimum-resp answer extraction and scoring."""

    def _info(self):
        """Describe inputs: one raw completion string and one gold answer string per item."""
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[
                "https://huggingface.co/datasets/openai/gsm8k",
                "https://huggingface.co/datasets/allenai/math_qa",
            ],
        )

    def _compute(self, predictions, references, task=None, options=None, think_open=False):
        """Extract each prediction's answer and compare it with the normalised reference."""
        if task is None:
            task = self.config_name if self.config_name in TASKS else "gsm8k"
        spec = get_task(task)
        if options is not None and len(options) != len(predictions):
            raise ValueError(f"options has {len(options)} entries for {len(predictions)} predictions")
        correct = 0
        extracted = 0
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            example = {"options": options[i]} if options is not None else None
            answer = spec.extract(prediction, example, think_open).answer
            extracted += answer is not None
            correct += bool(spec.is_correct(answer, spec.normalize_gold(reference)))
        return {"accuracy": correct / len(predictions) if predictions else 0.0, "num_extracted": extracted}
