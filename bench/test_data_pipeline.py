"""Input pipeline: decode + preprocess throughput (clips/s) of the AVE loaders on synthetic 10 s clips.

Providers: the PyAV DataLoader with 1 / 2 / 4 / 8 worker processes (``pyav-<w>w``), DALI's CPU backend on VP9
(``dali-cpu``), and DALI's GPU backend (NVDEC) on H.264 and VP9 (``dali-gpu``, needs a GPU and DALI). One pass
decodes every clip's M = 10 frames, resizes / crops / normalises them to (10, 3, 224, 224) and decodes its audio
(prepared WAV for DALI, likewise for PyAV); the fbank front end is left out (``bench/test_fbank.py`` measures it).
Workers are persistent and warmed up before timing. CPU sizes are tiny so the whole file runs in seconds; on a
2-core machine more than 2 workers only add contention, which the numbers then show.
"""

from __future__ import annotations

import pytest

# Every case writes and reads media with PyAV, which the lent GPU machines do not have: skip the file with the reason
# (an import error would stop the collection, and with it every other benchmark of a `pytest bench` run).
pytest.importorskip("av", reason="PyAV writes the synthetic clips and decodes media (pip install av)")

from stgcma_fast.data.dali import DaliAveLoader, dali_status  # noqa: E402
from stgcma_fast.data.loader import AveDataset, AveLoader  # noqa: E402
from stgcma_fast.data.prepare import prepare_audio  # noqa: E402
from stgcma_fast.data.synth import synth_ave  # noqa: E402
from stgcma_fast.data.video import FrameSettings  # noqa: E402

from .common import HAS_CUDA, run_benchmark  # noqa: E402

DALI_OK, DALI_WHY = dali_status()
CLIPS = 32 if HAS_CUDA else 8
SIZE = 128  # synthetic frame side; output frames are 224 x 224 (upscaled) as for a real backbone
FPS = 8


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """{codec: root} of prepared synthetic AVE sets (VP9 for DALI's CPU decoder, H.264 for NVDEC)."""
    roots = {}
    for codec in ("vp9", "h264") if HAS_CUDA else ("vp9",):
        root = tmp_path_factory.mktemp(f"bench_{codec}")
        synth_ave(root, CLIPS, codec=codec, seed=0, size=SIZE, fps=FPS)
        prepare_audio(root)
        roots[codec] = root
    return roots


def _consume(loader) -> int:
    return sum(len(batch["ids"]) for batch in loader)


def _dataset(root) -> AveDataset:
    return AveDataset(root, "all", frames=FrameSettings(min_seconds=10.0))


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # more workers than cores: on purpose
@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_pyav_dataloader(benchmark, datasets, workers):
    loader = AveLoader(_dataset(datasets["vp9"]), batch_size=4, num_workers=workers, persistent_workers=True,
                       frontend=None, shuffle=False)
    run_benchmark(benchmark, lambda: _consume(loader), warmup=0, rounds=3 if HAS_CUDA else 2, items=CLIPS,
                  provider=f"pyav-{workers}w", stage="decode_preprocess", setting=f"vp9-{SIZE}px", device="cpu")


@pytest.mark.skipif(not DALI_OK, reason=f"needs nvidia.dali: {DALI_WHY}")
def test_dali_cpu(benchmark, datasets):
    loader = DaliAveLoader(_dataset(datasets["vp9"]), batch_size=4, dali_device="cpu", num_threads=2,
                           frontend=None, shuffle=False)
    run_benchmark(benchmark, lambda: _consume(loader), warmup=0, rounds=3 if HAS_CUDA else 2, items=CLIPS,
                  provider="dali-cpu", stage="decode_preprocess", setting=f"vp9-{SIZE}px", device="cpu")
    assert loader.fallbacks == 0


@pytest.mark.gpu
@pytest.mark.skipif(not DALI_OK, reason=f"needs nvidia.dali: {DALI_WHY}")
@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_dali_gpu(benchmark, datasets, codec):
    loader = DaliAveLoader(_dataset(datasets[codec]), batch_size=8, device="cuda", dali_device="gpu",
                           num_threads=4, frontend=None, shuffle=False)
    run_benchmark(benchmark, lambda: _consume(loader), warmup=1, rounds=3, items=CLIPS, provider="dali-gpu",
                  stage="decode_preprocess", setting=f"{codec}-{SIZE}px", device="cuda")
    assert loader.fallbacks == 0
