"""Integrations with the engines a pruned model runs in (vLLM); each imports its engine only when used."""
