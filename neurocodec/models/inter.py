"""P-frame coder: motion compensation plus conditional coding of the frame.

The frame is not coded as a residual ``x - pred``: the encoder sees ``x`` and
the motion-compensated prediction side by side, the entropy model is fed
features of the prediction (a temporal prior), and the decoder fuses the
decoded features with the prediction. The network decides per region how
much to trust the prediction (conditional coding, as in the DCVC family).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..entropy import Coded, Hyperprior, Parsed, Pending
from ..refine import Analysis, Refinement, code_latent
from .layers import GainPair, analysis, cat_channels, conv, in_float32, synthesis
from .motion import BlockMotionCoder, MotionCoder, warp


class InterCoder(nn.Module):
    """Codes a frame [1, 3, H, W] in [0, 1] given the previous decoded frame."""

    def __init__(self, n: int, m: int, z: int, motion: MotionCoder | BlockMotionCoder, feat: int):
        super().__init__()
        self.motion = motion
        self.g_a = analysis(6, n, m)
        self.context = nn.Sequential(
            conv(3, n), nn.LeakyReLU(inplace=True), conv(n, n), nn.LeakyReLU(inplace=True),
            conv(n, n), nn.LeakyReLU(inplace=True), conv(n, m),
        )
        self.prior = Hyperprior(m, z, ctx_channels=m)
        self.g_s = synthesis(m, n, feat)
        self.fuse = nn.Sequential(
            conv(feat + 3, 32, 3, 1), nn.LeakyReLU(inplace=True), conv(32, 3, 3, 1)
        )
        self.gain = GainPair(m)

    def forward(self, x: Tensor, ref: Tensor, q: Tensor, hint: Tensor | None = None) -> dict:
        """Training path; ``ref`` is the previous reconstruction, ``q`` is [B], ``hint`` the searched flow."""
        flow, motion_lik = self.motion(x, ref, q, hint)
        pred = warp(ref, flow)
        y = self.g_a(cat_channels([x, pred], self.g_a[0])) * self.gain.gain(q)
        latent = self.prior(y, self.context(pred))
        return {
            "x_hat": self._reconstruct(latent.y_hat, pred, q),
            "pred": pred,
            "flow": flow,
            "symbols": latent.symbols,
            "hyper": latent.hyper,
            "likelihoods": {"motion_y": motion_lik["y"], "motion_z": motion_lik["z"], **latent.likelihoods},
        }

    def redecode(self, out: dict, ref: Tensor, q: Tensor) -> Tensor:
        """What a decoder holding another reference ``ref`` makes of :meth:`forward`'s stream.

        The flow and the latent symbols are parsed from the stream, so they
        stay; the prediction, the temporal context and hence the means move
        with the reference. Training compares this with ``out["x_hat"]`` to
        teach the decoder to shrink reference errors rather than amplify them
        (cross-device drift, see ``training.train``).
        """
        pred = warp(ref, out["flow"])
        y_hat = out["symbols"] + self.prior.means(out["hyper"], self.context(pred)).float()
        return self._reconstruct(y_hat, pred, q)

    def compress(self, x: Tensor, ref: Tensor, q: Tensor, refine: Refinement | None = None
                 ) -> tuple[tuple[Coded, Coded], Tensor]:
        """The coded motion and residual latents (streams ``[motion_y, motion_z, y, z]``, the y streams
        still to rANS-encode) and the decoder's reconstruction; ``refine`` optimises the residual latent."""
        motion, a = self.analyse(x, ref, q)
        residual, x_hat = code_latent(a, self.prior, x, refine)
        return (motion, residual), x_hat

    def analyse(self, x: Tensor, ref: Tensor, q: Tensor) -> tuple[Coded, Analysis]:
        """The coded motion, then the latent :meth:`compress` quantises, its temporal context and the
        decoder's reconstruction from it (over the prediction that motion makes of ``ref``)."""
        motion, flow = self.motion.compress(x, ref, q)
        pred = warp(ref, flow)
        y = self.g_a(cat_channels([x, pred], self.g_a[0])) * self.gain.gain(q)
        return motion, Analysis(y, self.context(pred), lambda y_hat: self._reconstruct(y_hat, pred, q))

    def parse_tables(self, streams: list[bytes], hw: tuple[int, int]) -> tuple[Pending, Pending]:
        """The first half of entropy decoding (motion, then residual latent): needs no reference frame."""
        latent_hw = (hw[0] // 16, hw[1] // 16)
        return self.motion.prior.parse_tables(streams[:2], latent_hw), self.prior.parse_tables(streams[2:], latent_hw)

    def reconstruct(self, parsed: tuple[Parsed, Parsed], ref: Tensor, q: Tensor) -> Tensor:
        pred = warp(ref, self.motion.reconstruct(parsed[0], q))
        y_hat = self.prior.reconstruct(parsed[1], self.context(pred))
        return self._reconstruct(y_hat, pred, q)

    def decompress(self, streams: list[bytes], ref: Tensor, q: Tensor) -> Tensor:
        parsed = tuple(p.complete() for p in self.parse_tables(streams, tuple(ref.shape[-2:])))
        return self.reconstruct(parsed, ref, q)

    def _reconstruct(self, y_hat: Tensor, pred: Tensor, q: Tensor) -> Tensor:
        feat = self.g_s(y_hat * self.gain.inverse(q))
        return pred + in_float32(self.fuse, [feat, pred])  # it writes the next reference
