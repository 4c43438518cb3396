"""Fixtures of the trainer tests (tests/train/_trainer_helpers.py holds the shared config and reward)."""

from __future__ import annotations

import pytest
from datasets import Dataset


@pytest.fixture(scope="module")
def prompts():
    """8 one-turn chat prompts."""
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Compute {i}+{i}"}] for i in range(8)]})
