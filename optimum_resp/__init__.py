"""optimum-resp: self-reflective structured pruning (RESP) for reasoning language models."""

__version__ = "0.1.0.dev0"
