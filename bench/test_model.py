"""Model benchmarks: training step (forward, backward, Adam step on the trainable parameters) and inference for
ReferenceSTGCMA eager, torch.compile(ReferenceSTGCMA), FastSTGCMA (its ops as the dispatcher picks them: plain torch
on CUDA until the kernels' GPU parity tests have passed, see GPU_VALIDATED), torch.compile(FastSTGCMA) and FastSTGCMA
with its Triton kernels forced on (``fast-triton``, GPU only: on CPU they run in the interpreter).

On a GPU: CLIP ViT-B/16 and ViT-L/14 and Swin-B / Swin-L, Tiny and Base, bf16 autocast, 10 frames + 10 audio segments
per clip, a batch size sweep (a size that runs out of memory, anywhere in its case, is skipped with that reason, its
memory released) and a frame-count sweep. On CPU only: one tiny CLIP-shaped model and one tiny Swin in fp32 that
exercise the harness. Throughput is
clips/s; MFU uses the analytic FLOP count of stgcma_fast.flops (checked against torch's FLOP counter in
tests/test_flops.py). Training cases also record the activation memory autograd keeps for backward
(saved_activation_mib), which is measurable on CPU as well.
"""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA, STGCMAConfig
from stgcma_fast.flops import FlopCount, stgcma_flops
from stgcma_fast.memory import saved_activation_bytes
from stgcma_fast.ops.dispatch import REGISTRY

from .common import CPU_ONLY, DEVICE, GPU_ONLY, HAS_CUDA, free_device_memory, out_of_memory, run_benchmark

IMPLS = {"reference": ReferenceSTGCMA, "fast": FastSTGCMA}
PROVIDERS = ("reference", "reference-compile", "fast", "fast-compile", "fast-triton")
TRITON_BACKENDS = {op: "triton" for op, backends in REGISTRY.items() if any(b.name == "triton" for b in backends)}
# FastSTGCMA's memory options, each traded for recomputation in backward (test_memory_options).
MEMORY_PROVIDERS = {"fast-recompute-ffn": dict(recompute=("ffn",)),
                    "fast-recompute-all": dict(recompute=("attention", "ffn")),
                    "fast-checkpoint": dict(grad_checkpointing=True)}
TINY = dict(backbone="vit_base_patch16_clip_quickgelu_224",
            backbone_kwargs=dict(img_size=64, embed_dim=96, depth=2, num_heads=3), adapter="base", num_frames=4)
# A Swin with the real window (7) on a 14 x 14 map (four windows, the second block shifted), then a 7 x 7 stage.
TINY_SWIN = dict(backbone="swin_tiny_patch4_window7_224",
                 backbone_kwargs=dict(img_size=56, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=7),
                 adapter="base", num_frames=4)
TINY_CONFIGS = {"tiny": TINY, "tiny-swin": TINY_SWIN}


def swin_flops(model) -> FlopCount:
    """FLOPs per clip of an STG-CMA model on a Swin backbone, with :func:`stgcma_flops`' conventions: per stage s
    of width C_s, N_s tokens per frame and windows of A tokens, the frozen GEMMs (qkv, proj, MLP; again qkv and proj
    in the temporal pass of the even blocks; the patch merging), the window attention (4 N A C per frame), the
    temporal attention (4 N M^2 C), the adapters' projections (4 n C r each) and the AV cross attention (per window
    at the spatial stage: 4 N A r; over the whole map at the global stage: 4 N^2 r; per enabled direction)."""
    cfg, arch = model.config, model.arch
    M = cfg.num_frames
    ph, pw = model.backbone.patch_embed.patch_size
    branches = [c for c, on in ((3, cfg.has_video), (1, cfg.has_audio)) if on]
    directions = int(cfg.a2v) + int(cfg.v2a) if len(branches) == 2 else 0
    embed = frozen = attention = adapters = 0.0
    for stage in arch.stages:
        C, r = stage.width, stage.bottleneck
        N = stage.grid[0] * stage.grid[1]
        n = M * N
        hidden = arch.block(stage.blocks[0]).mlp.fc1.out_features
        for i in stage.blocks:
            A = arch.block_parts(i).layout.area
            temporal = "temporal" in cfg.stages and arch.block_parts(i).temporal
            for _ in branches:
                frozen += 2 * n * 4 * C * C + 2 * 2 * n * C * hidden + (2 * n * 4 * C * C if temporal else 0)
                attention += 4 * n * A * C + (4 * N * M * M * C if temporal else 0)
                adapters += 4 * n * C * r * (int(temporal) + sum(s in cfg.stages for s in ("spatial", "global")))
            adapters += directions * 4 * n * r * (A * ("spatial" in cfg.stages) + N * ("global" in cfg.stages))
        if stage.downsample:
            frozen += len(branches) * 2 * n * 2 * C * C  # PatchMerging: (n, 4 C_in) x (4 C_in, C), C_in = C / 2
    for channels in branches:
        embed += 2 * M * arch.num_video_tokens * arch.embed_dim * channels * ph * pw
    return FlopCount(embed=embed, frozen_gemm=frozen, attention=attention, adapters=adapters)


def _config(preset: str, frames: int | None = None) -> STGCMAConfig:
    if preset in TINY_CONFIGS:
        if HAS_CUDA:
            pytest.skip(CPU_ONLY)
        cfg = STGCMAConfig(**TINY_CONFIGS[preset])
    else:
        if not HAS_CUDA:
            pytest.skip(GPU_ONLY)
        cfg = STGCMAConfig.preset(preset)
    if frames is not None:
        cfg = STGCMAConfig.from_dict({**cfg.to_dict(), "num_frames": frames})
    return cfg


def _build(cfg: STGCMAConfig, provider: str):
    if provider.endswith("-compile") and not HAS_CUDA:
        pytest.skip("torch.compile providers are measured on GPU only (compile time dominates tiny CPU cases)")
    if provider == "fast-triton" and not HAS_CUDA:
        pytest.skip("the model with its Triton kernels is measured on GPU only (the interpreter is a correctness tool)")
    kwargs = {"backends": TRITON_BACKENDS} if provider == "fast-triton" else MEMORY_PROVIDERS.get(provider, {})
    model = IMPLS[provider.split("-")[0]](cfg, **kwargs).to(DEVICE)
    runner = torch.compile(model) if provider.endswith("-compile") else model
    return model, runner


def _inputs(model, batch: int):
    cfg = model.config
    H, W = model.img_size
    video = torch.randn(batch, cfg.num_frames, 3, H, W, device=DEVICE)
    audio = torch.randn(batch, cfg.num_frames, *cfg.audio_size, device=DEVICE)
    return video, audio


def _bench(benchmark, preset: str, provider: str, batch: int, mode: str, frames: int | None = None):
    try:
        _measure(benchmark, _config(preset, frames), preset, provider, batch, mode)
        return
    except Exception as exc:  # noqa: BLE001 - anything but running out of memory is raised again
        if not out_of_memory(exc):
            raise
    # Out of memory (building the model, measuring its saved activations or timing it): the except block has dropped
    # the traceback and with it this case's tensors; release them before the next case, then skip with the reason.
    free_device_memory()
    pytest.skip(f"batch {batch} does not fit in memory for {preset} / {provider}")


def _measure(benchmark, cfg: STGCMAConfig, preset: str, provider: str, batch: int, mode: str) -> None:
    model, runner = _build(cfg, provider)
    video, audio = _inputs(model, batch)
    amp = dict(device_type=DEVICE.type, dtype=torch.bfloat16, enabled=HAS_CUDA)
    flops = swin_flops(model) if model.arch.family == "swin" else stgcma_flops(model)
    extra = {}
    if mode == "train":
        model.train()
        with torch.autocast(**amp):  # activation memory kept for backward, measurable on CPU too
            extra["saved_activation_mib"] = saved_activation_bytes(lambda: model(video, audio),
                                                                   exclude=model.parameters()) / 2**20
        opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)

        def step():
            with torch.autocast(**amp):
                out = runner(video, audio)
                loss = out.video_pooled.float().square().mean() + out.audio_pooled.float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        per_call = flops.train_step * batch
    else:
        model.eval()

        @torch.no_grad()
        def step():
            with torch.autocast(**amp):
                runner(video, audio)

        per_call = flops.forward * batch
    run_benchmark(benchmark, step, warmup=3 if HAS_CUDA else 1, rounds=10 if HAS_CUDA else 3, flops=per_call,
                  items=batch, provider=provider, preset=preset, batch=batch, mode=mode,
                  frames=cfg.num_frames, config=cfg.to_dict(), amp="bf16" if HAS_CUDA else "off",
                  backends=model.backends() if isinstance(model, FastSTGCMA) else "reference", **extra)


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset", ["tiny", "clip-b16-base", "clip-b16-tiny", "clip-l14-base", "clip-l14-tiny",
                                    "tiny-swin", "swin-b-tiny", "swin-b-base", "swin-l-tiny", "swin-l-base"])
def test_model_step(benchmark, preset, provider, mode):
    batch = 2 if preset.startswith("tiny") else 2 if "swin" in preset else (4 if "l14" in preset else 8)
    _bench(benchmark, preset, provider, batch, mode)


@pytest.mark.parametrize("provider", list(MEMORY_PROVIDERS))
@pytest.mark.parametrize("preset", ["tiny", "clip-b16-base", "tiny-swin", "swin-b-base"])
def test_memory_options(benchmark, preset, provider):
    """Selective recomputation and whole-block checkpointing: clips/s and memory of the training step, against the
    ``fast`` row of test_model_step for the same case."""
    _bench(benchmark, preset, provider, 2 if preset.startswith("tiny") or "swin" in preset else 8, "train")


@pytest.mark.gpu
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", [1, 2, 4, 16, 32, 64])  # batch 8 is test_model_step's clip-b16-base case
def test_batch_sweep(benchmark, batch, provider):
    _bench(benchmark, "clip-b16-base", provider, batch, "train")


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["reference", "fast", "fast-triton"])
@pytest.mark.parametrize("frames", [4, 10, 16, 32])
def test_frames_sweep(benchmark, frames, provider):
    _bench(benchmark, "clip-b16-base", provider, 4, "train", frames=frames)
