"""Streams parse identically under any arithmetic: other precisions, float64, and (when present) a GPU.

The golden stream (test_codec) pins the CPU float32 result bit for bit. Here
the decoder's float arithmetic changes while the stream stays the same: the
exact entropy-parameter path must choose the same tables, so the stream
parses and the frames stay within float-rounding distance of the encoder's.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import neurocodec
from eval import drift
from neurocodec import codec
from neurocodec._compat import GDN
from neurocodec.entropy import Hyperprior
from neurocodec.metrics import psnr

from .conftest import DATA

GOLDEN = DATA / "golden.ncv"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _golden_frames(tiny_model) -> np.ndarray:
    frames = neurocodec.decode(GOLDEN, model=tiny_model)
    assert frames.shape[0] == json.loads((DATA / "golden.json").read_text())["clip"]["frames"]
    return frames


def _close(a: np.ndarray, b: np.ndarray, db: float = 35.0) -> None:
    """Same frames up to float rounding: a wrongly parsed stream gives noise, far below this."""
    assert a.shape == b.shape
    for fa, fb in zip(a, b, strict=True):
        assert psnr(fa, fb) > db


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_golden_stream_decodes_under_reduced_precision(tiny_model, precision):
    _close(neurocodec.decode(GOLDEN, model=tiny_model, precision=precision), _golden_frames(tiny_model))


def test_golden_stream_decodes_with_other_convolution_kernels(tiny_model):
    """Without oneDNN, convolutions sum in another order, as on another machine: still the same parse."""
    with torch.backends.mkldnn.flags(enabled=False):
        frames = neurocodec.decode(GOLDEN, model=tiny_model)
    _close(frames, _golden_frames(tiny_model))


def test_reduced_precision_stream_decodes_in_float32(tiny_model, clip):
    data = neurocodec.encode(clip, model=tiny_model, quality=0.7, gop=-1, precision="bf16")
    _close(neurocodec.decode(data, model=tiny_model), neurocodec.decode(data, model=tiny_model, precision="bf16"))


def test_fusion_writes_the_reference_in_float32(tiny_model):
    """Under half precision, rounding in the layer that writes the next reference
    would compound along the GOP: the P-frame fusion stays float32."""
    inter = tiny_model.inter
    torch.manual_seed(0)
    y_hat = torch.round(torch.randn(1, tiny_model.config.m, 2, 3) * 4)
    pred, q = torch.rand(1, 3, 32, 48), torch.tensor([0.5])
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feat = inter.g_s(y_hat * inter.gain.inverse(q))
            out = inter._reconstruct(y_hat, pred, q)
        expected = pred + inter.fuse(torch.cat([feat.float(), pred], dim=1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_intra_synthesis_writes_the_reference_in_float32(tiny_model):
    intra = tiny_model.intra
    torch.manual_seed(0)
    y_hat, q = torch.round(torch.randn(1, tiny_model.config.m, 2, 3) * 4), torch.tensor([0.5])
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = intra.g_s[:-1](y_hat * intra.gain.inverse(q))
            out = intra._synthesize(y_hat, q)
        expected = intra.g_s[-1](h.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("coder", ["intra", "inter"])
def test_synthesis_normalises_in_float32(tiny_model, coder):
    """Under half precision the inverse GDN's rounding would land in the frame, hence in every
    later reference: each synthesis' normalisations compute in float32 on float32 features."""
    g_s = getattr(tiny_model, coder).g_s
    gdns = [layer for layer in g_s if isinstance(layer, GDN)]
    assert gdns and all(layer.inverse for layer in gdns)
    torch.manual_seed(0)
    x = (torch.randn(1, gdns[0].beta.numel(), 4, 6) * 3).bfloat16().float()  # exact in bfloat16
    with torch.inference_mode():
        expected = [layer(x) for layer in gdns]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = [layer(x.bfloat16()) for layer in gdns]
    for out, ref in zip(got, expected, strict=True):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_table_indexes_identical_in_float64(tiny_model):
    """The hyper-latent path gives the same integers whatever the float width of its input tensor."""
    prior = next(m for m in tiny_model.modules() if isinstance(m, Hyperprior))
    z_hat = torch.round(torch.randn(1, 16, 3, 5) * 3) + prior._medians()
    _, i32 = prior.entropy_parameters(z_hat, None)
    _, i64 = copy.deepcopy(prior).double().entropy_parameters(z_hat.double(), None)
    assert torch.equal(i32, i64)


def test_unknown_precision_is_an_input_error(tiny_model):
    with pytest.raises(neurocodec.InputError, match="precision"):
        neurocodec.Encoder(8, 8, model=tiny_model, precision="int4")


@pytest.mark.parametrize("emulated", [True, False])
def test_bf16_on_a_cpu_without_bfloat16_units_warns(tiny_model, monkeypatch, emulated):
    """There bf16 is several times slower than fp32: say so, once, when the coder is made."""
    monkeypatch.setattr(codec, "emulated_bf16", lambda device: emulated)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        neurocodec.Encoder(8, 8, model=tiny_model, precision="bf16")
        neurocodec.Encoder(8, 8, model=tiny_model, precision="fp32")
    assert len(caught) == emulated
    assert all("no bfloat16 units" in str(w.message) and w.filename == __file__ for w in caught)  # the caller's line


def test_only_a_cpu_can_lack_bfloat16_units():
    assert codec.emulated_bf16(torch.device("cuda")) is False
    assert isinstance(codec.emulated_bf16(torch.device("cpu")), bool)


def test_drift_report_parses_under_every_setting(tmp_path):
    out = tmp_path / "drift.json"
    assert drift.main(["--frames", "4", "--size", "64x64", "--model", str(DATA / "tiny.safetensors"),
                       "--decode", "cpu:fp32", "cpu:bf16", "cpu-nodnn:fp32", "cuda:fp16", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["decode"]: r for r in report["rows"]}
    assert rows["cpu:fp32"]["identical_pixels"] == 1.0 and rows["cpu:fp32"]["max_abs_diff"] == 0
    worst = rows["cpu:bf16"]["psnr_vs_encoder_db"]["min"]
    assert worst is None or worst > 30  # None: identical frames (infinite PSNR)
    assert "cpu-nodnn:fp32" in rows and ("cuda:fp16" in rows) == torch.cuda.is_available()


# ---------------------------------------------------------------- on a GPU (skipped without CUDA)


@cuda
def test_exact_path_is_bit_identical_on_cuda(tiny_model):
    prior = next(m for m in tiny_model.modules() if isinstance(m, Hyperprior))
    z_hat = torch.round(torch.randn(1, 16, 6, 10) * 3) + prior._medians()
    _, cpu = prior.entropy_parameters(z_hat, None)
    _, gpu = copy.deepcopy(prior).cuda().entropy_parameters(z_hat.cuda(), None)
    assert torch.equal(cpu, gpu.cpu())


@cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cpu_stream_decodes_on_cuda(tiny_model, precision):
    gpu_model = copy.deepcopy(tiny_model)  # the decoder moves its model: keep the shared one on the CPU
    _close(neurocodec.decode(GOLDEN, model=gpu_model, device="cuda", precision=precision),
           _golden_frames(tiny_model))


@cuda
def test_cuda_stream_decodes_on_cpu(tiny_model, clip):
    gpu_model = copy.deepcopy(tiny_model)
    data = neurocodec.encode(clip, model=gpu_model, gop=-1, device="cuda", precision="fp16")
    _close(neurocodec.decode(data, model=tiny_model),
           neurocodec.decode(data, model=gpu_model, device="cuda", precision="fp16"))


@cuda
def test_entropy_workers_beside_cuda_code_as_cuda_alone(tiny_model, clip):
    """rANS in CPU worker processes, networks on the GPU: the GPU-only coder's bytes and frames."""
    gpu_model = copy.deepcopy(tiny_model)
    cuda = {"model": gpu_model, "device": "cuda", "precision": "fp16"}
    data = neurocodec.encode(clip, gop=3, **cuda)
    assert neurocodec.encode(clip, gop=3, entropy_workers=2, **cuda) == data
    assert np.array_equal(neurocodec.decode(data, entropy_workers=2, **cuda), neurocodec.decode(data, **cuda))


@cuda
def test_block_motion_streams_cross_devices():
    """Block vectors come out of the decoder as exact integers: a CPU stream decodes on the GPU
    and a GPU stream on the CPU, in half precision too, to the other device's frames."""
    from neurocodec.models import VideoModel
    from neurocodec.synthetic import moving_pattern

    from .conftest import BLOCKS

    torch.manual_seed(0)
    cpu_model = VideoModel(BLOCKS).eval()
    cpu_model.update()
    gpu_model = copy.deepcopy(cpu_model)
    frames = moving_pattern(96, 64, 5, seed=4)
    from_cpu = neurocodec.encode(frames, model=cpu_model, gop=-1)
    _close(neurocodec.decode(from_cpu, model=gpu_model, device="cuda", precision="fp16"),
           neurocodec.decode(from_cpu, model=cpu_model))
    from_gpu = neurocodec.encode(frames, model=gpu_model, gop=-1, device="cuda", precision="fp16")
    _close(neurocodec.decode(from_gpu, model=cpu_model),
           neurocodec.decode(from_gpu, model=gpu_model, device="cuda", precision="fp16"))
