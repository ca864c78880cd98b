"""`crossdomainseg demo`: the whole product on the embedded default case, then the web app.

Segments the embedded demo case (a brain T2 volume with 4-6 mm coronal slices, task brain-t1-t2)
with the shipped bundle (label map, synthetic T1 preview, uncertainty heatmap, U), scores it
against the case's ground truth, writes everything under --out, and serves the web app on the
same case through the `web` command unless --no-serve.
"""

import argparse
import json
from pathlib import Path

from . import imageio, metrics, resources
from .engine import Engine

DEFAULT_OUT = Path("output") / "demo"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole workflow on the embedded demo case and serve the web app",
        description="Segment the embedded brain T2 demo case with the shipped brain-t1-t2 bundle "
        "(label, synthetic T1 preview, uncertainty), score it against its ground truth, write the "
        "outputs, then serve the web app on that case.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the outputs (default {DEFAULT_OUT})")
    parser.add_argument("--no-serve", action="store_true", help="stop after writing the outputs")
    parser.add_argument("--port", type=int, default=8080, help="web app port (default 8080)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    case = resources.demo_case(resources.DEMO_TASK)
    bundle = resources.shipped_bundle(resources.DEMO_TASK)
    image = imageio.read_image(case)
    engine = Engine(bundle)
    result = engine.segment(image, progress=lambda fraction, message: print(
        f"  [{fraction:4.0%}] {message}"))
    written = {
        "label": imageio.write_image(result.label, out / "demo_label.nii.gz"),
        "segmentation": imageio.write_seg_nrrd(result.label, out / "demo_label.seg.nrrd",
                                               result.labels, result.colors,
                                               engine.bundle.metadata.get("terminology")),
        "preview": imageio.write_image(result.preview, out / "demo_preview.nii.gz"),
        "uncertainty": imageio.write_image(result.uncertainty, out / "demo_uncertainty.nii.gz"),
    }
    summary = {"case": str(case), "bundle": str(bundle), "model_version": result.model_version,
               "U": result.U, "timings_s": result.timings,
               "outputs": {k: str(v) for k, v in written.items()}}
    truth_path = case.with_name(case.name.replace(".nii.gz", "_label.nii.gz"))
    if truth_path.exists():
        per_label = metrics.dice_per_label(result.label, imageio.read_image(truth_path),
                                           [v for v in result.labels.values() if v])
        names = {value: name for name, value in result.labels.items()}
        summary["dice_vs_ground_truth"] = {names[v]: round(d, 4) for v, d in per_label.items()}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out.resolve()}")
    if args.no_serve:
        return 0
    from .cli import main

    print(f"serving the web app on 127.0.0.1 port {args.port}: open the address printed below, "
          "with its session token (Ctrl-C stops it)", flush=True)
    # the `web` command, from whichever installed package provides it (the web app)
    return main(["web", "--case", str(case), "--bundle", str(bundle), "--workspace", str(out / "workspace"),
                 "--port", str(args.port)])
