"""What every benchmark result file carries: the machine, the date and the command."""

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT / "build" / "default-bundle-data"  # what scripts/train_default_bundles.sh makes
N_CASES = {"brain-t1-t2": 30, "phantom-ct-mr": 30, "xray-drr": 60}  # as in scripts/train_default_bundles.sh
DATA_SEED = 0
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict:
    import monai
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores_available": os.cpu_count(), "threads": threads, "gpu": gpu,
            "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()}


def write_result(name: str, payload: dict, threads: int) -> Path:
    """Write benchmarks/results/<name>.json with machine, date and the command that ran."""
    record = {"machine": machine_info(threads),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]), **payload}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


def task_dir(task: str, folder=None):
    """The benchmark's task folder (default: the bundles' training data), generated when missing."""
    from crossdomainseg.data import TaskDir, make_task

    folder = Path(folder) if folder else DATA_ROOT / task
    if not (folder / "task.json").exists():
        make_task(task, N_CASES[task], DATA_SEED, folder)
    return TaskDir(folder)
