"""Fixtures shared by the test files (helpers that tests import live in helpers_tokenizer.py)."""

from __future__ import annotations

import pytest
from helpers_tokenizer import single_torch_thread


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster on one intra-op thread on a busy CPU (use with `pytestmark`)."""
    with single_torch_thread():
        yield
