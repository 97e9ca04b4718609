"""Training smoke test: a tiny model on tiny synthetic videos learns, and resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurocodec.io import write_video
from neurocodec.synthetic import moving_pattern
from training import train

from .conftest import TINY


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    videos = root / "videos"
    videos.mkdir()
    for seed in range(2):
        write_video(videos / f"clip{seed}.mp4", moving_pattern(96, 80, 8, seed=seed), fps=25)
    config = {
        "model": {k: getattr(TINY, k) for k in ("n", "m", "z", "motion_n", "motion_m", "motion_z", "feat")},
        "stages": [
            {"name": "intra", "steps": 40, "frames": 1, "lr": 3e-3},
            {"name": "motion", "steps": 2, "frames": 2, "lr": 1e-3},
            {"name": "inter", "steps": 2, "frames": 2, "lr": 1e-3},
            {"name": "multi", "steps": 2, "frames": 3, "lr": 1e-4, "drift": 1.0},
        ],
        "batch": 2, "crop": 64, "seed": 0, "video_dir": str(videos), "cache_dir": str(root / "cache"),
        "log_every": 1, "ckpt_every": 1000, "threads": 1,
    }
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return root, path


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_all_stages_run_and_the_loss_drops(setup):
    root, config = setup
    run = root / "full"
    train.main([str(config), "--out", str(run)])
    log = _log(run)
    assert [r["stage"] for r in log].count("intra") == 40
    assert {r["stage"] for r in log} == {"intra", "motion", "inter", "multi"}
    assert all(("drift_gain" in r) == (r["stage"] == "multi") for r in log)
    intra = [r["loss"] for r in log if r["stage"] == "intra"]
    assert sum(intra[-5:]) / 5 < 0.5 * sum(intra[:5]) / 5
    assert torch.load(run / "ckpt.pt", weights_only=False)["stage_idx"] == 4


def test_interrupted_run_resumes_exactly(setup):
    root, config = setup
    train.main([str(config), "--out", str(root / "a")])
    train.main([str(config), "--out", str(root / "b"), "--stop-after", "23"])
    stopped = torch.load(root / "b" / "ckpt.pt", weights_only=False)
    assert stopped["step"] == 23
    record = train.run_record(stopped)  # what a model card will say this run did
    assert record["stop_after"] == 23 and [s["steps"] for s in record["stages"]] == [23]
    train.main([str(config), "--out", str(root / "b")])
    a = torch.load(root / "a" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(root / "b" / "ckpt.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_amp_and_torchrun_ddp_smoke(setup, tmp_path):
    """bfloat16 autocast trains on CPU; two processes under torchrun (gloo) train and checkpoint."""
    import subprocess
    import sys

    root, config = setup
    train.main([str(config), "--out", str(tmp_path / "amp"), "--amp", "--stop-after", "3"])
    assert all(np.isfinite(r["loss"]) for r in _log(tmp_path / "amp"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.train", str(config), "--out", str(tmp_path / "ddp"), "--device", "cpu",
         "--stop-after", "4"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=False)
    assert ck["step"] == 4 and len(ck["sampler"]) == 2 and ck["sampler"][0] != ck["sampler"][1]


def test_redecode_is_the_decoder_and_drift_gain_trains_it(tiny_model):
    """With the same reference, ``redecode`` reproduces the forward pass; the drift
    gain of sparse reference flips is a finite, differentiable quantity."""
    import copy

    from neurocodec.models import to_reference

    model = copy.deepcopy(tiny_model).train()
    seq = torch.from_numpy(moving_pattern(64, 64, 2, seed=1)).permute(0, 3, 1, 2).float().div(255)
    x0, x1 = seq[:1], seq[1:]
    q = torch.tensor([0.5])
    ref = to_reference(model.intra(x0, q)["x_hat"]).detach()
    out = model.inter(x1, ref, q)
    torch.testing.assert_close(model.inter.redecode(out, ref, q), out["x_hat"])
    gain = train.drift_gain(model, out, ref, q)
    assert gain.shape == (1,) and torch.isfinite(gain).all() and gain.item() > 0
    gain.sum().backward()
    assert model.inter.fuse[0].weight.grad.abs().sum() > 0
