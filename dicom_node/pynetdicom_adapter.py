"""Every use of pynetdicom beyond its documented API, in one place.

Why: the listener needs a few things pynetdicom offers no public way to do. Kept here, a
pynetdicom upgrade that changes them breaks one module, and `tests/unit/test_pynetdicom_adapter.py`
says which reach broke instead of a listener that silently stops cutting or refusing. Tested
with pynetdicom 3.0. What this relies on:

1. `AE._servers` (the AE's list of running servers). `AE.make_server` is the only public way
   to pass our own `server_class`, but unlike `AE.start_server` it does not register the
   server: `AE.shutdown()` then leaves it running, and `AssociationServer.shutdown()` ends in
   `ae._servers.remove(self)` (ValueError). `register_server` does what `start_server` does.
2. `Association.dul.socket.socket` (the DUL provider's `AssociationSocket` and the raw socket
   in it). An association is cut at once by shutting that socket from inside a DUL handler;
   `Association.abort(block=False)` is not the same: it only queues an A-ABORT, and the DUL
   keeps reading (and buffering) the peer's PDUs until the ARTIM timer expires.
3. Rejecting from an EVT_REQUESTED handler: `Association.acse.send_reject(...)` sets
   `Association.is_rejected`, and the acceptor loop then skips its own negotiation (there is
   no public "reject this association" call; the `require_*` AE settings cover only fixed rules).
4. `AssociationServer.get_request` wraps an accepted socket with `ssl_context` (and completes the
   handshake in the accept loop). `NoDelayAssociationServer` overrides it (a documented
   `server_class` extension point, socketserver's hook) and so takes over that wrapping.
"""
from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

LOGGER = logging.getLogger(__name__)


class NoDelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with Nagle's algorithm off on every accepted connection,
    and the TLS handshake moved out of the accept loop into the association's own thread (a slow
    or silent TLS client cannot stall accepting)."""

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # e.g. a socket type without TCP options: slower, still correct
            LOGGER.warning("could not set TCP_NODELAY on a connection from %s: %s", address, exc)
        if self.ssl_context:  # handshake on first read, in the association's own thread
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


def register_server(ae: AE, server: ThreadedAssociationServer) -> None:
    """Register a server from `AE.make_server` with its AE, as `AE.start_server` does, so that
    `AE.shutdown()` stops it and `server.shutdown()` works."""
    servers = ae._servers
    if server not in servers:
        servers.append(server)


def connection_socket(assoc: Any) -> socket.socket | None:
    """The TCP (or TLS) socket under an association (None once it is closed)."""
    return assoc.dul.socket.socket if assoc.dul.socket is not None else None


def cut_connection(assoc: Any) -> None:
    """Shut the association's connection now (from any thread, a DUL handler included): the DUL
    then sees it closed and ends the association. No A-ABORT is sent: this is for a peer we stop
    listening to."""
    sock = connection_socket(assoc)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer
        pass


def reject(assoc: Any, result: int, source: int, reason: int) -> None:
    """Answer an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ (result, source, reason as in PS3.8 9.3.4),
    from an EVT_REQUESTED handler; fires EVT_REJECTED as pynetdicom's own rejections do."""
    assoc.acse.send_reject(result, source, reason)  # sets is_rejected: pynetdicom skips its negotiation
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
