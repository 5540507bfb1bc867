"""The DICOM listener: C-ECHO and C-STORE, acknowledging only what is durably stored.

Every C-STORE is written by `InstanceStore.store` (fsynced file + catalog row) before the
handler returns 0x0000. Failures map to DICOM statuses (0xA700 out of resources for disk and
database trouble, 0xC000 cannot understand for unparseable data), are logged with the reason
and never stop the listener.

Accepted sockets get TCP_NODELAY: the C-STORE-RSP is a small write that would otherwise wait
for the sender's delayed ACK (about 40 ms per instance on Linux, see NOTES.md).

Boundary checks (dicom_node.security): the allow-list of calling AE titles and hosts and the
called AE title are checked when the A-ASSOCIATE-RQ arrives (A-ASSOCIATE-RJ with the DICOM
reason, logged with the peer's address); only the configured storage classes are negotiated;
concurrent associations are counted exactly; an instance over the size limit, or one that
would eat into the free-disk reserve, is answered 0xA700 and not stored; a dataset that grows
past twice the size limit while it arrives gets its connection cut (pynetdicom buffers a whole
dataset in memory before any handler sees it: this bounds what one peer can make us hold). With TLS the
handshake runs in the association's thread, so a slow or silent TLS client cannot stall the
accept loop.
"""
from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
from typing import Any, Callable, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # its SOP class names are made at import

from dicom_node import pynetdicom_adapter
from dicom_node.config import Config
from dicom_node.pynetdicom_adapter import NoDelayAssociationServer
from dicom_node.security import (
    REJECT_CALLING_AE,
    REJECT_LIMIT,
    AccessPolicy,
    AssociationLimiter,
    DiskThreshold,
    Refusal,
    listener_ssl_context,
    storage_class_uids,
)
from dicom_node.store import InstanceStore, InvalidInstance, StoredInstance

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


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
        sec = config.security
        self.policy = AccessPolicy(config.node.ae_title, sec.allowed_peers)
        self.limiter = AssociationLimiter(config.node.max_associations)
        self.disk_reserve = DiskThreshold.parse(sec.min_free_disk)
        self.ssl_context: ssl.SSLContext | None = (
            listener_ssl_context(sec.tls, config.path) if sec.tls.enabled else None)
        self._incoming: dict[int, int] = {}  # association -> bytes of the dataset being received
        self.ae = self._make_ae()
        self._server: NoDelayAssociationServer | None = None
        self._thread: threading.Thread | None = None

    def _make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.require_called_aet = True  # wrong called AE: rejected, reason 0x07 (called AE not recognised)
        # the limit is enforced exactly by self.limiter; pynetdicom's thread count (which still
        # includes just-released associations) only backs it up with a margin
        ae.maximum_associations = node.max_associations + 32
        ae.maximum_pdu_size = node.max_pdu
        ae.network_timeout = node.network_timeout_s
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        allowed = storage_class_uids(self.config.security.sop_classes)
        classes = allowed if allowed is not None else [
            cx.abstract_syntax for cx in AllStoragePresentationContexts if cx.abstract_syntax is not None]
        for uid in classes:  # compressed syntaxes accepted, stored as received
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        return ae

    @property
    def server(self) -> NoDelayAssociationServer | None:
        """The running pynetdicom server (None when stopped): to bind more event handlers."""
        return self._server

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
                evt_handlers=[
                    (evt.EVT_C_STORE, self._handle_store),
                    (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_ACSE_RECV, self._on_acse_recv),
                    (evt.EVT_DATA_RECV, self._on_data_recv),
                    (evt.EVT_ABORTED, self._free_slot),
                    (evt.EVT_CONN_CLOSE, self._free_slot),
                ],
                server_class=NoDelayAssociationServer,
                ssl_context=self.ssl_context,
            )
        except OSError as exc:
            raise RuntimeError(
                f"cannot listen on {node.host}:{node.port} ({exc}): is another node or storescp using it? "
                "Change node.port or node.host in the config"
            ) from exc
        pynetdicom_adapter.register_server(self.ae, server)  # so ae.shutdown() stops it as with start_server()
        # make_server returns an instance of server_class; pynetdicom annotates it as the base class
        self._server = cast(NoDelayAssociationServer, server)
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-node-scp", daemon=True)
        self._thread.start()
        LOGGER.info("listening as %s on %s:%d%s", node.ae_title, node.host, self.port,
                    " (TLS)" if self.ssl_context else "")

    def stop(self) -> None:
        """Stop accepting, abort open associations, release the port."""
        if self._server is None:
            return
        self.ae.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    # ---- association admission --------------------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ received: refuse unknown peers and associations above the limit."""
        assoc = event.assoc
        calling = called = host = "?"
        try:
            rq = assoc.requestor.primitive
            assert rq is not None  # EVT_REQUESTED: the A-ASSOCIATE-RQ has arrived (else: fail closed below)
            calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
            host = str(assoc.requestor.address)
            refusal = self.policy.check(calling, called, host)
        except Exception as exc:  # pynetdicom swallows handler errors: fail closed, never open
            LOGGER.exception("association from %s@%s: peer check failed", calling, host)
            refusal = Refusal(*REJECT_CALLING_AE, f"peer check failed: {type(exc).__name__}")
        if refusal is None and not self.limiter.acquire(id(assoc)):
            LOGGER.warning("association from %s@%s refused: %d associations open (node.max_associations)",
                           calling, host, self.limiter.limit)
            self._reject(assoc, REJECT_LIMIT)
            return
        if refusal is not None:
            LOGGER.warning("association from %s@%s:%s to %s refused: %s", calling, host,
                           assoc.requestor.port, called, refusal.reason)
            self._reject(assoc, refusal.rsd)

    @staticmethod
    def _reject(assoc: Any, rsd: tuple[int, int, int]) -> None:
        pynetdicom_adapter.reject(assoc, *rsd)

    def _on_acse_recv(self, event: evt.Event) -> None:
        """A-RELEASE-RQ: the slot is free before our A-RELEASE-RP lets the peer reconnect."""
        # pynetdicom sets an ACSE event's `primitive` from the keyword arguments it fires the event with
        if type(event.primitive).__name__ == "A_RELEASE":  # type: ignore[attr-defined]
            self.limiter.release(id(event.assoc))

    def _free_slot(self, event: evt.Event) -> None:
        self.limiter.release(id(event.assoc))
        self._incoming.pop(id(event.assoc), None)

    def _on_data_recv(self, event: evt.Event) -> None:
        """Count dataset bytes per P-DATA-TF; past 2 x max_instance_bytes, cut the connection."""
        limit = self.config.security.max_instance_bytes
        data: bytes = event.data
        if not limit or data[:1] != b"\x04":  # P-DATA-TF only
            return
        key = id(event.assoc)
        total = self._incoming.get(key, 0)
        pos = 6
        while pos + 6 <= len(data):  # PDV items: length (4), context id (1), control header (1), value
            length = int.from_bytes(data[pos:pos + 4], "big")
            control = data[pos + 5]
            if not control & 0x01:  # a dataset fragment (bit 0 clear), not a command
                total += max(0, length - 2)
                if total > 2 * limit:
                    self._incoming.pop(key, None)
                    LOGGER.error("association from %s@%s cut: a dataset passed %d bytes (2 x "
                                 "security.max_instance_bytes) while arriving", event.assoc.requestor.ae_title,
                                 event.assoc.requestor.address, 2 * limit)
                    # the DUL thread runs this handler: shut the socket, the DUL then sees it closed
                    pynetdicom_adapter.cut_connection(event.assoc)
                    return
                if control & 0x02:  # last fragment: the next dataset starts from zero
                    total = 0
            pos += 4 + length
        self._incoming[key] = total

    # ---- C-STORE ---------------------------------------------------------------------------
    def _handle_store(self, event: evt.Event) -> int | Dataset:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            encoded = event.encoded_dataset(include_meta=False)  # as received: no decode, no re-encode
            limit = self.config.security.max_instance_bytes
            if limit and len(encoded) > limit:
                LOGGER.error("C-STORE from %s@%s refused: %d bytes exceed security.max_instance_bytes %d",
                             calling_ae, event.assoc.requestor.address, len(encoded), limit)
                return _status(STATUS_OUT_OF_RESOURCES, f"instance over {limit} bytes: not stored")
            short = self.disk_reserve.shortfall(self.store.data_dir, len(encoded))
            if short is not None:
                LOGGER.error("C-STORE from %s refused: %s", calling_ae, short)
                return _status(STATUS_OUT_OF_RESOURCES, short)
            transfer_syntax = str(event.context.transfer_syntax)
            stored = self.store.store_encoded(encoded, transfer_syntax, calling_ae,
                                              max_pixel_bytes=self.config.security.max_instance_bytes)
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
