"""STOW-RS pieces without a server: the multipart body (read back with the standard library's own
MIME parser), the response's Failed/Referenced SOP Sequences in DICOM JSON and XML, and the
`dicomweb:` settings' checks, each naming the key to fix."""
from __future__ import annotations

import base64
import email
import email.policy
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_config
from dicom_node.dicomweb import (
    DicomwebSettings,
    Endpoint,
    authorization,
    check_settings,
    multipart_body,
    parse_store_response,
)
from dicom_node.security import DestinationTlsSettings


def test_multipart_body_is_read_back_part_by_part() -> None:
    parts = [b"\x00" * 128 + b"DICM" + bytes(range(256)), b"second\r\n--not-a-boundary\r\n"]
    body, content_type = multipart_body(parts)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body,
                                   policy=email.policy.HTTP)
    assert msg.get_content_type() == "multipart/related" and msg.get_param("type") == "application/dicom"
    got = list(msg.iter_parts())
    assert [p.get_content_type() for p in got] == ["application/dicom"] * 2
    assert [p.get_payload(decode=True) for p in got] == parts


def test_boundary_never_occurs_in_a_part() -> None:
    body, content_type = multipart_body([b"x"])
    boundary = content_type.rsplit("=", 1)[1].encode()
    assert body.count(boundary) == 2 and body.endswith(b"--" + boundary + b"--\r\n")


# PS3.18 F.2 (DICOM JSON): a 202 where one instance was stored with a warning and one failed
JSON_202 = b"""{
  "00081190": {"vr": "UR", "Value": ["https://pacs/dicom-web/studies/1.2"]},
  "00081198": {"vr": "SQ", "Value": [{
      "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.34"]},
      "00081155": {"vr": "UI", "Value": ["1.2.3.2"]},
      "00081197": {"vr": "US", "Value": [42752]}}]},
  "00081199": {"vr": "SQ", "Value": [{
      "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.66.4"]},
      "00081155": {"vr": "UI", "Value": ["1.2.3.1"]},
      "00081196": {"vr": "US", "Value": [45056]}}]}
}"""

# what Orthanc's DICOMweb plugin answers with Accept: application/dicom+xml (namespaced, PS3.19 A.1)
XML_200 = b"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence" />
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI" keyword="ReferencedSOPClassUID"><Value number="1">1.2.840</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID"><Value number="1">1.2.3.1</Value>
      </DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>"""


def test_parse_json_response_failed_and_stored() -> None:
    parsed = parse_store_response(JSON_202, "application/dicom+json")
    assert parsed is not None
    assert parsed.failed == {"1.2.3.2": 0xA700}
    assert parsed.stored == {"1.2.3.1": 0xB000}


def test_parse_xml_response() -> None:
    parsed = parse_store_response(XML_200, "application/dicom+xml; charset=utf-8")
    assert parsed is not None and parsed.failed == {} and parsed.stored == {"1.2.3.1": 0}


def test_an_error_page_is_no_store_response() -> None:
    assert parse_store_response(b"<html><body>Bad gateway</body></html>", "text/html") is None
    assert parse_store_response(b"Unauthorized", "") is None
    for malformed in (b'{"00081198": {"vr": "SQ", "Value": [42]}}', b'{"00081198": "SQ"}',
                      b'{"00081198": {"vr": "SQ", "Value": [{"00081155": {"Value": ["1.2"]}, '
                      b'"00081197": {"Value": ["x"]}}]}}'):
        assert parse_store_response(malformed, "application/dicom+json") is None, malformed


def test_endpoint() -> None:
    e = Endpoint.parse("https://archive.example.org/dicom-web/")
    assert (e.https, e.host, e.port, e.studies) == (True, "archive.example.org", 443, "/dicom-web/studies")
    assert str(Endpoint.parse("http://127.0.0.1:8042/dicom-web")) == "http://127.0.0.1:8042/dicom-web/studies"
    for url, says in [("ftp://x/dicom-web", "not an http:// or https:// URL"),
                      ("https://user:pw@x/dicom-web", "no credentials in the URL"),
                      ("https://x/dicom-web/studies", "without /studies"),
                      ("https://x/dicom-web?a=1", r"no \?query")]:
        with pytest.raises(ConfigError, match=says):
            Endpoint.parse(url, "destinations.cloud.dicomweb.url")


def _check(tmp_path: Path, tls: bool = False, **kw: str) -> None:
    check_settings(DicomwebSettings(**kw), DestinationTlsSettings(enabled=tls), lambda p: tmp_path / p,
                   key="destinations.cloud")


def test_settings_checks_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc123\n")
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "empty").write_text("")
    cases = [
        (dict(token_file="token"), "destinations.cloud.dicomweb.token_file: only for a DICOMweb destination"),
        (dict(url="https://x/dicom-web"), r"destinations.cloud.tls.enabled: must be true"),
        (dict(url="http://127.0.0.1/dicom-web"), None),
        (dict(url="http://127.0.0.1/dicom-web", token_file="token", username="u", password_file="pw"), "not both"),
        (dict(url="http://127.0.0.1/dicom-web", username="u"), r"dicomweb.password_file: basic auth needs both"),
        (dict(url="http://127.0.0.1/dicom-web", token_file="empty"), r"dicomweb.token_file: .*empty is empty"),
        (dict(url="http://127.0.0.1/dicom-web", token_file="nope"), r"dicomweb.token_file: cannot read"),
        (dict(url="http://archive.example.org/dicom-web", token_file="token"), r"dicomweb.url: credentials over "
                                                                              "plain http://"),
    ]
    for kw, says in cases:
        if says is None:
            _check(tmp_path, **kw)
        else:
            with pytest.raises(ConfigError, match=says):
                _check(tmp_path, **kw)
    _check(tmp_path, tls=True, url="https://x/dicom-web", username="u", password_file="pw")
    with pytest.raises(ConfigError, match="tls.enabled: must be false"):
        _check(tmp_path, tls=True, url="http://127.0.0.1/dicom-web")


def test_authorization_headers_read_the_files_at_each_call(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    bearer = DicomwebSettings(url="https://x/dicom-web", token_file="token")
    assert authorization(bearer, lambda p: tmp_path / p) == "Bearer first"
    (tmp_path / "token").write_text("rotated\n")  # a new token is used without a restart
    assert authorization(bearer, lambda p: tmp_path / p) == "Bearer rotated"
    (tmp_path / "pw").write_text("p:ss word\n")
    basic = DicomwebSettings(url="https://x/dicom-web", username="node", password_file="pw")
    header = authorization(basic, lambda p: tmp_path / p)
    assert header is not None and base64.b64decode(header.split()[1]) == b"node:p:ss word"
    assert authorization(DicomwebSettings(url="https://x/dicom-web"), lambda p: tmp_path / p) is None


def test_a_config_file_with_a_dicomweb_destination(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("abc\n")
    path = tmp_path / "node.yaml"
    path.write_text("destinations:\n  cloud:\n    dicomweb:\n      url: https://archive.example.org/dicom-web\n"
                    "      token_file: secrets/token\n    tls:\n      enabled: true\n")
    cfg = load_config(path)
    assert cfg.destinations["cloud"].dicomweb.url == "https://archive.example.org/dicom-web"
    path.write_text("destinations:\n  cloud:\n    dicomweb:\n      url: https://archive.example.org/dicom-web\n"
                    "      tokenfile: secrets/token\n")
    with pytest.raises(ConfigError, match="unknown setting destinations.cloud.dicomweb.tokenfile"):
        load_config(path)
