"""Train a neurocodec video model, stage by stage, from a JSON config.

    python -m training.train training/configs/starter.json --out runs/starter

Reads top to bottom: config, data, model, optimizers, then one loop over the
config's stages. The loss is ``lambda(q) * 255^2 * MSE + bpp`` with the quality
``q`` drawn uniformly per sample, so one model learns the whole rate range.

Stages (the order the learned-video-coding literature uses):

- ``intra``:  the I-frame coder on single frames;
- ``motion``: the motion coder alone, judged on its warped prediction
  (the I-frame coder frozen and providing the reference);
- ``inter``:  the whole P-frame coder, one P-frame after each I-frame;
- ``multi``:  several P-frames in a chain with gradients through the chain,
  so errors do not pile up along a group of pictures.

A checkpoint (model, optimizers, data sampler and RNG states, elapsed time)
is written every ``ckpt_every`` steps; rerunning the same command resumes
exactly where it stopped.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from neurocodec.codec import P_OFFSETS, emulated_bf16
from neurocodec.models import ModelConfig, VideoModel, to_reference
from neurocodec.models.motion import warp
from neurocodec.models.search import estimate_flow
from neurocodec.zoo import TABLE_BUFFERS, load_model

from .data import CropSampler, build_cache, training_clips

STAGES = ("intra", "motion", "inter", "multi")


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    frames: int = 1  #: frames per training sequence (1 I-frame + frames-1 P-frames)
    lr: float = 1e-4
    #: multiplies lambda: a motion warm-up with a larger weight on the warped
    #: prediction's error makes spending bits on motion worth it early on.
    lambda_scale: float = 1.0
    #: weight of the drift penalty (P-frame stages): how much a flip in the
    #: reference spreads into the decoded frame, see :func:`drift_gain`.
    drift: float = 0.0
    #: weight of the L1 distance (pixels) between the decoded flow and the
    #: block-matching estimate (models with ``motion_search``): a teacher that
    #: gets the motion coder moving, as a pretrained optical flow network does
    #: in the literature. Without it in the P-frame stages, joint training
    #: was measured to drop motion altogether (0 motion bits, a blurred
    #: reference) before it pays off.
    flow_hint: float = 0.0
    #: code each sequence's P-frames at the encoder's quality offsets (``neurocodec.codec.P_OFFSETS``),
    #: from a random place in their cycle per sample: the coder then learns from references of the
    #: varying quality the encoder gives them, as DCVC-DC trains for its hierarchical quality.
    p_offsets: bool = False
    #: decay of an exponential moving average of the weights (0: none). The stage's result (what the
    #: next stage starts from and export writes) is the average, not the last step's weights: at the
    #: small batches a CPU affords, the last step's weights carry its batch's noise, and runs that
    #: differed only in their seed were measured to differ as much as an hour of training gains
    #: (the average of one such run's last ~100 steps coded 0.4 % fewer bits than its last step).
    ema: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    stages: tuple[Stage, ...]
    batch: int = 8
    crop: int = 128
    seed: int = 0
    video_dir: str = "../shared/video"
    cache_dir: str = "data/cache"
    max_frames_per_clip: int = 150
    log_every: int = 25
    ckpt_every: int = 200
    threads: int = 2

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        raw = json.loads(Path(path).read_text())
        raw["model"] = ModelConfig(**raw.get("model", {}))
        raw["stages"] = tuple(Stage(**s) for s in raw["stages"])
        for s in raw["stages"]:
            if s.name not in STAGES:
                raise ValueError(f"unknown stage {s.name!r}; stages are {STAGES}")
        return cls(**raw)


def rd_terms(x: torch.Tensor, x_hat: torch.Tensor, likelihoods: list[torch.Tensor]):
    """Per-sample MSE [B] and bits per pixel [B]."""
    mse = (x_hat - x).pow(2).flatten(1).mean(1)
    pixels = x.shape[-2] * x.shape[-1]
    bpp = sum(-torch.log2(lik).flatten(1).sum(1) for lik in likelihoods) / pixels
    return mse, bpp


def ste_reference(x_hat: torch.Tensor) -> torch.Tensor:
    """The decoder's 8-bit reference in the forward pass, gradients straight through."""
    x = x_hat.float().clamp(0.0, 1.0)
    return x + (to_reference(x) - x).detach()


#: Share of reference values :func:`drift_gain` flips by one 8-bit step.
DRIFT_PROBE_DENSITY = 0.01
#: The gain the drift penalty pushes below (only the excess is penalized).
#: Pushing to 0.8 made the decoder blur its reference (and stop using motion);
#: 1.08 already cut the measured bf16 drift after 42 frames from 31 dB to 7 dB.
DRIFT_TARGET = 1.0


def drift_gain(model: VideoModel, out: dict, ref: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """L1 gain [B] from sparse one-step flips of the P-decoder's reference to its output.

    Two decoders of one stream (devices, precisions) round their 8-bit
    references differently here and there: isolated one-step flips. Each
    P-frame passes them on; after its own rounding, the number of flipped
    values it outputs tracks this linear L1 gain (measured: 1.3 to 1.9 for
    an untrained-for-it model, and the flip count followed within 2%). Above
    1 the difference spreads frame after frame (drift accumulates along the
    GOP); below 1 it dies out.

    Under ``--amp`` both decodes run in float32: one bfloat16 decode's own
    rounding (~0.4%) is as large as a flip, and the gain measured against it
    was noise (2.4 to 2.9 where float32 training measured 0.97, on an H200).
    """
    amp = torch.is_autocast_enabled(ref.device.type)
    if amp:  # the parsed stream and the reference as float32, as a float32 decoder holds them
        out = {**out, "flow": out["flow"].float(), "hyper": out["hyper"].float(), "symbols": out["symbols"].float()}
        ref = ref.float()
    flips = (torch.rand_like(ref) < DRIFT_PROBE_DENSITY) * torch.randn_like(ref).sign() / 255.0
    with torch.autocast(ref.device.type, enabled=False):
        base = model.inter.redecode(out, ref, q) if amp else out["x_hat"]
        moved = model.inter.redecode(out, ref + flips, q)
    return (moved - base).abs().flatten(1).sum(1) / flips.abs().flatten(1).sum(1).clamp_min(1 / 255.0)


def p_frame_qualities(stage: Stage, q: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The quality [B] of each of a sequence's ``n`` P-frames: ``q``, or with ``stage.p_offsets`` ``q``
    plus the encoder's offsets from a random phase per sample, clamped to [0, 1] as the encoder does."""
    if not stage.p_offsets:  # draws nothing: runs without offsets keep their random streams
        return [q] * n
    offsets = torch.tensor(P_OFFSETS, device=q.device, dtype=q.dtype)
    phase = torch.randint(len(P_OFFSETS), q.shape, device=q.device)
    return [(q + offsets[(phase + t) % len(P_OFFSETS)]).clamp(0.0, 1.0) for t in range(n)]


def stage_loss(model: VideoModel, stage: Stage, seq: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss and logged stats (per-sample ``mse``, ``bpp``, ``gain``) of one batch ``seq`` [B, T, 3, H, W]."""
    def lam(q: torch.Tensor) -> torch.Tensor:  # the distortion's weight at quality q [B]
        return model.lmbda(q) * 255.0**2 * stage.lambda_scale

    x0 = seq[:, 0]
    if stage.name == "intra":
        out = model.intra(x0, q)
        mse, bpp = rd_terms(x0, out["x_hat"], list(out["likelihoods"].values()))
        return {"loss": (lam(q) * mse + bpp).mean(), "mse": mse, "bpp": bpp}
    with torch.no_grad():
        # references stay float32 under --amp: bfloat16 cannot hold every 8-bit level k/255
        ref = to_reference(model.intra(x0, q)["x_hat"].float())
    teach = stage.flow_hint > 0 and model.config.motion_search
    if stage.name == "motion":
        hint = estimate_flow(seq[:, 1], ref) if teach else None
        flow, lik = model.inter.motion(seq[:, 1], ref, q, hint)
        mse, bpp = rd_terms(seq[:, 1], warp(ref, flow), list(lik.values()))
        loss = (lam(q) * mse + bpp).mean() + (stage.flow_hint * (flow[:, :2] - hint).abs().mean() if teach else 0)
        return {"loss": loss, "mse": mse, "bpp": bpp}
    losses, mses, bpps, gains = [], [], [], []
    for t, qt in enumerate(p_frame_qualities(stage, q, seq.shape[1] - 1), 1):
        hint = estimate_flow(seq[:, t], ref.detach()) if teach else None
        out = model.inter(seq[:, t], ref, qt, hint)
        mse, bpp = rd_terms(seq[:, t], out["x_hat"], list(out["likelihoods"].values()))
        # the teacher keeps the motion coder from trading motion for bits early in joint training
        loss = (lam(qt) * mse + bpp).mean()
        if teach:
            loss = loss + stage.flow_hint * (out["flow"][:, :2] - hint).abs().mean()
        if stage.drift:
            gains.append(drift_gain(model, out, ref, qt))
            loss = loss + stage.drift * (gains[-1] - DRIFT_TARGET).relu().mean()
        losses.append(loss)
        mses.append(mse)
        bpps.append(bpp)
        ref = ste_reference(out["x_hat"]) if stage.name == "multi" else to_reference(out["x_hat"].float()).detach()
    stats = {"loss": torch.stack(losses).mean(), "mse": torch.stack(mses).mean(0), "bpp": torch.stack(bpps).mean(0)}
    if gains:
        stats["gain"] = torch.stack(gains).mean(0)
    return stats


def widened(parent: dict[str, torch.Tensor], child: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``parent``'s weights fitted into ``child``'s shapes, for fine-tuning a model with new inputs.

    A kernel whose only difference is more input channels (dim 1) keeps the
    parent's weights and gets zeros for the new channels, so the child starts
    out computing exactly what the parent did and learns to use the new inputs.
    """
    out = dict(parent)
    for name, theirs in parent.items():
        mine = child.get(name)
        if mine is not None and mine.shape != theirs.shape and mine.dim() > 1 \
                and mine.shape[:1] + mine.shape[2:] == theirs.shape[:1] + theirs.shape[2:] \
                and mine.shape[1] > theirs.shape[1]:
            grown = torch.zeros_like(mine)
            grown[:, : theirs.shape[1]] = theirs
            out[name] = grown
    return out


def load_matching(model: torch.nn.Module, parent: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load ``parent``'s weights into ``model`` wherever names and shapes match (after
    :func:`widened`), for ``--init`` from another architecture (another motion coder).
    Returns the model's keys that start fresh and the parent's that are dropped."""
    mine = model.state_dict()
    weights = widened(parent, mine)
    kept = {k: v for k, v in weights.items() if k in mine and v.shape == mine[k].shape}
    model.load_state_dict(kept, strict=False)
    return sorted(set(mine) - set(kept)), sorted(set(weights) - set(kept))


def module_names(keys: list[str]) -> list[str]:
    """The modules (``inter.motion.prior``, ...) that a list of state-dict keys belongs to, for messages."""
    return sorted({k.rsplit(".", 2)[0] for k in keys})


def param_groups(model: VideoModel, stage: Stage) -> list[dict]:
    """The parameters a stage trains (never the factorized models' quantiles).

    The factorized hyper-latent densities learn at 10x the rate: from their
    broad initialisation they otherwise take far longer than the transforms
    to tighten, and every frame pays for the hyper-latent in the meantime.
    """
    module = {"intra": model.intra, "motion": model.inter.motion}.get(stage.name, model.inter)
    named = [(n, p) for n, p in module.named_parameters() if not n.endswith("quantiles")]
    density = [p for n, p in named if ".z_model." in n]
    rest = [p for n, p in named if ".z_model." not in n]
    return [{"params": rest, "lr": stage.lr, "base_lr": stage.lr},
            {"params": density, "lr": 10 * stage.lr, "base_lr": 10 * stage.lr}]


class TrainStep(torch.nn.Module):
    """One batch's losses as a module, so DistributedDataParallel can wrap it.

    The factorized priors' auxiliary (quantile) loss rides along: its gradients
    land on parameters the rate-distortion loss never touches, so one backward
    pass serves both optimizers and DDP averages both across processes.
    """

    def __init__(self, model: VideoModel):
        super().__init__()
        self.model = model

    def forward(self, stage: Stage, seq: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**stage_loss(self.model, stage, seq, q), "aux": self.model.aux_loss()}


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of a model's floating-point tensors (parameters and buffers): what :func:`ema_update` averages."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def ema_update(average: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * weights``, in place."""
    state = model.state_dict()
    for key, avg in average.items():
        avg.lerp_(state[key], 1.0 - decay)


def run_record(ck: dict) -> dict:
    """What a checkpoint's run did, for the model card: its config, the steps it
    actually ran (a run stopped early ran fewer than its config says), time, hardware."""
    stages, idx, step = ck["config"]["stages"], ck["stage_idx"], ck["step"]
    done = stages[:idx] + ([{**stages[idx], "steps": step}] if step else [])
    stopped = sum(s["steps"] for s in done) if idx < len(stages) else None
    return {"config_path": ck.get("config_path"), "stages": done, "stop_after": stopped,
            "elapsed": ck["elapsed"], "hardware": ck.get("hardware", ""), "amp": ck.get("amp", False),
            "channels_last": ck.get("channels_last", False), "init": ck.get("init"), "init_hash": ck.get("init_hash"),
            "video_dir": ck.get("video_dir", ck["config"].get("video_dir")),
            "batch": ck["config"].get("batch"), "crop": ck["config"].get("crop")}


def rerun_args(run: dict, k: int, name: str, runs_dir: str = "runs") -> list[str]:
    """The ``training.train`` arguments that rerun run ``k`` of a chain recorded by :func:`run_record`
    into ``RUNS_DIR/NAME-k``: the inverse of the record, shared by the model card and ``training.replay``.

    A run's parent is always the chain's previous run, never the name it was given then
    (``--init nc-starter`` meant the weights shipped that day, not today's). A parent that was
    shipped weights (its hash is recorded) is the previous run exported, as it was then: export
    rounds kernels to float16, so its checkpoint would be another starting point.
    """
    argv = [run["config_path"], "--out", f"{runs_dir}/{name}-{k}"]
    if k:
        parent = f"{runs_dir}/{name}-{k - 1}"
        argv += ["--init", f"{parent}/{name}.safetensors" if run.get("init_hash") else f"{parent}/ckpt.pt"]
    if run.get("stop_after"):
        argv += ["--stop-after", str(run["stop_after"])]
    if run.get("video_dir", TrainConfig.video_dir) != TrainConfig.video_dir:
        argv += ["--video-dir", run["video_dir"]]
    if run.get("amp"):
        argv.append("--amp")
    if run.get("channels_last"):  # a memory format, but its float rounding differs: an exact rerun needs it
        argv.append("--channels-last")
    return argv


def parent_of(init: str) -> tuple[dict[str, torch.Tensor], list[dict], str | None]:
    """Model weights, run history (for the model card) and, for shipped weights, their hash, that
    ``--init`` names (a model name says which weights only until new ones replace them).

    A run's checkpoint (``.pt``), or shipped weights: those carry their
    history in the file and need no checkpoint, which is what a leased GPU
    machine with a small upload can take. Their entropy tables are dropped
    (training rebuilds none; export recomputes them) and their kernels are
    the float16-rounded ones export wrote.
    """
    if Path(init).suffix == ".pt":
        parent = torch.load(init, map_location="cpu", weights_only=False)
        return parent["model"], parent.get("history", []) + [run_record(parent)], None
    shipped = load_model(init)
    weights = {k: v for k, v in shipped.state_dict().items() if k.rsplit(".", 1)[-1] not in TABLE_BUFFERS}
    fresh = VideoModel(shipped.config).state_dict()
    weights.update({k: v for k, v in fresh.items() if k.rsplit(".", 1)[-1] in TABLE_BUFFERS})
    return weights, shipped.history, shipped.weight_hash


class RunLock:
    """One training process per run folder.

    Two processes writing one folder interleave their logs and overwrite each
    other's checkpoints, and the result is neither run (it happened: a run
    that ignored the interrupt meant to stop it, started in the background,
    kept going beside its restart). The lock is an ``flock`` on a file in the
    folder, released by the kernel whenever the process ends, so it never goes
    stale; and before each checkpoint the run checks that its folder is still
    the one it locked (not moved away and replaced by another run's).
    """

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.handle = self.path.open("w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise SystemExit(f"{folder} is being trained by another process (it holds {self.path})") from None
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def check(self) -> None:
        """Stop if the folder was moved or taken over since the lock was taken."""
        try:
            same = os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise SystemExit(f"{self.path.parent} is no longer this run's folder (moved or replaced): stopping "
                             "without writing into it")


def save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def setup_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under ``torchrun``; (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world, device


def gather(obj):
    """Every process's ``obj``, in rank order (a list of one without torchrun)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def past(deadline: float | None, device: str) -> bool:
    """Whether the run's time limit has passed, decided by rank 0's clock so that all ranks stop at one step."""
    if deadline is None:
        return False
    if not dist.is_initialized():
        return time.monotonic() > deadline
    flag = torch.tensor([time.monotonic() > deadline], dtype=torch.int32, device=device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def rng_state(device: str) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="run folder: checkpoints and log")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--video-dir", help="override the config's video folder")
    ap.add_argument("--init", metavar="CKPT|MODEL",
                    help="start from the weights of another run's checkpoint, or of shipped "
                         "weights (a model name or .safetensors file): fine-tuning")
    ap.add_argument("--stop-after", type=int, metavar="STEPS",
                    help="checkpoint and exit after this many steps (time-boxed runs); rerun to resume")
    ap.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="checkpoint and exit after the first step that ends this long after the start "
                         "(a lease's end: nothing since the last checkpoint is lost); rerun to resume")
    ap.add_argument("--amp", action="store_true",
                    help="bfloat16 autocast for the transforms (entropy models stay float32)")
    ap.add_argument("--channels-last", action="store_true",
                    help="channels-last memory format for the transforms (oneDNN and tensor-core kernels)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    args = ap.parse_args(argv)
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit

    cfg = TrainConfig.load(args.config)
    rank, world, device = setup_distributed(args.device)
    main_process = rank == 0
    if args.amp and main_process and emulated_bf16(torch.device(device)):
        print("warning: this CPU has no bfloat16 units, so --amp emulates bfloat16 and trains several times "
              "slower than float32 (docs/results/cpu-train-speed/); leave it out here")
    saved = args.out / "config.json"
    if (args.out / "ckpt.pt").exists() and saved.exists() \
            and json.loads(saved.read_text()) != json.loads(args.config.read_text()):
        # a resumed run must keep its step counts and schedules, or it is not the run it was
        raise SystemExit(f"{args.out} was started with another config: resume with {saved}, "
                         f"or start a new run (--out)")
    if main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(args.out)
        saved.write_text(args.config.read_text())
    torch.set_num_threads(cfg.threads)
    torch.backends.cudnn.benchmark = device.startswith("cuda")  # fixed crop size: tuned kernels pay
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)

    # data: decoded once by the main process, then read by all
    clips = training_clips(Path(args.video_dir or cfg.video_dir))
    if main_process:
        build_cache(clips, Path(cfg.cache_dir), max_frames=cfg.max_frames_per_clip)
    if world > 1:
        dist.barrier()
    files = build_cache(clips, Path(cfg.cache_dir), max_frames=cfg.max_frames_per_clip)
    frames = max(s.frames for s in cfg.stages)
    sampler = CropSampler(files, cfg.crop, max(frames, 2), seed=cfg.seed + rank)

    # model and optimizers
    model = VideoModel(cfg.model).to(device).train()
    if args.channels_last:  # before loading: load_state_dict copies into the parameters, keeping their format
        model = model.to(memory_format=torch.channels_last)
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    ckpt_path = args.out / "ckpt.pt"
    first_stage, step, elapsed, opt_state, ema_state = 0, 0, 0.0, None, None
    history: list[dict] = []  # the runs this one started from (--init), for the model card
    init_hash: str | None = None  # weight hash of shipped weights named by --init
    if ckpt_path.exists():
        # on the CPU first: RNG states must stay CPU ByteTensors (load_state_dict moves the rest)
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"], strict=False)
        aux_opt.load_state_dict(ck["aux_opt"])
        first_stage, step, elapsed, opt_state = ck["stage_idx"], ck["step"], ck["elapsed"], ck["opt"]
        ema_state = ck.get("ema")
        history, init_hash = ck.get("history", []), ck.get("init_hash")
        sampler.rng.bit_generator.state = ck["sampler"][rank]
        torch.set_rng_state(ck["rng"][rank]["cpu"])
        if "cuda" in ck["rng"][rank]:
            torch.cuda.set_rng_state(ck["rng"][rank]["cuda"], device)
        if main_process:
            print(f"resumed at stage {first_stage} step {step}")
    elif args.init is not None:
        weights, history, init_hash = parent_of(args.init)
        fresh, dropped = load_matching(model, weights)
        if main_process:
            print(f"initialized from {args.init}")
            if fresh or dropped:  # another architecture (e.g. another motion coder): say what did not carry over
                print(f"  {len(fresh)} tensors start fresh ({', '.join(module_names(fresh))}); "
                      f"{len(dropped)} of the parent's are dropped ({', '.join(module_names(dropped))})")
    train_step: torch.nn.Module = TrainStep(model)
    if world > 1:
        train_step = torch.nn.parallel.DistributedDataParallel(train_step, find_unused_parameters=True)
    if args.compile:
        train_step = torch.compile(train_step)
    hardware = (f"{platform.processor() or platform.machine()}, {world} x {device.split(':')[0]}"
                + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else "")
                + f", {cfg.threads} threads")

    log = (args.out / "log.jsonl").open("a") if main_process else None
    steps_left = args.stop_after
    stop = False
    for stage_idx in range(first_stage, len(cfg.stages)):
        stage = cfg.stages[stage_idx]
        opt = torch.optim.Adam(param_groups(model, stage))
        if opt_state is not None:
            opt.load_state_dict(opt_state)
            opt_state = None
        average = (ema_state or float_state(model)) if stage.ema else None
        ema_state = None
        bar = tqdm(range(step, stage.steps), desc=stage.name, initial=step, total=stage.steps,
                   disable=not main_process)
        for step in bar:
            t0 = time.perf_counter()
            for group in opt.param_groups:  # 10x lower learning rate for the last 15%
                group["lr"] = group["base_lr"] * (0.1 if step >= 0.85 * stage.steps else 1.0)
            seq = sampler.batch(cfg.batch)[:, : max(stage.frames, 2)].to(device)
            q = torch.rand(cfg.batch, device=device)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.amp):
                stats = train_step(stage, seq, q)
            opt.zero_grad(set_to_none=True)
            aux_opt.zero_grad(set_to_none=True)
            (stats["loss"] + stats["aux"]).backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            aux_opt.step()
            if average is not None:
                ema_update(average, model, stage.ema)
            elapsed += time.perf_counter() - t0
            if main_process and (step % cfg.log_every == 0 or step == stage.steps - 1):
                psnr = (10 * torch.log10(1 / stats["mse"].float().clamp_min(1e-10))).mean().item()
                rec = {"stage": stage.name, "step": step, "loss": stats["loss"].item(),
                       "bpp": stats["bpp"].mean().item(), "psnr": psnr, "aux": stats["aux"].item(),
                       "elapsed_s": round(elapsed, 3)}
                if "gain" in stats:
                    rec["drift_gain"] = stats["gain"].mean().item()
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.3f}", bpp=f"{rec['bpp']:.3f}", psnr=f"{psnr:.2f}",
                                **({"gain": f"{rec['drift_gain']:.2f}"} if "gain" in stats else {}))
            if steps_left is not None:
                steps_left -= 1
            done = step == stage.steps - 1
            stop = steps_left == 0 or (not done and past(deadline, device))
            if done and average is not None:  # the stage's result is its average (copied in, keeping formats)
                model.load_state_dict(average, strict=False)
            if (step + 1) % cfg.ckpt_every == 0 or done or stop:
                samplers, rngs = gather(sampler.rng.bit_generator.state), gather(rng_state(device))
                if main_process:
                    lock.check()
                    save(ckpt_path, {
                        "model": model.state_dict(), "opt": None if done else opt.state_dict(),
                        "aux_opt": aux_opt.state_dict(), "stage_idx": stage_idx + done,
                        "step": 0 if done else step + 1, "elapsed": elapsed,
                        "ema": None if done else average, "sampler": samplers, "rng": rngs,
                        "config": json.loads(args.config.read_text()), "config_path": str(args.config),
                        "history": history, "hardware": hardware, "amp": args.amp,
                        "channels_last": args.channels_last, "init": args.init,
                        "init_hash": init_hash,
                        "video_dir": str(args.video_dir or cfg.video_dir),
                    })
            if stop:
                if main_process:
                    log.close()
                    print(f"stopped ({'--stop-after steps' if steps_left == 0 else '--time-limit'}); "
                          f"checkpoint: {ckpt_path}")
                break
        if stop:
            break
        step = 0
    if main_process and not stop:
        log.close()
        print(f"done: {ckpt_path} ({elapsed / 60:.1f} min of training)")
    if world > 1:  # leave together: a process exiting mid-collective aborts its peer
        # Free DDP's reducer while the process group is still registered, so that it is not what
        # destroys the group. Left to interpreter exit, it dropped the group's last reference with
        # the GIL held and joined gloo's worker thread, which was waiting for the GIL to free the
        # barrier's work: a hang of the torchrun smoke test (a gdb backtrace of the stuck rank).
        del train_step
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
