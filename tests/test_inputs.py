"""Bad input is refused with a ValueError that names what was expected and what came."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA

from .helpers import tiny_config

CFG = tiny_config()  # M = 3, 32 x 32 images, audio (T, F) = (20, 24)
V = (2, 3, 3, 32, 32)
A = (2, 3, 20, 24)

CASES = {
    "video rank": (torch.randn(2, 3, 32, 32), torch.randn(A),
                   r"expected video of shape \(B, M, 3, H, W\).*got \(2, 3, 32, 32\)"),
    "video frames": (torch.randn(2, 4, 3, 32, 32), torch.randn(A), r"M = 3.*got \(2, 4, 3, 32, 32\)"),
    "video size": (torch.randn(2, 3, 3, 48, 48), torch.randn(A), r"H x W = 32 x 32.*got \(2, 3, 3, 48, 48\)"),
    "video channels": (torch.randn(2, 3, 1, 32, 32), torch.randn(A), r"got \(2, 3, 1, 32, 32\)"),
    "K != M": (torch.randn(V), torch.randn(2, 2, 20, 24), r"K = M = 3.*got \(2, 2, 20, 24\)"),
    "spectrogram size": (torch.randn(V), torch.randn(2, 3, 24, 20), r"\(T, F\) = \(20, 24\).*got \(2, 3, 24, 20\)"),
    "audio rank": (torch.randn(V), torch.randn(2, 3, 20), r"expected audio of shape \(B, K, T, F\)"),
    "integer video": (torch.randint(0, 255, V, dtype=torch.uint8), torch.randn(A),
                      r"video to be a floating-point tensor, got dtype torch.uint8"),
    "integer audio": (torch.randn(V), torch.zeros(A, dtype=torch.int64), r"audio to be a floating-point.*int64"),
    "batch mismatch": (torch.randn(V), torch.randn(3, 3, 20, 24), r"same batch size, got 2 and 3"),
    "dtype mismatch": (torch.randn(V, dtype=torch.float64), torch.randn(A, dtype=torch.float64),
                       r"model's dtype torch.float32.*got torch.float64"),
    "empty batch": (torch.randn(0, 3, 3, 32, 32), torch.randn(0, 3, 20, 24), r"non-empty batch"),
    "not a tensor": ([[1.0]], torch.randn(A), r"video to be a torch.Tensor"),
}


@pytest.mark.parametrize("impl", [ReferenceSTGCMA, FastSTGCMA])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_value_error(impl, case):
    video, audio, message = CASES[case]
    model = impl(CFG)
    with pytest.raises(ValueError, match=message):
        model(video, audio)


@pytest.mark.parametrize("impl", [ReferenceSTGCMA, FastSTGCMA])
def test_branch_mismatch(impl):
    with pytest.raises(ValueError, match=r"expected the audio tensor: the model has branches=.audio-visual."):
        impl(CFG)(torch.randn(V), None)
    with pytest.raises(ValueError, match=r"expected audio=None: the model has branches='video'"):
        impl(tiny_config(branches="video"))(torch.randn(V), torch.randn(A))


def test_devices_differ():
    """Video and audio on different devices (meta stands in for a second device on a CPU-only machine)."""
    model = FastSTGCMA(CFG)
    with pytest.raises(ValueError, match=r"same device, got cpu and meta"):
        model(torch.randn(V), torch.randn(A, device="meta"))
    with pytest.raises(ValueError, match=r"model's device cpu, got meta"):
        model(torch.randn(V, device="meta"), torch.randn(A, device="meta"))


def test_autocast_inputs_are_accepted():
    model = FastSTGCMA(CFG).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = model(torch.randn(V, dtype=torch.bfloat16), torch.randn(A, dtype=torch.bfloat16))
    assert torch.isfinite(out.video_tokens.float()).all()


def test_spectrogram_smaller_than_a_patch_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"at least one patch \(8 x 8\), got \(T, F\) = \(4, 24\)"):
        FastSTGCMA(tiny_config(audio_size=(4, 24)))
