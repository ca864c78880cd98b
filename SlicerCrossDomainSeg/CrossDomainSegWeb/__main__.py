"""`python -m CrossDomainSegWeb [--case FILE] [--bundle DIR] [--workspace DIR] [--host H] [--port P]`."""

import argparse
import sys
from pathlib import Path

from crossdomainseg import resources, web_cli
from crossdomainseg.errors import InputError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m CrossDomainSegWeb",
                                     description="Serve the CrossDomainSeg web app (trame-slicer).")
    web_cli.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        case = args.case or resources.demo_case(resources.DEMO_TASK)
        bundle = args.bundle or resources.shipped_bundle(resources.DEMO_TASK)
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
