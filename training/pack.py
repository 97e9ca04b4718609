"""Pack the training clips into small, near-lossless files at the cache's resolution.

    python -m training.pack ../shared/video --out .gpu/clips

A leased GPU machine takes a limited upload (64 MiB here, code and wheels
included), less than the raw clips. Training there reads these files instead:
the frames the cache would hold (:func:`training.data.cache_frames`: first
``--max-frames``, large clips halved), re-encoded with x265 at a low CRF. The
PSNR each packed clip keeps against those frames is printed, so the extra
generation of loss is on record; point ``--video-dir`` of ``training.train``
at the output folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neurocodec.io import probe, read_frames, write_video
from neurocodec.metrics import psnr

from .data import cache_frames, training_clips


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--codec", default="libx265")
    ap.add_argument("--crf", type=int, default=16)
    ap.add_argument("--max-frames", type=int, default=150)
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for clip in training_clips(args.video_dir):
        frames = cache_frames(clip, args.max_frames)
        target = args.out / f"{clip.stem}.mp4"
        write_video(target, frames, probe(clip).fps, codec=args.codec, crf=args.crf)
        back = np.stack(list(read_frames(target)))
        size = target.stat().st_size
        total += size
        print(f"{clip.name:32s} {frames.shape[2]}x{frames.shape[1]} x{len(frames):3d}  "
              f"{size / 1e6:5.2f} MB  {psnr(back, frames):5.2f} dB")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
