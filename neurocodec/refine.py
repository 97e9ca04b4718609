"""Encoder-side latent refinement: encode time traded for bits; streams and decoder unchanged.

The analysis transform is amortised: one forward pass guesses a good latent
for any frame, and the guess is only as good as the training (the
"amortisation gap" of Cremer et al., closed for image codecs by Campos et al.
2019 and Yang et al. 2020). Refinement starts from that guess and takes a few
Adam steps on this frame's own rate-distortion loss, the training loss
``lambda(q) * 255^2 * MSE + bpp``, through the same synthesis and entropy
model the decoder runs (:meth:`~neurocodec.entropy.Hyperprior.coding_rate`,
rounding straight-through), and codes the best latent it saw. Only the
choice of latent changes: any decoder decodes the stream, and the encoder's
reconstruction is still computed the decoder's way.

Each step costs a forward and a backward pass of the synthesis and the
hyperprior, several decodes' worth of compute: an offline "slower preset",
not a live one. In a P-frame the residual latent is refined, the motion
latent stays as coded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .entropy import Coded, Hyperprior
from .profiling import stage

__all__ = ["LEARNING_RATE", "Analysis", "Refinement", "code_latent", "refine_latent"]

#: Adam step size in latent units (one quantisation step is 1): larger steps
#: overshoot within the few iterations an encoder can afford.
LEARNING_RATE = 0.02


class Analysis(NamedTuple):
    """A frame as the encoder holds it just before quantisation.

    What :func:`refine_latent` optimises and ``eval.ceiling`` measures: the
    latent, and the decoder's own path from a decoded latent to the frame.
    """

    y: Tensor  #: the latent, unquantised
    ctx: Tensor | None  #: the hyperprior's temporal context (P-frames), else None
    synthesize: Callable[[Tensor], Tensor]  #: decoded latent -> the padded reconstruction [1, 3, H, W]


class Refinement(NamedTuple):
    """How an encoder refines a frame's latent: ``steps`` Adam steps at rate-distortion weight ``lmbda``."""

    steps: int
    lmbda: Tensor  #: [1], the model's lambda for the frame's quality
    height: int  #: the frame's size before padding: only these pixels are scored
    width: int


def code_latent(a: Analysis, prior: Hyperprior, x: Tensor, refine: Refinement | None = None) -> tuple[Coded, Tensor]:
    """The analysed latent (refined for ``x`` first when ``refine`` says so), quantised and coded with
    ``prior`` (its y stream still to rANS-encode), and the decoder's reconstruction from it."""
    y = a.y if refine is None else refine_latent(a, prior, x, refine)
    coded, y_hat = prior.prepare(y, a.ctx)
    return coded, a.synthesize(y_hat)


def refine_latent(a: Analysis, prior: Hyperprior, x: Tensor, how: Refinement) -> Tensor:
    """The latent, among ``a.y`` and the Adam iterates from it, with the lowest rate-distortion loss
    for coding ``x`` [1, 3, H, W] (padded) with ``prior``."""
    y, ctx, synthesize = a
    weight = how.lmbda * 255.0**2
    h, w = how.height, how.width
    x = x[..., :h, :w].float()
    with stage("refine"), torch.inference_mode(False), torch.enable_grad():
        v = y.detach().float().clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=LEARNING_RATE)
        best, best_loss = y, float("inf")
        for step in range(how.steps + 1):
            y_hat, bits = prior.coding_rate(v, ctx)
            loss = (weight * F.mse_loss(synthesize(y_hat)[..., :h, :w].float(), x) + bits / (h * w)).sum()
            if loss.item() < best_loss:
                best, best_loss = v.detach().clone().to(y.dtype), loss.item()
            if step == how.steps:
                break
            (v.grad,) = torch.autograd.grad(loss, [v])
            opt.step()
    return best
