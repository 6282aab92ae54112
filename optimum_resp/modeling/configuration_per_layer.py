# Saved beside per_layer checkpoints and loaded with `trust_remote_code=True`: imports nothing but transformers.
"""Configs of RESP-pruned models whose layers differ in size (heads, KV heads, MLP channels).

Each is the stock config plus transformers' own `per_layer_config` field (HeterogeneousConfigMixin):
layer i's sizes are `config.per_layer_config[i]`. Only `model_type` differs from the stock class, so
the file format is the one stock transformers reads once its modeling code honours per_layer_config.
"""

from transformers import LlamaConfig, Qwen2Config, Qwen3Config


class RESPQwen3Config(Qwen3Config):
    """Qwen3 config with per-layer attention heads, KV heads and intermediate sizes."""

    model_type = "resp_qwen3"


class RESPQwen2Config(Qwen2Config):
    """Qwen2 (DeepSeek-R1-Distill-Qwen) config with per-layer sizes."""

    model_type = "resp_qwen2"


class RESPLlamaConfig(LlamaConfig):
    """Llama (DeepSeek-R1-Distill-Llama) config with per-layer sizes."""

    model_type = "resp_llama"

    def validate(self):
        """Stock validation, minus LlamaConfig's `hidden_size % num_attention_heads` check: that check reads
        a per-layer attribute globally (it raises on any per_layer_config), and head_dim is explicit here."""
        for validator in LlamaConfig.__class_validators__:
            if validator.__name__ != "validate_architecture":
                validator(self)
