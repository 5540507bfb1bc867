"""Who may talk to the node, what it accepts, and TLS: the checks made at the network boundary.

The node sits on a hospital network for months: a peer that is not on the allow-list is
refused at association time (A-ASSOCIATE-RJ with the reason DICOM defines, logged with the
peer's address), only the storage classes a spine study carries are negotiated, one
instance may not exceed a size, and the disk is never filled to the last byte (the catalog
and the results need room too). All settings live in `security:` of the config and are
validated here when the config is loaded, so a typo stops the start, not a study.

The settings dataclasses of that section (and of a destination's TLS) live here too:
dicom_node.config composes them into Config and calls `validate_security`; this module never
imports config.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Mapping

from dicom_node.config_error import ConfigError

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE title not recognised
REJECT_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit exceeded

# what a spine MR study carries besides the images: CT of the same region, derived objects,
# results of other tools (SEG, SR), key images and presentation states
DEFAULT_SOP_CLASSES = (
    "MRImageStorage", "EnhancedMRImageStorage", "EnhancedMRColorImageStorage",
    "LegacyConvertedEnhancedMRImageStorage", "CTImageStorage", "EnhancedCTImageStorage",
    "LegacyConvertedEnhancedCTImageStorage", "SecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage", "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage", "SegmentationStorage", "BasicTextSRStorage",
    "EnhancedSRStorage", "ComprehensiveSRStorage", "Comprehensive3DSRStorage", "KeyObjectSelectionDocumentStorage",
    "GrayscaleSoftcopyPresentationStateStorage", "RawDataStorage",
)


# ---- settings (`security:` and a destination's `tls:`); defaults here are the node's defaults --
@dataclass
class PeerSettings:
    ae_title: str = ""  # calling AE title, exact (trailing spaces ignored)
    hosts: list[str] = field(default_factory=list)  # IP addresses or networks (CIDR); empty = any host


@dataclass
class ListenerTlsSettings:
    enabled: bool = False
    cert: str = ""  # our certificate chain (PEM)
    key: str = ""  # its private key (PEM, unencrypted)
    ca: str = ""  # PEM CA bundle that client certificates must chain to
    require_client_cert: bool = False  # refuse TLS clients without a certificate signed by `ca`


@dataclass
class SecuritySettings:
    allowed_peers: list[PeerSettings] = field(default_factory=list)  # empty = any calling AE from any host
    sop_classes: list[str] = field(default_factory=lambda: ["default"])  # keywords/UIDs; "default", "all"
    max_instance_bytes: int = 1 << 30  # one received instance larger than this is refused (0 = no limit)
    min_free_disk: int | str = "1GiB"  # below this free space C-STORE answers 0xA700; bytes, "NGiB"/"NMB", "N%"
    tls: ListenerTlsSettings = field(default_factory=ListenerTlsSettings)


@dataclass
class DestinationTlsSettings:
    enabled: bool = False
    ca: str = ""  # PEM CA bundle that signed the destination's certificate; "" = the system CAs
    cert: str = ""  # our client certificate (PEM), when the destination asks for one
    key: str = ""  # its private key (PEM, unencrypted)
    check_hostname: bool = True  # the certificate must name server_hostname
    server_hostname: str = ""  # "" = the destination's host


# ---- SOP classes ------------------------------------------------------------------------------
def storage_class_uids(names: list[str], key: str = "security.sop_classes") -> list[str] | None:
    """UIDs of the configured storage classes; None means every storage class ("all").

    Each entry is a pynetdicom keyword (MRImageStorage), a UID, "default" (the spine study set)
    or "all".
    """
    # here, not at the top: config imports this module, and pydicom is slow to import
    from pydicom.uid import RE_VALID_UID
    from pynetdicom import sop_class

    if "all" in names:
        return None
    uids: list[str] = []
    for i, name in enumerate(names):
        if name == "default":
            uids.extend(str(getattr(sop_class, kw)) for kw in DEFAULT_SOP_CLASSES)
        elif re.fullmatch(RE_VALID_UID, name) and len(name) <= 64:
            uids.append(name)
        elif isinstance(getattr(sop_class, name, None), str) and name.endswith("Storage"):
            uids.append(str(getattr(sop_class, name)))
        else:
            raise ConfigError(f"{key}[{i}]: {name!r} is not a storage SOP class keyword (e.g. MRImageStorage), "
                                "a UID, 'default' or 'all'")
    return list(dict.fromkeys(uids))


# ---- free disk --------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class DiskThreshold:
    """Free space to keep: absolute bytes or a percentage of the file system."""

    bytes: int = 0
    percent: float = 0.0

    @classmethod
    def parse(cls, value: int | str, key: str = "security.min_free_disk") -> "DiskThreshold":
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected bytes (1073741824), a size ('10GiB') or a percentage ('5%')")
        if isinstance(value, int):
            if value < 0:
                raise ConfigError(f"{key}: must not be negative")
            return cls(bytes=value)
        text = str(value).strip().lower().replace(" ", "")
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
        if m:
            pct = float(m.group(1))
            if not 0 <= pct < 100:
                raise ConfigError(f"{key}: a percentage from 0 to below 100, got {value!r}")
            return cls(percent=pct)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text)
        if not m or m.group(2) not in _UNITS:
            raise ConfigError(f"{key}: {value!r} is not bytes, a size with unit (B, MB, GB, MiB, GiB...) "
                                "or a percentage ('5%')")
        return cls(bytes=int(float(m.group(1)) * _UNITS[m.group(2)]))

    def shortfall(self, folder: Path, incoming: int = 0) -> str | None:
        """Why `incoming` more bytes must not be written under `folder` now, or None when they may."""
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:  # the data dir may not exist yet
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        keep = max(self.bytes, int(usage.total * self.percent / 100.0))
        if usage.free - incoming < keep:
            return (f"disk nearly full: {usage.free // 2**20} MiB free, keeping {keep // 2**20} MiB "
                    "(security.min_free_disk)")
        return None


# ---- who may associate ------------------------------------------------------------------------
@dataclass(frozen=True)
class Refusal:
    """An A-ASSOCIATE-RJ to send, and the reason for the log."""

    result: int
    source: int
    diagnostic: int
    reason: str

    @property
    def rsd(self) -> tuple[int, int, int]:
        return self.result, self.source, self.diagnostic


class AccessPolicy:
    """Called AE must be ours; calling AE must be on the allow-list and come from one of its hosts."""

    def __init__(self, own_ae_title: str, peers: list[PeerSettings]) -> None:
        self.own = own_ae_title.strip()
        self.peers: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        for p in peers:
            nets = [ipaddress.ip_network(h, strict=False) for h in p.hosts]
            self.peers.setdefault(p.ae_title.strip(), []).extend(nets)
        self._any_host = {p.ae_title.strip() for p in peers if not p.hosts}

    def check(self, calling_ae: str, called_ae: str, host: str) -> Refusal | None:
        """None when the association may proceed, else the refusal to send."""
        calling, called = calling_ae.strip(), called_ae.strip()
        if called != self.own:
            return Refusal(*REJECT_CALLED_AE, f"called AE title {called!r} is not ours ({self.own!r})")
        if not self.peers:
            return None
        if calling not in self.peers:
            return Refusal(*REJECT_CALLING_AE, f"calling AE title {calling!r} is not in security.allowed_peers")
        if calling in self._any_host:
            return None
        try:
            addr = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return Refusal(*REJECT_CALLING_AE, f"calling AE title {calling!r} from unparseable address {host!r}")
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.peers[calling]):
            return None
        return Refusal(*REJECT_CALLING_AE, f"calling AE title {calling!r} is not allowed from {host} "
                                           "(security.allowed_peers hosts)")


class AssociationLimiter:
    """Counts open associations by key, exactly: a slot is freed as soon as the peer asks to release.

    pynetdicom's own limit counts association threads still alive, which briefly include ones
    already released: a peer that reconnects at once could be refused below the limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: set[Hashable] = set()
        self._lock = threading.Lock()
        self.peak = 0

    def acquire(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._held:
                return True
            if len(self._held) >= self.limit:
                return False
            self._held.add(key)
            self.peak = max(self.peak, len(self._held))
            return True

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._held.discard(key)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._held)


# ---- TLS --------------------------------------------------------------------------------------
def _file(resolve: Callable[[str], Path], value: str, key: str) -> str:
    path = resolve(value)
    if not path.is_file():
        raise ConfigError(f"{key}: file {path} does not exist")
    return str(path)


def listener_ssl_context(t: ListenerTlsSettings, resolve: Callable[[str], Path],
                         key: str = "security.tls") -> ssl.SSLContext:
    """Server-side TLS for the listener (TLS 1.2+), with optional client-certificate checking."""
    if not t.cert or not t.key:
        raise ConfigError(f"{key}: enabled needs cert and key (PEM files)")
    cert, pkey = _file(resolve, t.cert, f"{key}.cert"), _file(resolve, t.key, f"{key}.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, pkey)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{key}.cert/{key}.key: cannot load the certificate and key: {exc}") from None
    if t.require_client_cert and not t.ca:
        raise ConfigError(f"{key}.require_client_cert: needs {key}.ca (the CA that signs client certificates)")
    if t.ca:
        try:
            ctx.load_verify_locations(_file(resolve, t.ca, f"{key}.ca"))
        except ssl.SSLError as exc:
            raise ConfigError(f"{key}.ca: not a PEM CA bundle: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if t.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def destination_ssl_context(t: DestinationTlsSettings, resolve: Callable[[str], Path],
                            key: str = "destinations.?.tls") -> ssl.SSLContext:
    """Client-side TLS for dispatch: the destination's certificate is verified (CA, host name)."""
    try:
        ctx = ssl.create_default_context(cafile=_file(resolve, t.ca, f"{key}.ca") if t.ca else None)
    except ssl.SSLError as exc:
        raise ConfigError(f"{key}.ca: not a PEM CA bundle: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = t.check_hostname
    if bool(t.cert) != bool(t.key):
        raise ConfigError(f"{key}: cert and key go together (a client certificate needs its key)")
    if t.cert:
        try:
            ctx.load_cert_chain(_file(resolve, t.cert, f"{key}.cert"), _file(resolve, t.key, f"{key}.key"))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{key}.cert/{key}.key: cannot load the certificate and key: {exc}") from None
    return ctx


# ---- validation at load -----------------------------------------------------------------------
def validate_security(s: SecuritySettings, destination_tls: Mapping[str, DestinationTlsSettings],
                      resolve: Callable[[str], Path]) -> None:
    """Check every security setting (and TLS file) once, at start, with messages naming the key.

    `destination_tls` maps each destination's name to its `tls` settings; `resolve` turns a
    path setting into a path (Config.path: relative to the config file's folder).
    """
    for i, peer in enumerate(s.allowed_peers):
        if not 1 <= len(peer.ae_title.strip()) <= 16 or "\\" in peer.ae_title:
            raise ConfigError(f"security.allowed_peers[{i}].ae_title: 1 to 16 characters, no backslash")
        for j, host in enumerate(peer.hosts):
            try:
                ipaddress.ip_network(str(host), strict=False)
            except ValueError:
                raise ConfigError(f"security.allowed_peers[{i}].hosts[{j}]: {host!r} is not an IP address or "
                                    "network (e.g. 10.1.2.3 or 10.1.0.0/16); host names are not resolved") from None
    storage_class_uids(s.sop_classes)
    if s.max_instance_bytes < 0:
        raise ConfigError("security.max_instance_bytes: must be 0 (no limit) or positive")
    DiskThreshold.parse(s.min_free_disk)
    if s.tls.enabled:
        listener_ssl_context(s.tls, resolve)
    for name, tls in destination_tls.items():
        if tls.enabled:
            destination_ssl_context(tls, resolve, key=f"destinations.{name}.tls")


def peer_host(address: object) -> str:
    """The host part of a socket address (ip, port[, ...]), or its text."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(getattr(address, "address", address))


__all__ = [
    "AccessPolicy", "AssociationLimiter", "DEFAULT_SOP_CLASSES", "DestinationTlsSettings", "DiskThreshold",
    "ListenerTlsSettings", "PeerSettings", "Refusal", "SecuritySettings", "destination_ssl_context",
    "listener_ssl_context", "peer_host", "storage_class_uids", "validate_security",
]
