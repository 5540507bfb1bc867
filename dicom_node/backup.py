"""`dicom-node backup DEST`: a consistent copy of the catalog while the node runs.

Why SQLite's online backup API and not `cp`: the catalog is in WAL mode and written by
several threads; a file copy can catch the database and its -wal file at different moments
and restore into a corrupt or older state. The backup API copies pages under SQLite's own
locking and yields a single self-contained file. Instance and result files are immutable once
written (temp name, fsync, rename), so an rsync of data_dir after the catalog backup gives a
set in which every catalog row's file exists.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from inference.files import atomic_write


def backup_catalog(source: Path, dest: Path, pages_per_step: int = -1) -> dict[str, int]:
    """Copy the live catalog at `source` to `dest` (written to a temp name, fsynced, renamed).

    Returns row counts of the copy. Raises FileNotFoundError / sqlite3.Error with the cause.
    """
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise FileNotFoundError(f"no catalog at {source} (has the node run with this config?)")
    if dest.is_dir():
        dest = dest / f"catalog-{time.strftime('%Y%m%d-%H%M%S')}.sqlite"
    counts: dict[str, int] = {}

    def copy(tmp: Path) -> None:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        out = sqlite3.connect(tmp)
        try:
            # one step (-1) = one read transaction on a WAL snapshot: the node's writers go on
            # meanwhile, and the copy never restarts (a stepwise copy restarts on every write)
            src.backup(out, pages=pages_per_step, sleep=0.005)
            out.execute("PRAGMA journal_mode=DELETE")  # a single file, no -wal beside it
            check = out.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"backup failed its integrity check: {check}")
            counts.update({t: out.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                           for t in ("instances", "series", "jobs", "dispatches")})
        finally:
            out.close()
            src.close()

    atomic_write(dest, copy, temp_suffix=".partial")
    counts["path"] = str(dest)  # type: ignore[assignment]
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", help="backup file, or a folder (a timestamped file is made in it)")
    p.add_argument("--config", help="YAML config (default: $DICOM_NODE_CONFIG or config/default.yaml)")


def run(args: argparse.Namespace) -> int:
    from dicom_node.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        result = backup_catalog(config.catalog_path, Path(args.dest))
    except (ConfigError, FileNotFoundError, sqlite3.Error, OSError) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    path = result.pop("path")
    print(f"catalog backed up to {path}: " + ", ".join(f"{v} {k}" for k, v in result.items()))
    print(f"now copy the files: rsync -a {config.data_dir}/instances {config.data_dir}/results DEST_DIR/")
    return 0
