"""Training data: random crops of consecutive frames from real video files.

Videos are decoded once with PyAV (any container) into a frame cache on disk
(one uint8 ``.npy`` per clip, memory-mapped), so training streams crops from
disk instead of holding every frame in memory and never pays for decoding
twice. Large frames are downscaled by 2 in the cache: 128-256 px crops of a
half-resolution 1080p frame hold real texture, not just smooth gradients.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neurocodec.io import read_frames

#: Clips never trained on: the RD results in the README are measured on these.
VALIDATION_CLIPS = (
    "cockatoo",
    "dog_walk",
    "face_lp_d12",
    "skate_parkour",
    "hk_tram_street_lr",
    "market_vlog_b_1080p",
    "office_two_people_1080p",
    "blackswan",
)
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".y4m"}


def training_clips(video_dir: Path) -> list[Path]:
    """Every video in ``video_dir`` except the validation clips."""
    return sorted(
        p for p in Path(video_dir).iterdir()
        if p.suffix.lower() in VIDEO_SUFFIXES and p.stem not in VALIDATION_CLIPS
    )


def _downscale2(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
    f = frame[:h, :w].astype(np.uint16)
    return ((f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2] + 2) // 4).astype(np.uint8)


def cache_frames(clip: Path, max_frames: int = 150, downscale_above: int = 540) -> np.ndarray:
    """The frames training sees of ``clip``: its first ``max_frames``, halved
    when the short side is over ``downscale_above`` ([T, H, W, 3] uint8)."""
    frames = []
    for frame in read_frames(clip, max_frames=max_frames):
        frames.append(_downscale2(frame) if min(frame.shape[:2]) > downscale_above else frame)
    return np.stack(frames)


def build_cache(clips: list[Path], cache_dir: Path, *, max_frames: int = 150, workers: int = 8) -> list[Path]:
    """Decode each clip once into ``cache_dir/NAME.npy`` ([T, H, W, 3] uint8).

    Clips decode in ``workers`` threads (the decoder releases the GIL): a
    folder of clips is cached in seconds on a many-core GPU machine.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)

    def one(clip: Path) -> Path:
        target = cache_dir / f"{clip.stem}.npy"
        if not target.exists():
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, cache_frames(clip, max_frames))
            tmp.rename(target)
        return target

    with ThreadPoolExecutor(max(1, workers)) as pool:
        out = list(pool.map(one, clips))
    (cache_dir / "clips.json").write_text(json.dumps([c.name for c in clips], indent=1))
    return out


@dataclass
class CropSampler:
    """Draws batches [B, T, 3, crop, crop] float in [0, 1] from cached clips.

    Random clip (weighted by frame count), start frame, temporal stride (1 or
    2), crop position, horizontal/vertical flips. Its random state is a numpy
    Generator, saved in checkpoints so that a resumed run sees the same data.
    """

    files: list[Path]
    crop: int
    frames: int
    seed: int = 0

    def __post_init__(self) -> None:
        self.clips = [np.load(f, mmap_mode="r") for f in self.files]
        self.clips = [c for c in self.clips if c.shape[1] >= self.crop and c.shape[2] >= self.crop]
        if not self.clips:
            raise ValueError("no cached clip is as large as the crop")
        weights = np.array([len(c) for c in self.clips], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.rng = np.random.default_rng(self.seed)

    def batch(self, size: int) -> torch.Tensor:
        out = np.empty((size, self.frames, self.crop, self.crop, 3), dtype=np.uint8)
        for i in range(size):
            clip = self.clips[self.rng.choice(len(self.clips), p=self.weights)]
            stride = int(self.rng.integers(1, 3))
            span = (self.frames - 1) * stride + 1
            if span > len(clip):
                stride, span = 1, self.frames
            t0 = int(self.rng.integers(0, len(clip) - span + 1))
            y0 = int(self.rng.integers(0, clip.shape[1] - self.crop + 1))
            x0 = int(self.rng.integers(0, clip.shape[2] - self.crop + 1))
            seq = clip[t0:t0 + span:stride, y0:y0 + self.crop, x0:x0 + self.crop]
            if self.rng.random() < 0.5:
                seq = seq[:, :, ::-1]
            if self.rng.random() < 0.5:
                seq = seq[:, ::-1]
            out[i] = seq
        return torch.from_numpy(out).permute(0, 1, 4, 2, 3).float().div_(255.0)
