"""DICOMweb destinations: results sent with STOW-RS (PS3.18 10.5) instead of C-STORE.

Why: cloud archives and many VNAs take DICOM only over HTTP(S). A destination whose
`dicomweb.url` is set is sent to with one POST per job (its SEG and SR as parts of one
multipart/related request, as DIMSE sends them in one association); everything else about it
(lane, retries, backoff, the waiting backlog, the SEG profile) is the dispatcher's, unchanged.

Standard library only (http.client, ssl): no new dependency for one POST. TLS is the
destination's `tls:` section (CA, client certificate for mutual TLS, host-name check). Secrets
live in files (`token_file`, `password_file`), never in the YAML, and are read at each send, so a
rotated token is used without a restart.

Imports point one way: dicom_node.config composes `DicomwebSettings` and calls `check_settings`;
this module imports neither config nor dispatch.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dicom_node.config_error import ConfigError
from dicom_node.security import DestinationTlsSettings


@dataclass
class DicomwebSettings:
    url: str = ""  # the DICOMweb service root (https://host/dicom-web); "" = a DIMSE destination
    token_file: str = ""  # file holding a bearer token (Authorization: Bearer)
    username: str = ""  # HTTP basic auth user, with password_file
    password_file: str = ""  # file holding the basic auth password


# PS3.18 Table 10.5.3-2 and PS3.4 Annex B: the failure reasons a STOW-RS response names most
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
    0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}
# answers that concern every request to the destination, not one result: the backlog waits (as for a
# refused association) instead of every queued result spending attempts on the same refusal
DESTINATION_WIDE = {401, 403, 404, 405, 502, 503, 504}
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON, WARNING_REASON = "00081155", "00081197", "00081196"


@dataclass(frozen=True)
class Endpoint:
    """A parsed `dicomweb.url`: where the POST goes."""

    https: bool
    host: str
    port: int
    root: str  # path of the service root, without the trailing slash

    @classmethod
    def parse(cls, url: str, key: str = "dicomweb.url") -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{key}: {url!r} is not an http:// or https:// URL with a host "
                              "(the DICOMweb root, e.g. https://pacs.example.org/dicom-web)")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{key}: no credentials in the URL (they would end up in logs); use "
                              "dicomweb.token_file, or dicomweb.username and dicomweb.password_file")
        if parts.query or parts.fragment:
            raise ConfigError(f"{key}: the DICOMweb root takes no ?query or #fragment")
        root = parts.path.rstrip("/")
        if root.endswith("/studies"):
            raise ConfigError(f"{key}: give the DICOMweb root, without /studies (STOW-RS posts to ROOT/studies)")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"{key}: {url!r} has no valid port") from None
        return cls(https=parts.scheme == "https", host=parts.hostname, port=port, root=root)

    @property
    def studies(self) -> str:
        return f"{self.root}/studies"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}{self.studies}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# ---- settings ---------------------------------------------------------------------------------
def _secret(resolve: Callable[[str], Path], value: str, key: str) -> str:
    """The content of a secret file, its trailing newline dropped; ConfigError naming `key` if unusable."""
    path = resolve(value)
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from None
    if not text:
        raise ConfigError(f"{key}: {path} is empty")
    if "\n" in text or "\r" in text:
        raise ConfigError(f"{key}: {path} holds more than one line; put only the secret in it")
    return text


def check_settings(d: DicomwebSettings, tls: DestinationTlsSettings, resolve: Callable[[str], Path],
                   key: str = "destinations.?") -> None:
    """Check a destination's `dicomweb:` settings at load, with messages naming the key."""
    given = [k for k in ("token_file", "username", "password_file") if getattr(d, k)]
    if not d.url:
        if given:
            raise ConfigError(f"{key}.dicomweb.{given[0]}: only for a DICOMweb destination (set dicomweb.url)")
        return
    endpoint = Endpoint.parse(d.url, f"{key}.dicomweb.url")
    if tls.enabled != endpoint.https:
        raise ConfigError(f"{key}.tls.enabled: must be {str(endpoint.https).lower()} for {d.url} "
                          "(https:// is TLS, http:// is not; tls.ca, cert and key apply to https)")
    if tls.server_hostname:
        raise ConfigError(f"{key}.tls.server_hostname: not used for DICOMweb; the URL's host is the name "
                          "its certificate must carry (put that name in dicomweb.url)")
    if d.token_file and (d.username or d.password_file):
        raise ConfigError(f"{key}.dicomweb.token_file: a bearer token or basic auth (username, "
                          "password_file), not both")
    if bool(d.username) != bool(d.password_file):
        missing = "password_file" if d.username else "username"
        raise ConfigError(f"{key}.dicomweb.{missing}: basic auth needs both username and password_file")
    if ":" in d.username:
        raise ConfigError(f"{key}.dicomweb.username: may not contain ':' (HTTP basic auth)")
    if given and not endpoint.https and not endpoint.loopback:
        raise ConfigError(f"{key}.dicomweb.url: credentials over plain http:// to {endpoint.host} could be read "
                          "on the network; use https:// (tls.enabled: true)")
    authorization(d, resolve, key)


def authorization(d: DicomwebSettings, resolve: Callable[[str], Path], key: str = "destinations.?") -> str | None:
    """The Authorization header for `d`, secrets read from their files now; None without auth."""
    if d.token_file:
        return "Bearer " + _secret(resolve, d.token_file, f"{key}.dicomweb.token_file").strip()
    if d.username:
        password = _secret(resolve, d.password_file, f"{key}.dicomweb.password_file")
        return "Basic " + base64.b64encode(f"{d.username}:{password}".encode()).decode("ascii")
    return None


# ---- the request --------------------------------------------------------------------------------
def multipart_body(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related request with one application/dicom part per file
    (RFC 2387, PS3.18 8.6.1.2): a boundary that occurs in no part, CRLF line ends."""
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in p for p in parts):  # astronomically rare: draw again
        boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for p in parts:
        chunks += [b"--", boundary.encode(), b"\r\nContent-Type: application/dicom\r\n\r\n", p, b"\r\n"]
    chunks += [b"--", boundary.encode(), b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


@dataclass(frozen=True)
class StoreResponse:
    """What the body of a STOW-RS response says about each instance."""

    failed: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> Failure Reason (0 if none given)
    stored: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> Warning Reason (0 if none)


def parse_store_response(body: bytes, content_type: str) -> StoreResponse | None:
    """The Failed and Referenced SOP Sequences of a response body in DICOM JSON (PS3.18 F.2) or
    the Native DICOM Model XML (PS3.19 A.1); None when the body is neither (an error page)."""
    try:
        if "xml" in content_type:
            return _parse_xml(ET.fromstring(body))
        data = json.loads(body)
        if isinstance(data, list) and len(data) == 1:  # some servers wrap the one data set in an array
            data = data[0]
        return _parse_json(data) if isinstance(data, dict) else None
    except (ValueError, TypeError, AttributeError, IndexError, ET.ParseError):  # not what PS3.18 says
        return None


def _parse_json(data: dict) -> StoreResponse:
    def items(tag: str, reason: str) -> dict[str, int]:
        out = {}
        for item in (data.get(tag) or {}).get("Value") or []:
            uid = ((item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [None])[0]
            code = ((item.get(reason) or {}).get("Value") or [0])[0]
            if uid:
                out[str(uid)] = int(code)
        return out

    return StoreResponse(failed=items(FAILED_SOP_SEQUENCE, FAILURE_REASON),
                         stored=items(REFERENCED_SOP_SEQUENCE, WARNING_REASON))


def _parse_xml(root: ET.Element) -> StoreResponse:
    def local(e: ET.Element) -> str:  # the name without the PS3.19 namespace
        return e.tag.rsplit("}", 1)[-1]

    def children(e: ET.Element, name: str) -> list[ET.Element]:
        return [c for c in e if local(c) == name]

    def items(tag: str, reason: str) -> dict[str, int]:
        out = {}
        for seq in children(root, "DicomAttribute"):
            if seq.get("tag", "").upper() != tag:
                continue
            for item in children(seq, "Item"):
                values = {a.get("tag", "").upper(): "".join(v.text or "" for v in children(a, "Value")).strip()
                          for a in children(item, "DicomAttribute")}
                uid = values.get(REFERENCED_SOP_INSTANCE_UID)
                if uid:
                    out[uid] = int(values.get(reason) or 0)
        return out

    return StoreResponse(failed=items(FAILED_SOP_SEQUENCE, FAILURE_REASON),
                         stored=items(REFERENCED_SOP_SEQUENCE, WARNING_REASON))


def reason_text(code: int) -> str:
    name = FAILURE_REASONS.get(code)
    return f"0x{code:04X}" + (f" {name}" if name else "")


@dataclass(frozen=True)
class StowOutcome:
    """One instance's outcome of a STOW-RS request."""

    ok: bool
    status: str  # "HTTP 200", or what went wrong and what to fix
    reached: bool  # False: the destination refused or never answered the request as a whole (down)


def _http_error(status: int, reason: str, endpoint: Endpoint, has_auth: bool, key: str, body: bytes,
                location: str | None) -> str:
    """An HTTP failure as an operator reads it: the URL, the status, and what to check."""
    where = f"HTTP {status} {reason} from POST {endpoint}"
    if status == 401:
        return where + (f": credentials refused; check {key}.dicomweb.token_file or username/password_file"
                        if has_auth else f": the archive wants credentials; set {key}.dicomweb.token_file or "
                                         "username and password_file")
    if status == 403:
        return where + ": these credentials may not store here; ask the archive's admin for STOW-RS rights"
    if status in (404, 405):
        return where + f": no STOW-RS there; check {key}.dicomweb.url (the DICOMweb root, e.g. .../dicom-web)"
    if 300 <= status < 400:
        return where + f": redirected to {location or '?'}; put the final address in {key}.dicomweb.url"
    text = " ".join(body[:300].decode("utf-8", "replace").split())[:200]
    return where + (f": {text}" if text else "")


def store_instances(instances: Sequence[tuple[str, bytes]], settings: DicomwebSettings,
                    resolve: Callable[[str], Path], timeout_s: float, ssl_context: ssl.SSLContext | None = None,
                    key: str = "destinations.?") -> list[StowOutcome]:
    """POST (SOP Instance UID, Part 10 file bytes) pairs to the destination's ROOT/studies in one
    multipart/related request; an outcome per instance, in order.

    200: all stored. 202, 400, 409 with a DICOM body: those in its Referenced SOP Sequence are
    stored, the rest not (with the Failed SOP Sequence's reason when it gives one); without such a
    body, none. Connection, TLS and destination-wide refusals (401, 403, 404, 5xx gateway) come
    back unreached: the dispatcher lets the destination's backlog wait behind one probe."""
    endpoint = Endpoint.parse(settings.url, f"{key}.dicomweb.url")
    headers = {"Accept": "application/dicom+json", "User-Agent": "dicom-node"}
    auth = authorization(settings, resolve, key)
    if auth is not None:
        headers["Authorization"] = auth
    body, headers["Content-Type"] = multipart_body([data for _, data in instances])

    def every(ok: bool, status: str, reached: bool) -> list[StowOutcome]:
        return [StowOutcome(ok, status, reached)] * len(instances)

    conn: http.client.HTTPConnection
    if endpoint.https:
        conn = http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout_s,
                                           context=ssl_context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        try:
            conn.connect()
        except ssl.SSLError as exc:
            return every(False, f"TLS handshake with {endpoint.host}:{endpoint.port} failed ({exc}); check the "
                                f"certificates and {key}.tls", False)
        except OSError as exc:  # refused, unreachable, name not resolved, timed out
            return every(False, f"no connection to {endpoint.host}:{endpoint.port} ({exc})", False)
        try:
            conn.request("POST", endpoint.studies, body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
        except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows only after the handshake
            return every(False, f"TLS connection to {endpoint.host}:{endpoint.port} refused by the destination "
                                f"({exc}); does it want a client certificate? check {key}.tls.cert and key", False)
        except (OSError, http.client.HTTPException) as exc:  # socket.timeout is an OSError
            lost = "timed out" if isinstance(exc, socket.timeout) else f"connection lost: {exc}"
            return every(False, f"no STOW-RS response from {endpoint} ({lost})", True)
    finally:
        conn.close()
    status = resp.status
    parsed = parse_store_response(answer, resp.getheader("Content-Type") or "")
    if status not in (200, 202, 400, 409) or (status != 200 and parsed is None):
        text = _http_error(status, resp.reason, endpoint, auth is not None, key, answer, resp.getheader("Location"))
        return every(False, text, status not in DESTINATION_WIDE)
    outcomes = []
    for uid, _ in instances:
        if parsed is not None and uid in parsed.failed:
            outcomes.append(StowOutcome(False, f"HTTP {status} from POST {endpoint}: not stored, failure reason "
                                               f"{reason_text(parsed.failed[uid])}", True))
        elif status == 200 or (parsed is not None and uid in parsed.stored):
            warning = parsed.stored.get(uid, 0) if parsed is not None else 0
            outcomes.append(StowOutcome(True, f"HTTP {status}" + (f", warning 0x{warning:04X}" if warning else ""),
                                        True))
        else:  # Orthanc answers 400 so for a part it cannot read, listing only what it stored
            outcomes.append(StowOutcome(False, f"HTTP {status} from POST {endpoint}: not stored (the response "
                                               "lists it neither as stored nor with a failure reason)", True))
    return outcomes
