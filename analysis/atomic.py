"""Durable, race-free file writes: every file RepScope saves goes through here.

* :func:`write_atomic`: one file. The bytes go to a unique temp file in the
  target's folder (``tempfile.mkstemp``: ``O_CREAT | O_EXCL``, so a planted
  file or symlink at the temp name is never followed), which is fsynced,
  renamed over the target with ``os.replace`` and the folder fsynced. Readers
  see the old file or the new one, never a mix.
* :func:`write_batch`: several files in one folder, all or nothing. Every temp
  is written and fsynced first; then, under an exclusive lock on the folder, a
  manifest naming the renames is written (the commit point), the renames
  done, and the manifest removed. :func:`recover` (called before reading or
  writing the folder) completes a batch whose process died after the commit
  point and deletes the temps of one that died before it.
* :func:`staged_dir`: a command's output folder: files are written into a
  hidden staging folder inside it and moved into place only on success, so a
  failed run leaves nothing half-written.

Footguns:
- A target that is a symlink is refused (:class:`UnsafePathError`): saving
  "into" a planted link would write outside the workspace.
- Temp files left by a killed process (``.NAME.*.tmp``) are deleted by
  :func:`clean_stale` once older than ``STALE_SECONDS``; younger ones may
  belong to a save in progress and are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

TMP_SUFFIX = ".tmp"
MANIFEST_SUFFIX = ".batch.json"
STAGING_PREFIX = ".repscope-staging-"
LOCK_NAME = ".repscope.lock"
STALE_SECONDS = 15 * 60


class UnsafePathError(ValueError):
    """A save target is a symlink or not a regular file; the message names it."""


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically and durably."""
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_batch(folder: str | Path, files: Mapping[str, bytes | str]) -> list[Path]:
    """Write ``{file name: data}`` into ``folder``: after a crash either all are new or none.

    Names must be plain file names (no folders). Returns the written paths.
    """
    folder = Path(folder)
    for name in files:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"write_batch: {name!r} is not a plain file name")
    targets = {name: folder / name for name in files}
    for path in targets.values():
        _check_target(path)
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    committed = False
    try:
        for name, data in files.items():
            temps[name] = _write_temp(targets[name], data)
        with _locked(folder):
            manifest = _write_temp(folder / "batch", json.dumps(
                [[temps[n].name, n] for n in files]), suffix=MANIFEST_SUFFIX)
            _fsync_dir(folder)  # the manifest is the commit point: it must be on disk first
            committed = True
            for name in files:
                os.replace(temps[name], targets[name])
            _fsync_dir(folder)
            manifest.unlink()
            _fsync_dir(folder)
    except BaseException:
        if not committed:  # nothing applied yet: drop the temps
            for tmp in temps.values():
                _unlink(tmp)
        # after the commit point the temps and manifest stay: recover() finishes the batch
        raise
    return list(targets.values())


def recover(folder: str | Path) -> None:
    """Finish committed batches a killed process left in ``folder`` and drop stale temps."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    with _locked(folder):
        for manifest in sorted(folder.glob(f".*{MANIFEST_SUFFIX}")):
            try:
                renames = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                renames = []  # written before the commit point (or garbage): nothing to apply
            for tmp_name, name in renames if isinstance(renames, list) else []:
                if not (isinstance(tmp_name, str) and isinstance(name, str)):
                    continue
                if Path(tmp_name).name != tmp_name or Path(name).name != name:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.replace(folder / tmp_name, folder / name)
            _unlink(manifest)
        _fsync_dir(folder)
    clean_stale(folder)


def clean_stale(folder: str | Path, older_than: float = STALE_SECONDS) -> list[Path]:
    """Delete temp files in ``folder`` older than ``older_than`` seconds; returns them."""
    folder = Path(folder)
    now, gone = time.time(), []
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if now - st.st_mtime > older_than and not stat.S_ISDIR(st.st_mode):
            _unlink(path)
            gone.append(path)
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - path.lstat().st_mtime > older_than and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                gone.append(path)
    return gone


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A staging folder whose files move into ``out`` when the block succeeds.

    On an exception the staging folder is deleted (and ``out`` too, when this
    call created it and it is still empty): a failed run writes nothing.
    """
    out = Path(out)
    if out.is_symlink() and not out.is_dir():
        raise UnsafePathError(f"{out} is a dangling symlink; give a real folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; give a folder path")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    try:
        _move_tree(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _fsync_dir(out)


# ---------------------------------------------------------------- internals

def _check_target(path: Path) -> None:
    if path.is_symlink():
        raise UnsafePathError(f"refusing to save to {path}: it is a symlink (remove it, or save elsewhere)")
    if path.exists() and not path.is_file():
        raise UnsafePathError(f"refusing to save to {path}: it exists and is not a regular file")


def _write_temp(target: Path, data: bytes | str, suffix: str = TMP_SUFFIX) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(Path(name))
        raise
    return Path(name)


def _move_tree(src: Path, dst: Path) -> None:
    for item in sorted(src.iterdir()):
        target = dst / item.name
        if item.is_dir() and not item.is_symlink():
            if target.is_symlink():
                raise UnsafePathError(f"refusing to write into {target}: it is a symlink")
            target.mkdir(exist_ok=True)
            _move_tree(item, target)
            _fsync_dir(target)
        else:
            _check_target(target)
            with open(item, "rb") as f:
                os.fsync(f.fileno())
            os.replace(item, target)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): renames stay atomic, batches may interleave
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
