"""`crossdomainseg accept IMAGE LABEL --store DIR --bundle B`: put a corrected case into the
accepted-case store from files, as the front ends' Accept button does (the background trainer
fine-tunes on what the store holds).

IMAGE is an image file or a DICOM series folder, LABEL the corrected label map on the image's
grid; `--clicks` a JSON file of clicks (a list, or {"clicks": [...]}, each with a "point" in LPS
mm); `--draft` the model's label before the corrections. The store checks the pair (same grid,
integer values, label values the model defines) before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "accept", help="store a corrected case (image and label files) for the background trainer",
        description=__doc__.split("\n", 1)[1])
    parser.add_argument("image", help="image file or DICOM series folder")
    parser.add_argument("label", help="corrected label map on the image's grid")
    parser.add_argument("--store", required=True, help="accepted-case store folder (made if missing)")
    parser.add_argument("--bundle", required=True,
                        help="the model the case was corrected with: bundle folder or shipped task name")
    parser.add_argument("--clicks", help="JSON file of the clicks made (points in LPS mm)")
    parser.add_argument("--draft", help="the model's label before the corrections (records how much was edited)")
    parser.set_defaults(func=run)


def read_clicks(path: str | None) -> list:
    if path is None:
        return []
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"--clicks {path}: no such file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"--clicks {path} is not valid JSON ({error}).") from None
    clicks = data.get("clicks") if isinstance(data, dict) else data
    if not isinstance(clicks, list):
        raise InputError(f"--clicks {path} must hold a list of clicks or {{\"clicks\": [...]}}.")
    return clicks


def run(args) -> int:
    from .bundle import check_dimension, load_bundle
    from .imageio import read_image
    from .segment_cli import _bundle_path
    from .store import AcceptedCaseStore

    for what, path in (("image", args.image), ("label", args.label), ("draft", args.draft)):
        if path is not None and not Path(path).exists():
            raise InputError(f"The {what} {path} does not exist.")
    bundle = load_bundle(_bundle_path(args.bundle))
    clicks = read_clicks(args.clicks)
    image, label = read_image(args.image), read_image(args.label)
    draft = read_image(args.draft) if args.draft is not None else None
    # the background trainer would refuse the case only later, in its own process
    check_dimension(bundle, image.GetSize(), args.image)
    case_id = AcceptedCaseStore(args.store).accept(
        image, label, clicks, model_version=bundle.version, labels=bundle.labels, draft=draft,
        meta={"image": str(Path(args.image).resolve()), "label": str(Path(args.label).resolve())})
    print(f"accepted {args.image} as case {case_id} in {args.store} (model {bundle.version}, {len(clicks)} click(s))")
    return 0
