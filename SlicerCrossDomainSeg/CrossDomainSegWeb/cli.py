"""`crossdomainseg web`: serve the browser front end (trame-slicer) on localhost.

The engine's command line finds this command through the `crossdomainseg.commands` entry point
(pyproject.toml), so the engine names no front end. Registering the command imports no trame:
the app is imported only when the command runs, so the `web` extra is needed only to serve.
"""

import argparse
import importlib.util
import os
from pathlib import Path

from crossdomainseg.errors import InputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "web",
        help="serve the segmentation app in the browser (trame-slicer)",
        description="Serve the web app on this machine: load a volume (upload, or the embedded "
        "demo case), segment, preview, click-correct, accept and export. Prints the URL to open, "
        "with the session token the page needs (other origins are refused).",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the web app, shared by `crossdomainseg web` and `python -m CrossDomainSegWeb`."""
    parser.add_argument("--case", type=Path, default=None,
                        help="volume loaded when the page opens (default: the embedded demo case)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle or registry folder (default: the shipped brain-t1-t2 bundle)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="accepted cases and model versions "
                        "(default: $CROSSDOMAINSEG_HOME or ~/.crossdomainseg)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--pacs", default=None,
                        help="DICOMweb root URL of a PACS the page may open series from and store "
                        "DICOM SEG on (e.g. http://HOST:8042/dicom-web)")
    parser.add_argument("--pacs-user", default=None,
                        help="PACS user (password from $CROSSDOMAINSEG_PACS_PASSWORD)")


def web_arguments(args: argparse.Namespace) -> list[str]:
    """The web app's own command line (python -m CrossDomainSegWeb) for the parsed arguments."""
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: choose a TCP port between 1 and 65535 (0 picks a free one).")
    argv = ["--host", args.host, "--port", str(args.port)]
    for flag, value in (("--pacs", args.pacs), ("--pacs-user", args.pacs_user)):
        if value is not None:
            argv += [flag, value]
    pacs_login(args)  # a missing password or bad URL is said before the server starts
    for flag, value in (("--case", args.case), ("--bundle", args.bundle), ("--workspace", args.workspace)):
        if value is None:
            continue
        if flag != "--workspace" and not Path(value).exists():
            raise InputError(f"{flag} {value}: no such file or folder.")
        argv += [flag, str(Path(value).expanduser().resolve())]
    return argv


def pacs_login(args: argparse.Namespace) -> tuple | None:
    """(URL, user, password) of --pacs, the password from the environment; None without --pacs."""
    from crossdomainseg.pacs.client import PASSWORD_VARIABLE

    if args.pacs is None:
        return None
    if not args.pacs.startswith(("http://", "https://")):
        raise InputError(f"--pacs {args.pacs}: give the PACS's DICOMweb root URL (http:// or https://).")
    password = os.environ.get(PASSWORD_VARIABLE) if args.pacs_user else None
    if args.pacs_user and password is None:
        raise InputError(f"--pacs-user {args.pacs_user}: set the password in the environment "
                         f"variable {PASSWORD_VARIABLE}.")
    return (args.pacs, args.pacs_user, password)


def run(args: argparse.Namespace) -> int:
    argv = web_arguments(args)
    if importlib.util.find_spec("trame_slicer") is None:
        raise InputError("The web front end needs trame-slicer: pip install '.[web]' "
                         "(or `make demo`, which installs it).")
    from .__main__ import main

    return main(argv)
