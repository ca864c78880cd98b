"""`crossdomainseg pacs`: a DICOMweb PACS from the command line.

  pacs list --url URL [--study UID]        studies, or the series of one study
  pacs pull dicomweb://HOST:PORT/PATH/studies/S/series/R --out FOLDER
  pacs segment dicomweb://... --bundle B --out FOLDER [--no-push]
                                           pull, segment, write label.nii.gz and seg.dcm (DICOM
                                           SEG), and store the SEG on the PACS
  pacs push --url URL FILE...              store DICOM files (e.g. a SEG)
  pacs demo [--bundle B] [--out FOLDER]    the whole round trip on a local Orthanc

URL is the server's DICOMweb root (Orthanc: http://HOST:8042/dicom-web). With --user, the
password is read from the environment variable CROSSDOMAINSEG_PACS_PASSWORD (not the command line,
which other users of the machine can see).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from .client import PASSWORD_VARIABLE, check_uid, connect, list_series, list_studies, parse_url


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("pacs", help="list, pull, segment and push series on a DICOMweb PACS",
                                   description=__doc__.split("\n", 1)[1])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="studies, or the series of --study")
    _server_options(listing, url=True)
    listing.add_argument("--study", help="study instance UID: list its series")
    listing.set_defaults(func=_list)

    pull = actions.add_parser("pull", help="download one series into a folder")
    pull.add_argument("series", help="dicomweb://HOST:PORT/PATH/studies/STUDY_UID/series/SERIES_UID")
    pull.add_argument("--out", required=True, help="folder for the series' files")
    _server_options(pull)
    pull.set_defaults(func=_pull)

    segment = actions.add_parser("segment", help="pull a series, segment it, push the DICOM SEG back")
    segment.add_argument("series", help="dicomweb://HOST:PORT/PATH/studies/STUDY_UID/series/SERIES_UID")
    segment.add_argument("--bundle", required=True, help="model bundle folder or shipped task name")
    segment.add_argument("--out", required=True, help="folder for the series, label.nii.gz and seg.dcm")
    segment.add_argument("--no-push", action="store_true", help="keep the SEG here only")
    segment.add_argument("--accepted-by", help="person name recorded as the SEG's content creator "
                                               "(default: the login name)")
    segment.add_argument("--threads", type=int, help="CPU threads for torch")
    _server_options(segment)
    segment.set_defaults(func=_segment)

    store = actions.add_parser("push", help="store DICOM files on the PACS")
    _server_options(store, url=True)
    store.add_argument("files", nargs="+", help="DICOM files")
    store.set_defaults(func=_push)

    demo = actions.add_parser("demo", help="round trip on a local Orthanc with the demo case")
    demo.add_argument("--bundle", default="phantom-ct-mr", help="model bundle folder or shipped task name")
    demo.add_argument("--out", help="keep the pulled series, label and SEGs in this folder")
    demo.add_argument("--threads", type=int, help="CPU threads for torch")
    demo.set_defaults(func=_demo)


def _server_options(parser, url: bool = False) -> None:
    if url:
        parser.add_argument("--url", required=True, help="the server's DICOMweb root URL")
    parser.add_argument("--user", help=f"HTTP user (password from ${PASSWORD_VARIABLE})")


def _client(args, url: str):
    password = os.environ.get(PASSWORD_VARIABLE) if args.user else None
    if args.user and password is None:
        raise InputError(f"--user {args.user}: set the password in the environment variable "
                         f"{PASSWORD_VARIABLE}.")
    return connect(url, args.user, password)


def _list(args) -> int:
    client = _client(args, args.url)
    if args.study:
        for item in list_series(client, check_uid(args.study, "study")):
            print(f"{item['uid']}  {item['modality']:<4} #{item['number']:<5} "
                  f"{item['instances']:>5} instances  {item['description']}")
        return 0
    for item in list_studies(client):
        print(f"{item['uid']}  {item['date']}  {item['patient_id']}  {item['patient_name']}  "
              f"{item['description']}")
    return 0


def _pull(args) -> int:
    from .client import pull_series

    address = parse_url(args.series)
    files = pull_series(_client(args, address.url), address, args.out)
    print(f"pulled {len(files)} instance(s) into {args.out}")
    return 0


def _segment(args) -> int:
    from ..engine import Engine
    from ..segment_cli import _bundle_path
    from .roundtrip import segment_series

    address = parse_url(args.series)
    client = _client(args, address.url)
    engine = Engine(_bundle_path(args.bundle), threads=args.threads)
    done = segment_series(client, address, engine, args.out, push_seg=not args.no_push,
                          accepted_by=args.accepted_by)
    where = "kept here only" if args.no_push else "stored on the PACS"
    print(f"segmented {len(done['files'])} slices with {done['result'].model_version}: "
          f"{done['label']}, DICOM SEG {done['seg']} ({where})")
    return 0


def _push(args) -> int:
    from .client import push

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such file.")
    print(f"stored {push(_client(args, args.url), args.files)} file(s)")
    return 0


def _demo(args) -> int:
    from ..engine import Engine
    from ..imageio import read_image
    from ..resources import demo_case
    from ..segment_cli import _bundle_path
    from .roundtrip import local_roundtrip

    engine = Engine(_bundle_path(args.bundle), threads=args.threads)
    print(json.dumps(local_roundtrip(read_image(demo_case()), engine, args.out), indent=2))
    return 0
