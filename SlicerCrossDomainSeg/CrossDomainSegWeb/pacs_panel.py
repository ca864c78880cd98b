"""Open from PACS and export to PACS in the web app.

The PACS is set when the server starts (`--pacs URL --pacs-user USER`, the password from
CROSSDOMAINSEG_PACS_PASSWORD): a page can list that server's series and choose one of those
listed, never make the server contact an address of its own choosing.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VSelect

from crossdomainseg.errors import InputError
from crossdomainseg.pacs.client import connect, list_series, list_studies


class PacsWorkflow:
    """Lists the configured PACS's image series, opens the chosen one, stores the SEG back."""

    def __init__(self, server, workflow, url: str, user: str | None, password: str | None):
        self.state = server.state
        self.workflow = workflow
        self.url, self.login = url.rstrip("/"), (user, password)
        self._listed: dict[str, str] = {}  # choice -> dicomweb:// series address
        self.state.update({"cds_pacs_enabled": True, "cds_pacs_series": [], "cds_pacs_choice": None})
        for name, handler in (("cds_pacs_refresh", self.refresh), ("cds_pacs_open", self.open),
                              ("cds_pacs_export", self.export)):
            server.controller.trigger(name)(handler)

    def refresh(self) -> None:
        with self.state:
            try:
                client = connect(self.url, *self.login)
                items = []
                for study in list_studies(client):
                    for series in list_series(client, study["uid"]):
                        if series["modality"] == "SEG":
                            continue
                        choice = f"{study['uid']}/{series['uid']}"
                        self._listed[choice] = (f"{self.url.replace('http', 'dicomweb', 1)}"
                                                f"/studies/{study['uid']}/series/{series['uid']}")
                        items.append({"title": f"{study['patient_name']} {study['date']} "
                                               f"{series['modality']} {series['description']} "
                                               f"({series['instances']} images)".strip(),
                                      "value": choice})
            except InputError as error:
                self.state.cds_error = str(error)
                return
            self.state.cds_pacs_series = items
            self.state.cds_status = f"{len(items)} series on the PACS."

    def open(self) -> None:
        address = self._listed.get(str(self.state.cds_pacs_choice))
        if address is None:
            with self.state:
                self.state.cds_error = "Choose a series from the PACS list first."
            return
        self.workflow.load_case(None, loader=lambda: self.workflow.logic.load_from_pacs(address, *self.login))

    def export(self) -> None:
        with self.state:
            try:
                seg = self.workflow.logic.export_to_pacs()
            except InputError as error:
                self.state.cds_error = str(error)
                return
            self.state.cds_status = f"DICOM SEG {seg.name} stored on the PACS."


def pacs_panel(testid) -> None:
    """The PACS controls (shown when the server was started with --pacs)."""
    with html.Div(v_if=("cds_pacs_enabled",), classes="d-flex flex-column ga-2"):
        html.Div("PACS", classes="text-body-2")
        VBtn("List PACS series", prepend_icon="mdi-refresh", block=True, variant="tonal",
             click="trigger('cds_pacs_refresh')", disabled=("cds_busy",), raw_attrs=testid("pacs-refresh"))
        VSelect(v_model=("cds_pacs_choice", None), items=("cds_pacs_series", []), label="Series",
                density="compact", hide_details=True, raw_attrs=testid("pacs-series"))
        VBtn("Open from PACS", prepend_icon="mdi-cloud-download", block=True,
             click="trigger('cds_pacs_open')", disabled=("cds_busy || !cds_pacs_choice",),
             raw_attrs=testid("pacs-open"))
        VBtn("Export to PACS", prepend_icon="mdi-cloud-upload", block=True,
             click="trigger('cds_pacs_export')", disabled=("cds_busy || !cds_segmented",),
             raw_attrs=testid("pacs-export"))
