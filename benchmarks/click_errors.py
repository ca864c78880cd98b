"""Why clicks move Dice little on brain-t1-t2: the robot user clicks each compact structure of the
SOURCE validation split (target labels are never read) with each method, from the bundle's draft,
and this records per object the draft's errors (false negatives and positives, connected
components, the share of error voxels within one voxel of the true boundary, their depth in mm)
and per click the error region clicked (voxels, depth, extent), the voxels the click changed, how
many of those it fixed and how many it broke, and the Dice change; for the prompt network also its
answer on the crop (its probability at the clicked voxel, crop Dice of the draft and of the answer
against the reference, the object's share inside the crop). --thick MM first resamples each case
to coronal slices MM thick (0.93 mm pixels, each slice the mean of four thin ones, the label
nearest at the slice centres), as the target is rendered. Writes
benchmarks/results/click_errors.json (the thick-slice run under "thick_<MM>mm").

    python benchmarks/click_errors.py --bundle Resources/bundles/brain-t1-t2 [--limit 2] [--thick 5.66]
"""

import argparse
import datetime
import json
import shlex
import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from common import RESULTS, machine_info, task_dir
from crossdomainseg.evaluation.robot import dice  # noqa: E402  (common puts the package on sys.path)

COMPACT = {"lateral_ventricles": 3, "thalamus": 5, "caudate": 6, "putamen": 7, "pallidum": 8, "brainstem": 9,
           "cerebellum": 10}
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)


def error_structure(truth: np.ndarray, pred: np.ndarray, spacing) -> dict:
    """The draft's errors for one object: counts, components, boundary share and depth (mm)."""
    errors = truth ^ pred
    components, n = ndimage.label(errors)
    sizes = np.bincount(components.ravel())[1:] if n else np.zeros(1, int)
    band = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth)
    depth = ndimage.distance_transform_edt(np.pad(errors, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    total = max(1, int(errors.sum()))
    return {"false_negatives": int((truth & ~pred).sum()), "false_positives": int((pred & ~truth).sum()),
            "components": int(n), "largest_component_share": round(float(sizes.max()) / total, 3),
            "share_within_one_voxel_of_boundary": round(float((errors & band).sum()) / total, 3),
            "max_depth_mm": round(float(depth.max()), 2)}


def thick_slices(image: sitk.Image, label: sitk.Image, thickness: float, in_plane: float = 0.93, sub: int = 4):
    """(image, label) on a coronal grid of `thickness` mm slices over `image`'s extent, each slice
    the mean of `sub` thin ones; the label nearest at the slice centres."""
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    counts = (int(extent[0] / in_plane), int(extent[2] / in_plane), int(extent[1] / thickness))
    direction = np.asarray(CORONAL).reshape(3, 3)

    def grid(spacing, size):
        ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
        ref.SetSpacing([float(s) for s in spacing])
        ref.SetDirection(CORONAL)
        ref.SetOrigin([float(v) for v in centre - direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)])
        return ref

    thick = grid((in_plane, in_plane, thickness), counts)
    thin = grid((in_plane, in_plane, thickness / sub), (counts[0], counts[1], counts[2] * sub))
    fine = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), thin, sitk.Transform(),
                                                sitk.sitkLinear, 0.0))
    out = sitk.GetImageFromArray(fine.reshape(counts[2], sub, *fine.shape[1:]).mean(axis=1).astype(np.float32))
    out.CopyInformation(thick)
    return out, sitk.Resample(label, thick, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


class Recording:
    """A click method that keeps its last inputs and answer (the prompt network's crop)."""

    def __init__(self, refiner):
        self.refiner, self.crop_mm, self.last = refiner, refiner.crop_mm, None

    def propose(self, inputs):
        answer = np.asarray(self.refiner.propose(inputs))
        self.last = (inputs, answer)
        return answer


def click_row(session, truth, value, recorder) -> dict | None:
    """One robot click on `value`, and what it did; None when nothing is left to correct."""
    from crossdomainseg.interactive.encoding import crop_box, crop_voxels
    from crossdomainseg.interactive.simulate import next_click

    pred = session.label == value
    click = next_click(truth, pred, session.spacing, ~session.locked)
    if click is None:
        return None
    region = np.zeros(truth.shape, bool)
    region[click.region] = click.mask
    depth = ndimage.distance_transform_edt(np.pad(click.mask, 1), sampling=session.spacing).max()
    before, recorder.last = session.label.copy(), None
    point = session.image.TransformIndexToPhysicalPoint(tuple(int(i) for i in reversed(click.index)))
    session.add_click(point, click.positive, value)
    after = session.label == value
    changed = before != session.label
    row = {"positive": click.positive, "region_voxels": click.size, "region_depth_mm": round(float(depth), 2),
           "region_extent_mm": [round((r.stop - r.start) * s, 1) for r, s in zip(click.region, session.spacing)],
           "changed": int(changed.sum()), "fixed": int((changed & (after == truth)).sum()),
           "broke": int((changed & (after != truth)).sum()),
           "dice_before": round(dice(truth, pred), 4), "dice_after": round(dice(truth, after), 4)}
    if recorder.last is not None and recorder.refiner.name == "prompt":
        inputs, answer = recorder.last
        box = crop_box(click.index, crop_voxels(recorder.crop_mm, session.spacing), truth.shape)
        inside = truth[box.slices]
        row["prompt"] = {"probability_at_click": round(float(answer[inputs.click]), 3),
                         "crop_dice_draft": round(dice(inside, inputs.current), 4),
                         "crop_dice_answer": round(dice(inside, answer >= 0.5), 4),
                         "object_share_in_crop": round(float(inside.sum()) / float(truth.sum()), 3)}
    return row


def summary(objects: list) -> dict:
    """Per method: Dice before and after, and per-click means over every object."""
    out = {}
    for method in sorted({o["method"] for o in objects}):
        mine = [o for o in objects if o["method"] == method]
        clicks = [c for o in mine for c in o["clicks"]]
        row = {"objects": len(mine), "dice_0": round(float(np.mean([o["dice_0"] for o in mine])), 4),
               "dice_end": round(float(np.mean([o["dice_end"] for o in mine])), 4),
               "clicks": len(clicks),
               "changed_per_click": round(float(np.mean([c["changed"] for c in clicks])), 1),
               "fixed_per_click": round(float(np.mean([c["fixed"] for c in clicks])), 1),
               "broke_per_click": round(float(np.mean([c["broke"] for c in clicks])), 1),
               "clicks_changing_one_voxel_share": round(float(np.mean([c["changed"] <= 1 for c in clicks])), 3),
               "clicks_dropping_over_0.01": int(sum(c["dice_after"] - c["dice_before"] < -0.01 for c in clicks)),
               "clicked_region_depth_mm_median": round(float(np.median([c["region_depth_mm"] for c in clicks])), 2),
               "clicked_regions_one_voxel_deep_share": round(float(np.mean(
                   [c["region_depth_mm"] <= min(o["spacing"]) + 1e-3 for o in mine for c in o["clicks"]])), 3)}
        answers = [c for c in clicks if "prompt" in c]
        if answers:
            row["answer_worse_than_draft_in_crop_share"] = round(float(np.mean(
                [c["prompt"]["crop_dice_answer"] < c["prompt"]["crop_dice_draft"] for c in answers])), 3)
            row["crop_dice_draft_mean"] = round(float(np.mean([c["prompt"]["crop_dice_draft"] for c in answers])), 4)
            row["crop_dice_answer_mean"] = round(float(np.mean([c["prompt"]["crop_dice_answer"] for c in answers])), 4)
            positive = [c for c in answers if c["positive"]]
            row["positive_clicks_contradicted_share"] = round(float(np.mean(
                [c["prompt"]["probability_at_click"] < 0.5 for c in positive])), 3) if positive else None
        out[method] = row
    errors = [o["errors_0"] for o in objects if o["method"] == objects[0]["method"]]
    out["draft_errors"] = {
        "objects": len(errors),
        "share_within_one_voxel_of_boundary_mean": round(float(np.mean(
            [e["share_within_one_voxel_of_boundary"] for e in errors])), 3),
        "components_mean": round(float(np.mean([e["components"] for e in errors])), 1),
        "max_depth_mm_mean": round(float(np.mean([e["max_depth_mm"] for e in errors])), 2)}
    return out


def main() -> int:
    import torch

    from crossdomainseg.engine import Engine
    from crossdomainseg.evaluation.cli import build_refiners
    from crossdomainseg.interactive.session import InteractiveSession

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="Resources/bundles/brain-t1-t2")
    parser.add_argument("--data", default=None, help="brain-t1-t2 task folder (default: the bundles' data)")
    parser.add_argument("--methods", default="prompt,sphere,boundary_shift")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--thick", type=float, default=None, help="resample to coronal slices this thick (mm)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(args.bundle, threads=args.threads, mode="source")
    methods = args.methods.split(",")
    refiners = build_refiners(engine.bundle, methods, "cpu")
    cases = [c for c in task_dir("brain-t1-t2", args.data).cases("val", "source") if c[2] is not None][: args.limit]
    objects = []
    for case_id, image_path, label_path in cases:
        image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
        if args.thick:
            image, label = thick_slices(image, label, args.thick)
        reference = sitk.GetArrayFromImage(label)
        result = engine.segment(image, preview=True, uncertainty=False)
        start = InteractiveSession.from_result(image, result, engine.bundle, domain="source")
        for name, value in COMPACT.items():
            truth = reference == value
            if not truth.any():
                continue
            for method in methods:
                recorder = Recording(refiners[method])
                session = InteractiveSession(image, result.label, result.probabilities, start.features,
                                             start.preview, recorder, start.label_values)
                draft = session.label == value
                record = {"object": f"{case_id}/{name}", "method": method, "voxels": int(truth.sum()),
                          "spacing": list(session.spacing), "dice_0": round(dice(truth, draft), 4),
                          "errors_0": error_structure(truth, draft, session.spacing), "clicks": []}
                for _ in range(args.max_clicks):
                    row = click_row(session, truth, value, recorder)
                    if row is None:
                        break
                    record["clicks"].append(row)
                end = session.label == value
                record["dice_end"] = round(dice(truth, end), 4)
                record["errors_end"] = error_structure(truth, end, session.spacing)
                objects.append(record)
                print(f"{record['object']} {method}: {record['dice_0']:.3f} -> {record['dice_end']:.3f}", flush=True)
    path = RESULTS / "click_errors.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    key = f"thick_{args.thick:g}mm" if args.thick else "native"
    payload[key] = {"machine": machine_info(args.threads),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "command": shlex.join(["python", *sys.argv]), "bundle": args.bundle, "split": "source val",
                    "cases": [c[0] for c in cases], "max_clicks": args.max_clicks, "summary": summary(objects),
                    "objects": objects}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload[key]["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
