"""The shared build cache: a finished build's outputs, kept by the build's digest.

The digest covers the build plan (the elaborated design, constraints and scripts), the board, the
config, the baud rate and the toolchain versions (`hw.build._digest`), so an entry can be copied into
any output folder: a rebuild into another folder, or after `rm -rf build/`, costs a copy instead of
synthesis and place and route.

Location: ``$BNN_FPGA_CACHE`` if set, else ``$XDG_CACHE_HOME/bnn-fpga/bitstreams`` (by default
``~/.cache/bnn-fpga/bitstreams``); ``BNN_FPGA_CACHE=off`` disables it. One folder per digest holds
the output files and ``entry.json`` (the build's record with file names relative to the folder).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root", "lookup", "store"]

CACHE_ENV = "BNN_FPGA_CACHE"


def cache_root():
    """The cache folder, or None when disabled (``BNN_FPGA_CACHE=off``)."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnn-fpga" / "bitstreams"


def _entry_dir(digest):
    root = cache_root()
    return None if root is None else root / digest


def lookup(digest, out):
    """Copy the cached build `digest` into `out`; its record (files as paths in `out`) or None."""
    entry = _entry_dir(digest)
    if entry is None or not (entry / "entry.json").is_file():
        return None
    try:
        record = json.loads((entry / "entry.json").read_text())
        names = record["files"]
        if not all((entry / name).is_file() for name in names.values()):
            return None
        out = Path(out)
        for name in names.values():
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry / name, target)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None     # a damaged entry is a miss; the build runs and stores a fresh one
    record["files"] = {key: str(Path(out) / name) for key, name in names.items()}
    return record


def store(digest, out, record):
    """Keep the build in `out` (its `record`, files as paths) under `digest`; the cache folder or None.

    The entry is written to a temporary folder and renamed into place, so a concurrent build of the
    same digest never sees half an entry.
    """
    entry = _entry_dir(digest)
    if entry is None:
        return None
    out = Path(out)
    names = {key: os.path.relpath(path, out) for key, path in record["files"].items()}
    if any(name.startswith("..") for name in names.values()):
        return None     # outputs outside the folder are not the build's own
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=entry.parent))
        for name in names.values():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / name, staging / name)
        (staging / "entry.json").write_text(json.dumps(record | {"files": names}, indent=2,
                                                       sort_keys=True) + "\n")
        try:
            os.rename(staging, entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)   # another build stored it first
    except OSError:
        return None     # a read-only or full cache never fails a build
    return entry
