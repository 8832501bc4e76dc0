"""A small typed client for the HematoVision API v1: the standard library only, no Django.

    from webportal.api.client import Client

    api = Client("https://hematovision.example.org", token="hv_...")
    case = api.create_case(accession_number="H24-000123", patient="MRN-0042")
    batch = api.upload_batch(case["id"], ["a.jpg", "b.jpg"], idempotency_key="H24-000123-1")
    batch = api.wait_for_batch(batch["id"])
    report = api.report(batch["id"])             # JSON
    pdf = api.report_pdf(batch["id"])            # bytes
    fhir = api.report_fhir(batch["id"])          # a FHIR R4 DiagnosticReport (dict)

Errors raise ApiError with the API's error shape (`code`, `detail`, `fields`, `status`).
The file can be copied into a lab system's code base as it is.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FINISHED = frozenset({"done", "failed", "cancelled"})


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, fields: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.fields = status, code, detail, fields


class Client:
    def __init__(self, base_url: str, *, token: str, timeout: float = 60) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout

    # --- transport ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith("http") else f"{self.base}{path}"
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        request = urllib.request.Request(url, data=body, method=method, headers=sent)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                return answer.status, dict(answer.headers.items()), answer.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)
            except ValueError:
                error = {"error": "http_error", "detail": raw.decode(errors="replace")}
            raise ApiError(
                exc.code,
                str(error.get("error", "http_error")),
                str(error.get("detail", "")),
                dict(error.get("fields") or {}),
            ) from None

    def get_json(self, path: str, *, accept: str = "application/json") -> Any:
        return json.loads(self.request("GET", path, headers={"Accept": accept})[2])

    def post_json(self, path: str, data: dict[str, Any] | None = None) -> Any:
        body = json.dumps(data or {}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        return json.loads(self.request("POST", path, body=body, headers=headers)[2])

    # --- resources ----------------------------------------------------------------------

    def create_case(
        self, *, accession_number: str, patient: str = "", clinical_note: str = ""
    ) -> dict[str, Any]:
        case: dict[str, Any] = self.post_json(
            "/cases/",
            {"accession_number": accession_number, "patient": patient,
             "clinical_note": clinical_note},
        )  # fmt: skip
        return case

    def cases(self, **filters: str) -> list[dict[str, Any]]:
        """Every case matching the filters (accession, patient, status, created_after, ...)."""
        query = urllib.parse.urlencode(filters)
        return self._all(f"/cases/?{query}" if query else "/cases/")

    def upload_batch(
        self,
        case_id: int,
        files: Iterable[str | Path | tuple[str, bytes]],
        *,
        priority: str = "routine",
        image_kind: str = "auto",
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Upload images or ZIPs; send the same key again after a failure, never a new one.
        `image_kind`: `field` (whole smear fields), `cell` (single cells) or `auto`."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
            for name, value in (("priority", priority), ("image_kind", image_kind))
        ]
        for item in files:
            name, content = (
                item if isinstance(item, tuple) else (Path(item).name, Path(item).read_bytes())
            )
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                + content
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Idempotency-Key": idempotency_key or uuid.uuid4().hex,
        }
        batch: dict[str, Any] = json.loads(
            self.request("POST", f"/cases/{case_id}/batches/", body=body, headers=headers)[2]
        )
        return batch

    def batch(self, batch_id: int) -> dict[str, Any]:
        batch: dict[str, Any] = self.get_json(f"/batches/{batch_id}/")
        return batch

    def wait_for_batch(
        self, batch_id: int, *, timeout: float = 600, interval: float = 2
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.batch(batch_id)
            if batch["status"] in FINISHED or time.monotonic() > deadline:
                return batch
            time.sleep(interval)

    def cancel_batch(self, batch_id: int) -> dict[str, Any]:
        batch: dict[str, Any] = self.post_json(f"/batches/{batch_id}/cancel/")
        return batch

    def cells(self, batch_id: int, **filters: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode(filters)
        return self._all(f"/batches/{batch_id}/cells/" + (f"?{query}" if query else ""))

    def review_cell(self, cell_id: int, label: str) -> list[dict[str, Any]]:
        cells: list[dict[str, Any]] = self.post_json(f"/cells/{cell_id}/reviews/", {"label": label})
        return cells

    def report(self, batch_id: int, version: int | None = None) -> dict[str, Any]:
        report: dict[str, Any] = self.get_json(self._report_path(batch_id, version))
        return report

    def report_fhir(self, batch_id: int, version: int | None = None) -> dict[str, Any]:
        resource: dict[str, Any] = self.get_json(
            self._report_path(batch_id, version) + "fhir/", accept="application/fhir+json"
        )
        return resource

    def report_hl7(self, batch_id: int, version: int | None = None) -> str:
        """The report as an HL7 v2.5.1 ORU^R01 message (segments end with a carriage return)."""
        path = self._report_path(batch_id, version) + "hl7/"
        return self.request("GET", path, headers={"Accept": "application/hl7-v2"})[2].decode()

    def report_pdf(self, batch_id: int, version: int | None = None) -> bytes:
        path = self._report_path(batch_id, version) + "pdf/"
        return self.request("GET", path, headers={"Accept": "application/pdf"})[2]

    def register_webhook(self, url: str, events: Iterable[str] = ()) -> dict[str, Any]:
        """The answer's `secret` is shown only now: keep it to verify signatures."""
        hook: dict[str, Any] = self.post_json("/webhooks/", {"url": url, "events": list(events)})
        return hook

    # --- helpers ------------------------------------------------------------------------

    def _report_path(self, batch_id: int, version: int | None) -> str:
        if version is None:
            return f"/batches/{batch_id}/report/"
        return f"/batches/{batch_id}/reports/{version}/"

    def _all(self, path: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        page: str | None = path
        while page:
            answer = self.get_json(page)
            results.extend(answer["results"])
            page = answer["next"]
        return results
