"""DICOM and PACS benchmark: benchmarks/results/dicom.json.

The demo case (Resources/demo) as an MR DICOM series is pushed to a local Orthanc (DICOMweb),
pulled, segmented with the shipped phantom-ct-mr bundle, the DICOM SEG pushed back, pulled back
and compared with the label map (Dice per segment). Every SEG object written (the pushed one, the
one pulled back, a corrected SEMIAUTOMATIC one and one with locally coded label names) is checked
with dciodvfy. Run: python benchmarks/dicom.py [--threads N]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import highdicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402  (also puts the engine on sys.path)

from crossdomainseg import dciodvfy  # noqa: E402
from crossdomainseg.dicom_seg import Provenance, write_dicom_seg  # noqa: E402
from crossdomainseg.engine import Engine  # noqa: E402
from crossdomainseg.imageio import read_image  # noqa: E402
from crossdomainseg.pacs.roundtrip import local_roundtrip  # noqa: E402
from crossdomainseg.resources import demo_case, shipped_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engine = Engine(shipped_bundle("phantom-ct-mr"), threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="cds-dicom-bench-") as scratch:
        work = Path(scratch)
        trip = local_roundtrip(read_image(demo_case()), engine, work)
        files = sorted((work / "case" / "series").iterdir())
        label = read_image(work / "case" / "label.nii.gz")
        labels = engine.bundle.labels
        corrected = write_dicom_seg(label, files, work / "corrected.dcm", labels, Provenance(
            engine.bundle.version, clicks=3, corrected=True, accepted_by="Benchmark^Reader"))
        renamed = {f"structure {value}": value for name, value in labels.items() if value}
        local = write_dicom_seg(label, files, work / "local_codes.dcm", renamed,
                                Provenance(engine.bundle.version))
        reports = [dciodvfy.validate(path) for path in (corrected, local)]
    errors = trip["dciodvfy"]["errors"] + [e for r in reports for e in r.errors]
    warnings = sorted(set(trip["dciodvfy"]["warnings"]) | {w for r in reports for w in r.warnings})
    write_result("dicom", {
        "seg_writer": f"highdicom {highdicom.__version__}",
        "dciodvfy_errors": len(errors),
        "dciodvfy_objects": trip["dciodvfy"]["objects"] + len(reports),
        "dciodvfy_error_lines": errors,
        "dciodvfy_warnings": warnings,
        "orthanc_version": trip["orthanc_version"],
        "roundtrip": {key: trip[key] for key in ("series_pushed", "series_pulled", "seg_pushed",
                                                 "seg_read_back_dice", "seconds")},
        "case": str(demo_case().relative_to(Path(__file__).resolve().parents[1])),
        "bundle": engine.bundle.version,
    }, args.threads)


if __name__ == "__main__":
    main()
