"""How well a model predicts P-frames: per-frame coded size and prediction quality.

``python -m eval.motion VIDEO [--frames 6] [--max-side 640] [--quality 0.5] [--model nc-starter]``

Per P-frame (each referencing the decoder's previous reconstruction): the
coded size from a real encode (bpp of the whole packet, and of its motion
streams), and PSNR against the source of three predictions: the reference
unmoved (how much the scene moves), the reference warped by the encoder's
block-matching search (:mod:`neurocodec.models.search`, what motion could
give), and the prediction the decoder actually builds from the coded motion,
with its mean flow magnitude. A large gap between the last two means the
motion coder does not transmit the motion it is given.
"""

from __future__ import annotations

import argparse

import torch

from eval.rd import load_clip
from neurocodec import Encoder, load_model
from neurocodec.codec import frame_to_tensor
from neurocodec.models import pad_to_stride, to_reference
from neurocodec.models.motion import warp
from neurocodec.models.search import estimate_flow


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.motion", description=__doc__.split("\n\n")[0])
    ap.add_argument("video")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--quality", type=float, default=0.5)
    ap.add_argument("--model", default="nc-starter")
    args = ap.parse_args(argv)
    frames = load_clip(args.video, args.frames, max_side=args.max_side)[0]
    h, w = frames.shape[1:3]
    model = load_model(args.model)
    enc = Encoder(w, h, model=model, quality=args.quality, gop=-1, p_offsets=(0.0,))  # every frame at --quality
    q = torch.tensor([args.quality])
    ref, cpu = None, torch.device("cpu")
    print("frame type  bpp     motion bpp  PSNR dB: unmoved  searched  decoded   mean |flow| px")
    for t, frame in enumerate(frames):
        packets = enc.encode(frame)
        streams = packets[0].streams
        bpp = 8 * sum(len(s) for s in streams) / (w * h)
        x = pad_to_stride(frame_to_tensor(frame, w, h, cpu))
        if ref is None:
            print(f"{t:5d} I     {bpp:.4f}")
        else:
            with torch.no_grad():
                searched = estimate_flow(x, ref)
                flow, _ = model.inter.motion(x, ref, q, searched)  # the searched flow as the encoder's hint
                shifted = warp(ref, torch.cat([searched, torch.zeros_like(searched[:, :1])], 1))
                print(f"{t:5d} P     {bpp:.4f}  {8 * (len(streams[0]) + len(streams[1])) / (w * h):.4f}"
                      f"      {_psnr(x, ref):6.2f}   {_psnr(x, shifted):6.2f}    {_psnr(x, warp(ref, flow)):6.2f}"
                      f"    {flow[:, :2].abs().mean():.2f}")
        ref = to_reference(pad_to_stride(frame_to_tensor(enc.reconstruction, w, h, cpu)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
