"""The web app trusts nothing its clients send: uploaded and exported file names stay inside the
app's folder, the websocket needs the token printed at start-up, and foreign origins are refused.

The name checks run on the web package's own functions (fast); the token and Origin checks on a
running `crossdomainseg web` server, spoken to as a hostile client would (aiohttp + wslink's
message format)."""

from __future__ import annotations

import asyncio
import importlib.util
import tempfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from crossdomainseg.errors import InputError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("trame_slicer") is None,
                                reason="needs the web extra: pip install '.[web]'")

HOSTILE_NAMES = ["../../escape.nii.gz", "/tmp/absolute-escape.nii.gz", "..\\..\\win-escape.nii.gz",
                 "sub/../../../deep-escape.nii.gz"]


def test_client_file_names_are_reduced_to_a_plain_name_or_refused():
    from CrossDomainSegWeb.security import safe_file_name

    assert safe_file_name("../../x/case01.nii.gz") == "case01.nii.gz"
    assert safe_file_name("C:\\Users\\a\\..\\case 2.nrrd") == "case 2.nrrd"
    assert safe_file_name("/etc/cron.d/job.mha") == "job.mha"
    assert safe_file_name("case (1).nii.gz") == "case (1).nii.gz"  # a browser's second download
    assert safe_file_name("Müller_T1.nii.gz") == "Müller_T1.nii.gz"
    for bad in ["", "..", ".", "../", ".bashrc", "a\x00b.nii", "con.nii.gz", "x/", "a:b.nii", "a.nii ",
                "a|b.nii", "x" * 201, None, 3]:
        with pytest.raises(InputError):
            safe_file_name(bad)


def _workflow(tmp_path):
    """WorkflowLogic's upload and export methods on a stand-in for the app (no Slicer scene)."""
    from CrossDomainSegWeb.workflow import EXPORT_FORMATS, WorkflowLogic

    calls = SimpleNamespace(loaded=[], exported=[], errors=[])

    def export(path):
        calls.exported.append(Path(path))
        Path(path).write_bytes(b"label")
        return Path(path)

    app = SimpleNamespace(
        state=SimpleNamespace(cds_export_name="segmentation.nii.gz", cds_export_format=EXPORT_FORMATS[0],
                              cds_progress=0.0),
        volume_node=SimpleNamespace(GetName=lambda: "case01"),
        logic=SimpleNamespace(export=export),
        server=SimpleNamespace(protocol=SimpleNamespace(addAttachment=lambda data: data)),
        load_case=lambda path: calls.loaded.append((Path(path), sorted(p.name for p in Path(path).parent.iterdir()))),
        _show_error=calls.errors.append, _set_progress=lambda *args: None,
    )
    for name in ("_export_name", "load_uploaded", "export"):
        if hasattr(WorkflowLogic, name):
            setattr(app, name, getattr(WorkflowLogic, name).__get__(app))
    return app, calls


def test_upload_writes_only_inside_its_folder(tmp_path, monkeypatch):
    app, calls = _workflow(tmp_path)
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    for name in HOSTILE_NAMES:
        app.load_uploaded([{"name": name, "content": b"not an image"}])
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [], f"upload wrote outside its temporary folder: {written}"
    assert not Path("/tmp/absolute-escape.nii.gz").exists()
    loaded = [path for path, _ in calls.loaded]
    assert [p.name for p in loaded] == ["escape.nii.gz", "absolute-escape.nii.gz", "win-escape.nii.gz",
                                       "deep-escape.nii.gz"]
    assert all(p.parent.parent == work for p in loaded)

    app.load_uploaded([{"name": "..", "content": b"x"}])
    app.load_uploaded([{"name": "a.nii", "content": b"x"}, {"name": "x/a.nii", "content": b"y"}])
    app.load_uploaded([{"name": "a.nii", "content": {"not": "bytes"}}])
    assert len(calls.errors) == 3 and len(calls.loaded) == 4


def test_export_path_is_not_chosen_by_the_page(tmp_path):
    app, calls = _workflow(tmp_path)
    for hostile in ["../../../../tmp/export-escape.nii.gz", "/tmp/export-escape.nii.gz", str(tmp_path / "x.nii.gz")]:
        app.state.cds_export_name = hostile
        assert app.export() == b"label"
    assert {p.name for p in calls.exported} == {"case01_label.nii.gz"}
    assert all(".." not in p.parts and p.parent != tmp_path for p in calls.exported)
    assert not list(tmp_path.iterdir()) and not Path("/tmp/export-escape.nii.gz").exists()
    app.state.cds_export_format = "/../../evil.nii.gz"
    assert app.export() is None and "not offered" in calls.errors[-1]


def test_origin_rule():
    from CrossDomainSegWeb.security import page_url, same_origin

    assert same_origin(None, "127.0.0.1:8080")  # not a browser page: the token still applies
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not same_origin("http://evil.example", "127.0.0.1:8080")
    assert not same_origin("http://127.0.0.1:9999", "127.0.0.1:8080")
    assert not same_origin("null", "127.0.0.1:8080")
    assert page_url("0.0.0.0", 8080, "T") == "http://127.0.0.1:8080/?secret=T"


# -- a running server, spoken to as a hostile client ----------------------------------------------

async def _hello(ws_url: str, secret: str | None, origin: str | None):
    """Open the websocket, say wslink.hello with `secret`, then call an RPC; the two replies."""
    import aiohttp
    import msgpack
    from wslink.chunking import UnChunker, generate_chunks

    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, headers=headers) as ws:
            replies = []
            unchunker = UnChunker()
            unchunker.set_max_message_size(2**30)
            for rpcid, method, args in (("system:c0:0", "wslink.hello", [{"secret": secret}] if secret else []),
                                        ("rpc:c0:1", "trame.state.get", [])):
                message = msgpack.packb({"wslink": "1.0", "id": rpcid, "method": method, "args": args,
                                         "kwargs": {}})
                for chunk in generate_chunks(message, 0):
                    await ws.send_bytes(chunk)
                reply = None
                while reply is None or reply.get("id") != rpcid:
                    msg = await asyncio.wait_for(ws.receive(), 30)
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        raise AssertionError(f"websocket closed: {msg}")
                    reply = unchunker.process_chunk(msg.data) or reply
                replies.append(reply)
            return replies


async def _status(url: str, origin: str | None, websocket: bool) -> int:
    import aiohttp

    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession() as session:
        if websocket:
            try:
                async with session.ws_connect(url, headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status
        async with session.get(url, headers=headers) as response:
            return response.status


@pytest.mark.web
def test_websocket_needs_the_token_and_the_same_origin(tmp_path):
    from web_helpers import web_server

    with web_server([], tmp_path / "server.log") as url:
        parts = urlsplit(url)
        token = parse_qs(parts.query)["secret"][0]
        assert len(token) >= 32 and token != "wslink-secret"
        own = f"http://{parts.netloc}"
        ws_url = f"ws://{parts.netloc}/ws"

        # a page of another origin can neither open the websocket nor read the app's page
        assert asyncio.run(_status(ws_url, "http://evil.example", websocket=True)) == 403
        assert asyncio.run(_status(ws_url, f"http://localhost:{parts.port}", websocket=True)) == 403
        assert asyncio.run(_status(own + "/", "http://evil.example", websocket=False)) == 403
        assert asyncio.run(_status(own + "/", own, websocket=False)) == 200

        # without the token (none, wslink's default, a wrong one) nothing is served
        for secret in (None, "wslink-secret", token[:-1]):
            hello, call = asyncio.run(_hello(ws_url, secret, own))
            assert "result" not in hello and "result" not in call, (secret, hello, call)
            assert "Unauthorized" in call["error"]["message"]

        # with it, the session opens and RPCs answer (so the refusals above are the token's doing)
        hello, call = asyncio.run(_hello(ws_url, token, own))
        assert hello["result"]["clientID"] and "result" in call, (hello, call)
