"""Render benchmark JSON (pytest-benchmark, saved under bench/results/) as markdown tables and a PNG plot.

    python -m bench.report                      # newest GPU result file (else newest of any), tables to stdout
    python -m bench.report FILE.json --plot speedups.png
    python -m bench.report --update-readme      # rewrite the README block between the bench-table markers
    python -m bench.report --merge-into ALL.json STEP.json ...   # append the benchmarks of STEP files to ALL

Numbers come only from these files; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .common import peak_tflops

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    if "benchmarks" not in data or "machine_info" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' / 'machine_info')")
    return data


def merge(paths: Sequence[Path], into: Path) -> int:
    """Append the benchmarks of the pytest-benchmark files ``paths`` to ``into`` (made from the first of them when it
    does not exist; its machine_info is kept). A file that is missing, empty or cut short, as when its run was killed
    before it wrote it (pytest-benchmark < 5.3 creates it empty at start-up), is skipped with a note on stderr.
    Returns the number of benchmarks added."""
    merged = load(into) if into.exists() else None
    added = 0
    for path in paths:
        try:
            data = load(path)
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        if merged is None:
            merged = {**data, "benchmarks": []}
        merged["benchmarks"].extend(data["benchmarks"])
        added += len(data["benchmarks"])
    if merged is not None:
        into.write_text(json.dumps(merged, indent=2))
    return added


def newest_result(results_dir: Path = RESULTS_DIR, prefer_gpu: bool = True) -> Path | None:
    """The result file of the latest run (by the start time pytest-benchmark records in it: a fresh clone gives every
    file the same mtime), among the GPU runs if any and ``prefer_gpu``; None if there is none."""
    runs = [(load(p), p) for p in results_dir.glob("*.json")]
    runs.sort(key=lambda run: (run[0].get("datetime", ""), run[1].name))
    if prefer_gpu:
        runs = [run for run in runs if run[0]["machine_info"].get("device", "cpu") != "cpu"] or runs
    return runs[-1][1] if runs else None


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else format(x, spec) + suffix


FAST_PROVIDERS = ("fast", "fast-compile", "fast-triton")  # FastSTGCMA: as dispatched, compiled, Triton kernels forced


def model_table(data: dict) -> str:
    """Clips/s per provider for each (preset, mode, batch, frames), speed-ups of the best FastSTGCMA provider against
    the reference and against torch.compile(reference), MFU and peak memory of FastSTGCMA."""
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "clips_per_s" not in info or "preset" not in info:
            continue
        key = (info["preset"], info["mode"], info["batch"], info.get("frames"))
        rows[key][info["provider"]] = info
    if not rows:
        return ""
    out = ["| preset | mode | batch | frames | reference clips/s | fast clips/s | fast-compile clips/s | "
           "fast-triton clips/s | fast / reference | fast / compile(reference) | MFU (fast) | "
           "peak MiB reference -> fast | saved activations MiB reference -> fast |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2], k[3] or 0)):
        p = rows[key]
        rate = {name: p[name]["clips_per_s"] for name in p}
        best_fast = max((rate[n] for n in FAST_PROVIDERS if n in rate), default=None)
        vs_ref = best_fast / rate["reference"] if best_fast and "reference" in rate else None
        vs_compile = best_fast / rate["reference-compile"] if best_fast and "reference-compile" in rate else None
        mfu = p.get("fast", {}).get("mfu")
        mem_ref = p.get("reference", {}).get("peak_mem_mib")
        mem_fast = p.get("fast", {}).get("peak_mem_mib")
        mem = f"{mem_ref:.0f} -> {mem_fast:.0f}" if mem_ref and mem_fast else "-"
        act_ref = p.get("reference", {}).get("saved_activation_mib")
        act_fast = p.get("fast", {}).get("saved_activation_mib")
        act = f"{act_ref:.1f} -> {act_fast:.1f}" if act_ref and act_fast else "-"
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3] or '-'} | {_fmt(rate.get('reference'), '.2f')} | "
                   f"{_fmt(rate.get('fast'), '.2f')} | {_fmt(rate.get('fast-compile'), '.2f')} | "
                   f"{_fmt(rate.get('fast-triton'), '.2f')} | "
                   f"{_fmt(vs_ref, '.2f', 'x')} | {_fmt(vs_compile, '.2f', 'x')} | "
                   f"{_fmt(None if mfu is None else 100 * mfu, '.1f', '%')} | {mem} | {act} |")
    return "\n".join(out)


MEMORY_PROVIDERS = ("fast-recompute-ffn", "fast-recompute-all", "fast-checkpoint")  # bench/test_model.py


def memory_table(data: dict) -> str:
    """FastSTGCMA's memory options per (preset, mode, batch, frames): clips/s, peak memory and saved activations,
    each against plain ``fast`` and the eager reference of the same case."""
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "clips_per_s" in info and "preset" in info:
            rows[(info["preset"], info["mode"], info["batch"], info.get("frames"))][info["provider"]] = info
    keys = [k for k in rows if any(p in rows[k] for p in MEMORY_PROVIDERS)]
    if not keys:
        return ""

    def ratio(a: float | None, b: float | None) -> str:
        return _fmt(a / b if a and b else None, ".2f", "x")

    out = ["| preset | mode | batch | frames | provider | clips/s | vs fast | peak MiB | vs reference | "
           "saved activations MiB | vs reference |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(keys, key=lambda k: (k[0], k[1], k[2], k[3] or 0)):
        p = rows[key]
        fast, ref = p.get("fast", {}), p.get("reference", {})
        for provider in ("fast", *MEMORY_PROVIDERS):
            if provider not in p:
                continue
            info = p[provider]
            peak, act = info.get("peak_mem_mib") or None, info.get("saved_activation_mib")
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3] or '-'} | {provider} | "
                       f"{info['clips_per_s']:.2f} | {ratio(info['clips_per_s'], fast.get('clips_per_s'))} | "
                       f"{_fmt(peak, '.0f')} | {ratio(peak, ref.get('peak_mem_mib'))} | {_fmt(act, '.1f')} | "
                       f"{ratio(act, ref.get('saved_activation_mib'))} |")
    return "\n".join(out)


def _rates(data: dict) -> tuple[float | None, float | None]:
    """(bytes/s, FLOP/s) of the result's device: its measured copy bandwidth and its datasheet bf16 peak."""
    mi = data["machine_info"]
    bw = mi.get("copy_bandwidth_gbps")
    peak = peak_tflops(mi.get("device", "cpu"))
    return (bw * 1e9 if bw else None), (peak * 1e12 if peak else None)


def floor_seconds(info: dict, bandwidth: float | None, flop_rate: float | None) -> float | None:
    """The floor time of a kernel case on the result's device: each op of its fused run (``floor_ops``: [bytes,
    FLOPs] per op, recorded by bench/test_kernels.py from bench.roofline) at max(bytes / bandwidth, FLOPs / peak);
    None without the ops or a bandwidth (no FLOP term on a device without a known peak)."""
    ops = info.get("floor_ops")
    if not ops or not bandwidth:
        return None
    return sum(max(b / bandwidth, f / flop_rate if flop_rate else 0.0) for b, f in ops)


def _kernel_rows(data: dict) -> dict[tuple, dict[str, dict]]:
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "op" in info:
            rows[(info["op"], info["shape"], info["mode"])][info["provider"]] = info
    return rows


def kernel_table(data: dict) -> str:
    """Median time, GB/s and share of the measured copy bandwidth, TFLOP/s, share of the case's floor (the fused
    op's traffic at the measured bandwidth and the datasheet peak) per op, shape, mode and provider."""
    copy_bw = data["machine_info"].get("copy_bandwidth_gbps")
    bandwidth, flop_rate = _rates(data)
    rows = _kernel_rows(data)
    if not rows:
        return ""
    out = ["| op | shape | mode | provider | median ms | GB/s | % of copy bandwidth | TFLOP/s | % of floor | "
           "speed-up vs eager/SDPA |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows):
        p = rows[key]
        base = p.get("eager") or p.get("sdpa")
        for provider, info in sorted(p.items()):
            speedup = base["median_s"] / info["median_s"] if base else None
            share = 100 * info["gbps"] / copy_bw if copy_bw and "gbps" in info else None
            floor = floor_seconds(info, bandwidth, flop_rate)
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {provider} | {1e3 * info['median_s']:.3f} | "
                       f"{_fmt(info.get('gbps'), '.1f')} | {_fmt(share, '.1f')} | {_fmt(info.get('tflops'), '.3g')} | "
                       f"{_fmt(None if floor is None else 100 * floor / info['median_s'], '.1f')} | "
                       f"{_fmt(speedup, '.2f', 'x')} |")
    return "\n".join(out)


# The kernels issue's targets (ViT-B/16 shapes, bf16): (label, (op, shape, mode) or model case, measure, goal).
TARGETS = (
    ("AV-Adapter forward: share of the measured copy bandwidth", ("av_adapter", "vit-b16", "fwd"), "bandwidth", 0.7),
    ("AV-Adapter forward vs the eager op chain", ("av_adapter", "vit-b16", "fwd"), "eager", 3.0),
    ("Temporal attention forward vs SDPA with permutes", ("temporal_attention", "vit-b16", "fwd"), "sdpa", 2.0),
    ("Temporal attention fwd+bwd vs SDPA with permutes", ("temporal_attention", "vit-b16", "fwd+bwd"), "sdpa", 2.0),
    ("Training step vs the eager reference", ("clip-b16-base", "train", 8, 10), "model", 2.0),
)


def targets_table(data: dict) -> str:
    """Each target: goal, measured, whether it is met, and the most the hardware allows: for a speed-up the
    measured baseline over the fused op's floor, for the bandwidth share the share at the floor (below 100% where
    the op is compute-bound). Empty when the result measures none of them (a CPU run of the tiny cases)."""
    bandwidth, flop_rate = _rates(data)
    kernels = _kernel_rows(data)
    models: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "clips_per_s" in info and "preset" in info:
            models[(info["preset"], info["mode"], info["batch"], info.get("frames"))][info["provider"]] = info
    out = ["| target | case | goal | measured | met | most the hardware allows |", "|---|---|---|---|---|---|"]
    any_measured = False
    for label, case, measure, goal in TARGETS:
        measured = ceiling = None
        if measure == "model":
            p = models.get(case, {})
            best = max((p[n]["clips_per_s"] for n in FAST_PROVIDERS if n in p), default=None)
            if best and "reference" in p:
                measured = best / p["reference"]["clips_per_s"]
        else:
            p = kernels.get(case, {})
            fused = p.get("triton")
            floor = floor_seconds(fused, bandwidth, flop_rate) if fused else None
            if measure == "bandwidth" and fused and bandwidth and "gbps" in fused:
                measured = fused["gbps"] * 1e9 / bandwidth
                ceiling = None if floor is None else fused["gbps"] * fused["median_s"] * 1e9 / bandwidth / floor
            elif measure != "bandwidth" and fused and measure in p:
                measured = p[measure]["median_s"] / fused["median_s"]
                ceiling = None if floor is None else p[measure]["median_s"] / floor
        any_measured |= measured is not None
        pct = measure == "bandwidth"
        fmt = (lambda x: _fmt(None if x is None else 100 * x, ".0f", "%")) if pct else (lambda x: _fmt(x, ".2f", "x"))
        met = "-" if measured is None else ("yes" if measured >= goal else "no")
        where = " ".join(str(c) for c in case)
        out.append(f"| {label} | {where} | >= {fmt(goal)} | {fmt(measured)} | {met} | {fmt(ceiling)} |")
    return "\n".join(out) if any_measured else ""


def pipeline_table(data: dict) -> str:
    """Input-pipeline stages (entries with a ``stage`` key): clips/s per provider and speed-up over the slowest."""
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "stage" in info and "clips_per_s" in info:
            rows[(info["stage"], str(info.get("setting", "-")))][info["provider"]] = info
    if not rows:
        return ""
    out = ["| stage | setting | provider | clips/s | speed-up vs slowest |", "|---|---|---|---|---|"]
    for key in sorted(rows):
        slowest = min(i["clips_per_s"] for i in rows[key].values())
        for provider, info in sorted(rows[key].items()):
            out.append(f"| {key[0]} | {key[1]} | {provider} | {info['clips_per_s']:.2f} | "
                       f"{info['clips_per_s'] / slowest:.2f}x |")
    return "\n".join(out)


def render(data: dict, source: str) -> str:
    mi = data["machine_info"]
    versions = mi.get("versions", {})
    head = (f"Device: {mi.get('device', '?')}; commit {mi.get('git_commit', '?')}; torch {versions.get('torch', '?')}, "
            f"triton {versions.get('triton', '?')}, xformers {versions.get('xformers', '?')}; measured copy "
            f"bandwidth {_fmt(mi.get('copy_bandwidth_gbps'), '.0f')} GB/s; source `{source}`.")
    parts = [head]
    for title, table in (("Targets", targets_table(data)), ("Model", model_table(data)),
                         ("Memory options", memory_table(data)),
                         ("Kernels", kernel_table(data)),
                         ("Input pipeline", pipeline_table(data))):
        if table:
            parts += [f"**{title}**", table]
    return "\n\n".join(parts)


def plot(data: dict, path: Path) -> None:
    """Bar chart of FastSTGCMA's speed-up over the eager reference per case (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    lines = model_table(data).splitlines()
    column = [c.strip() for c in lines[0].strip("|").split("|")].index("fast / reference") if lines else 0
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[column] != "-":
            labels.append(f"{cells[0]} {cells[1]} b{cells[2]}")
            values.append(float(cells[column].rstrip("x")))
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(values) + 2), 4))
    ax.bar(range(len(values)), values)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speed-up vs eager reference")
    ax.set_title(data["machine_info"].get("device", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_readme(block: str, readme: Path = README, start: str = START, end: str = END) -> None:
    """Replace what stands between the ``start`` and ``end`` markers of ``readme`` with ``block``."""
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="result files (default: the newest, GPU preferred)")
    parser.add_argument("--plot", type=Path, help="write a PNG of the model speed-ups here")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the README's benchmark block")
    parser.add_argument("--merge-into", type=Path, help="append the benchmarks of the files to this file (no tables)")
    args = parser.parse_args(argv)
    if args.merge_into:
        print(f"{merge(args.files, args.merge_into)} benchmarks added to {args.merge_into}")
        return 0
    files = args.files or [p for p in [newest_result()] if p is not None]
    if not files:
        print("no benchmark results under bench/results/: run `pytest bench/` first")
        return 1
    blocks = []
    for path in files:
        data = load(path)
        rel = path.resolve().relative_to(README.parent) if path.resolve().is_relative_to(README.parent) else path
        blocks.append(render(data, str(rel)))
        if args.plot:
            plot(data, args.plot)
    text = "\n\n".join(blocks)
    if data["machine_info"].get("device", "cpu") == "cpu":
        text += ("\n\nNo GPU run is recorded yet: these are CPU numbers of the tiny harness cases, which say "
                 "nothing about GPU speed (the `triton` rows run in the Triton interpreter, a correctness tool). "
                 "The GPU figures are pending.")
    print(text)
    if args.update_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
