"""Entropy model: table choice, real bytes, and a decoder that survives garbage."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurocodec.entropy import SCALE_TABLE, Hyperprior, scale_indexes


def test_scale_index_picks_the_smallest_table_scale_not_below():
    scales = torch.exp(torch.linspace(-3, 6, 1000))
    idx = scale_indexes(scales).long()
    table = torch.tensor(SCALE_TABLE, dtype=torch.float64)
    inside = (scales > SCALE_TABLE[0]) & (scales < SCALE_TABLE[-1])
    assert (table[idx][inside] >= scales[inside].double() * (1 - 1e-5)).all()
    assert (table[(idx - 1).clamp(min=0)][inside] < scales[inside].double()).all()
    assert idx[scales < SCALE_TABLE[0]].eq(0).all()
    assert idx[scales > SCALE_TABLE[-1]].eq(len(SCALE_TABLE) - 1).all()


def _prior():
    torch.manual_seed(0)
    prior = Hyperprior(8, 8, ctx_channels=4).eval()
    prior.update()
    return prior


PRIOR = _prior()


def test_compress_decompress_round_trip_is_exact():
    y = torch.randn(1, 8, 8, 12) * 5
    ctx = torch.randn(1, 4, 8, 12)
    streams, y_hat = PRIOR.compress(y, ctx)
    assert all(isinstance(s, bytes) and s for s in streams)
    assert torch.equal(PRIOR.decompress(streams, (8, 12), ctx), y_hat)
    assert (y_hat - y).abs().max() <= 0.5 + 1e-5


def test_smaller_latents_cost_fewer_bytes():
    y, ctx = torch.randn(1, 8, 8, 12), torch.zeros(1, 4, 8, 12)
    small, _ = PRIOR.compress(y * 0.5, ctx)
    big, _ = PRIOR.compress(y * 20, ctx)
    assert len(small[0]) < len(big[0])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=200), st.binary(max_size=40))
def test_decoder_survives_arbitrary_bytes(y_bytes, z_bytes):
    y_hat = PRIOR.decompress([y_bytes, z_bytes], (4, 8), torch.zeros(1, 4, 4, 8))
    assert y_hat.shape == (1, 8, 4, 8)
