"""Shared fixtures: a tiny model with fixed weights, and small moving clips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from neurocodec.models import ModelConfig
from neurocodec.synthetic import moving_pattern
from neurocodec.zoo import load_model

# Tiny tensors run fastest on one thread, and a second test process or a
# training run in the background then does not make the suite crawl.
torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"
#: Small enough that a unit test codes a frame in milliseconds.
TINY = ModelConfig(n=16, m=16, z=16, motion_n=16, motion_m=16, motion_z=16, feat=8)
#: The same with the shipped motion coder: searched vectors sent per block.
BLOCKS = dataclasses.replace(TINY, motion_search=True, motion_coder="blocks")


@pytest.fixture(scope="session")
def tiny_model():
    """Fixed tiny weights shipped with the tests (tests/make_golden.py wrote them)."""
    return load_model(DATA / "tiny.safetensors")


@pytest.fixture(scope="session")
def clip():
    """Six frames of 72x40 moving texture, uint8 [T, H, W, 3]."""
    return moving_pattern(72, 40, 6, seed=3)
