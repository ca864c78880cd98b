"""A local Orthanc PACS with its DICOMweb plugin, for the demo and the tests.

`LocalOrthanc(folder)` starts Orthanc on a free loopback port with its storage and configuration
in `folder`, HTTP authentication on (a random password), the DICOM network port off, and stops it
on exit. Orthanc and its DICOMweb plugin are Debian packages (orthanc, orthanc-dicomweb;
scripts/install_system_deps.sh).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..errors import InputError

PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                 "/usr/lib/orthanc/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0


class LocalOrthanc:
    """Orthanc serving DICOMweb at `self.dicomweb_url` (user `self.user`, `self.password`)."""

    def __init__(self, folder, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.user, self.password = "crossdomainseg", secrets.token_urlsafe(16)
        self.process: subprocess.Popen | None = None
        self.version = ""

    url = property(lambda self: f"http://127.0.0.1:{self.port}")
    dicomweb_url = property(lambda self: f"{self.url}/dicom-web")

    def __enter__(self) -> "LocalOrthanc":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        program = shutil.which("Orthanc")
        plugin = next((p for p in PLUGIN_PLACES if Path(p).exists()), None)
        if program is None or plugin is None:
            raise InputError("Orthanc with its DICOMweb plugin is not installed (Debian packages "
                             "orthanc and orthanc-dicomweb; scripts/install_system_deps.sh).")
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "CrossDomainSeg local PACS", "StorageDirectory": str(storage),
            "IndexDirectory": str(storage), "HttpPort": self.port, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password}, "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }))
        config.chmod(0o600)
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([program, str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.version = self._wait_until_up()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _wait_until_up(self) -> str:
        import requests

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InputError(f"Orthanc stopped at start-up; see {self.folder / 'orthanc.log'}.")
            try:
                answer = requests.get(f"{self.url}/system", auth=(self.user, self.password), timeout=2)
                if answer.ok:
                    return str(answer.json().get("Version", ""))
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise InputError(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s; see "
                         f"{self.folder / 'orthanc.log'}.")


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
