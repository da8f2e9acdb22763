"""Scale-out model: histogram-match a virtual scene of 10^10-10^12 pixels on a dask cluster.

The scene is never stored: every block is generated inside its task from its block index
(integer arithmetic on two small per-process tables, ~0.2 ns/px), so the run measures what
rastermatch and dask cost per pixel and per task, not a disk. Source and reference are two
such scenes (bands x y x x uint16, 12-bit values, a nodata corner), and the job is the public
API, in two passes as a match runs:

1. ``band_histograms`` of source and reference, computed together (one pass over both);
2. ``LUT.from_histograms`` on the client, then ``LUT.apply`` of the source, into a null sink:
   each block is reduced to a 64-bit position-weighted checksum of its bytes, summed modulo
   2**64, so nothing is written and the result still proves the output bytes (the checksum
   depends on every pixel's value and global position, not on the chunking or the scheduler).

Measured per pass, on a 2-process ``LocalCluster`` (1 thread each): tasks, the bytes of the
graph the client sends to the scheduler, the scheduler's CPU per task (its process, less what
it burns idle), the workers' compute CPU per pixel and their overhead per task (dask's per-task
metrics), the bytes the histogram reduction moves (every partial count array a task hands to
the next level of the tree, and what actually crossed between the two workers), and wall
time. From these constants it prints the model's prediction for 10^12 pixels on 1,000 cores
and, with ``--sizes``, a measured-against-predicted check at two sizes. ``--check`` runs a
small scene on local threads, on threads with another chunking and on the cluster, and
compares the LUT and output checksums.

Run::

    python pipelines/scale_out.py --pixels 1e10
    python pipelines/scale_out.py --sizes 1e10,1e11     # model from the first, checked on the 2nd
    python pipelines/scale_out.py --check --pixels 1e8  # identical bytes: threads vs cluster
    python pipelines/scale_out.py --pixels 1e10 --chunk 8192  # larger tasks: 1/4 of the tasks

``--json PATH`` writes every measurement. Times are those of the machine it runs on; the
per-pixel and per-task constants are CPU seconds, so they hold on a loaded machine better than
wall times do.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
from dask.array.core import normalize_chunks
from dask.base import collections_to_expr, tokenize

from rastermatch import LUT, band_histograms

BANDS = 4
CHUNK = 4096
NODATA = 0
#: Period (in pixels along x) of the generator's tables; a row is two slices of them.
PERIOD = 65_536
SEEDS = {"source": 20_261_130, "reference": 12_345}
#: Seconds of doing nothing over which the cluster's idle CPU rate is measured.
IDLE_SECONDS = 3.0

# -- the virtual scene ------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _tables(kind: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene's two generator tables, ``PERIOD + width`` long (a row of up to ``width``
    pixels is one slice of each): a triangle wave over x (period 65,536 pixels) and noise."""
    rng = np.random.default_rng(SEEDS[kind])
    noise = rng.integers(0, 512, PERIOD) + rng.integers(0, 512, PERIOD)  # triangular, 0..1022
    t = (np.arange(PERIOD) >> 4) & 4095
    wave = np.minimum(t, 4095 - t)  # 0..2047
    if kind == "reference":  # a narrower wave, wider noise: another distribution
        wave, noise = 400 + ((wave * 3) >> 2), noise * 2
    else:
        wave = 101 + wave
    wave = np.concatenate([wave, wave[:width]]).astype(np.uint16)
    noise = np.concatenate([noise, noise[:width]]).astype(np.uint16)
    return wave, noise


@numba.njit(nogil=True, cache=True, inline="always")
def _add_into(row, a, b):  # pragma: no cover - compiled
    for j in range(row.shape[0]):
        row[j] = a[j] + b[j]


@numba.njit(nogil=True, cache=True)
def _fill(out, b0, y0, x0, wave, noise, seed, edge):  # pragma: no cover - compiled
    """Pixels of the block at ``(b0, y0, x0)``: row ``y`` of band ``b`` is the wave from a
    phase set by ``y`` plus the noise from an offset hashed from ``(b, y)``, both indexed by
    the global ``x`` (so a pixel does not depend on the chunking); pixels with
    ``x + y < edge`` are nodata (a swath corner). A contiguous add per row: vectorized."""
    nb, ny, nx = out.shape
    for bi in range(nb):
        band = b0 + bi
        for i in range(ny):
            y = y0 + i
            h = (y * 0x9E3779B1 + band * 0x85EBCA77 + seed) & 0xFFFFFFFF
            h ^= h >> 15
            h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
            h ^= h >> 12
            o = (h + x0) & 0xFFFF
            s = ((((y >> 4) + band * 97) << 4) + x0) & 0xFFFF
            start = min(max(edge - y - x0, 0), nx)
            out[bi, i, :start] = 0
            _add_into(out[bi, i, start:], wave[s + start : s + nx], noise[o + start : o + nx])


def generate_block(
    block_id: tuple[int, ...] | None = None,
    *,
    kind: str,
    shape: tuple[int, int, int],
    chunk: tuple[int, int, int],
    edge: int,
) -> np.ndarray:
    """The block ``block_id`` of the virtual scene ``kind`` (a pure function of its index)."""
    assert block_id is not None
    origin = [i * c for i, c in zip(block_id, chunk, strict=True)]
    size = [min(c, n - o) for c, n, o in zip(chunk, shape, origin, strict=True)]
    out = np.empty(size, dtype=np.uint16)
    wave, noise = _tables(kind, chunk[2])
    _fill(out, origin[0], origin[1], origin[2], wave, noise, SEEDS[kind], edge)
    return out


def scene_shape(pixels: float, bands: int = BANDS) -> tuple[int, int, int]:
    """A square-ish ``(bands, y, x)`` of about ``pixels`` pixels."""
    side = max(math.isqrt(int(pixels) // bands), 1)
    return bands, side, max(int(pixels) // bands // side, 1)


def virtual_scene(shape: tuple[int, int, int], chunk: int, kind: str) -> da.Array:
    """A lazy uint16 scene whose ``(1, chunk, chunk)`` blocks are generated in their tasks."""
    chunks3 = (1, chunk, chunk)
    edge = min(shape[1], shape[2]) // 8
    return da.map_blocks(
        generate_block,
        chunks=normalize_chunks(chunks3, shape),
        dtype=np.uint16,
        meta=np.empty((0, 0, 0), np.uint16),
        name=f"scene-{kind}-{tokenize(shape, chunk, SEEDS[kind])}",
        kind=kind,
        shape=shape,
        chunk=chunks3,
        edge=edge,
    )


# -- the null sink: a checksum of the output bytes --------------------------------------------


@functools.lru_cache(maxsize=1)
def _weights() -> np.ndarray:
    """Odd weights for ``x mod 65536``, twice over (a row of up to 65,536 px is one slice)."""
    w = np.random.default_rng(7).integers(1, 2**32, PERIOD, dtype=np.uint64) | np.uint64(1)
    return np.concatenate([w, w])


@numba.njit(nogil=True, cache=True, inline="always")
def _dot(row, w):  # pragma: no cover - compiled
    acc = np.uint64(0)
    for j in range(row.shape[0]):
        acc += np.uint64(row[j]) * w[j]
    return acc


@numba.njit(nogil=True, cache=True)
def _checksum(block, b0, y0, x0, height, weights):  # pragma: no cover - compiled
    """sum over rows of (sum_j v[j] * w[x mod 65536]) * mix(global row), modulo 2**64."""
    nb, ny, nx = block.shape
    s = x0 & 0xFFFF
    total = np.uint64(0)
    for bi in range(nb):
        for i in range(ny):
            acc = _dot(block[bi, i], weights[s : s + nx])
            g = np.uint64((b0 + bi) * height + y0 + i)
            r = (g * np.uint64(0x9E3779B97F4A7C15)) ^ (g >> np.uint64(29))
            total += acc * (r | np.uint64(1))
    return total


def checksum_block(
    block: np.ndarray, block_id: tuple[int, ...] | None = None, *, chunk: tuple, height: int
) -> np.ndarray:
    """One block's checksum, ``(1, 1, 1)`` uint64 (its position from ``block_id``)."""
    assert block_id is not None
    o = [i * c for i, c in zip(block_id, chunk, strict=True)]
    # rows longer than a table period would wrap the weights: take them period by period
    total = 0
    for x in range(0, block.shape[2], PERIOD):
        part = np.ascontiguousarray(block[:, :, x : x + PERIOD])
        total = (total + int(_checksum(part, o[0], o[1], o[2] + x, height, _weights()))) % 2**64
    return np.full((1, 1, 1), total, dtype=np.uint64)


def output_checksum(out: da.Array, split_every: int | None = None) -> da.Array:
    """The scene's checksum (a 0-d uint64 dask array): per block, summed modulo 2**64, so it
    does not depend on the chunking."""
    chunk = tuple(c[0] for c in out.chunks)
    per_block = da.map_blocks(
        checksum_block,
        out,
        chunks=tuple((1,) * n for n in out.numblocks),
        dtype=np.uint64,
        meta=np.empty((0, 0, 0), np.uint64),
        name=f"checksum-{tokenize(out)}",
        chunk=chunk,
        height=out.shape[1],
    )
    return per_block.sum(dtype=np.uint64, split_every=split_every)


def lut_digest(lut: LUT, *hists: Any) -> str:
    """sha256 of the LUT's table and the histograms' counts (16 hex digits)."""
    h = hashlib.sha256(np.ascontiguousarray(lut.table).tobytes())
    for hist in hists:
        h.update(np.ascontiguousarray(hist.counts).tobytes())
    return h.hexdigest()[:16]


# -- the job, in two passes -------------------------------------------------------------------


@dataclass
class Job:
    pixels: int  # of the source (the reference is as large)
    shape: tuple[int, int, int]
    chunk: int
    lut_digest: str = ""
    checksum: str = ""
    fit_s: float = 0.0
    lut_bytes: int = 0  # the LUT's table: what reaches each worker once


def histograms(shape: tuple[int, int, int], chunk: int) -> tuple[Any, Any]:
    """The lazy histograms of source and reference (pass 1)."""
    src = virtual_scene(shape, chunk, "source")
    ref = virtual_scene(shape, chunk, "reference")
    return band_histograms(src, nodata=NODATA), band_histograms(ref, nodata=NODATA)


def matched_checksum(lut: LUT, shape: tuple[int, int, int], chunk: int) -> da.Array:
    """The lazy checksum of the matched source (pass 2)."""
    return output_checksum(lut.apply(virtual_scene(shape, chunk, "source")))


def run_job(
    shape: tuple[int, int, int],
    chunk: int,
    compute: Callable[..., tuple[Any, ...]] | None = None,
) -> Job:
    """Both passes, each through ``compute`` (``dask.compute`` or a measuring wrapper)."""
    compute = compute or local_compute
    job = Job(pixels=math.prod(shape), shape=shape, chunk=chunk)
    hs, hr = compute(*histograms(shape, chunk), phase="histograms")
    t = time.perf_counter()
    lut = LUT.from_histograms(hs, hr)
    job.fit_s = time.perf_counter() - t
    job.lut_digest = lut_digest(lut, hs, hr)
    job.lut_bytes = int(lut.table.nbytes)
    (total,) = compute(matched_checksum(lut, shape, chunk), phase="match")
    job.checksum = f"{int(total):016x}"
    return job


# -- measuring on a cluster -------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    pixels: int  # pixels generated and processed in the pass
    wall_s: float
    tasks: int  # in the optimized graph
    graph_bytes: int
    client_cpu_s: float  # the calling thread: building, materializing, pickling the graph
    scheduler_cpu_s: float  # the scheduler's process (less the client thread), less its idle rate
    compute_cpu_s: float  # workers' thread CPU inside tasks
    compute_wall_s: float  # workers' wall time inside tasks (includes waiting for a core)
    worker_cpu_s: float  # workers' whole processes, less their idle rate
    reduction_bytes: int  # outputs of every task but the final ones: what the tree moves
    block_result_bytes: int  # the median task output size (one block's counts)
    transfer_bytes: int  # bytes that actually crossed between the workers
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before / after
    executed: int = 0  # tasks the workers ran (the task stream)
    task_bytes: int = 0  # one task as the scheduler sends it to a worker (median, pickled)
    scheduler_raw_s: float = 0.0  # the scheduler's process, idle rate included (an upper bound)

    @property
    def ns_per_px(self) -> float:
        return self.compute_cpu_s / self.pixels * 1e9

    @property
    def overhead_per_task_s(self) -> float:
        """Worker CPU outside the tasks, per task (event loop, serialization, bookkeeping)."""
        return max(self.worker_cpu_s - self.compute_cpu_s, 0.0) / self.tasks


def _scheduler_process_cpu(dask_scheduler: Any = None) -> float:
    """CPU seconds of the process the scheduler runs in (a LocalCluster's scheduler shares the
    client's process: its event loop, the threads it offloads graph unpacking to, and the
    client's comms; the calling thread, which only waits, adds its graph building)."""
    return time.process_time()


def _worker_counters(dask_worker: Any = None) -> dict[str, float]:
    cpu = wall = 0.0
    for key, value in getattr(dask_worker, "digests_total", {}).items():
        if isinstance(key, tuple) and key[0] == "execute" and key[-1] == "seconds":
            if key[-2] == "thread-cpu":
                cpu += value
            elif key[-2] == "thread-noncpu":
                wall += value
    return {
        "process_cpu": time.process_time(),
        "thread_cpu": cpu,
        "thread_wall": cpu + wall,
        "out_bytes": float(getattr(dask_worker, "transfer_outgoing_bytes_total", 0)),
    }


def count_tasks(*collections: Any) -> int:
    """Tasks in the optimized graph of ``collections``, as ``dask.compute`` would run it."""
    return len(_graph(collections))


def _graph(collections: Any) -> Mapping[Any, Any]:
    return collections_to_expr(list(collections), optimize_graph=True).optimize().__dask_graph__()


def task_bytes(graph: Mapping[Any, Any], sample: int = 64) -> int:
    """The median pickled size of one task of ``graph`` (of up to ``sample`` of them): what the
    scheduler serializes for each task it sends to a worker. A whole graph pickles shared
    arguments once; a task sent on its own carries its literal arguments every time."""
    tasks = list(graph.values())
    step = max(len(tasks) // sample, 1)
    return int(statistics.median(len(pickle.dumps(t, protocol=5)) for t in tasks[::step]))


class ClusterMeter:
    """``compute`` for :func:`run_job` that measures each pass on ``client``."""

    def __init__(self, client: Any, pixels: int) -> None:
        self.client = client
        self.pixels = pixels
        self.phases: list[Phase] = []
        self._sent: list[int] = []
        # the graph's bytes as the client sends them (a private hook of distributed: without
        # it, or with another message layout, graph bytes read 0)
        send = getattr(client, "_send_to_scheduler", None)

        def recording_send(msg: dict[str, Any]) -> Any:
            ser = msg.get("expr_ser") if msg.get("op") == "update-graph" else None
            if ser is not None and hasattr(ser, "frames"):
                self._sent.append(sum(_nbytes(f) for f in [ser.header, *ser.frames]))
            return send(msg)

        if send is not None:
            client._send_to_scheduler = recording_send
        # what scheduler and workers burn per second with nothing to do (heartbeats, the
        # profiler, monitors): subtracted from a pass's CPU, so that what is left is per task
        c0, s0 = self._counters(), client.run_on_scheduler(_scheduler_process_cpu)
        t0 = time.perf_counter()
        time.sleep(IDLE_SECONDS)
        c1, s1 = self._counters(), client.run_on_scheduler(_scheduler_process_cpu)
        dt = time.perf_counter() - t0
        self.idle_scheduler = (s1 - s0) / dt
        self.idle_workers = (c1["process_cpu"] - c0["process_cpu"]) / dt

    def _counters(self) -> dict[str, float]:
        per_worker = self.client.run(_worker_counters)
        return {k: sum(w[k] for w in per_worker.values()) for k in next(iter(per_worker.values()))}

    def __call__(self, *collections: Any, phase: str) -> tuple[Any, ...]:
        from distributed import get_task_stream

        graph = _graph(collections)
        graph_tasks, one_task = len(graph), task_bytes(graph)
        del graph

        load0 = os.getloadavg()[0]
        before = self._counters()
        sched0 = self.client.run_on_scheduler(_scheduler_process_cpu)
        self._sent.clear()
        cpu0, t0 = time.thread_time(), time.perf_counter()
        with get_task_stream(self.client) as stream:
            futures = self.client.compute(list(collections))
            client_cpu = time.thread_time() - cpu0
            results = self.client.gather(futures)
        wall = time.perf_counter() - t0
        sched = self.client.run_on_scheduler(_scheduler_process_cpu) - sched0 - client_cpu
        after = self._counters()
        records = stream.data
        sizes = [int(r.get("nbytes", 0)) for r in records]
        final = {_key_name(f.key) for f in futures}
        reduction = sum(
            s for r, s in zip(records, sizes, strict=True) if _key_name(r["key"]) not in final
        )
        moved = [s for r, s in zip(records, sizes, strict=True) if _key_name(r["key"]) not in final]
        pixels = self.pixels * (2 if phase == "histograms" else 1)
        self.phases.append(
            Phase(
                name=phase,
                pixels=pixels,
                wall_s=wall,
                tasks=graph_tasks,
                executed=len(records),
                task_bytes=one_task,
                graph_bytes=sum(self._sent),
                client_cpu_s=client_cpu,
                scheduler_cpu_s=max(sched - self.idle_scheduler * wall, 0.0),
                scheduler_raw_s=sched,
                compute_cpu_s=after["thread_cpu"] - before["thread_cpu"],
                compute_wall_s=after["thread_wall"] - before["thread_wall"],
                worker_cpu_s=max(
                    after["process_cpu"] - before["process_cpu"] - self.idle_workers * wall, 0.0
                ),
                reduction_bytes=reduction if phase == "histograms" else 0,
                block_result_bytes=statistics.median_low(moved) if moved else 0,
                transfer_bytes=int(after["out_bytes"] - before["out_bytes"]),
                load=(load0, os.getloadavg()[0]),
            )
        )
        return tuple(results)


def _nbytes(frame: Any) -> int:
    if isinstance(frame, dict):  # the header
        return len(json.dumps(frame, default=str))
    return memoryview(frame).nbytes


def _key_name(key: Any) -> str:
    return key[0] if isinstance(key, tuple) else str(key)


def cluster_job(shape: tuple[int, int, int], chunk: int, workers: int = 2) -> tuple[Job, list]:
    """Run the job on a fresh ``workers``-process LocalCluster (1 thread each), measured."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm_up)  # compile/load the kernels outside the measured passes
        meter = ClusterMeter(client, math.prod(shape))
        job = run_job(shape, chunk, meter)
    return job, meter.phases


def _warm_up(dask_worker: Any = None) -> None:
    shape = (2, 64, 64)
    job = run_job(shape, 32, functools.partial(local_compute, scheduler="sync"))
    assert job.checksum


# -- the model --------------------------------------------------------------------------------


@dataclass
class Model:
    """Constants measured at one size, and what they predict at another.

    Per pass p (histograms: source and reference, 2P pixels; match: P pixels)::

        T = F + sum_p [ W_p c_p / C  +  N_p o / C  +  N_p s  +  R_p / B ]

    W_p pixels, c_p compute CPU seconds per pixel (generation included: a real job reads and
    decodes instead), N_p tasks (P / chunk**2 blocks plus the reduction tree), o worker
    overhead CPU per task, s scheduler CPU per task (one scheduler: this term does not shrink
    with C), plus (sum_p N_p t_p + L) / B_s for the tasks the scheduler serializes to the
    workers (t_p one task's pickled size; B_s the scheduler's link; the LUT's L bytes are keys
    of the graph, sent once, and reach each worker once: C L / B), R bytes the histogram tree
    moves (R_0 + N_hist b: b one block's counts, R_0 the last merges of each row, which do not
    grow with P), B the
    bandwidth those transfers share, F the LUT fit (constant). Start-up and the read/write of
    real data are not in it.
    """

    pixels: int
    cores: int
    c: dict[str, float] = field(default_factory=dict)  # s/px
    tasks_per_px: dict[str, float] = field(default_factory=dict)
    overhead_s: float = 0.0  # o
    scheduler_s: float = 0.0  # s
    reduction_bytes_per_task: float = 0.0  # one block's counts, a partial merge about as large
    reduction_fixed_bytes: float = 0.0  # the rest: the last merges (full tables per row)
    block_result_bytes: int = 0
    fixed_s: float = 0.0
    graph_bytes_per_task: float = 0.0
    task_bytes: dict[str, float] = field(default_factory=dict)
    lut_bytes: int = 0  # sent once, fetched once by each worker (a core, at worst)

    @classmethod
    def from_phases(
        cls, pixels: int, phases: list[Phase], fit_s: float, cores: int, lut_bytes: int = 0
    ) -> Model:
        tasks = sum(p.tasks for p in phases)
        hist = next(p for p in phases if p.name == "histograms")
        return cls(
            pixels=pixels,
            cores=cores,
            c={p.name: p.compute_cpu_s / p.pixels for p in phases},
            tasks_per_px={p.name: p.tasks / pixels for p in phases},
            overhead_s=max(sum(p.worker_cpu_s - p.compute_cpu_s for p in phases), 0.0) / tasks,
            scheduler_s=sum(p.scheduler_cpu_s + p.client_cpu_s for p in phases) / tasks,
            reduction_bytes_per_task=hist.block_result_bytes,
            reduction_fixed_bytes=max(
                hist.reduction_bytes - hist.block_result_bytes * hist.tasks, 0
            ),
            block_result_bytes=max(p.block_result_bytes for p in phases),
            fixed_s=fit_s,
            lut_bytes=lut_bytes,
            graph_bytes_per_task=sum(p.graph_bytes for p in phases) / tasks,
            task_bytes={p.name: p.task_bytes for p in phases},
        )

    def reduction_bytes(self, pixels: float) -> float:
        """Bytes the histogram tree moves: a block's counts per histogram task, plus a part
        that does not grow with the pixels (the last merge of each row)."""
        tasks = pixels * self.tasks_per_px["histograms"]
        return self.reduction_fixed_bytes + tasks * self.reduction_bytes_per_task

    def terms(
        self, pixels: float, cores: int, bandwidth: float, scheduler_bandwidth: float = 1.25e9
    ) -> dict[str, float]:
        """The model's terms in seconds for ``pixels`` (source) on ``cores`` dedicated cores,
        the histogram tree's transfers sharing ``bandwidth`` bytes/s and the scheduler sending
        tasks through ``scheduler_bandwidth`` bytes/s (one 10 Gbit/s link)."""
        work = pixels * (2 * self.c["histograms"] + self.c["match"])
        tasks = pixels * sum(self.tasks_per_px.values())
        sent = sum(pixels * n * self.task_bytes.get(p, 0) for p, n in self.tasks_per_px.items())
        return {
            "scheduler sends": (sent + self.lut_bytes) / scheduler_bandwidth,
            "LUT to workers": self.lut_bytes * cores / bandwidth,
            "compute": work / cores,
            "worker overhead": tasks * self.overhead_s / cores,
            "scheduler": tasks * self.scheduler_s,
            "reduction traffic": self.reduction_bytes(pixels) / bandwidth,
            "fixed (LUT fit)": self.fixed_s,
        }


# -- reporting --------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def phase_table(phases: list[Phase]) -> str:
    rows = [
        ("pixels processed", lambda p: f"{p.pixels:.3g}"),
        ("wall", lambda p: f"{p.wall_s:.2f} s"),
        ("tasks (graph / run)", lambda p: f"{p.tasks:,} / {p.executed:,}"),
        ("graph sent", lambda p: f"{_fmt_bytes(p.graph_bytes)}"),
        ("graph / task", lambda p: f"{p.graph_bytes / p.tasks:.0f} B"),
        ("one task sent alone", lambda p: _fmt_bytes(p.task_bytes)),
        ("scheduler CPU / task", lambda p: f"{p.scheduler_cpu_s / p.tasks * 1e6:.0f} us"),
        ("  idle rate included", lambda p: f"{p.scheduler_raw_s / p.tasks * 1e6:.0f} us"),
        ("client CPU / task", lambda p: f"{p.client_cpu_s / p.tasks * 1e6:.0f} us"),
        ("worker overhead / task", lambda p: f"{p.overhead_per_task_s * 1e6:.0f} us"),
        ("compute CPU / px", lambda p: f"{p.ns_per_px:.3f} ns"),
        ("compute wall / CPU", lambda p: f"{p.compute_wall_s / max(p.compute_cpu_s, 1e-9):.2f}"),
        ("wall x cores / px", lambda p: f"{p.wall_s * 2 / p.pixels * 1e9:.3f} ns"),
        ("throughput / core", lambda p: f"{p.pixels / p.wall_s / 2 / 1e6:.0f} Mpx/s"),
        ("one task's result", lambda p: _fmt_bytes(p.block_result_bytes)),
        ("reduction bytes", lambda p: _fmt_bytes(p.reduction_bytes)),
        ("moved between workers", lambda p: _fmt_bytes(p.transfer_bytes)),
        ("load avg (before, after)", lambda p: f"{p.load[0]:.1f}, {p.load[1]:.1f}"),
    ]
    head = f"{'':26}" + "".join(f"{p.name:>18}" for p in phases)
    lines = [head]
    for label, fn in rows:
        lines.append(f"{label:26}" + "".join(f"{fn(p):>18}" for p in phases))
    return "\n".join(lines)


def prediction_text(model: Model, pixels: float, cores: int, bandwidth: float) -> str:
    terms = model.terms(pixels, cores, bandwidth)
    total = sum(terms.values())
    tasks = pixels * sum(model.tasks_per_px.values())
    lines = [
        f"Prediction for {pixels:.0e} px (and as many reference px) on {cores:,} cores, "
        f"{tasks:,.0f} tasks, reduction traffic over {bandwidth / 1e9:.2f} GB/s:"
    ]
    lines += [f"  {name:20} {value:10.1f} s" for name, value in terms.items()]
    lines.append(f"  {'total':20} {total:10.1f} s = {total / 60:.1f} min")
    return "\n".join(lines)


# -- identical results ------------------------------------------------------------------------


def check_identical(shape: tuple[int, int, int], chunk: int) -> list[tuple[str, Job]]:
    """The job on local threads, on threads with half the chunk, and on the cluster."""
    runs = []
    for label, c in (("threads", chunk), (f"threads, chunk {chunk // 2}", chunk // 2)):
        job = run_job(shape, c, functools.partial(local_compute, scheduler="threads"))
        runs.append((label, job))
    job, _ = cluster_job(shape, chunk)
    runs.append(("2-process LocalCluster", job))
    return runs


def local_compute(*collections: Any, phase: str, scheduler: str = "threads") -> tuple[Any, ...]:
    """``dask.compute`` on a local scheduler (``phase`` names the pass, unused here)."""
    return dask.compute(*collections, scheduler=scheduler)


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixels", type=float, default=1e10, help="source pixels (default 1e10)")
    p.add_argument("--sizes", help="two sizes, 'P1,P2': model from P1, checked on P2")
    p.add_argument("--chunk", type=int, default=CHUNK, help="block edge (default 4096)")
    p.add_argument("--split-every", type=int, help="dask's reduction fan-in (default dask's)")
    p.add_argument("--check", action="store_true", help="identical bytes: threads vs cluster")
    p.add_argument("--target-pixels", type=float, default=1e12)
    p.add_argument("--target-cores", type=int, default=1000)
    p.add_argument(
        "--bandwidth", type=float, default=10e9,
        help="bytes/s the reduction's transfers share at the target (default 10 GB/s)",
    )  # fmt: skip
    p.add_argument("--json", help="write the measurements here")
    return p.parse_args(argv)


#: Refused above these: a block is held whole by its task (the chunk's uint16 bytes), and the
#: graph of a pass is built on this machine before it runs.
MAX_CHUNK = 16_384
MAX_BLOCKS = 1_000_000


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, saying how to fix it; None when nothing is."""
    try:
        sizes = [float(s) for s in args.sizes.split(",")] if args.sizes else [args.pixels]
    except ValueError:
        return f"--sizes {args.sizes!r}: give two pixel counts, e.g. --sizes 1e9,1e10"
    if args.sizes and len(sizes) != 2:
        return f"--sizes {args.sizes!r}: give exactly two pixel counts, e.g. --sizes 1e9,1e10"
    if not 2 <= args.chunk <= MAX_CHUNK:
        return f"--chunk {args.chunk}: give a block edge from 2 to {MAX_CHUNK} pixels"
    if args.split_every is not None and args.split_every < 2:
        return f"--split-every {args.split_every}: give 2 or more"
    for pixels in sizes:
        if not (math.isfinite(pixels) and pixels >= BANDS):
            return f"pixels {pixels:g}: give at least {BANDS} (one per band)"
        _, ny, nx = scene_shape(pixels)
        blocks = BANDS * math.ceil(ny / args.chunk) * math.ceil(nx / args.chunk)
        if blocks > MAX_BLOCKS:
            return (
                f"{pixels:g} px in {args.chunk}-pixel blocks is {blocks:,} blocks a scene, more "
                f"than {MAX_BLOCKS:,} to build a graph of here; give a larger --chunk"
            )
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        return f"--json {args.json}: its folder does not exist"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"scale_out.py: {problem}", file=sys.stderr)
        return 2
    if args.split_every:
        dask.config.set(split_every=args.split_every)
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
        "(shared with other work: wall times are noisy, CPU constants less so)"
    )
    report: dict[str, Any] = {"args": vars(args), "code": code_version()}
    print(f"rastermatch: {report['code']}")
    if args.check:
        shape = scene_shape(args.pixels)
        print(f"identical results, scene {shape} ({math.prod(shape):.3g} px), chunk {args.chunk}")
        runs = check_identical(shape, args.chunk)
        for label, job in runs:
            print(f"  {label:28} LUT {job.lut_digest}  output checksum {job.checksum}")
        same = len({(j.lut_digest, j.checksum) for _, j in runs}) == 1
        print("  identical" if same else "  DIFFERENT")
        report["check"] = [(label, asdict(job)) for label, job in runs]
        _write_json(args.json, report)
        return 0 if same else 1

    sizes = [float(s) for s in args.sizes.split(",")] if args.sizes else [args.pixels]
    measured = []
    for pixels in sizes:
        shape = scene_shape(pixels)
        fan_in = dask.config.get("split_every", None) or "default"
        print(f"\nscene {shape} x 2 (source, reference): {math.prod(shape):.3g} px each, chunk "
              f"{args.chunk}, split_every {fan_in}")  # fmt: skip
        t = time.perf_counter()
        job, phases = cluster_job(shape, args.chunk)
        with_start = time.perf_counter() - t
        wall = sum(p.wall_s for p in phases) + job.fit_s
        print(phase_table(phases))
        print(f"LUT fit {job.fit_s:.3f} s; LUT {job.lut_digest}; output checksum {job.checksum}")
        print(f"job wall {wall:.1f} s (both passes and the fit; {with_start:.1f} s with start-up)")
        model = Model.from_phases(job.pixels, phases, job.fit_s, cores=2, lut_bytes=job.lut_bytes)
        measured.append((model, phases, job))
        report.setdefault("runs", []).append(
            {"job": asdict(job), "phases": [asdict(p) for p in phases], "model": asdict(model)}
        )
        print(prediction_text(model, args.target_pixels, args.target_cores, args.bandwidth))
    if len(measured) == 2:
        report["scaling"] = scaling_check(*measured)
    _write_json(args.json, report)
    return 0


def scaling_check(first: tuple, second: tuple) -> dict[str, float]:
    """Print and return the second size's tasks, CPU, wall and reduction bytes predicted from the
    first size's constants, against what was measured."""
    (m1, ph1, j1), (_, ph2, j2) = first, second
    tasks2 = sum(p.tasks for p in ph2)  # exact: the graph is built before it runs
    w1 = sum(p.wall_s for p in ph1)
    cpu1, cpu2 = (
        sum(p.worker_cpu_s + p.scheduler_cpu_s + p.client_cpu_s for p in ph) for ph in (ph1, ph2)
    )
    got = cpu1 / w1  # the cores the first run got on a shared machine: CPU it used over its wall
    work2 = j2.pixels * (2 * m1.c["histograms"] + m1.c["match"])
    pred_cpu = work2 + tasks2 * (m1.overhead_s + m1.scheduler_s)
    rows = {
        "tasks": (j2.pixels * sum(m1.tasks_per_px.values()), tasks2),
        "CPU seconds": (pred_cpu, cpu2),
        "wall seconds": (m1.fixed_s + pred_cpu / got, sum(p.wall_s for p in ph2) + j2.fit_s),
        "reduction bytes": (m1.reduction_bytes(j2.pixels), ph2[0].reduction_bytes),
    }
    print(f"\nscaling {j1.pixels:.3g} -> {j2.pixels:.3g} px (x{j2.pixels / j1.pixels:.2f}), "
          f"from the first size's constants and the {got:.2f} cores it got:")  # fmt: skip
    print(f"  {'':18}{'predicted':>12}{'measured':>12}{'ratio':>8}")
    for label, (pred, meas) in rows.items():
        print(f"  {label:18}{pred:>12.4g}{meas:>12.4g}{meas / pred if pred else 0:>8.2f}")
    return {f"{k} {w}": v[i] for k, v in rows.items() for i, w in enumerate(("pred", "meas"))}


def code_version() -> str:
    """Where rastermatch is imported from, its commit, and whether the dask counting path has
    compact per-block counts; uncommitted changes to the package are flagged."""
    import subprocess

    import rastermatch
    import rastermatch.histogram as histogram

    where = os.path.dirname(os.path.dirname(rastermatch.__file__))
    compact = "compact per-block counts" if hasattr(histogram, "compact_counts") else "dense counts"
    try:
        commit = subprocess.run(
            ["git", "-C", where, "log", "-1", "--format=%h"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "rastermatch"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "no git", ""
    return f"{where} at {commit}{' + uncommitted changes' if dirty else ''}, {compact}"


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    # run as the module ``scale_out`` (this file's folder is on sys.path, and the worker
    # processes import it from there), so the block functions pickle by reference
    import scale_out

    sys.exit(scale_out.main())
