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
            {"name": "multi", "steps": 2, "frames": 3, "lr": 1e-4, "drift": 1.0, "p_offsets": True},
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
    other = root / "other.json"
    other.write_text(json.dumps({**json.loads(config.read_text()), "seed": 8}))
    with pytest.raises(SystemExit, match="another config"):
        train.main([str(other), "--out", str(root / "b")])  # would not be the run it resumes
    train.main([str(config), "--out", str(root / "b")])
    a = torch.load(root / "a" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(root / "b" / "ckpt.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_stage_with_ema_ends_on_the_average_of_its_steps(setup, tmp_path):
    """``ema`` leaves the steps alone and makes the stage's result their moving average, which a
    resumed run carries on exactly; the stage after it starts from that average."""
    root, config = setup
    cfg = json.loads(config.read_text())
    stages = [{"name": "intra", "steps": 2, "frames": 1, "lr": 3e-3},
              {"name": "intra", "steps": 4, "frames": 1, "lr": 3e-3, "ema": 0.5}]
    paths = {}
    for name, decay in (("ema", 0.5), ("plain", 0.0)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({**cfg, "stages": [stages[0], {**stages[1], "ema": decay}]}))

    def floats(run):
        ck = torch.load(run / "ckpt.pt", weights_only=False)
        return {k: v for k, v in ck["model"].items() if v.is_floating_point()}

    # the plain run, one step at a time from the EMA stage's start: the weights the average folds in
    train.main([str(paths["plain"]), "--out", str(tmp_path / "plain"), "--stop-after", "2"])
    expected = floats(tmp_path / "plain")
    for _ in range(4):
        train.main([str(paths["plain"]), "--out", str(tmp_path / "plain"), "--stop-after", "1"])
        for k, v in floats(tmp_path / "plain").items():
            expected[k] = 0.5 * expected[k] + 0.5 * v
    train.main([str(paths["ema"]), "--out", str(tmp_path / "ema")])
    assert [r["loss"] for r in _log(tmp_path / "ema")] == [r["loss"] for r in _log(tmp_path / "plain")]
    got = floats(tmp_path / "ema")
    assert any(not torch.equal(got[k], v) for k, v in floats(tmp_path / "plain").items())  # not the last step
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)

    train.main([str(paths["ema"]), "--out", str(tmp_path / "resumed"), "--stop-after", "4"])
    stopped = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert stopped["ema"] is not None
    train.main([str(paths["ema"]), "--out", str(tmp_path / "resumed")])
    resumed = floats(tmp_path / "resumed")
    assert all(torch.equal(resumed[k], v) for k, v in got.items())


def test_channels_last_is_a_memory_format_not_another_run(setup, tmp_path):
    """``--channels-last`` changes how the convolutions lay out memory, not what they compute: the
    same steps give the same losses within float rounding, and the checkpoint loads anywhere."""
    root, config = setup
    train.main([str(config), "--out", str(tmp_path / "a"), "--stop-after", "4"])
    train.main([str(config), "--out", str(tmp_path / "cl"), "--stop-after", "4", "--channels-last"])
    a, cl = _log(tmp_path / "a"), _log(tmp_path / "cl")
    assert [r["step"] for r in a] == [r["step"] for r in cl]
    np.testing.assert_allclose([r["loss"] for r in cl], [r["loss"] for r in a], rtol=1e-3)
    ck = torch.load(tmp_path / "cl" / "ckpt.pt", weights_only=False)
    assert any(t.dim() == 4 and not t.is_contiguous() for t in ck["model"].values())  # it did train channels-last
    assert "--channels-last" in train.rerun_args(train.run_record(ck), 0, "x")  # rounding differs: reruns keep it
    train.main([str(config), "--out", str(tmp_path / "cl"), "--stop-after", "1"])  # resumes without the flag


def test_time_limit_checkpoints_and_exits_after_the_step_that_passes_it(setup, capsys):
    """A lease's end: the run stops at a step boundary with a checkpoint it resumes from."""
    root, config = setup
    train.main([str(config), "--out", str(root / "t"), "--time-limit", "0"])
    ck = torch.load(root / "t" / "ckpt.pt", weights_only=False)
    assert (ck["stage_idx"], ck["step"]) == (0, 1) and ck["opt"] is not None
    assert "stopped (--time-limit)" in capsys.readouterr().out
    assert len(_log(root / "t")) == 1


def test_amp_and_torchrun_ddp_smoke(setup, tmp_path):
    """bfloat16 autocast trains on CPU; two processes under torchrun (gloo) train and checkpoint,
    and stop together at a time limit (rank 0's clock decides for both)."""
    import os
    import signal
    import subprocess
    import sys

    root, config = setup
    train.main([str(config), "--out", str(tmp_path / "amp"), "--amp", "--stop-after", "3"])
    assert all(np.isfinite(r["loss"]) for r in _log(tmp_path / "amp"))
    # its own process group: on a timeout the ranks go too, not only the launcher
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.train", str(config), "--out", str(tmp_path / "ddp"), "--device", "cpu",
         "--time-limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-2000:]
    ck = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=False)
    assert ck["step"] == 1 and len(ck["sampler"]) == 2 and ck["sampler"][0] != ck["sampler"][1]


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


def test_p_offsets_train_each_p_frame_at_the_encoders_quality(tiny_model):
    """With ``p_offsets`` the P-frames of a sequence follow the encoder's cycle of offsets from a
    random phase per sample (clamped to [0, 1]), and each frame is coded and weighted at its own
    quality; without it every frame gets ``q`` and no random number is drawn (older runs replay)."""
    import copy

    from neurocodec.codec import P_OFFSETS

    stage = train.Stage("multi", 1, frames=9, p_offsets=True)
    q = torch.full((64,), 0.5)
    qs = torch.stack(train.p_frame_qualities(stage, q, 8), 1)
    cycles = [(0.5 + torch.tensor(P_OFFSETS).roll(-k)).repeat(2) for k in range(len(P_OFFSETS))]
    phases = [next(k for k, c in enumerate(cycles) if torch.allclose(row, c)) for row in qs]
    assert set(phases) == set(range(len(P_OFFSETS)))
    ends = torch.stack(train.p_frame_qualities(stage, torch.tensor([0.0, 1.0]), 8), 1)  # clamped as the encoder
    assert [{round(v, 4) for v in row.tolist()} for row in ends] == [{0.0, 0.15}, {0.9, 1.0}]
    state = torch.get_rng_state()
    assert all(x is q for x in train.p_frame_qualities(train.Stage("multi", 1, frames=3), q, 2))
    assert torch.equal(state, torch.get_rng_state())

    model = copy.deepcopy(tiny_model).train()
    seen = []
    forward = model.inter.forward
    model.inter.forward = lambda x, ref, q, hint=None: seen.append(q) or forward(x, ref, q, hint)
    seq = torch.from_numpy(moving_pattern(64, 64, 4, seed=1)).permute(0, 3, 1, 2).float().div(255)[None]
    train.stage_loss(model, train.Stage("multi", 1, frames=4, p_offsets=True), seq, torch.tensor([0.5]))
    assert any(torch.allclose(torch.cat(seen), c[:3]) for c in cycles)


def test_drift_gain_under_amp_measures_the_flips_not_bfloat16(tiny_model):
    """Under bfloat16 autocast the gain compares two float32 decodes: it matches
    the float32 gain, where against the bfloat16 output it would be rounding noise."""
    import copy

    from neurocodec.models import to_reference

    model = copy.deepcopy(tiny_model).train()
    seq = torch.from_numpy(moving_pattern(64, 64, 2, seed=2)).permute(0, 3, 1, 2).float().div(255)
    q = torch.tensor([0.5])
    ref = to_reference(model.intra(seq[:1], q)["x_hat"]).detach()
    gains = []
    for amp in (False, True):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model.inter(seq[1:], ref.bfloat16() if amp else ref, q)  # as training holds it
            gains.append(train.drift_gain(model, out, ref, q))
    assert torch.isfinite(gains[1]).all()
    torch.testing.assert_close(gains[1], gains[0], rtol=0.05, atol=0)


def test_budget_fits_steps_to_the_time_left(setup, tmp_path):
    """The probe times every stage; the fitted config keeps the stages' proportions."""
    from training import budget

    root, config = setup
    fitted = tmp_path / "fitted.json"
    budget.main([str(config), "--seconds", "30", "--out", str(fitted), "--probe", "5"])
    raw, out = json.loads(config.read_text()), json.loads(fitted.read_text())
    assert [s["name"] for s in out["stages"]] == [s["name"] for s in raw["stages"]]
    assert out["stages"][0]["steps"] > out["stages"][1]["steps"]  # 40 : 2 in the source config
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"stage": s, "step": i, "elapsed_s": t})
                             for s, i, t in [("intra", 0, 5.0), ("intra", 1, 5.1), ("intra", 2, 5.2),
                                             ("intra", 3, 5.4), ("intra", 4, 5.6),
                                             ("multi", 0, 9.0), ("multi", 2, 9.5), ("multi", 4, 10.5)]))
    times = budget.step_times(log)  # warm-up steps (0, 1) left out
    assert times == pytest.approx({"intra": 0.2, "multi": 0.5})
    plan = budget.fit({"stages": [{"name": "intra", "steps": 100}, {"name": "multi", "steps": 20}]}, times, 60)
    assert [s["steps"] for s in plan["stages"]] == [200, 40]  # 100*0.2 + 20*0.5 = 30 s, doubled


def test_init_from_shipped_weights_carries_their_history(setup, tiny_model, tmp_path):
    """``--init`` takes a .safetensors file: its weights, and its training runs for the model card."""
    import copy

    from neurocodec.zoo import load_model, save_model

    root, config = setup
    shipped = tmp_path / "shipped.safetensors"
    history = [{"config_path": "x.json", "stages": [], "elapsed": 60.0, "hardware": "cpu"}]
    save_model(copy.deepcopy(tiny_model), shipped, "tiny", training=json.dumps(history))
    run = tmp_path / "run"
    train.main([str(config), "--out", str(run), "--init", str(shipped), "--stop-after", "1"])
    ck = torch.load(run / "ckpt.pt", weights_only=False)
    assert ck["history"] == history and ck["init"] == str(shipped)
    weights, _, digest = train.parent_of(str(shipped))
    assert ck["init_hash"] == digest == load_model(shipped).weight_hash
    parent = load_model(shipped).state_dict()
    key = "intra.g_s.0.weight"
    assert torch.equal(weights[key], parent[key])


def test_pack_writes_the_cached_frames_near_losslessly(setup, tmp_path, capsys):
    from neurocodec.io import read_frames
    from training import data, pack

    root, config = setup
    videos = root / "videos"
    pack.main([str(videos), "--out", str(tmp_path), "--max-frames", "5", "--crf", "10"])
    for clip in data.training_clips(videos):
        packed = np.stack(list(read_frames(tmp_path / f"{clip.stem}.mp4")))
        assert packed.shape == data.cache_frames(clip, 5).shape
        assert pack.psnr(packed, data.cache_frames(clip, 5)) > 35
    assert "total" in capsys.readouterr().out


def test_export_writes_weights_that_code_and_a_card(setup, tmp_path):
    import neurocodec
    from neurocodec.zoo import load_model
    from training import export

    root, config = setup
    run = tmp_path / "run"
    train.main([str(config), "--out", str(run), "--stop-after", "45"])  # one step into the last stage
    export.main([str(run / "ckpt.pt"), "--name", "tiny-x", "--out", str(tmp_path / "w")])
    model = load_model(tmp_path / "w" / "tiny-x.safetensors")
    card = (tmp_path / "w" / "tiny-x.md").read_text()
    assert "intra: 40 steps, 1 frames per sequence" in card
    assert "multi: 1 steps, 3 frames per sequence, lr 0.0001, drift 1, P-frames at the encoder's quality" in card
    frames = moving_pattern(64, 48, 3, seed=1)
    decoded = neurocodec.decode(neurocodec.encode(frames, model=model, quality=0.5), model=model)
    assert decoded.shape == frames.shape


def test_one_process_per_run_folder(tmp_path):
    lock = train.RunLock(tmp_path)
    with pytest.raises(SystemExit, match="another process"):
        train.RunLock(tmp_path)
    lock.check()
    (tmp_path / ".lock").unlink()
    (tmp_path / ".lock").write_text("someone else's\n")  # the folder was replaced under the run
    with pytest.raises(SystemExit, match="no longer this run's folder"):
        lock.check()


def test_the_gpu_session_fine_tunes_the_shipped_architecture():
    """training/gpu_session.sh fine-tunes --init nc-starter with gpu.json: a config of another
    architecture would silently train fresh modules in place of the shipped ones."""
    from pathlib import Path

    from neurocodec.models import ModelConfig
    from neurocodec.zoo import load_model

    config = json.loads((Path(train.__file__).parent / "configs" / "gpu.json").read_text())["model"]
    assert ModelConfig(**config) == load_model("nc-starter").config


@pytest.mark.parametrize("name", ["nc-starter", "nc-small"])
def test_a_model_card_reruns_from_committed_configs(name):
    """Every training command in a shipped model's card names a config in the repository,
    and the last one builds the shipped architecture: the card is the recipe to rerun."""
    import re
    from pathlib import Path

    from neurocodec.models import ModelConfig
    from neurocodec.zoo import load_model

    root = Path(train.__file__).parent.parent
    card = (root / "neurocodec" / "weights" / f"{name}.md").read_text()
    configs = re.findall(r"python -m training\.train (\S+)", card)
    assert configs and all((root / c).is_file() for c in configs), configs
    last = json.loads((root / configs[-1]).read_text())["model"]
    assert ModelConfig(**last) == load_model(name).config


def test_replay_reruns_a_chain_through_shipped_weights_exactly(setup, tmp_path, capsys):
    """A two-run chain whose second run started from exported weights, replayed from the weights
    file alone (its first run interrupted and resumed), gives the same weights, hash for hash."""
    from neurocodec.zoo import load_model
    from training import export, replay

    root, config = setup
    train.main([str(config), "--out", str(tmp_path / "a"), "--stop-after", "3"])
    parent, parent_hash = export.export(tmp_path / "a" / "ckpt.pt", "chain", tmp_path / "w1")
    train.main([str(config), "--out", str(tmp_path / "b"), "--init", str(parent), "--stop-after", "2"])
    shipped, shipped_hash = export.export(tmp_path / "b" / "ckpt.pt", "chain", tmp_path / "w2")

    runs = tmp_path / "replay"
    train.main(train.rerun_args(load_model(shipped).history[0], 0, "chain", str(runs)) + ["--stop-after", "1"])
    capsys.readouterr()
    replay.main([str(shipped), "--runs-dir", str(runs)])
    out = capsys.readouterr().out
    assert f"parent weights {parent_hash}: the same" in out
    assert f"weights {shipped_hash}, reproduced exactly" in out
    assert load_model(runs / "chain.safetensors").weight_hash == shipped_hash
    replay.main([str(shipped), "--runs-dir", str(runs)])  # again: nothing left to train
    assert capsys.readouterr().out.count("finished") == 2


def test_replay_checks_its_inputs_before_training(setup, tmp_path):
    """A config that no longer says what the run trained, or data that is not here, stops the
    replay before its first step, not hours into it."""
    from neurocodec.zoo import load_model
    from training import export, replay

    root, config = setup
    changed = tmp_path / "config.json"
    changed.write_text(config.read_text())
    train.main([str(changed), "--out", str(tmp_path / "a"), "--stop-after", "2"])
    shipped, _ = export.export(tmp_path / "a" / "ckpt.pt", "chain", tmp_path / "w")
    runs = load_model(shipped).history
    assert replay.problems(runs) == []
    changed.write_text(json.dumps({**json.loads(config.read_text()), "crop": 32}))
    assert "no longer says what the run trained" in replay.problems(runs)[0]
    assert "not here" in replay.problems([{**runs[0], "config_path": str(config), "video_dir": "nowhere"}])[0]
    with pytest.raises(SystemExit, match="1 problem"):
        replay.main([str(shipped), "--runs-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["nc-starter", "nc-small"])
def test_a_model_card_prints_the_recorded_chain(name):
    """The card's commands are the ones ``training.replay`` runs: both are read from the record."""
    from pathlib import Path

    from neurocodec.zoo import load_model

    root = Path(train.__file__).parent.parent
    card = (root / "neurocodec" / "weights" / f"{name}.md").read_text()
    history = load_model(name).history
    for k, run in enumerate(history):
        assert f"`python -m training.train {' '.join(train.rerun_args(run, k, name))}`" in card
