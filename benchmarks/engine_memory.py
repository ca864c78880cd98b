"""Peak memory of Engine.segment against the input and working grid sizes, and the engine's
estimate of it (engine.Engine.memory_estimate), on the shipped phantom-ct-mr bundle.

The demo case is resampled finer (more input voxels, same working grid) and padded wider (more
of both); each run is a fresh process that reads the case from a file, and its peak resident
memory above the loaded engine is recorded. The estimate must cover every measured peak.
Writes benchmarks/results/engine_memory.json.

    python benchmarks/engine_memory.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, write_result

CHILD = r"""
import json, resource, sys
import psutil
from crossdomainseg import resources
from crossdomainseg.engine import Engine
engine = Engine(resources.shipped_bundle("phantom-ct-mr"), device="cpu", threads=int(sys.argv[2]))
before = psutil.Process().memory_info().rss
result = engine.segment(sys.argv[1])
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
reference = result.working.reference
print(json.dumps({"peak_above_engine": peak - before, "input_size": list(result.label.GetSize()),
                  "working_size": list(reference.GetSize()),
                  "estimate": engine.memory_estimate(result.label.GetSize(), reference.GetSize(), engine.tta_n),
                  "seconds": result.timings["total"]}))
"""


def _case(spacing: float, pad_mm: float, folder: Path) -> Path:
    import numpy as np
    import SimpleITK as sitk

    from crossdomainseg import geometry, resources

    image = sitk.ReadImage(str(resources.demo_case()))
    if pad_mm:
        voxels = [int(round(pad_mm / s)) for s in image.GetSpacing()[:2]] + [0]
        image = sitk.ConstantPad(image, voxels, voxels, float(sitk.GetArrayViewFromImage(image).min()))
    low, high = geometry.physical_bounds(image)
    size = [int(v) for v in np.round((high - low) / spacing)]
    reference = sitk.Image(size, sitk.sitkUInt8)
    reference.SetSpacing([spacing] * 3)
    reference.SetOrigin((low + spacing / 2).tolist())
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    path = folder / f"case_{spacing}_{pad_mm}.nii.gz"
    sitk.WriteImage(resampled, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    runs = []
    env = {"PYTHONPATH": str(ROOT / "SlicerCrossDomainSeg")}
    with tempfile.TemporaryDirectory() as folder:
        for spacing, pad_mm in [(1.8, 0), (1.2, 0), (0.9, 0), (0.7, 0), (3.0, 150), (1.5, 150)]:
            path = _case(spacing, pad_mm, Path(folder))
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.threads)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            run = {"spacing_mm": spacing, "pad_mm": pad_mm, **json.loads(out.strip().splitlines()[-1])}
            run["estimate_over_peak"] = round(run["estimate"] / run["peak_above_engine"], 3)
            print(run, flush=True)
            runs.append(run)
    write_result("engine_memory", {
        "runs": runs, "covered": all(r["estimate"] >= r["peak_above_engine"] for r in runs),
        "note": "peak resident memory above the loaded engine (ru_maxrss), one process per run",
    }, args.threads)


if __name__ == "__main__":
    main()
