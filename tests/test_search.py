"""Encoder-side motion search, and a model that uses it."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

import neurocodec
from eval.drift import coded_with_reconstructions
from neurocodec.models import VideoModel
from neurocodec.models.search import estimate_flow
from neurocodec.synthetic import demo_clip, moving_pattern
from training.train import widened

from .conftest import BLOCKS, TINY


def _tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255


def test_search_finds_a_large_shift():
    """A 21-pixel pan, far beyond what a from-scratch motion coder learns to follow."""
    image = demo_clip(192, 128, 1)[0]
    dx, dy = 21, -6
    ref = _tensor(image)
    cur = torch.roll(ref, shifts=(-dy, -dx), dims=(2, 3))  # cur(p) = ref(p + (dx, dy))
    flow = estimate_flow(cur, ref)
    inner = flow[0, :, 32:-32, 32:-32].flatten(1)
    assert inner.mode(dim=1).values.tolist() == [dx, dy]
    assert ((inner[0] == dx) & (inner[1] == dy)).float().mean() > 0.5


def test_still_content_gets_zero_motion():
    frame = _tensor(demo_clip(64, 64, 1)[0])
    assert estimate_flow(frame, frame).abs().max() == 0


def test_a_searching_model_round_trips_bit_exactly():
    torch.manual_seed(0)
    model = VideoModel(dataclasses.replace(TINY, motion_search=True)).eval()
    frames = moving_pattern(72, 40, 4, seed=2)
    data, recon = coded_with_reconstructions(neurocodec.Encoder(72, 40, model=model, quality=0.5, gop=4), frames)
    np.testing.assert_array_equal(neurocodec.decode(data, model=model), np.stack(recon))


def test_widened_weights_start_from_the_parent_function():
    torch.manual_seed(0)
    parent = VideoModel(TINY)
    child = VideoModel(dataclasses.replace(TINY, motion_search=True))
    child.load_state_dict(widened(parent.state_dict(), child.state_dict()))
    x, ref = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y_parent = parent.inter.motion.g_a(torch.cat([x, ref], 1))
        y_child = child.inter.motion.g_a(torch.cat([x, ref, torch.randn(1, 2, 64, 64)], 1))
    torch.testing.assert_close(y_child, y_parent)


def test_flow_teacher_and_drift_penalty_train_a_searching_model():
    """The stages' losses with the flow teacher and the drift penalty: finite, and the
    teacher's gradient reaches the motion decoder (zero-initialised: "no motion")."""
    from training.train import Stage, stage_loss

    torch.manual_seed(0)
    model = VideoModel(dataclasses.replace(TINY, motion_search=True))
    model.intra.forward = lambda x, q: {"x_hat": x}  # a perfect I-frame: the reference is the frame
    image = _tensor(demo_clip(64, 64, 1)[0])
    seq = torch.stack([torch.roll(image[0], shifts=(0, 5 * t), dims=(1, 2)) for t in range(3)])[None]
    q = torch.tensor([0.5])
    for name, frames in (("motion", 2), ("inter", 2), ("multi", 3)):
        stats = stage_loss(model.train(), Stage(name, 1, frames, flow_hint=0.1, drift=1.0), seq, q)
        assert torch.isfinite(stats["loss"]) and ("gain" in stats) == (name != "motion")
        model.zero_grad()
        stats["loss"].backward()
        assert model.inter.motion.g_s[-1].weight.grad.abs().sum() > 0


def test_a_block_motion_model_round_trips_bit_exactly():
    torch.manual_seed(0)
    model = VideoModel(BLOCKS).eval()
    frames = moving_pattern(72, 40, 4, seed=2)
    data, recon = coded_with_reconstructions(neurocodec.Encoder(72, 40, model=model, quality=0.5, gop=4), frames)
    np.testing.assert_array_equal(neurocodec.decode(data, model=model), np.stack(recon))


def test_block_motion_sends_the_searched_vectors():
    """A 21-pixel pan arrives as 21 pixels whatever the (here untrained) entropy model
    predicts: the decoder gets the searched vectors exactly."""
    from neurocodec.models.motion import BlockMotionCoder

    torch.manual_seed(0)
    model = VideoModel(BLOCKS).eval()
    model.update()
    ref = _tensor(demo_clip(192, 128, 1)[0])
    cur = torch.roll(ref, shifts=(6, -21), dims=(2, 3))
    sent = BlockMotionCoder.vectors(cur, ref, torch.tensor([0.5]))
    with torch.no_grad():
        _, d_hat = model.inter.motion.prior.prepare(BlockMotionCoder.differences(sent))
        _, flow = model.inter.motion.compress(cur, ref, torch.tensor([0.5]))
    assert torch.equal(BlockMotionCoder.integrate(d_hat), sent)  # exact: zero means, integer sums
    assert flow.shape == (1, 2, 128, 192)
    assert (sent[0, :, 2:-2, 2:-2] / 4).flatten(1).mode(dim=1).values.tolist() == [21, -6]
    moved = flow[0, :, 32:-32, 32:-32].flatten(1)  # away from the edges the roll wraps
    assert (moved.median(dim=1).values - torch.tensor([21.0, -6.0])).abs().max() <= 1 / 8


def test_block_motion_trains_its_entropy_model_and_inherits_the_rest():
    from training.train import Stage, load_matching, stage_loss

    torch.manual_seed(0)
    parent, model = VideoModel(dataclasses.replace(TINY, motion_search=True)), VideoModel(BLOCKS)
    load_matching(model, parent.state_dict())
    torch.testing.assert_close(model.inter.g_a[0].weight, parent.inter.g_a[0].weight)
    model.intra.forward = lambda x, q: {"x_hat": x}
    image = _tensor(demo_clip(64, 64, 1)[0])
    seq = torch.stack([torch.roll(image[0], shifts=(0, 5 * t), dims=(1, 2)) for t in range(3)])[None]
    for name, frames in (("motion", 2), ("multi", 3)):
        stats = stage_loss(model.train(), Stage(name, 1, frames, drift=1.0), seq, torch.tensor([0.5]))
        model.zero_grad()
        stats["loss"].backward()
        assert torch.isfinite(stats["loss"])
        assert model.inter.motion.prior.h_a[0].weight.grad.abs().sum() > 0


def test_an_unknown_motion_coder_is_refused():
    import pytest

    from neurocodec.errors import InputError
    from neurocodec.models import ModelConfig

    text = TINY.to_json().replace('"motion_coder": "learned"', '"motion_coder": "optical"')
    with pytest.raises(InputError, match="motion coder"):
        ModelConfig.from_json(text)  # a weights file's config
    with pytest.raises(InputError, match="motion coder"):
        dataclasses.replace(TINY, motion_coder="optical")


def test_vector_differences_sum_back_exactly():
    from neurocodec.models.motion import BlockMotionCoder

    v = torch.randint(-800, 800, (2, 2, 5, 7)).float()
    d = BlockMotionCoder.differences(v)
    assert torch.equal(BlockMotionCoder.integrate(d), v)
    smooth = torch.full_like(v, 12.0)  # one motion everywhere: one non-zero difference per frame and component
    assert (BlockMotionCoder.differences(smooth) != 0).sum() == 2 * 2


def test_vector_choice_is_exact_along_each_row_and_down_the_first_column():
    """Brute force on a small grid: the first column is the cheapest chain of its own (coded
    top to bottom), and each row the cheapest given its first block; mu = 0 takes the cheapest
    candidate per block, a huge mu the field whose differences cost fewest bits."""
    from neurocodec.models.motion import BlockMotionCoder, choose_vectors, difference_bits

    torch.manual_seed(3)
    b, k, h, w = 2, 3, 3, 4
    cand = torch.randint(-6, 7, (b, k, 2, h, w)).float()
    cand[:, :, 0] += 20 * torch.arange(k).view(1, k, 1, 1)  # distinct per block: a vector names its candidate
    cost = torch.rand(b, k, h, w) * 20
    mu = torch.tensor([2.0, 5.0])
    chosen = choose_vectors(cand, cost, mu)

    def total(bi: int, picks: torch.Tensor, blocks: list[tuple[int, int]]) -> float:
        """Cost plus mu * bits over ``blocks`` of the field that picks candidate picks[r, i] at (r, i)."""
        field = cand[bi].gather(0, picks.expand(1, 2, h, w)).squeeze(0)
        bits = difference_bits(BlockMotionCoder.differences(field[None])[0].movedim(0, -1))
        return sum(cost[bi, picks[r, i], r, i].item() + mu[bi].item() * bits[r, i].item() for r, i in blocks)

    def with_picks(base: torch.Tensor, blocks: list[tuple[int, int]], ps: tuple[int, ...]) -> torch.Tensor:
        picks = base.clone()
        for (r, i), c in zip(blocks, ps, strict=True):
            picks[r, i] = c
        return picks

    for bi in range(b):
        viterbi = (cand[bi, :, 0] == chosen[bi, 0][None]).float().argmax(0)  # [h, w] candidate indices
        assert torch.equal(cand[bi].gather(0, viterbi.expand(1, 2, h, w)).squeeze(0), chosen[bi])
        column = [(r, 0) for r in range(h)]
        best = min(total(bi, with_picks(viterbi, column, ps), column) for ps in itertools.product(range(k), repeat=h))
        assert total(bi, viterbi, column) == pytest.approx(best)
        for r in range(h):
            row = [(r, i) for i in range(1, w)]
            best = min(total(bi, with_picks(viterbi, row, ps), row) for ps in itertools.product(range(k), repeat=w - 1))
            assert total(bi, viterbi, row) == pytest.approx(best)
    free = choose_vectors(cand, cost, torch.zeros(b))
    assert torch.equal(free, cand.gather(1, cost.argmin(1)[:, None, None].expand(b, 1, 2, h, w)).squeeze(1))
    flat = torch.cat([cand[:, :1], torch.zeros(b, 1, 2, h, w)], 1)
    assert choose_vectors(flat, torch.rand(b, 2, h, w), torch.full((b,), 1e6)).abs().max() == 0


def test_lower_quality_sends_cheaper_vectors():
    """The vectors chosen at lower quality cost fewer (estimated) bits: the rate weight grows."""
    from neurocodec.models.motion import BlockMotionCoder, difference_bits

    frames = moving_pattern(192, 128, 2, seed=1)
    ref, cur = _tensor(frames[0]), _tensor(frames[1])
    bits = [difference_bits(BlockMotionCoder.differences(
        BlockMotionCoder.vectors(cur, ref, torch.tensor([q]))).movedim(1, -1)).sum() for q in (0.0, 0.5, 1.0)]
    assert bits[0] < bits[1] < bits[2]


def _prediction_cost(v: torch.Tensor, cur: torch.Tensor, prev: torch.Tensor, mu: float) -> float:
    """What :func:`refine_vectors` minimises, computed plainly: the luma SAD (8-bit) of the
    decoder's prediction plus mu times the estimated bits of every coded difference."""
    from neurocodec.models.layers import bilinear_warp
    from neurocodec.models.motion import BlockMotionCoder, block_flow, difference_bits

    sad = (bilinear_warp(prev, block_flow(v)) - cur).abs().sum() * 255
    bits = difference_bits(BlockMotionCoder.differences(v).movedim(1, -1)).sum()
    return float(sad + mu * bits)


def test_vector_refinement_finds_a_quarter_pel_shift_the_blocks_missed():
    """Content moved by (1.25, -0.5) px, vectors starting a quarter-pel off in both components:
    with no rate weight the refinement lands on the true motion away from the frame's edges."""
    from neurocodec.models.layers import bilinear_warp
    from neurocodec.models.motion import refine_vectors
    from neurocodec.models.search import luma

    prev = luma(_tensor(demo_clip(128, 96, 1)[0]))
    truth = torch.tensor([5.0, -2.0]).view(1, 2, 1, 1)  # quarter-pels
    cur = bilinear_warp(prev, (truth / 4).expand(1, 2, 96, 128))
    start = (truth + torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)).expand(1, 2, 6, 8).clone()
    moved = refine_vectors(start, cur, prev, torch.zeros(1), passes=1)
    inner = moved[0, :, 1:-1, 1:-1].flatten(1)
    assert (inner == truth.view(2, 1)).all()
    assert _prediction_cost(moved, cur, prev, 0.0) < _prediction_cost(start, cur, prev, 0.0)


def test_vector_refinement_descends_the_decoders_cost_to_a_local_minimum():
    """On real-looking motion from random vectors: each pass lowers the plain total (prediction
    SAD plus mu times all the bits) and moves no vector by more than a quarter-pel; at the fixed
    point no single block's quarter-pel step lowers it. That holds only if the per-block
    accounting, phase by phase, is exact (its window, its own and its neighbours' differences)."""
    from neurocodec.models.motion import refine_vectors
    from neurocodec.models.search import luma

    frames = moving_pattern(96, 80, 2, seed=4)
    prev, cur = luma(_tensor(frames[0])), luma(_tensor(frames[1]))
    torch.manual_seed(0)
    start = torch.randint(-12, 13, (1, 2, 5, 6)).float()
    for mu in (0.0, 3.0, 40.0, 400.0):
        field, cost = start, _prediction_cost(start, cur, prev, mu)
        for _ in range(40):
            moved = refine_vectors(field, cur, prev, torch.tensor([mu]), passes=1)
            assert (moved - field).abs().max() <= 1
            new = _prediction_cost(moved, cur, prev, mu)
            assert new <= cost + 1e-3, mu
            if torch.equal(moved, field):
                break
            field, cost = moved, new
        assert torch.equal(moved, field), "no fixed point in 40 passes"
        for i, j, dx, dy in itertools.product(range(5), range(6), (-1, 0, 1), (-1, 0, 1)):
            step = field.clone()
            step[0, :, i, j] += torch.tensor([float(dx), float(dy)])
            assert _prediction_cost(step, cur, prev, mu) >= cost - 1e-3, (mu, i, j, dx, dy)


def test_vector_refinement_batched_or_one_by_one_chooses_alike():
    """The GPU's batched scoring of each phase's nine trials picks what one trial at a time picks,
    ties included (flat content: many trials cost the same), for a batch at several qualities."""
    from neurocodec.models.motion import refine_vectors
    from neurocodec.models.search import luma

    frames = moving_pattern(96, 64, 2, seed=7)
    prev = luma(torch.cat([_tensor(frames[0]), torch.full((1, 3, 64, 96), 0.5)]))
    cur = luma(torch.cat([_tensor(frames[1]), torch.full((1, 3, 64, 96), 0.5)]))
    torch.manual_seed(1)
    start = torch.randint(-9, 10, (2, 2, 4, 6)).float()
    for mu in ([0.0, 0.0], [5.0, 60.0]):
        one = refine_vectors(start, cur, prev, torch.tensor(mu), passes=3, batched=False)
        assert torch.equal(one, refine_vectors(start, cur, prev, torch.tensor(mu), passes=3, batched=True))
        assert not torch.equal(one, start)


def test_all_shifts_at_once_choose_as_a_loop_over_shifts():
    """The search tries every shift as one batch; a plain loop in the same order (dy outer, dx inner,
    the first of equal costs kept, zero shift favoured by ZERO_BIAS) chooses the same shifts, ties
    included (quantised content makes many)."""
    import torch.nn.functional as F

    from neurocodec.models import search

    torch.manual_seed(2)
    cur = (torch.rand(2, 1, 24, 32) * 4).round() / 4
    ref = torch.roll(cur, (1, -2), (2, 3))
    ref[0, :, :8] = 0.5  # flat: every shift ties
    r = 2
    padded = F.pad(ref, (r,) * 4, mode="replicate")
    best_cost = torch.full_like(cur, float("inf"))
    best = torch.zeros(2, 2, 24, 32)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            moved = padded[..., r + dy: r + dy + 24, r + dx: r + dx + 32]
            cost = F.avg_pool2d((cur - moved).abs(), search.BLOCK, 1, search.BLOCK // 2, count_include_pad=False)
            cost = cost - search.ZERO_BIAS if dx == dy == 0 else cost
            better = cost < best_cost
            best_cost = torch.where(better, cost, best_cost)
            best[:, 0:1].masked_fill_(better, dx)
            best[:, 1:2].masked_fill_(better, dy)
    found = search._best_shift(cur, ref, r)
    assert torch.equal(found, best)
    assert (found[0, :, :2] == 0).all() and (found[1, :, 8:16, 8:24] == torch.tensor([-2.0, 1.0]).view(2, 1, 1)).all()
