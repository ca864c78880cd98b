"""`python -m CrossDomainSegWeb [--case FILE] [--bundle DIR] [--workspace DIR] [--host H] [--port P]`."""

import argparse
import sys
from pathlib import Path

from crossdomainseg import resources
from crossdomainseg.errors import InputError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m CrossDomainSegWeb",
                                     description="Serve the CrossDomainSeg web app (trame-slicer).")
    parser.add_argument("--case", type=Path, default=None,
                        help="volume loaded when the page opens (default: the embedded demo case)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle or registry folder (default: the shipped phantom-ct-mr bundle)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="accepted cases and model versions "
                        "(default: $CROSSDOMAINSEG_HOME or ~/.crossdomainseg)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        case = args.case or resources.demo_case()
        bundle = args.bundle or resources.shipped_bundle()
        for flag, path in (("--case", case), ("--bundle", bundle)):
            if not Path(path).exists():
                raise InputError(f"{flag} {path}: no such file or folder.")
        from .app import CrossDomainSegWebApp

        app = CrossDomainSegWebApp(case=case, bundle=bundle, workspace=args.workspace)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # trame prints the address it serves: "App running at: - Local: http://HOST:PORT/"
    app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
