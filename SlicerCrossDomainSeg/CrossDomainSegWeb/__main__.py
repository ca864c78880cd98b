"""`python -m CrossDomainSegWeb [--case FILE] [--bundle DIR] [--workspace DIR] [--host H] [--port P]`."""

import argparse
import sys
from pathlib import Path

from crossdomainseg import resources
from crossdomainseg.errors import InputError

from . import cli as web_cli
from .security import new_token, page_url, secure_server


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

        app = CrossDomainSegWebApp(case=case, bundle=bundle, workspace=args.workspace,
                                   pacs=web_cli.pacs_login(args))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    token = new_token()
    secure_server(app.server, token)

    def announce(**_state) -> None:
        # as Jupyter does: the address with its token is what the user opens (flushed: a log file
        # or a pipe must show it at once)
        print(f"CrossDomainSeg web app running at: {page_url(args.host, app.server.port, token)}", flush=True)

    app.server.controller.on_server_ready.add(announce)
    app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
