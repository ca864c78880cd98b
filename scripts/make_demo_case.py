"""Regenerate the embedded demo case: one phantom-ct-mr target (MR-like) volume and its label.

    PYTHONPATH=SlicerCrossDomainSeg python scripts/make_demo_case.py

The subject seed is fixed, so the files are identical on every run; the demo and the tests use
the image, the label is ground truth for tests only.
"""

import sys
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SlicerCrossDomainSeg"))

from crossdomainseg.data import generate_case  # noqa: E402

DEMO_SEED = 20260
OUT = ROOT / "Resources" / "demo"


def main() -> None:
    case = generate_case("phantom-ct-mr", DEMO_SEED, "target")
    OUT.mkdir(parents=True, exist_ok=True)
    for image, name in ((case.image, "phantom-ct-mr_target.nii.gz"), (case.label, "phantom-ct-mr_target_label.nii.gz")):
        path = OUT / name
        sitk.WriteImage(image, str(path), True)
        print(f"{path.relative_to(ROOT)}: {image.GetSize()} {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
