"""Regenerate the embedded demo cases: one target volume and its label per task.

    PYTHONPATH=SlicerCrossDomainSeg python scripts/make_demo_case.py [--templates PATH]

brain-t1-t2 (the demo's case: a coronal T2 with 4-6 mm slices, from the ICBM152 templates, with
their notice in Resources/demo/NOTICE-ICBM152.txt) and phantom-ct-mr (the tests' fast fixture).
Subject seeds are fixed, so the files are identical on every run; the demo and the tests use the
images, the labels are ground truth for scoring only.
"""

import argparse
import sys
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SlicerCrossDomainSeg"))

from crossdomainseg.data import generate_case, icbm152  # noqa: E402

DEMO_SEEDS = {"brain-t1-t2": 20261, "phantom-ct-mr": 20260}
OUT = ROOT / "Resources" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", help="the ICBM152 archive or folder (default: fetched and cached)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for task, seed in DEMO_SEEDS.items():
        templates = {"templates": args.templates} if task == "brain-t1-t2" and args.templates else {}
        case = generate_case(task, seed, "target", **templates)
        for image, name in ((case.image, f"{task}_target.nii.gz"), (case.label, f"{task}_target_label.nii.gz")):
            path = OUT / name
            sitk.WriteImage(image, str(path), True)
            print(f"{path.relative_to(ROOT)}: {image.GetSize()} {path.stat().st_size / 1e6:.2f} MB")
    (OUT / "NOTICE-ICBM152.txt").write_text(icbm152.NOTICE)


if __name__ == "__main__":
    main()
