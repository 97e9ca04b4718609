"""Entropy model: table choice, real bytes, and a decoder that survives garbage."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neurocodec.entropy import SCALE_TABLE, ExactStack, Hyperprior, scale_index
from neurocodec.tables import SCALE_FRACTION_BITS, coding_tables, compute


def test_scale_index_picks_the_smallest_table_scale_not_below():
    scales = torch.exp(torch.linspace(-3, 6, 1000, dtype=torch.float64))
    idx = scale_index(torch.floor(scales * 2**SCALE_FRACTION_BITS)).long()
    table = torch.tensor(SCALE_TABLE, dtype=torch.float64)
    inside = (scales > SCALE_TABLE[0]) & (scales < SCALE_TABLE[-1])
    assert (table[idx][inside] >= scales[inside] * (1 - 1e-3)).all()
    assert (table[(idx - 1).clamp(min=0)][inside] < scales[inside]).all()
    assert idx[scales < SCALE_TABLE[0]].eq(0).all()
    assert idx[scales > SCALE_TABLE[-1]].eq(len(SCALE_TABLE) - 1).all()


def test_shipped_tables_match_a_fresh_computation():
    """The shipped tables are what this machine computes; if not, someone edited one side."""
    shipped = coding_tables()
    fresh = compute()
    assert torch.equal(shipped.bounds, fresh["scale_bounds"])
    assert torch.equal(shipped.cdf_length, fresh["cdf_length"])
    assert torch.equal(shipped.offset, fresh["offset"])
    assert torch.equal(torch.cat([torch.tensor(r) for r in shipped.rows]).int(), fresh["cdf"])


def _stack():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.ConvTranspose2d(8, 8, 5, stride=2, padding=2, output_padding=1), torch.nn.LeakyReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv2d(12, 6, 1),
    ).eval()


def test_exact_stack_tracks_the_float_network():
    net = _stack()
    x = torch.round(torch.randn(2, 8, 5, 7) * 3)
    exact = ExactStack(list(net))(x.double() * 2**SCALE_FRACTION_BITS) * 2.0**-SCALE_FRACTION_BITS
    assert exact.shape == (2, 6, 10, 14)
    assert (exact - net(x).double()).abs().max() < 0.01


def test_exact_stack_does_not_depend_on_memory_layout_or_batching():
    """Reordered sums (another layout, another batch split) must give the same integers."""
    stack = ExactStack(list(_stack()))
    x = torch.round(torch.randn(3, 8, 6, 6) * 4 * 2**SCALE_FRACTION_BITS).double()
    whole = stack(x)
    assert torch.equal(stack(x.contiguous(memory_format=torch.channels_last)), whole)
    assert torch.equal(torch.cat([stack(x[i : i + 1]) for i in range(3)]), whole)
    assert torch.equal(whole, torch.floor(whole))


def test_table_choice_ignores_the_float_context():
    """Indexes depend on the hyper-latent alone: a different temporal context cannot change the parse."""
    z_hat = torch.round(torch.randn(1, 8, 2, 3) * 2)
    m1, i1 = PRIOR.entropy_parameters(z_hat, torch.zeros(1, 4, 8, 12))
    m2, i2 = PRIOR.entropy_parameters(z_hat, torch.randn(1, 4, 8, 12))
    assert torch.equal(i1, i2) and not torch.equal(m1, m2)


def test_table_choice_is_the_same_under_reduced_precision():
    z_hat, ctx = torch.round(torch.randn(1, 8, 2, 3) * 2), torch.randn(1, 4, 8, 12)
    ref = PRIOR.entropy_parameters(z_hat, ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = PRIOR.entropy_parameters(z_hat, ctx.bfloat16())
    assert torch.equal(ref[1], low[1])
    assert (ref[0] - low[0]).abs().max() < 0.1  # the means see a bfloat16 context


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
