"""A DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client.

`connect` opens a session (HTTP basic authentication when a user is given); `list_studies` and
`list_series` search; `pull_series` writes a series' instances into a folder, named by their SOP
instance UID (checked to be a UID, so a server cannot place a file outside the folder); `push`
stores files. `parse_url` reads `dicomweb://HOST:PORT/PATH/studies/UID/series/UID` (dicomwebs://
for HTTPS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PASSWORD_VARIABLE = "CROSSDOMAINSEG_PACS_PASSWORD"


@dataclass
class SeriesAddress:
    """Where a series is: the server's DICOMweb base URL, study and series instance UIDs."""

    url: str
    study: str
    series: str


def parse_url(text: str) -> SeriesAddress:
    """dicomweb://HOST:PORT/dicom-web/studies/S/series/R -> SeriesAddress(http://HOST:PORT/dicom-web, S, R)."""
    match = re.match(r"^dicomweb(s?)://([^/]+)(/.*)?/studies/([^/]+)/series/([^/]+)/?$", text)
    if not match:
        raise InputError(f"{text}: a PACS series is given as dicomweb://HOST:PORT/PATH/studies/"
                         "STUDY_UID/series/SERIES_UID (dicomwebs:// for HTTPS).")
    secure, host, path, study, series = match.groups()
    return SeriesAddress(f"http{secure}://{host}{path or ''}", check_uid(study, "study"),
                         check_uid(series, "series"))


def check_uid(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not UID.match(value):
        raise InputError(f"{value!r} is not a DICOM {what} instance UID (digits and dots, at most 64).")
    return value


def connect(url: str, user: str | None = None, password: str | None = None):
    """A DICOMweb client for the server at `url` (its DICOMweb root, e.g. http://host/dicom-web)."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if not re.match(r"^https?://", url):
        raise InputError(f"{url}: the PACS URL must start with http:// or https://.")
    session = create_session_from_user_pass(user, password or "") if user else create_session()
    return DICOMwebClient(url=url.rstrip("/"), session=session)


def list_studies(client) -> list[dict]:
    """The server's studies: uid, patient name and id, date, description."""
    return [{"uid": _value(item, "0020000D"), "patient_name": _value(item, "00100010"),
             "patient_id": _value(item, "00100020"), "date": _value(item, "00080020"),
             "description": _value(item, "00081030")}
            for item in _ask(client.search_for_studies, "list studies")]


def list_series(client, study: str) -> list[dict]:
    """The series of one study: uid, modality, number, description, instances."""
    check_uid(study, "study")
    return [{"uid": _value(item, "0020000E"), "modality": _value(item, "00080060"),
             "number": _value(item, "00200011"), "description": _value(item, "0008103E"),
             "instances": _value(item, "00201209")}
            for item in _ask(lambda: client.search_for_series(study_instance_uid=study),
                             f"list the series of study {study}")]


def pull_series(client, address: SeriesAddress, folder) -> list[Path]:
    """Download one series into `folder` (created); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    instances = _ask(lambda: client.retrieve_series(address.study, address.series),
                     f"pull series {address.series}")
    if not instances:
        raise InputError(f"The PACS holds no instances of series {address.series}.")
    files = []
    for dataset in instances:
        path = folder / f"{check_uid(str(dataset.SOPInstanceUID), 'SOP')}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def push(client, paths) -> int:
    """Store DICOM files on the server (STOW-RS); returns how many were stored."""
    import pydicom

    datasets = [pydicom.dcmread(path) for path in paths]
    _ask(lambda: client.store_instances(datasets), "store on the PACS")
    return len(datasets)


def _ask(request, what: str):
    """Run one request; network and HTTP failures become one clear InputError."""
    import requests

    try:
        return request()
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        hint = " (check --user and the password)" if status in (401, 403) else ""
        raise InputError(f"The PACS refused to {what}: HTTP {status}{hint}.") from None
    except requests.RequestException as error:
        raise InputError(f"Could not reach the PACS to {what} ({type(error).__name__}).") from None


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    value = values[0]
    return str(value.get("Alphabetic", "")) if isinstance(value, dict) else str(value)
