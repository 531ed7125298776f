"""Run the README's main job (`stgcma-fast train ave --synthetic`), keep its report, and render the README's recorded
run from it (the numbers in the README are never typed by hand).

    python scripts/record_main_job.py            # run, save docs/results/ave-synthetic-<device>.json, render
    python scripts/record_main_job.py --render   # only re-render the README from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "docs" / "results" / "ave-synthetic-cpu.json"
START, END = "<!-- main-job:start -->", "<!-- main-job:end -->"


def render(record: dict) -> str:
    from stgcma_fast.train.run import summary_table

    report = record["report"]
    head = (f"Recorded with `{record['command']}` on {record['machine']} at commit "
            f"`{(report.get('git_commit') or 'unknown')[:10]}`: {record['wall_seconds'] / 60:.1f} minutes in all "
            f"(generating the data once, three trainings and their evaluations){record.get('note', '')}.")
    return f"{START}\n{head}\n\n```\n{summary_table(report, 'accuracy')}\n```\n{END}"


def update_readme(record: dict, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text(encoding="utf-8")
    block = render(record)
    new, n = re.subn(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{readme}: expected one {START} ... {END} block, found {n}")
    readme.write_text(new, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true", help="only re-render the README from the saved JSON")
    args = parser.parse_args()
    if not args.render:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            env = {**__import__("os").environ, "STGCMA_FAST_CACHE": str(cache)}
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "from stgcma_fast.tasks import get_task; "
                            "get_task('ave')().make_synthetic(__import__('pathlib').Path("
                            f"{str(cache / 'synthetic' / 'ave')!r}), seed=0, small=True)"], check=True, env=env)
            generation = time.perf_counter() - start
            out = Path(tmp) / "run"
            command = ["stgcma-fast", "train", "ave", "--synthetic", "--out", str(out)]
            subprocess.run(command, check=True, env=env)
            wall = time.perf_counter() - start
            report = json.loads((out / "report.json").read_text())
        import os
        import platform

        record = {"command": "stgcma-fast train ave --synthetic", "wall_seconds": wall,
                  "generation_seconds": generation, "cores": os.cpu_count(),
                  "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})", "report": report}
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(record, indent=2) + "\n")
    update_readme(json.loads(RESULT.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
