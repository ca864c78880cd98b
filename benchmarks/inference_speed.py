"""Inference speed on a 128x128x128 target volume: segmentation alone, and segmentation + preview +
uncertainty, median and p95 over repeats of a warm engine; peak memory; CUDA twins when present.

    python benchmarks/inference_speed.py [--bundle B] [--threads 2] [--repeats 5]

`--tta-candidates 1,2,4,8` also times the full pipeline per TTA count (`full_s_p50_by_tta_n`), the
cost side of choosing the default count (benchmarks/uncertainty.py gives the quality side).
Wall times include waiting for the CPU when other processes run; `*_cpu_s_p50` (process CPU
seconds, all threads) is much less sensitive to that.
Writes benchmarks/results/inference_speed.json (keys in /work/shared/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
from common import write_result

TASK = "phantom-ct-mr"


def timed(call, repeats: int, cpu: list | None = None) -> list[float]:
    """Wall seconds per call; process CPU seconds (all threads) appended to `cpu`, a figure that
    other processes on the machine inflate much less than wall time."""
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def percentiles(times: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(times, [50, 95])
    return round(float(p50), 3), round(float(p95), 3)


def measure(engine, image, repeats: int, tta_candidates: list[int]) -> dict:
    engine.segment(image, uncertainty=False)  # warm-up: allocator, MONAI window set-up, CUDA kernels
    seg_cpu, full_cpu, last = [], [], {}
    seg = timed(lambda: engine.segment(image, preview=False, uncertainty=False), repeats, seg_cpu)

    def full():
        last["result"] = engine.segment(image, preview=True, uncertainty=True)

    full_times = timed(full, repeats, full_cpu)
    default_n = engine.tta_n
    by_n = {}
    for n in tta_candidates:
        engine.tta_n = n
        by_n[str(n)] = percentiles(timed(lambda: engine.segment(image), max(2, repeats // 3)))[0]
    engine.tta_n = default_n
    result = last["result"]
    return {"seg": percentiles(seg), "full": percentiles(full_times), "by_n": by_n,
            "seg_cpu": percentiles(seg_cpu)[0], "full_cpu": percentiles(full_cpu)[0],
            "stages": {k: round(v, 3) for k, v in result.timings.items()},
            "working_grid_shape": list(result.working.image.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle folder (default: the shipped phantom-ct-mr bundle)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tta-candidates", default="", help="e.g. 1,2,4,8: also time these TTA counts")
    parser.add_argument("--mode", default="tdgan", choices=("tdgan", "vanilla"))
    args = parser.parse_args()

    import torch

    from crossdomainseg.data import generate_case
    from crossdomainseg.device import configure
    from crossdomainseg.engine import Engine
    from crossdomainseg.resources import shipped_bundle

    threads = configure(args.threads)
    bundle = args.bundle or shipped_bundle(TASK)
    image = generate_case(TASK, 90210, "target", size=(args.size,) * 3).image
    candidates = [int(n) for n in args.tta_candidates.split(",") if n.strip()]

    engine = Engine(bundle, device="cpu", threads=threads, mode=args.mode)
    cpu = measure(engine, image, args.repeats, candidates)
    payload = {
        "task": TASK, "bundle": str(bundle), "model_version": engine.model_version,
        "volume_shape": list(image.GetSize()[::-1]), "volume_spacing_mm": list(image.GetSpacing()),
        "working_grid_shape": cpu["working_grid_shape"],
        "threads": threads, "repeats": args.repeats, "tta_n": engine.tta_n,
        "heatmap": engine.heatmap_kind, "mode": engine.mode,
        "seg_s_p50": cpu["seg"][0], "seg_s_p95": cpu["seg"][1],
        "full_s_p50": cpu["full"][0], "full_s_p95": cpu["full"][1],
        "seg_cpu_s_p50": cpu["seg_cpu"], "full_cpu_s_p50": cpu["full_cpu"],
        "full_s_p50_by_tta_n": cpu["by_n"], "stage_s_full": cpu["stages"],
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    del engine
    payload["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        gpu = measure(Engine(bundle, device="cuda", mode=args.mode), image, args.repeats, candidates)
        payload.update({
            "cuda_seg_s_p50": gpu["seg"][0], "cuda_seg_s_p95": gpu["seg"][1],
            "cuda_full_s_p50": gpu["full"][0], "cuda_full_s_p95": gpu["full"][1],
            "cuda_full_s_p50_by_tta_n": gpu["by_n"],
            "cuda_peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        })
    write_result("inference_speed", payload, threads)


if __name__ == "__main__":
    main()
