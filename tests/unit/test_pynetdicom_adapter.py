"""What `dicom_node.pynetdicom_adapter` relies on in pynetdicom still holds.

Each test exercises one reach named in the adapter's docstring against a real in-process
association, so a pynetdicom upgrade that changes it fails here, naming the reach, rather than
leaving a listener that no longer cuts, refuses or stops.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_node import pynetdicom_adapter as adapter

UPGRADE = (f"pynetdicom {pynetdicom.__version__} changed what dicom_node/pynetdicom_adapter.py relies on "
           "({}); update the adapter (its docstring lists each reach)")


def _server(handlers: list[tuple[Any, Any]]) -> tuple[AE, Any, int]:
    ae = AE(ae_title="ADAPTER")
    ae.add_supported_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    server = ae.make_server(("127.0.0.1", 0), evt_handlers=handlers,
                            server_class=adapter.NoDelayAssociationServer)
    adapter.register_server(ae, server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ae, server, server.server_address[1]


@pytest.fixture
def scu() -> Iterator[AE]:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    yield ae
    ae.shutdown()


def test_internals_are_where_the_adapter_looks() -> None:
    from pynetdicom.association import Association
    from pynetdicom.transport import AssociationServer

    ae = AE()
    assert isinstance(getattr(ae, "_servers", None), list), UPGRADE.format("AE._servers is no longer a list")
    assoc = Association(ae, "acceptor")
    assert hasattr(assoc, "is_rejected"), UPGRADE.format("Association.is_rejected is gone")
    assert callable(getattr(getattr(assoc, "acse", None), "send_reject", None)), \
        UPGRADE.format("Association.acse.send_reject is gone")
    assert hasattr(getattr(assoc, "dul", None), "socket"), UPGRADE.format("Association.dul.socket is gone")
    assert "get_request" in vars(AssociationServer), UPGRADE.format("AssociationServer.get_request moved")


def test_registered_server_stops_with_ae_shutdown(scu: AE) -> None:
    ae, server, port = _server([])
    assert server in ae._servers, UPGRADE.format("AE._servers no longer holds the servers")
    ae.shutdown()
    assert server not in ae._servers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_connection_socket_and_no_delay(scu: AE) -> None:
    seen: list[int] = []

    def on_echo(event: evt.Event) -> int:
        sock = adapter.connection_socket(event.assoc)
        assert isinstance(sock, socket.socket), UPGRADE.format("Association.dul.socket.socket is not the socket")
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return 0x0000

    ae, _server_, port = _server([(evt.EVT_C_ECHO, on_echo)])
    try:
        assoc = scu.associate("127.0.0.1", port, ae_title="ADAPTER")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert seen and seen[0] != 0, "NoDelayAssociationServer.get_request no longer runs (TCP_NODELAY off)"
    finally:
        ae.shutdown()


def test_reject_from_the_requested_handler(scu: AE) -> None:
    rejected: list[bool] = []

    def on_requested(event: evt.Event) -> None:
        adapter.reject(event.assoc, 0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised

    ae, _server_, port = _server([(evt.EVT_REQUESTED, on_requested),
                                  (evt.EVT_REJECTED, lambda event: rejected.append(True))])
    try:
        assoc = scu.associate("127.0.0.1", port, ae_title="ADAPTER")
        assert assoc.is_rejected and not assoc.is_established, UPGRADE.format(
            "acse.send_reject in EVT_REQUESTED no longer rejects the association")
        assert rejected, UPGRADE.format("evt.trigger(assoc, EVT_REJECTED) no longer reaches the handlers")
    finally:
        ae.shutdown()


def test_cut_connection_from_a_dul_handler_ends_the_association(scu: AE) -> None:
    cuts: list[bool] = []

    def on_data(event: evt.Event) -> None:  # runs in the DUL thread, as the listener's size guard
        if event.data[:1] == b"\x04":  # the first P-DATA-TF (the C-ECHO request)
            adapter.cut_connection(event.assoc)
            cuts.append(True)

    ae, _server_, port = _server([(evt.EVT_DATA_RECV, on_data)])
    try:
        assoc = scu.associate("127.0.0.1", port, ae_title="ADAPTER")
        assert assoc.is_established
        status = assoc.send_c_echo()
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cuts and not status and not assoc.is_established, UPGRADE.format(
            "shutting Association.dul.socket.socket no longer ends the association")
    finally:
        ae.shutdown()
