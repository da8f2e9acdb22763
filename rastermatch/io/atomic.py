"""Atomic writes: temporaries, the move into place, stale cleanup, interrupt-safe compute.

A write goes to a hidden temporary next to its output,
``.{name}.rastermatch-{pid}-{host}-{token}.{tmp|staging|old}``, and is moved onto the final
name only when complete (:func:`move_into_place`). An error or interrupt removes the
temporary (:func:`_remove_despite_interrupts`) after the pool computing the blocks has shut
down (:func:`_compute_on_own_pool`, :func:`_compute_on_cluster`), so nothing writes into it
afterwards. Temporaries of killed processes are removed by the next write of the same output
(:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask

from rastermatch.errors import (
    OutputExistsError,
    RasterWriteError,
    StaleTemporaryWarning,
)
from rastermatch.io._common import PathLike


def _exists_error(final: Path, what: str = "exists already") -> OutputExistsError:
    error = OutputExistsError(
        f"{final} {what}; allow replacing it (overwrite=True, or --overwrite on the command "
        "line) or write to another path"
    )
    error.path = final  # type: ignore[attr-defined]
    return error


def _write_error(final: Path, exc: OSError) -> RasterWriteError:
    """A RasterWriteError naming the output for an OSError of the file system (zarr, fsspec)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hints = {
        errno.ENOSPC: f"free some space on the device holding {final.parent} or write elsewhere",
        errno.EDQUOT: "free some of your disk quota or write elsewhere",
        errno.EFBIG: "the file system or a file-size limit (ulimit -f) refuses files this big",
        errno.EACCES: "check the permissions of the output directory",
        errno.EPERM: "check the permissions of the output directory",
        errno.EROFS: "the file system is read-only; write elsewhere",
    }
    hint = hints.get(exc.errno or -1, "check the output directory and try again")
    return RasterWriteError(f"writing {final} failed: {reason}; {hint}")


def _remove_despite_interrupts(path: Path) -> None:
    """Remove ``path``; a second Ctrl-C while it is removed is held back until it is gone."""
    interrupted = False
    while True:
        try:
            _remove(path)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


# Temporary names -----------------------------------------------------------------------------
#
# .{name}.rastermatch-{pid}-{host}-{token}.{tag}: pid and host (a hash of the host name) say
# who made it, so a later run can tell a temporary of a dead process from one still being
# written. Names longer than the file system allows are shortened with a hash of the full
# name (the same hash every run, so the next run still finds them).

#: Longest file name (bytes) the writers allow: the NAME_MAX of common file systems.
NAME_MAX = 255
_TEMP_MARK = "rastermatch"
_TEMP_TAGS = ("tmp", "staging", "old")
# "-{pid}-{host}-{token}.staging": pid up to 10 digits, 8 hex host, 8 hex token
_TEMP_TAIL_MAX = len("-0123456789-01234567-01234567.staging")
# the tag may be followed by the output's own suffix (".tmp.png": a report keeps its format)
_TEMP_RE = re.compile(r"-(\d+)-([0-9a-f]{8})-([0-9a-f]{8})\.(tmp|staging|old)(?:\.\w{1,8})?")


def _host_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(final: Path) -> str:
    """The part of every temporary name of ``final`` before ``-{pid}-{host}-{token}.{tag}``."""
    prefix = f".{final.name}.{_TEMP_MARK}"
    if len(os.fsencode(prefix)) + _TEMP_TAIL_MAX <= NAME_MAX:
        return prefix
    digest = hashlib.sha256(os.fsencode(final.name)).hexdigest()[:16]
    keep = os.fsencode(final.name)[:100].decode(errors="ignore")
    return f".{keep}~{digest}.{_TEMP_MARK}"


def _sibling(path: Path, tag: str) -> Path:
    """A hidden, unique name next to ``path``: same file system, so the move is a rename."""
    token = secrets.token_hex(4)
    return path.with_name(f"{_temp_prefix(path)}-{os.getpid()}-{_host_hash()}-{token}.{tag}")


def temporary_sibling(path: PathLike, *, keep_suffix: bool = False) -> Path:
    """A unique hidden name next to ``path`` for writing it before moving it into place.

    Named by process and host like every temporary of rastermatch, so that
    :func:`remove_stale_temporaries` finds it if the process is killed. ``keep_suffix`` ends
    the name with ``path``'s own suffix (a writer that picks its format by the suffix).
    """
    final = Path(path).expanduser().absolute()
    tmp = _sibling(final, "tmp")
    suffix = final.suffix if keep_suffix and re.fullmatch(r"\.\w{1,8}", final.suffix) else ""
    return tmp.with_name(tmp.name + suffix)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove the temporaries that killed writes of ``path`` left; return what was removed.

    A write killed by SIGKILL or a power loss cannot clean up after itself. Its temporaries
    are recognised by their names (``.{name}.rastermatch-{pid}-{host}-{token}.{tag}``).
    Those made on this host by a process that no longer runs are removed; a previous output
    that was moved aside to be replaced is put back when the final name is empty, so a killed
    overwrite keeps the old output. Temporaries made on another host (a shared file system)
    cannot be judged from here: each is reported with a
    :class:`~rastermatch.errors.StaleTemporaryWarning` naming it, and left in place.
    :func:`write_raster` calls this before every write.

    Parameters
    ----------
    path : str or os.PathLike
        The output path whose temporaries to look for.

    Returns
    -------
    list of pathlib.Path
        The temporaries removed (or put back in place).
    """
    final = Path(path).expanduser().absolute()
    prefix = _temp_prefix(final)
    host = _host_hash()
    removed: list[Path] = []
    try:
        candidates = sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return removed
    for candidate in candidates:
        match = _TEMP_RE.fullmatch(candidate.name[len(prefix) :])
        if match is None:
            continue
        pid, owner_host, tag = int(match[1]), match[2], match[4]
        if owner_host != host:
            warnings.warn(
                f"{candidate} looks like the temporary of an interrupted write of {final} on "
                "another host; remove it yourself once no write of that output runs there",
                StaleTemporaryWarning,
                stacklevel=2,
            )
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue  # a write in progress
        if tag == "old" and not (final.exists() or final.is_symlink()):
            with contextlib.suppress(OSError):
                os.replace(candidate, final)  # a killed overwrite: the old output comes back
                removed.append(candidate)
                continue
        _remove(candidate)
        removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for _ in range(3):  # a directory tree still being written to may need another pass
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_new_file(path: Path, data: bytes) -> None:
    """Create ``path``, which must not exist yet (a temporary of :func:`temporary_sibling`),
    holding ``data``, flushed to disk before it is moved into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def move_into_place(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move a finished temporary onto ``final``; without ``overwrite`` never replace a file that
    appeared meanwhile (OutputExistsError)."""
    exists = final.exists() or final.is_symlink()
    if not exists:
        if not tmp.is_dir():
            # A hard link cannot replace a file that appeared in the meantime (another
            # process): the no-overwrite promise holds without a race.
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise _exists_error(final, "appeared while it was being written") from None
            except OSError:  # file system without hard links
                os.replace(tmp, final)
            else:
                tmp.unlink()
            return
        os.replace(tmp, final)  # refuses a non-empty directory that appeared meanwhile
        return
    if not overwrite:
        raise _exists_error(final, "appeared while it was being written")
    if not (tmp.is_dir() or (final.is_dir() and not final.is_symlink())):
        os.replace(tmp, final)  # file over file: atomic
        return
    # A directory cannot be renamed over a non-empty one: move the old output aside, move
    # the new one in, and only then delete the old one (put it back if the move fails).
    old = _sibling(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


# Computing the blocks of a write ----------------------------------------------------------


def _compute_on_own_pool(
    collection: Any, *also: Any, thread_prefix: str = "rastermatch-write"
) -> tuple[Any, ...]:
    """Compute ``collection``; on an error or interrupt return only once no block runs.

    dask's threaded scheduler returns to the caller on the first exception (or Ctrl-C) while
    its worker threads go on running the blocks they started, which would then write into a
    temporary being removed (zarr recreates directories; GDAL's handle would be closed under
    a writing thread). The write therefore runs on a pool it owns and shuts it down, waiting
    for the running blocks and cancelling the queued ones, before anything is cleaned up.
    Other local schedulers (synchronous, a custom callable) run in this thread and are used
    as they are.
    """
    scheduler = dask.base.get_scheduler(collections=[collection])
    if scheduler is not dask.threaded.get:
        return dask.compute(collection, *also)[1:]
    configured = dask.config.get("pool", None)
    workers = (
        dask.config.get("num_workers", None)
        or getattr(configured, "_max_workers", None)
        or dask.system.CPU_COUNT
    )
    executor = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
    pool = executor(int(workers), thread_name_prefix=thread_prefix)
    try:
        return dask.compute(collection, *also, scheduler="threads", pool=pool)[1:]
    finally:
        _shutdown_despite_interrupts(pool)


def _shutdown_despite_interrupts(pool: ThreadPoolExecutor) -> None:
    interrupted = False
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def _compute_on_cluster(collection: Any, client: Any) -> None:
    """Compute ``collection`` on a distributed client; cancel it on an error or interrupt.

    A task already running on a worker cannot be stopped: after cancelling, wait (up to
    :data:`CANCEL_WAIT_SECONDS`) until none of the write's tasks runs any more, so that no
    worker writes a chunk into the temporary after it is removed.
    """
    future = client.compute(collection)
    try:
        future.result()
    except BaseException:
        keys = {str(key) for key in collection.__dask_graph__()}
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        interrupted = False
        while True:
            try:
                client.cancel([future], force=True)
                while time.monotonic() < deadline and _running_on_workers(client, keys):
                    time.sleep(0.1)
                break
            except KeyboardInterrupt:
                interrupted = True
            except Exception:  # the scheduler is gone: nothing runs for us any more
                break
        if interrupted:
            raise KeyboardInterrupt from None
        raise


def _running_on_workers(client: Any, keys: set[str]) -> bool:
    """Whether a worker still executes one of ``keys`` (the scheduler's view lags behind)."""

    def executing(dask_worker: Any) -> list[str]:
        state = dask_worker.state
        running = set(state.executing) | set(getattr(state, "long_running", ()))
        return [str(task.key) for task in running]

    return any(key in keys for found in client.run(executing).values() for key in found)


#: Longest wait, after an error or interrupt, for running distributed tasks to finish.
CANCEL_WAIT_SECONDS = 60


@contextlib.contextmanager
def _distributed_client() -> Iterator[Any]:
    """Yield the distributed client dask computes on here, or None for the local schedulers."""
    try:
        import distributed
    except ImportError:  # pragma: no cover - distributed is a dependency
        distributed = None  # type: ignore[assignment]
    on_worker = False
    if distributed is not None:
        try:
            distributed.get_worker()
            on_worker = True
        except ValueError:
            pass
    if on_worker:
        # Running inside a task on a worker (a delayed write computed on the cluster): leave
        # the worker's thread pool while waiting for the blocks, or a small cluster
        # deadlocks.
        with distributed.worker_client() as client:
            yield client
        return
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    yield owner if distributed is not None and isinstance(owner, distributed.Client) else None
