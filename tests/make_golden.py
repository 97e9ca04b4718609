"""Regenerate tests/data: the tiny model's weights and the golden stream.

    python tests/make_golden.py

Run this only when the bitstream or the model code changes on purpose: the
golden test exists to catch every change that was not on purpose.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DATA, TINY  # noqa: E402

import neurocodec  # noqa: E402
from neurocodec.models import VideoModel  # noqa: E402
from neurocodec.synthetic import moving_pattern  # noqa: E402
from neurocodec.zoo import load_model, save_model  # noqa: E402

GOLDEN_CLIP = {"width": 48, "height": 32, "frames": 5, "seed": 1}
GOLDEN_OPTIONS = {"quality": 0.6, "gop": 3, "p_offsets": (0.0,)}  # every frame at one quality, as when it was made


def golden_clip():
    c = GOLDEN_CLIP
    return moving_pattern(c["width"], c["height"], c["frames"], seed=c["seed"])


def main() -> None:
    DATA.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = VideoModel(TINY).eval()
    model.update()
    save_model(model, DATA / "tiny.safetensors", "tiny-test")
    model = load_model(DATA / "tiny.safetensors")
    data = neurocodec.encode(golden_clip(), model=model, **GOLDEN_OPTIONS)
    (DATA / "golden.ncv").write_bytes(data)
    frames = neurocodec.decode(data, model=model)
    (DATA / "golden.json").write_text(json.dumps({
        "stream_sha256": hashlib.sha256(data).hexdigest(),
        "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
        "clip": GOLDEN_CLIP, "options": GOLDEN_OPTIONS,
    }, indent=1) + "\n")
    print(f"golden stream: {len(data)} bytes")


if __name__ == "__main__":
    main()
