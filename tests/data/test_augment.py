"""SpecAugment over the concatenated segments, and audio-visual mixup."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast.data.augment import AST_MIXUP, mixup, spec_augment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_spec_augment_masks() -> None:
    feats = torch.rand(16, 10, 102, 128) + 1.0  # no natural zeros
    out = spec_augment(feats, generator=_gen(0))
    assert out.shape == feats.shape and bool((feats > 0).all()), "input must be left unchanged"
    masked = (out == 0).reshape(16, 1020, 128)
    for b in range(16):
        cols = masked[b].all(dim=0)  # frequency bins masked in every frame of every segment
        rows = masked[b].all(dim=1)  # frames (of the concatenated 10 s) masked in every bin
        assert bool((masked[b] == (cols[None, :] | rows[:, None])).all()), "only whole bands may be masked"
        for band, limit in ((cols, 48), (rows, 192)):
            idx = band.nonzero().flatten()
            assert idx.numel() < limit
            if idx.numel():
                assert int(idx[-1] - idx[0]) + 1 == idx.numel(), "a mask is one contiguous band"
    assert bool(masked.any(dim=2).reshape(16, 10, 102).all(dim=2).any()), "time masks reach across segments"


def test_spec_augment_deterministic_and_spans_segments() -> None:
    feats = torch.rand(64, 10, 102, 128) + 1.0
    a = spec_augment(feats, generator=_gen(1))
    assert torch.equal(a, spec_augment(feats, generator=_gen(1)))
    assert not torch.equal(a, spec_augment(feats, generator=_gen(2)))
    rows = (a == 0).all(dim=3).reshape(64, 1020)
    widths = rows.sum(1)
    assert int(widths.max()) > 150, "widths are drawn up to 192 frames"
    crosses = [bool(r[(k + 1) * 102 - 1] and r[(k + 1) * 102]) for r in rows for k in range(9)]
    assert any(crosses), "a time mask can cross a segment border"
    assert torch.equal(spec_augment(feats, 0, 0, generator=_gen(1)), feats)
    filled = spec_augment(feats, generator=_gen(1), mask_value=-1.0)
    assert torch.equal(filled == -1.0, a == 0)
    with pytest.raises(ValueError, match=r"\(B, K, T, F\)"):
        spec_augment(feats[0])


def test_mixup() -> None:
    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(8, 10, 102, 128), torch.randn(8, 10, 3, 8, 8)
    labels = torch.randint(0, 29, (8, 10), generator=g)
    out = mixup(audio, video, labels, generator=_gen(3), num_classes=29)
    assert out.audio.shape == audio.shape and out.video.shape == video.shape and out.labels.shape == (8, 10, 29)
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all()) and sorted(out.partner.tolist()) == list(range(8))
    lam = out.lam.reshape(8, 1, 1, 1)
    assert_fn = torch.testing.assert_close
    assert_fn(out.audio, lam * audio + (1 - lam) * audio[out.partner])
    assert_fn(out.video, lam[..., None] * video + (1 - lam[..., None]) * video[out.partner])
    assert_fn(out.labels.sum(-1), torch.ones(8, 10))
    again = mixup(audio, video, labels, generator=_gen(3), num_classes=29)
    assert torch.equal(again.lam, out.lam) and torch.equal(again.audio, out.audio)


def test_mixup_probability_and_errors() -> None:
    audio, video, labels = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 3), torch.rand(6, 29)
    none = mixup(audio, video, labels, prob=0.0, generator=_gen(0))
    assert torch.equal(none.lam, torch.ones(6)) and torch.equal(none.audio, audio)
    ast = mixup(audio, video, labels, generator=_gen(0), **AST_MIXUP)
    mixed = ast.lam < 1
    assert bool(((ast.lam[mixed] > 0.2) & (ast.lam[mixed] < 0.8)).all()), "Beta(10, 10) stays near 0.5"
    lams = torch.cat([mixup(audio, video, labels, generator=_gen(s)).lam for s in range(50)])
    assert float(((lams < 0.1) | (lams > 0.9)).float().mean()) > 0.2, "Beta(0.5, 0.5) is U-shaped"
    with pytest.raises(ValueError, match="same batch size"):
        mixup(audio, video[:5], labels)
    with pytest.raises(ValueError, match="num_classes"):
        mixup(audio, video, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha > 0"):
        mixup(audio, video, labels, alpha=0.0)
