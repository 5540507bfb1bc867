"""The DICOM listener: C-ECHO and C-STORE, acknowledging only what is durably stored.

Every C-STORE is written by `InstanceStore.store` (fsynced file + catalog row) before the
handler returns 0x0000. Failures map to DICOM statuses (0xA700 out of resources for disk and
database trouble, 0xC000 cannot understand for unparseable data), are logged with the reason
and never stop the listener.

Accepted sockets get TCP_NODELAY: the C-STORE-RSP is a small write that would otherwise wait
for the sender's delayed ACK (about 40 ms per instance on Linux, see NOTES.md).
"""
from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from typing import Any, Callable

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import Config
from dicom_node.store import InstanceStore, InvalidInstance, StoredInstance

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


class NoDelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with Nagle's algorithm off on every accepted connection."""

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # e.g. a socket type without TCP options: slower, still correct
            LOGGER.warning("could not set TCP_NODELAY on a connection from %s: %s", address, exc)
        return client, address


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


class StorageSCP:
    """The node's association acceptor (Verification + every storage SOP class).

    `on_stored(stored)` runs after each instance is durable (e.g. to wake the completion
    check); its errors are logged and do not change the status already earned.
    """

    def __init__(
        self,
        config: Config,
        store: InstanceStore,
        on_stored: Callable[[StoredInstance], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.on_stored = on_stored
        self.ae = self._make_ae()
        self._server: NoDelayAssociationServer | None = None
        self._thread: threading.Thread | None = None

    def _make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.require_called_aet = True  # wrong called AE: rejected, reason 0x07 (called AE not recognised)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu
        ae.network_timeout = node.network_timeout_s
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:  # compressed syntaxes accepted, stored as received
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful when the config says 0)."""
        if self._server is None:
            raise RuntimeError("StorageSCP.port: the listener is not started (call start())")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread; returns at once."""
        if self._server is not None:
            raise RuntimeError("StorageSCP.start: already started")
        node = self.config.node
        try:
            server = self.ae.make_server(
                (node.host, node.port),
                evt_handlers=[(evt.EVT_C_STORE, self._handle_store)],
                server_class=NoDelayAssociationServer,
            )
        except OSError as exc:
            raise RuntimeError(
                f"cannot listen on {node.host}:{node.port} ({exc}): is another node or storescp using it? "
                "Change node.port or node.host in the config"
            ) from exc
        self.ae._servers.append(server)  # so ae.shutdown() stops it as with start_server()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-node-scp", daemon=True)
        self._thread.start()
        LOGGER.info("listening as %s on %s:%d", node.ae_title, node.host, self.port)

    def stop(self) -> None:
        """Stop accepting, abort open associations, release the port."""
        if self._server is None:
            return
        self.ae.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def _handle_store(self, event: evt.Event) -> int | Dataset:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            encoded = event.encoded_dataset(include_meta=False)  # as received: no decode, no re-encode
            transfer_syntax = str(event.context.transfer_syntax)
            stored = self.store.store_encoded(encoded, transfer_syntax, calling_ae)
        except InvalidInstance as exc:
            LOGGER.error("C-STORE from %s refused: %s", calling_ae, exc)
            return _status(STATUS_CANNOT_UNDERSTAND, str(exc))
        except (OSError, sqlite3.Error) as exc:
            LOGGER.error("C-STORE from %s not stored (disk or catalog): %s", calling_ae, exc)
            return _status(STATUS_OUT_OF_RESOURCES, f"not stored: {exc}")
        except Exception as exc:
            LOGGER.exception("C-STORE from %s not stored: unexpected error", calling_ae)
            return _status(STATUS_PROCESSING_FAILURE, f"not stored: {type(exc).__name__}")
        if self.on_stored is not None:
            try:
                self.on_stored(stored)
            except Exception:
                LOGGER.exception("on_stored callback failed for %s (instance is stored)", stored.sop_instance_uid)
        return STATUS_SUCCESS
