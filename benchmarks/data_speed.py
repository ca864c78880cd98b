"""How long `crossdomainseg data make` takes per task on this machine.

    PYTHONPATH=SlicerCrossDomainSeg python benchmarks/data_speed.py [--n-3d 20] [--n-2d 60]

Prints and writes benchmarks/results/data_speed.json: wall and CPU seconds per task (CPU time is
the figure to compare when other processes share the machine), per case, and the size on disk.
"""

import argparse
import tempfile
import time
from pathlib import Path

from common import write_result

from crossdomainseg.data import make_task


def measure(task: str, n: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / task
        wall, cpu = time.perf_counter(), time.process_time()
        make_task(task, n, seed, out)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"n_per_domain": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_s_per_case": round(cpu / (2 * n), 3), "disk_mb": round(size / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-3d", type=int, default=20, help="cases per domain for phantom-ct-mr")
    parser.add_argument("--n-2d", type=int, default=60, help="cases per domain for xray-drr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {"phantom-ct-mr": measure("phantom-ct-mr", args.n_3d, args.seed),
               "xray-drr": measure("xray-drr", args.n_2d, args.seed)}
    write_result("data_speed", results, threads=1)


if __name__ == "__main__":
    main()
