"""Motion: estimate, code and apply a scale-space flow field.

The motion encoder sees the current frame and the previous *decoded* frame
and produces a latent; the decoder turns it into a flow ``(dx, dy, s)`` at
1/4 resolution, upsampled to full resolution. ``dx, dy`` are pixel
displacements; ``s`` picks how blurred a version of the reference to sample
(Agustsson et al., "Scale-space flow", CVPR 2020): where motion cannot be
predicted (disocclusions, fast or complex motion) the coder learns to fetch a
blurred reference instead of paying for a wrong sharp one. Learned end to end,
no pretrained optical-flow network needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..entropy import Coded, Hyperprior, Parsed
from ..profiling import stage
from .layers import GainPair, InverseGDN, analysis, bilinear_warp, cat_channels, conv, deconv, grid_scale, sampling_grid
from .search import estimate_flow, luma, median

#: Blur levels of the scale-space volume: average-pooled by 1, 2, 4, 8.
BLUR_LEVELS = 4


def scale_space(ref: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, BLUR_LEVELS, C, H, W], increasingly blurred copies."""
    h, w = ref.shape[-2:]
    ref = ref.contiguous()  # the pooling and resizing kernels are 2x faster on this layout
    levels = [ref]
    for k in range(1, BLUR_LEVELS):
        low = F.avg_pool2d(ref, 2**k)
        levels.append(F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False))
    return torch.stack(levels, dim=1)


def warp(ref: Tensor, flow: Tensor) -> Tensor:
    """Sample ``ref`` [B, C, H, W] at ``flow`` [B, 3, H, W] (dx, dy in pixels, s in levels).

    Trilinear sampling of the scale-space volume, computed as a bilinear
    sample of every level (levels batched) blended with the linear "hat"
    weights of ``s``: the same function as a 3-D ``grid_sample`` (equal to
    float rounding), at a third of its cost on CPU. A flow of two channels
    (no ``s``, :class:`BlockMotionCoder`) samples the sharp reference alone.
    """
    b, c, h, w = ref.shape
    flow = flow.to(ref.dtype)  # a half-precision flow must not set the grid's precision
    if flow.shape[1] == 2:
        return bilinear_warp(ref, flow)
    grid = sampling_grid(flow).repeat_interleave(BLUR_LEVELS, dim=0)
    samples = F.grid_sample(
        scale_space(ref).flatten(0, 1), grid, mode="bilinear", padding_mode="border", align_corners=True
    ).view(b, BLUR_LEVELS, c, h, w)
    s = flow[:, None, 2:3].clamp(0.0, BLUR_LEVELS - 1)  # [B, 1, 1, H, W]
    levels = torch.arange(BLUR_LEVELS, device=ref.device, dtype=ref.dtype).view(1, BLUR_LEVELS, 1, 1, 1)
    return (samples * (1.0 - (s - levels).abs()).clamp_min(0.0)).sum(1)


#: The searched flow enters the motion encoder divided by this (pixels -> ~unit range).
HINT_SCALE = 8.0


class MotionCoder(nn.Module):
    """Codes the motion from a decoded reference to the current frame.

    With ``search``, the encoder also sees a block-matching estimate of the
    motion (:mod:`.search`; the "hint"), so it learns to code motion it could
    not have found by gradient descent alone. The decoder is the same either way.
    """

    def __init__(self, n: int, m: int, z: int, search: bool = False):
        super().__init__()
        self.search = search
        self.g_a = analysis(8 if search else 6, n, m)
        self.g_s = nn.Sequential(
            deconv(m, n), InverseGDN(n), deconv(n, n), InverseGDN(n),
            conv(n, 3, 3, 1),
        )
        # Start from "no motion, sharp reference": the P-frame begins as a
        # conditional residual coder and learns to move pixels from there.
        nn.init.zeros_(self.g_s[-1].weight)
        nn.init.zeros_(self.g_s[-1].bias)
        self.prior = Hyperprior(m, z)
        self.gain = GainPair(m)

    def _analyse(self, x: Tensor, ref: Tensor, q: Tensor, hint: Tensor | None) -> Tensor:
        inputs = [x, ref]
        if self.search:
            if hint is None:
                with stage("search"):
                    hint = estimate_flow(x, ref)
            inputs.append((hint / HINT_SCALE).to(x.dtype))
        return self.g_a(cat_channels(inputs, self.g_a[0])) * self.gain.gain(q)

    def forward(self, x: Tensor, ref: Tensor, q: Tensor, hint: Tensor | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training path: decoded flow and likelihoods; ``hint`` is the searched flow, if already known."""
        y_hat, lik, *_ = self.prior(self._analyse(x, ref, q, hint))
        return self._flow(y_hat, q), lik

    def compress(self, x: Tensor, ref: Tensor, q: Tensor) -> tuple[Coded, Tensor]:
        coded, y_hat = self.prior.prepare(self._analyse(x, ref, q, None))
        return coded, self._flow(y_hat, q)

    def reconstruct(self, parsed: Parsed, q: Tensor) -> Tensor:
        """The decoded flow of a parsed motion latent."""
        return self._flow(self.prior.reconstruct(parsed), q)

    def _flow(self, y_hat: Tensor, q: Tensor) -> Tensor:
        low = self.g_s(y_hat * self.gain.inverse(q))
        return F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)


#: Side of the blocks :class:`BlockMotionCoder` sends one vector for: the latent grid's stride.
MV_BLOCK = 16
#: Its vectors are in units of 1 / MV_PRECISION pixel (quarter-pel, as in H.264).
MV_PRECISION = 4
#: A block takes the median of its 3x3 neighbourhood's vectors instead of its own when that
#: predicts it at most this much worse (mean absolute luma error, 0.5/255): a smoother field costs
#: fewer bits, and in a quick check on two held-out clips it also predicted better (the median
#: removes block averaging's stray vectors).
MV_SMOOTH = 0.002


#: Rate weight of the vector choice at quality 1: block SAD (8-bit luma, summed over the block)
#: one bit of vector differences is worth. Towards quality 0 it grows as 1 / sqrt(lambda), the way a
#: classical encoder's motion lambda follows its mode lambda: x MV_RATE_SPAN at quality 0.
MV_RATE = 4.0
MV_RATE_SPAN = 7.2


def difference_bits(d: Tensor) -> Tensor:
    """Roughly the bits a vector difference costs, summed over its last dimension (dx, dy):
    a signed Exp-Golomb code's length, with zero free (smooth motion costs next to nothing)."""
    a = d.abs()
    return torch.where(a > 0, 2 + 2 * torch.log2(a.clamp_min(1)), torch.zeros_like(a)).sum(-1)


def choose_vectors(cand: Tensor, cost: Tensor, mu: Tensor) -> Tensor:
    """Per block, the candidate vector that minimises prediction cost plus ``mu`` times the bits
    of the coded differences, exactly for each row given its first column (Viterbi): the first
    column top to bottom first (it is coded against the block above), then all rows left to right.

    ``cand`` [B, K, 2, h, w] candidate vectors, ``cost`` [B, K, h, w] their prediction costs,
    ``mu`` [B]; returns [B, 2, h, w].
    """
    b, k, _, h, w = cand.shape
    mu = mu.view(b, 1, 1)

    def best_path(vectors: Tensor, costs: Tensor, acc: Tensor) -> Tensor:
        """vectors [b, n, k, 2], costs [b, n, k] along a chain, acc [b, k] at its start:
        the chosen candidate per position [b, n]."""
        # every transition's price at once [b, n-1, k, k]: the chain's loop is then three kernels a link
        price = mu[:, None] * difference_bits(vectors[:, 1:, None] - vectors[:, :-1, :, None])
        back = []
        for i in range(1, vectors.shape[1]):
            acc, arg = (acc[:, :, None] + price[:, i - 1]).min(1)
            acc = acc + costs[:, i]
            back.append(arg)
        pick = acc.argmin(1)
        path = [pick]
        for arg in reversed(back):
            pick = arg.gather(1, pick[:, None]).squeeze(1)
            path.append(pick)
        return torch.stack(path[::-1], 1)

    col = cand[..., 0].permute(0, 3, 1, 2)  # [b, h, k, 2]
    start = cost[:, :, 0, 0] + mu[:, 0] * difference_bits(col[:, 0])
    first = best_path(col, cost[..., 0].permute(0, 2, 1), start)  # [b, h]
    rows = cand.permute(0, 3, 4, 1, 2).reshape(b * h, w, k, 2)
    costs = cost.permute(0, 2, 3, 1).reshape(b * h, w, k)
    fixed = torch.full((b * h, k), float("inf"), device=cand.device).scatter_(1, first.reshape(-1, 1), 0.0)
    mu = mu.repeat_interleave(h, 0)
    choice = best_path(rows, costs, fixed).view(b, 1, 1, h, w).expand(b, 1, 2, h, w)
    return cand.gather(1, choice).squeeze(1)


#: Passes of :func:`refine_vectors` after the choice above (0: none).
MV_REFINE = 3


def block_flow(v: Tensor) -> Tensor:
    """The decoder's per-pixel flow [B, 2, H, W] (pixels) for block vectors ``v`` [B, 2, H/16, W/16]
    (1/MV_PRECISION px): bilinear between block centres, so each vector reaches half a block
    into its neighbours."""
    return F.interpolate(v / MV_PRECISION, scale_factor=MV_BLOCK, mode="bilinear", align_corners=False)


def refine_vectors(v: Tensor, cur: Tensor, prev: Tensor, mu: Tensor, passes: int = 1,
                   batched: bool | None = None) -> Tensor:
    """Move block vectors where that lowers the cost of the prediction the *decoder* makes (luma
    SAD of :func:`block_flow`'s warp) plus ``mu`` [B] times the bits of the differences each vector
    enters (:func:`difference_bits`); ``passes`` coarse to fine, in steps of 2^(passes-1) quarter-pels
    down to one, each block tries its eight neighbours at that step.

    Why: the search finds integer per-pixel shifts and the choice above prices 16x16 blocks as if
    each moved alone; the decoder blends neighbouring vectors. A block's vector reaches exactly the
    32x32 window around its block, so blocks two apart in both directions (one of four phases) never
    share a pixel or a coded difference: each phase is updated at once and exactly, and the total
    cost only falls (coordinate descent). ``cur``, ``prev``: luma [B, 1, H, W]; returns ``v`` moved.
    ``batched`` (default: on a GPU) scores each phase's trials together; the result is the same.
    """
    b, _, h, w = v.shape
    mu = mu.view(b, 1, 1)
    rows = torch.arange(h, device=v.device).view(h, 1)
    cols = torch.arange(w, device=v.device).view(1, w)
    # bilinear interpolation is linear: moving one phase's vectors by s moves the sampling grid by
    # s times that phase's interpolated mask, so each trial is one multiply-add and a sample
    unit = torch.tensor(grid_scale(*cur.shape[-2:]), device=v.device, dtype=cur.dtype) / MV_PRECISION
    phases = []
    for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)):
        mask = ((rows % 2 == r) & (cols % 2 == c)).to(v.dtype).expand(b, 1, h, w)
        phases.append((mask, mask[:, 0].bool(), block_flow(mask * MV_PRECISION).movedim(1, -1) * unit))

    def cost(v: Tensor, grid: Tensor) -> Tensor:  # [B, h, w]: the part of the total block (i, j)'s vector moves
        err = (F.grid_sample(prev, grid, mode="bilinear", padding_mode="border", align_corners=True) - cur).abs_()
        sad = F.avg_pool2d(err, 2 * MV_BLOCK, MV_BLOCK, MV_BLOCK // 2)[:, 0] * 255 * (2 * MV_BLOCK) ** 2
        bits = difference_bits(BlockMotionCoder.differences(v).movedim(1, -1))
        own = bits.clone()
        own[..., :-1] += bits[..., 1:]  # its right neighbour is coded against it
        own[..., :-1, 0] += bits[..., 1:, 0]  # first column: so is the block below
        return sad + mu * own

    # Each phase scores its current vectors and eight moves, and each block keeps the first of its
    # lowest costs (the current vectors first), as a loop of strict improvements would. On a GPU the
    # nine are one batch: launches, not arithmetic, bound this search there (one by one it was most
    # of a training step's time); on a CPU one at a time keeps the working set in cache (1.3x faster at 720p).
    moves = torch.tensor([[0, 0]] + [[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dx or dy],
                         dtype=v.dtype, device=v.device)  # [9, 2], in units of a pass's step
    n = len(moves)
    group = n if (v.is_cuda if batched is None else batched) else 1
    tiled = group, *(1,) * (cur.dim() - 1)
    cur, prev, mu = cur.repeat(tiled), prev.repeat(tiled), mu.repeat(group, 1, 1)
    for size in reversed(range(passes)):
        steps = moves * 2**size
        for mask, active, reach in phases:  # reach: the grid's move per quarter-pel of this phase
            grid = sampling_grid(block_flow(v))
            moved = v + steps.view(n, 1, 2, 1, 1) * mask  # [n, B, 2, h, w]
            costs = torch.cat([cost(moved[i: i + group].flatten(0, 1),
                                    (grid + reach * steps[i: i + group].view(-1, 1, 1, 1, 2)).flatten(0, 1))
                               for i in range(0, n, group)])
            best = torch.where(active, costs.view(n, b, h, w).argmin(0), 0)
            v = moved.gather(0, best[None, :, None].expand(1, b, 2, h, w))[0]
    return v


class BlockMotionCoder(nn.Module):
    """Codes the encoder's searched motion explicitly: one quarter-pel vector per 16x16 block.

    Why: trained end to end, the learned :class:`MotionCoder` reproduces the
    block-matching search only roughly: on held-out cockatoo (640x360,
    quality 0.5) its prediction reaches 21-27 dB where the search's reaches
    29-32 dB (``python -m eval.motion``). Here the vectors are sent as a
    classical codec sends them: each as its difference from its left
    neighbour (the first column from the one above), and a zero-mean
    hyperprior learns where those differences are large (motion boundaries)
    and where they are nothing (smooth motion, nearly free). Zero means keep
    the decoded differences exact integers, so summing them back up gives
    the encoder's vectors bit for bit on every device. The decoder runs no
    motion network, only a bilinear interpolation of the vectors.
    """

    search = True

    def __init__(self, z: int):
        super().__init__()
        self.prior = Hyperprior(2, z, zero_mean=True)

    @staticmethod
    @torch.no_grad()
    def vectors(x: Tensor, ref: Tensor, q: Tensor, hint: Tensor | None = None) -> Tensor:
        """Integer block vectors [B, 2, H/16, W/16] in 1/MV_PRECISION px: the searched flow
        block-averaged, smoothed where smoothing costs (almost) no prediction quality, then
        traded against their bits at quality ``q`` [B] (:func:`choose_vectors`), then moved where
        the decoder's blended prediction gains (:func:`refine_vectors`)."""
        with stage("search"):
            if hint is None:
                hint = estimate_flow(x, ref)
            v = torch.round(F.avg_pool2d(hint.float(), MV_BLOCK) * MV_PRECISION)
            cur, prev = luma(x), luma(ref)

            def error(v: Tensor) -> Tensor:  # per block: it depends on that block's vector alone
                flow = F.interpolate(v / MV_PRECISION, scale_factor=MV_BLOCK, mode="nearest")
                return F.avg_pool2d((bilinear_warp(prev, flow) - cur).abs(), MV_BLOCK)

            mu = MV_RATE * MV_RATE_SPAN ** (1 - q.float())  # the rate weight at each frame's quality
            err = error(v)
            for _ in range(2):
                smooth = median(v, 3)
                err_smooth = error(smooth)
                better = err_smooth <= err + MV_SMOOTH
                v, err = torch.where(better, smooth, v), torch.where(better, err_smooth, err)
            if MV_RATE > 0:
                still = v.flatten(2).median(-1).values[..., None, None].expand_as(v)  # the frame's motion
                cand = torch.stack([v, torch.cat([v[..., :1], v[..., :-1]], -1),  # own, left's, above's
                                    torch.cat([v[..., :1, :], v[..., :-1, :]], -2), still, torch.zeros_like(v)], 1)
                cost = torch.stack([err] + [error(c) for c in cand.unbind(1)[1:]], 1).squeeze(2) * 255 * MV_BLOCK**2
                v = choose_vectors(cand, cost, mu)
            if MV_REFINE > 0:
                v = refine_vectors(v, cur, prev, mu, MV_REFINE)
        return v

    @staticmethod
    def differences(v: Tensor) -> Tensor:
        """What is coded: each vector minus its left neighbour; the first column minus the one above."""
        d = v.clone()
        d[..., 1:] -= v[..., :-1]
        d[..., 1:, 0] -= v[..., :-1, 0]
        return d

    @staticmethod
    def integrate(d: Tensor) -> Tensor:
        """Inverse of :meth:`differences` (exact: integers far below 2^24 in float32)."""
        return torch.cat([d[..., :1].cumsum(-2), d[..., 1:]], dim=-1).cumsum(-1)

    def forward(self, x: Tensor, ref: Tensor, q: Tensor, hint: Tensor | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training path: only the differences' entropy model learns (the vectors come from the search)."""
        d_hat, lik, *_ = self.prior(self.differences(self.vectors(x, ref, q, hint)))
        return self._flow(d_hat), lik

    def compress(self, x: Tensor, ref: Tensor, q: Tensor) -> tuple[Coded, Tensor]:
        coded, d_hat = self.prior.prepare(self.differences(self.vectors(x, ref, q)))
        return coded, self._flow(d_hat)

    def reconstruct(self, parsed: Parsed, q: Tensor) -> Tensor:
        return self._flow(self.prior.reconstruct(parsed))

    @classmethod
    def _flow(cls, d_hat: Tensor) -> Tensor:
        return block_flow(cls.integrate(d_hat.float()))
