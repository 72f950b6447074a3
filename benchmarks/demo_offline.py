"""The README's first command on a fresh offline machine: wall time of `headstart demo` on 2 cores.

Runs `headstart demo` in a new empty directory with an empty HOME (no Keras cache), every download
sent to a closed local port (no network), no GPU, and the process pinned to two CPU cores when
`os.sched_setaffinity` allows it. Prints one JSON line: wall seconds, CPU seconds, the weights line
and the test accuracy from summary.json.

    python benchmarks/demo_offline.py [--cores 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLOSED = "http://127.0.0.1:9"


def offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERAS_", "TFDS_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy",
                                                                          "no_proxy")}
    env.update(HOME=str(home), http_proxy=CLOSED, https_proxy=CLOSED, HTTP_PROXY=CLOSED, HTTPS_PROXY=CLOSED,
               CUDA_VISIBLE_DEVICES="")
    return env


def run_once(cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work, home = Path(tmp) / "work", Path(tmp) / "home"
        work.mkdir()
        home.mkdir()
        script = shutil.which("headstart", path=str(Path(sys.executable).parent))
        command = [script] if script else [sys.executable, "-m", "headstart.pipeline.cli"]
        available = sorted(os.sched_getaffinity(0))
        pinned = available[:cores]

        def pin() -> None:
            os.sched_setaffinity(0, pinned)

        cpu0, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        out = subprocess.run([*command, "demo"], cwd=work, env=offline_env(home), capture_output=True, text=True,
                             preexec_fn=pin, timeout=1800)
        wall, cpu1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            return {"error": out.stderr[-2000:]}
        summary = json.loads((work / "headstart-demo" / "run" / "summary.json").read_text())
        weights = next((line for line in out.stdout.splitlines() if line.startswith("headstart demo:")), "")
        return {"cores": len(pinned), "wall_seconds": round(wall, 1),
                "cpu_seconds": round(cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime, 1),
                "test_accuracy": summary["test"]["accuracy"], "weights": weights,
                "stage_seconds": {k: round(v["seconds"], 1) for k, v in summary["stages"].items()},
                "downloaded": sorted(p.name for p in home.rglob("*.h5"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.repeat):
        print(json.dumps(run_once(args.cores)), flush=True)


if __name__ == "__main__":
    main()
