"""The OHIF Viewer (npm `@ohif/app`, a prebuilt web app in its `dist/`), fetched at set-up and configured
to read one local Orthanc through DICOMweb.

Why fetched, not committed: `dist/` is 204 MB of someone else's build. `make ohif` (a dependency of
`demo` and `test`) runs `fetch()`: `npm pack` of the pinned version, whose tarball npm checks against
the registry's integrity hash, checked again here against the hash pinned below (a re-published or
tampered tarball fails), unpacked into the git-ignored `.cache/ohif/VERSION/dist`. A stamp file makes
a second run a no-op.

The app-config (`window.config`) is ours, written per server: one DICOMweb data source on the page's
own origin (the viewer server proxies `/dicom-web/` to Orthanc, so no CORS and no public URL), the
study list on, and every first-visit prompt off (investigational-use dialog, guided tour, the
cross-origin and CPU-rendering warnings), so a browser driven by a test sees the viewer at once.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# `npm view @ohif/app@3.13.2 dist.integrity`; the tarball's SHA-512 must match it
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
CACHE = REPO / ".cache" / "ohif" / OHIF_VERSION
STAMP = CACHE / ".fetched"
DICOMWEB_PATH = "/dicom-web"  # where the viewer server proxies Orthanc's DICOMweb root (Orthanc's own path)


class OhifMissing(FileNotFoundError):
    """The viewer has not been fetched: `make ohif` does it."""


def dist_dir() -> Path:
    """The fetched viewer's `dist/` (index.html, the bundles, the wasm codecs)."""
    dist = CACHE / "dist"
    if not STAMP.exists() or not (dist / "index.html").exists():
        raise OhifMissing(f"OHIF {OHIF_VERSION} is not fetched into {CACHE} (run `make ohif`; needs npm and the "
                          "npm registry)")
    return dist


def sri_of(path: Path) -> str:
    """The file's Subresource-Integrity string (sha512-BASE64), as npm's `dist.integrity` gives it."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch(quiet: bool = False, cache: Path = CACHE, integrity: str = OHIF_INTEGRITY) -> Path:
    """`npm pack` the pinned viewer, check its integrity, unpack `package/dist` into `cache`; a no-op once done."""
    stamp = cache / STAMP.name
    if stamp.exists() and (cache / "dist" / "index.html").exists():
        return cache / "dist"
    npm = shutil.which("npm")
    if npm is None:
        raise OhifMissing("npm is not installed (Debian package 'npm'), needed once to fetch the OHIF viewer")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".fetch-") as tmp:
        spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
        if not quiet:
            print(f"[ohif] npm pack {spec} (about 50 MB) into {cache}", file=sys.stderr)
        out = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", tmp], capture_output=True,
                             text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"npm pack {spec} failed (is the npm registry reachable?):\n{out.stderr[-2000:]}")
        tarball = Path(tmp) / json.loads(out.stdout)[0]["filename"]
        got = sri_of(tarball)
        if got != integrity:
            raise RuntimeError(f"{tarball.name}: integrity {got} is not the pinned {integrity}; refusing it")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/") and (m.isfile() or m.isdir())]
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and paths out of the folder
                tar.extractall(unpacked, members=members, filter="data")
            else:
                tar.extractall(unpacked, members=members)  # members: plain files and folders under package/dist
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        (unpacked / "package" / "dist").rename(cache / "dist")
    stamp.write_text(f"{OHIF_PACKAGE}@{OHIF_VERSION} {integrity}\n")
    return cache / "dist"


def app_config() -> str:
    """The viewer's `app-config.js`: our Orthanc through the same origin, no prompts, nothing public."""
    source = {
        "friendlyName": "local Orthanc (DICOMweb plugin)",
        "name": "orthanc",
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True},
        "omitQuotationForMultipartRequest": True,
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # the guided tour is a customization since OHIF 3.10: an empty list shows none
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [{"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                         "sourceName": "orthanc", "configuration": source}],
    }
    # the DICOMweb roots are the page's own origin (whatever host name the browser used) + the proxy path
    roots = " ".join(f"cfg.dataSources[0].configuration.{key} = root;" for key in ("qidoRoot", "wadoRoot",
                                                                                     "wadoUriRoot"))
    return (f"// written by testbed/ohif.py for OHIF {OHIF_VERSION}: one local Orthanc via the viewer's origin\n"
            f"(function () {{\n  const cfg = {json.dumps(config, indent=2)};\n"
            f"  const root = window.location.origin + {json.dumps(DICOMWEB_PATH)};\n  {roots}\n"
            "  window.config = cfg;\n})();\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.ohif", description="fetch the pinned OHIF viewer")
    p.add_argument("command", choices=["fetch", "where"])
    args = p.parse_args(argv)
    try:
        print(fetch() if args.command == "fetch" else dist_dir())
    except (OhifMissing, RuntimeError) as exc:
        print(f"ohif: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
