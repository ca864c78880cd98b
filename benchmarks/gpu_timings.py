"""CUDA timings with CPU twins from the same process: segmentation of a 128^3 target volume (warm
engine), per-click latency of the robot user on it, and one training step of the reference
segmenter's architecture (batch 2 x 96^3). Run by benchmarks/gpu_check.sh on a GPU machine.

    python benchmarks/gpu_timings.py --out FILE [--repeats 5]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"))

TASK = "phantom-ct-mr"


def p50_p95(seconds) -> list[float]:
    return [round(float(v), 4) for v in np.percentile(seconds, [50, 95])]


def segmentation(engine, image, repeats: int) -> dict:
    engine.segment(image, uncertainty=False)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.segment(image, preview=True, uncertainty=True)
        times.append(time.perf_counter() - start)
    return {"full_s_p50_p95": p50_p95(times)}


def clicks(engine, case, n_clicks: int) -> dict:
    import SimpleITK as sitk

    from crossdomainseg.interactive import InteractiveSession
    from crossdomainseg.evaluation.robot import robot_on_label

    result = engine.segment(case.image, preview=True, uncertainty=False)
    session = InteractiveSession.from_result(case.image, result, engine.bundle)
    truth = sitk.GetArrayFromImage(case.label).astype(np.int16)
    times = []
    for value in session.label_values:
        times += robot_on_label(session, truth, value, n_clicks)[1]
    return {"clicks": len(times), "ms_p50_p95": [round(1000 * t, 1) for t in p50_p95(times)]}


def training_step(device: str, steps: int) -> dict:
    import torch

    from crossdomainseg.networks import build_network

    spec = {"kind": "segmenter", "spatial_dims": 3, "in_channels": 1, "out_channels": 5,
            "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
    net = build_network(spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 96, 96, 96, device=device)
    y = torch.randint(0, 5, (2, 96, 96, 96), device=device)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"step_s_p50_p95": p50_p95(times[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args()

    import torch

    from crossdomainseg.data import generate_case
    from crossdomainseg.device import configure
    from crossdomainseg.engine import Engine
    from crossdomainseg.resources import shipped_bundle

    threads = configure(2)
    case = generate_case(TASK, 90210, "target", size=(128, 128, 128))
    bundle = shipped_bundle(TASK)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    payload = {"task": TASK, "volume_shape": list(case.image.GetSize()[::-1]), "cpu_threads": threads,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "torch": torch.__version__}
    for device in devices:
        engine = Engine(bundle, device=device, threads=threads)
        payload[device] = {"segmentation": segmentation(engine, case.image, args.repeats),
                           "click": clicks(engine, case, args.clicks),
                           "training_step": training_step(device, 3 if device == "cpu" else 10)}
        if device == "cuda":
            payload[device]["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    Path(args.out).write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
