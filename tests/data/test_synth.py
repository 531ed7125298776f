"""Synthetic datasets: exact AVE / AVSBench-S4 / MUSIC-AVQA layouts, events visible and audible only when labelled."""

from __future__ import annotations

import argparse
import filecmp
import json

import av
import numpy as np
import pytest

from stgcma_fast.data import (
    ANSWERS,
    AVE_CATEGORIES,
    AVS_S4_CATEGORIES,
    BACKGROUND,
    QUESTION_TYPES,
    read_ave_annotations,
    read_avqa_questions,
    s4_records,
)
from stgcma_fast.data.audio_io import decode_audio
from stgcma_fast.data.commands import add_data_commands
from stgcma_fast.data.synth import (
    SHAPES,
    ave_clip_media,
    class_motif,
    class_sound,
    fundamental,
    synth_ave,
    synth_avqa,
    synth_avs_s4,
)
from tests.data.conftest import shared_file
from tests.data.synth_media import FPS


def test_ave_layout_and_annotation_files(ave_vp9):
    root, clips = ave_vp9
    assert sorted(p.name for p in root.iterdir()) == ["AVE", "Annotations.txt", "testSet.txt", "trainSet.txt",
                                                      "valSet.txt"]
    assert sorted(p.name for p in (root / "AVE").iterdir()) == sorted(f"{c.video_id}.mkv" for c in clips)
    text = (root / "Annotations.txt").read_text()
    assert not text.endswith("\n") and "\r" not in text, "written like the real file: LF, no final newline"
    parsed = read_ave_annotations(root / "Annotations.txt")
    by_id = {c.video_id: c for c in clips}
    assert sorted(c.video_id for c in parsed) == sorted(by_id)
    assert [c.class_index for c in parsed] == sorted(c.class_index for c in parsed), "grouped in class order"
    for clip in parsed:
        want = by_id[clip.video_id]
        assert (clip.category, clip.quality, clip.start, clip.end) == (want.category, "good", want.start, want.end)
        assert clip.category in AVE_CATEGORIES and len(clip.video_id) == 11
        assert clip.labels == want.labels
        assert clip.labels == tuple(want.class_index if want.start <= s < want.end else BACKGROUND for s in range(10))
    splits = {name: read_ave_annotations(root / f"{name}Set.txt") for name in ("train", "val", "test")}
    ids = [c.video_id for clips_ in splits.values() for c in clips_]
    assert sorted(ids) == sorted(by_id), "the three split files partition the annotations"
    assert all(splits[name] for name in splits), "each split is non-empty"
    for name, split_clips in splits.items():
        assert all(by_id[c.video_id].split == name for c in split_clips)


def _second_features(path, class_index):
    """Per second: fraction of saturated pixels in the middle frame, their mean colour, audio RMS and the spectral
    peak ratio at the class's fundamental."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24").astype(np.float32) for f in container.decode(video=0)]
    audio = decode_audio(path, seconds=10).numpy()
    f0 = fundamental(class_index)
    out = []
    for s in range(10):
        img = frames[s * FPS + FPS // 2]
        saturated = (img.max(-1) - img.min(-1)) > 80
        colour = img[saturated].mean(0) if saturated.any() else None
        seg = audio[s * 16000: (s + 1) * 16000]
        spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))  # 1 Hz bins
        peak = spectrum[int(f0) - 2: int(f0) + 3].max() / np.median(spectrum)
        out.append((saturated.mean(), colour, float(np.sqrt(np.mean(seg ** 2))), peak))
    return frames, audio, out


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_ave_events_visible_and_audible_only_when_labelled(codec, ave_vp9, ave_h264):
    root, clips = ave_vp9 if codec == "vp9" else ave_h264
    motif_colours = np.array([class_motif(c).rgb for c in range(len(AVE_CATEGORIES))], dtype=np.float32)
    for clip in clips:
        frames, audio, seconds = _second_features(clip.path, clip.class_index)
        assert len(frames) == 10 * FPS and frames[0].shape == (64, 64, 3), "10 s at 4 fps, 64 px"
        assert audio.shape == (160000,)
        for s, (sat, colour, rms, peak) in enumerate(seconds):
            where = f"{clip.video_id} ({clip.category}, event [{clip.start}, {clip.end})) second {s}"
            if clip.start <= s < clip.end:
                assert sat > 0.05, f"{where}: motif not visible (saturated fraction {sat:.3f})"
                nearest = int(np.abs(motif_colours - colour).sum(1).argmin())
                assert nearest // len(SHAPES) == clip.class_index // len(SHAPES), f"{where}: wrong motif colour"
                assert rms > 0.05 and peak > 50, f"{where}: sound missing (rms {rms:.3f}, peak ratio {peak:.1f})"
            else:
                assert sat < 0.005, f"{where}: background shows colour (saturated fraction {sat:.3f})"
                assert rms < 0.03 and peak < 10, f"{where}: background is not quiet (rms {rms:.3f}, peak {peak:.1f})"


def test_synth_is_deterministic_for_a_seed(tmp_path):
    a = synth_ave(tmp_path / "a", 2, codec="vp9", seed=5, size=32, fps=2)
    b = synth_ave(tmp_path / "b", 2, codec="vp9", seed=5, size=32, fps=2)
    c = synth_ave(tmp_path / "c", 2, codec="vp9", seed=6, size=32, fps=2)
    assert [x.line() for x in a] == [x.line() for x in b]
    assert all(filecmp.cmp(x.path, y.path, shallow=False) for x, y in zip(a, b)), "same seed, same bytes"
    assert (tmp_path / "a" / "Annotations.txt").read_text() == (tmp_path / "b" / "Annotations.txt").read_text()
    assert [x.video_id for x in a] != [x.video_id for x in c]


def test_motifs_and_sounds_are_distinct_per_class():
    motifs = [class_motif(c) for c in range(28)]
    assert len({(m.shape, m.rgb) for m in motifs}) == 28
    f0 = [fundamental(c) for c in range(28)]
    assert len(set(f0)) == 28 and max(f * 1.5 for f in f0) < 8000, "every chord below the 8 kHz Nyquist"
    assert len({(class_sound(c).freqs, class_sound(c).am_hz) for c in range(28)}) == 28


def test_distractors_break_the_one_modality_shortcut():
    rng = np.random.default_rng(0)
    _, _, _, visible, audible = ave_clip_media(3, 4, 6, rng, size=16, fps=1, distractor_prob=1.0)
    for s in range(10):
        event = 4 <= s < 6
        assert (visible[s] and audible[s]) == event, "both modalities together only in event seconds"
        assert event or visible[s] != audible[s], "each background second has exactly one modality"
    _, _, _, visible, audible = ave_clip_media(3, 4, 6, rng, size=16, fps=1)
    assert visible == audible == tuple(4 <= s < 6 for s in range(10))


def test_avs_s4_layout_masks_and_audio(tmp_path):
    clips = synth_avs_s4(tmp_path, 4, seed=0, size=32)
    records = s4_records(tmp_path / "s4_data")  # check_files: every frame, wav and mask exists
    assert [r.name for r in records] == [c.name for c in clips]
    for record, clip in zip(records, clips):
        assert len(record.masks) == (1 if record.split == "train" else 5)
        with av.open(str(record.frames[0])) as c:
            frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
        with av.open(str(record.masks[0])) as c:
            mask = next(c.decode(video=0)).to_ndarray(format="gray") > 127
        assert 0.02 < mask.mean() < 0.5
        colour = np.array(class_motif(AVS_S4_CATEGORIES.index(clip.category), 23).rgb, dtype=np.float32)
        assert np.abs(frame[mask] - colour).mean() < 12, "the mask covers the sounding object's motif"
        wave = decode_audio(record.audio, seconds=5)
        assert wave.shape == (80000,) and float(wave.pow(2).mean().sqrt()) > 0.05


def test_avqa_questions_use_real_templates_and_valid_answers(tmp_path):
    per_split = synth_avqa(tmp_path, 3, codec="vp9", seed=0, size=32, fps=2)
    questions = [q for split in ("train", "val", "test") for q in read_avqa_questions(tmp_path / f"avqa-{split}.json")]
    assert len(questions) == sum(len(v) for v in per_split.values()) > 0
    assert all(q.type in QUESTION_TYPES and q.answer in ANSWERS for q in questions)
    assert all((tmp_path / "videos" / f"{q.video_id}.mkv").is_file() for q in questions)
    assert all(len(q.video_id) == 8 for q in questions)
    real = shared_file("music_avqa/avqa-val.json")
    templates = {(item["type"], item["question_content"]) for item in json.loads(real.read_text())}
    for q in questions:
        assert (json.dumps([q.modality, q.kind]), q.template) in templates, f"{q.template!r} is not a real template"


def test_cli_synth_prepare_stats(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="stgcma-fast")
    add_data_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    out = tmp_path / "ave"
    assert run("synth", "ave", "--out", str(out), "--clips", "3", "--codec", "vp9", "--size", "32", "--fps", "2",
               "--seed", "1", "--quiet") == 0
    assert len(read_ave_annotations(out / "Annotations.txt")) == 3
    assert run("prepare", str(out), "--quiet", "--frames", "4") == 0
    wavs = sorted((out / "audio_wav").glob("*.wav"))
    assert len(wavs) == 3 and all(decode_audio(w).shape == (160000,) for w in wavs)
    assert run("stats", str(out), "--split", "all", "--json", str(tmp_path / "stats.json")) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["clips"] == 3 and np.isfinite(stats["mean"]) and stats["std"] > 0
    (out / "AVE" / wavs[0].with_suffix(".mkv").name).write_bytes(b"not a video")
    assert run("prepare", str(out), "--quiet", "--overwrite", "--frames", "4") == 1, "a bad video fails prepare"
    assert wavs[0].stem in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "ave", "--out", str(out)])  # --clips is required
