"""`crossdomainseg segment`: one image, or every image in a folder (batch, resumable).

Single: `segment IN --bundle B --out label.nii.gz [--preview P] [--uncertainty U]`; IN is an image
file or a DICOM series folder; `--out` ending in `.seg.nrrd` writes a Slicer segmentation; an
output file that exists is replaced only with --force.
Batch: IN is a folder of image files (NIfTI/NRRD/MHA); `--out`, `--preview` and `--uncertainty`
are folders and each case keeps its file name. A case is finished when its `<case>.json` report
(U, model version, which path ran, timings) exists; it is written last, after the images, so a
rerun skips exactly the finished cases and redoes an interrupted one. A case the engine refuses is reported as failed
with its reason (exit status 1). Before the model loads, the outputs are checked: none may be the
input or another output, and each must be writable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from .errors import InputError
from .imageio import READ_SUFFIXES, WRITE_SUFFIXES, write_image, write_seg_nrrd
from .output_paths import check_distinct, check_output_file, check_output_folder
from .store import atomic_write_json

BATCH_SUFFIXES = tuple(s for s in READ_SUFFIXES if s not in (".dcm", ".nhdr", ".mhd"))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment an image or a folder of images with a model bundle",
        description=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("input", help="image file, DICOM series folder, or folder of image files (batch)")
    parser.add_argument("--bundle", required=True,
                        help="model bundle folder, model registry folder (follows CURRENT), or the "
                             "task name of a shipped bundle")
    parser.add_argument("--out", required=True, help="label map file (single) or folder (batch)")
    parser.add_argument("--preview", help="write the synthetic-modality preview here (file or folder)")
    parser.add_argument("--uncertainty", help="write the uncertainty heatmap here (file or folder)")
    parser.add_argument("--tta", type=int, default=None,
                        help="test-time augmentations for the uncertainty (default: the engine's)")
    parser.add_argument("--no-uncertainty", action="store_true",
                        help="skip test-time augmentation (fastest; no U, no heatmap)")
    parser.add_argument("--mode", choices=("auto", "tdgan", "vanilla"), default="auto",
                        help="tdgan: segment the synthetic preview; vanilla: the raw image; "
                             "auto (default): what the bundle's metadata says")
    parser.add_argument("--raw", action="store_true",
                        help="write the network's raw label, without the bundle's post-processing steps")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--force", action="store_true",
                        help="batch: redo cases already finished; single file: replace output files that exist")
    parser.set_defaults(func=run)


def _bundle_path(value: str) -> Path:
    path = Path(value)
    if path.exists():
        return path
    from .resources import shipped_bundles

    shipped = shipped_bundles()
    if value in shipped:
        return shipped[value]
    raise InputError(f"--bundle {value}: no such folder and no shipped bundle of that name "
                     f"(shipped: {', '.join(shipped) or 'none'}).")


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(BATCH_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def batch_inputs(folder: Path) -> list[Path]:
    """Image files directly in `folder` (empty for a DICOM series folder)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(BATCH_SUFFIXES))


def run(args) -> int:
    from .engine import Engine

    if args.no_uncertainty and args.uncertainty:
        raise InputError("--uncertainty writes the heatmap, which --no-uncertainty turns off; drop one.")
    source = Path(args.input)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder.")
    cases = batch_inputs(source) if source.is_dir() else []
    outputs = {flag: Path(value) for flag, value in
               (("--out", args.out), ("--preview", args.preview), ("--uncertainty", args.uncertainty)) if value}
    if source.is_dir() and not cases and not outputs["--out"].suffix:
        # a folder --out asks for a batch, but the folder has no image file to segment
        raise InputError(f"{source} holds no image files ({', '.join(BATCH_SUFFIXES)}) to segment as a batch; "
                         "if it is a DICOM series folder, give --out a file name such as label.nii.gz.")
    # where the results go is checked before the model loads and anything runs
    if cases:
        _check_batch_outputs(source, cases, outputs)
    else:
        _check_single_outputs(source, outputs, args.force)
    engine = Engine(_bundle_path(args.bundle), device=args.device, threads=args.threads,
                    tta_n=args.tta, mode=args.mode, postprocess=not args.raw)
    if args.preview and engine.generator is None:
        raise InputError(f"--preview: the model {args.bundle} has no generator, so it makes no synthetic "
                         "preview; drop --preview.")
    if cases:
        return _run_batch(engine, cases, args)
    result = _segment_one(engine, source, Path(args.out), args.preview, args.uncertainty,
                          not args.no_uncertainty)
    u = "" if result.U is None else f", U = {result.U:.4f}"
    print(f"wrote {args.out} (model {result.model_version}, {ran(result)}{u}) in {result.timings['total']:.2f} s")
    return 0


def ran(result) -> str:
    """Which path made the label: TD-GAN (the segmenter read the synthetic preview) or vanilla."""
    if result.working.segmenter_input == "preview":
        return "TD-GAN: segmented the synthetic preview"
    return "vanilla: segmented the image as it is"


def _check_single_outputs(source: Path, outputs: dict[str, Path], force: bool) -> None:
    for flag, path in outputs.items():
        check_output_file(flag, path, WRITE_SUFFIXES + (".seg.nrrd",) if flag == "--out" else WRITE_SUFFIXES)
    check_distinct([source], outputs)
    # an earlier result (or any file of the user's) is replaced only on request, as batch mode
    # redoes a finished case only with --force
    for flag, path in outputs.items():
        if path.exists() and not force:
            raise InputError(f"{flag} {path} already exists; add --force to replace it, "
                             "or choose another name.")


def _check_batch_outputs(source: Path, cases: list[Path], outputs: dict[str, Path]) -> None:
    if outputs["--out"].suffix:
        raise InputError(f"{source} is a folder of images, so --out must be a folder, not {outputs['--out']}.")
    for flag, folder in outputs.items():
        check_output_folder(flag, folder)
    # each case writes <name>.nii.gz into every output folder: the input folder's files would be
    # overwritten, and two output folders in one would overwrite each other
    check_distinct([source], outputs)
    names: dict[str, Path] = {}
    for path in cases:
        other = names.setdefault(_case_name(path).lower(), path)
        if other != path:
            raise InputError(f"{other.name} and {path.name} in {source} would both be written as "
                             f"{_case_name(path)}.nii.gz; rename one or move it to another folder.")


def _segment_one(engine, path: Path, out: Path, preview, heatmap, with_uncertainty: bool):
    result = engine.segment(path, preview=preview is not None, uncertainty=with_uncertainty)
    if out.name.lower().endswith(".seg.nrrd"):
        write_seg_nrrd(result.label, out, result.labels, result.colors,
                       engine.bundle.metadata.get("terminology"))
    else:
        write_image(result.label, out)
    if preview is not None:
        write_image(result.preview, preview)
    if heatmap is not None:
        write_image(result.uncertainty, heatmap)
    return result


def _run_batch(engine, cases: list[Path], args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"preview": args.preview, "uncertainty": args.uncertainty}
    done, failed = 0, []
    with tqdm(cases, unit="case", desc="segment", file=sys.stderr) as bar:
        for path in bar:
            name = _case_name(path)
            report = out / f"{name}.json"
            if report.exists() and not args.force:
                continue
            bar.set_postfix_str(name)
            targets = {key: Path(folder) / f"{name}.nii.gz" if folder else None for key, folder in extra.items()}
            try:
                result = _segment_one(engine, path, out / f"{name}.nii.gz", targets["preview"],
                                      targets["uncertainty"], not args.no_uncertainty)
            except InputError as error:  # one bad case must not stop the batch
                failed.append(f"{path.name}: {error}")
                continue
            atomic_write_json(report, {
                "case": name, "input": str(path), "U": result.U, "model_version": result.model_version,
                "mode": "tdgan" if result.working.segmenter_input == "preview" else "vanilla",
                "segmenter_input": result.working.segmenter_input,
                "tta_n": result.tta_n, "timings": {k: round(v, 4) for k, v in result.timings.items()},
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            done += 1
    skipped = len(cases) - done - len(failed)
    print(f"segmented {done} case(s), skipped {skipped} already finished, {len(failed)} failed; "
          f"results in {out}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0
