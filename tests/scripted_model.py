"""`ScriptedModel`: a stand-in for a causal LM whose `generate` answers from a script, for generation tests."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast


class ScriptedModel:
    """A stand-in for a causal LM: ``generate`` answers each prompt with a scripted reply, like HF would.

    ``script(prompt_text) -> reply``: a reply text is tokenized, a list of ids is generated as it is; either is
    followed by ``<|im_end|>`` unless ``end=False``, cut at ``max_new_tokens``, and finished rows are right-filled
    with the pad id. Every call is recorded (input ids, attention mask, generation config, and the ids generated)
    so tests can check padding, batching and what was generated.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, script, end: bool = True) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.end = end
        self.device = torch.device("cpu")
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, generation_config=None, **kwargs):
        self.calls.append(
            {"input_ids": input_ids, "attention_mask": attention_mask, "config": generation_config}
        )
        end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        max_new = generation_config.max_new_tokens
        replies = []
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt_ids = [tok for tok, m in zip(row, mask, strict=True) if m]
            prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
            reply = self.script(prompt)
            ids = (
                list(reply)
                if isinstance(reply, list)
                else self.tokenizer.encode(reply, add_special_tokens=False)
            )
            if self.end:
                ids = ids + [end_id]
            replies.append(ids[:max_new])
        self.calls[-1]["generated"] = replies
        width = max(len(r) for r in replies)
        pad = generation_config.pad_token_id
        new = torch.tensor([r + [pad] * (width - len(r)) for r in replies], dtype=torch.long)
        return torch.cat([input_ids, new], dim=1)
