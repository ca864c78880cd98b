"""What the web app trusts from its clients: nothing it has not checked.

- File names a client sends (uploads) or can set through the page state (export) are reduced to
  a plain file name and written only inside the app's own folder; anything else is refused.
- The websocket session needs a random token made at start-up and printed with the URL (the
  trame client reads it from the URL's `secret` parameter, wslink checks it on `wslink.hello`).
- A browser page of another origin cannot open the websocket: requests whose Origin header names
  another host than the one they were sent to are refused (HTTP 403).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from crossdomainseg.errors import InputError

# A plain file name on every system: no folder separators, none of the characters Windows
# forbids, no control characters, no leading dot (hidden file) or trailing dot/space, not a
# Windows device name.
_FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)} | {chr(127)}
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                    *(f"lpt{i}" for i in range(1, 10))}
MAX_NAME_LENGTH = 200


def safe_file_name(name) -> str:
    """`name` reduced to its last path component; InputError if that is not a plain file name."""
    if not isinstance(name, str):
        raise InputError("The file name sent by the page is not text; choose the file again.")
    base = re.split(r"[\\/]", name)[-1]
    if (not base or len(base) > MAX_NAME_LENGTH or set(base) & _FORBIDDEN or base[0] in ". "
            or base[-1] in ". " or base.split(".")[0].strip().lower() in _WINDOWS_DEVICES):
        raise InputError(f"File name {name[:80]!r} is not accepted: give the file a plain name "
                         "without folders or the characters < > : \" / \\ | ? *, e.g. case01.nii.gz.")
    return base


def write_uploads(files, folder: Path) -> list[Path]:
    """Write the page's uploaded files (trame file dicts: name, content) into `folder` under safe
    names; refuses a bad name, missing content, or two files that would share one name."""
    if not isinstance(files, list) or not files:
        raise InputError("No file arrived from the page; choose the file again.")
    folder = Path(folder).resolve()
    contents = {}
    for file in files:
        if not isinstance(file, dict):
            raise InputError("The upload from the page is malformed; choose the file again.")
        name = safe_file_name(file.get("name"))
        content = file.get("content")
        if isinstance(content, list) and all(isinstance(part, bytes) for part in content):
            content = b"".join(content)
        if not isinstance(content, bytes):
            raise InputError(f"{name}: the upload has no file content; choose the file again.")
        if name.lower() in {n.lower() for n in contents}:
            raise InputError(f"Two uploaded files are both named {name}; upload them from one folder.")
        contents[name] = content
    paths = []
    for name, content in contents.items():
        path = folder / name
        if path.resolve().parent != folder:  # belt and braces: the name check already ensures it
            raise InputError(f"File name {name!r} is not accepted.")
        path.write_bytes(content)
        paths.append(path)
    return paths


def export_file_name(volume_name, file_format, formats) -> str:
    """The export's file name, from the volume's name and a format of `formats` only."""
    if file_format not in formats:
        raise InputError(f"Export format {str(file_format)[:40]!r} is not offered; choose one of "
                         f"{', '.join(formats)}.")
    stem = re.sub(r"[^A-Za-z0-9_+\-]+", "_", str(volume_name or "")).strip("_") or "segmentation"
    return f"{stem[:100]}_label{file_format}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def page_url(host: str, port: int, token: str) -> str:
    """The address to open: the trame client takes the session token from `secret`."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/?secret={token}"


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's Origin header is absent (not a browser page) or names the host it was
    sent to (the Host header: name and port)."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return (parts.scheme in ("http", "https") and bool(parts.netloc)
            and parts.netloc.lower() == (host or "").lower())


@web.middleware
async def refuse_foreign_origin(request: web.Request, handler):
    if not same_origin(request.headers.get("Origin"), request.headers.get("Host")):
        return web.Response(status=403, text="Cross-origin requests are refused.")
    return await handler(request)


def secure_server(server, token: str) -> None:
    """Make the trame `server` require `token` on its websocket and refuse foreign origins."""
    # trame hands this to wslink as --authKey (parsed when the server starts)
    server.cli.set_defaults(authKey=token)

    def bind(wslink_server) -> None:
        # called before the server starts, so the websocket route is behind the check too
        wslink_server.app.middlewares.append(refuse_foreign_origin)

    server.controller.on_server_bind.add(bind)
