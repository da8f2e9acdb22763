#!/usr/bin/env python
"""Benchmark rastermatch against its peers and I/O floors, side by side in one process run.

Stages (``--stages``, all by default):

1. in memory: ``rastermatch.match_histograms(src, ref, nodata=0, reference_nodata=0)`` on numpy
   arrays vs ``skimage.exposure.match_histograms`` band by band (``channel_axis=None`` per band,
   the float64 result stored into a uint16 output, as scikit-image's own ``channel_axis`` path
   does);
2. the histogram kernel: ``rastermatch.band_histograms`` on one numpy band (one thread) and on
   the dask-chunked scene (threaded scheduler) vs the memory-read floor ``x.max()``;
3. Zarr -> Zarr: ``rastermatch.pipeline.match_files`` vs the two-pass I/O floor (read source and
   reference once, then copy the source with ``rastermatch.write_raster``);
4. GeoTIFF -> GeoTIFF: the same, plus rioxarray's ``to_raster`` writing the matched result;
5. peak RSS of Zarr -> Zarr and GeoTIFF -> GeoTIFF jobs in a child process (its VmHWM), for
   two scene sizes (``--memory-sizes``; 16x the pixels between them); run last, because its
   large scene evicts the other inputs from the page cache;
6. threaded scheduler vs a 2-process ``distributed.LocalCluster`` for Zarr -> Zarr, with the
   outputs compared pixel for pixel;
7. a time stack (``--dates`` x bands x ``--stack-size``², Zarr) normalized to one reference:
   ``match_histograms(stack, reference)`` + ``write_raster`` vs the two-pass I/O floor of the
   stack (read every date and the reference once, then copy the stack with ``write_raster``)
   and vs a loop of one ``match_histograms`` + ``write_raster`` per date (each reads the
   reference again), the outputs compared pixel for pixel; then the peak RSS of the stack job
   in a child process for T = 3 and 12 dates (``--memory-dates``). At its default size the
   stage took 17 min on 2 cores shared with other work (load average ~18), its inputs
   ~2.5 min to generate; ``--stack-size 1024`` checks it in a few minutes;
8. detector balancing: ``rastermatch.pipeline.destripe_file`` on the stage-3 source seen
   through 16 detectors along y, and through one detector per column (each (band, detector)
   with its own gain, offset and gamma; generated once from the stored source), vs
   ``match_files`` of the same striped scene to the stage-3 reference (Zarr -> Zarr, threads):
   time ratio (target <= 1.3x) and the peak RSS of each job in a child process (target
   < 1.5 GB). ``--stages 8 --repeats 1`` runs it alone, ``--destripe-layouts y16`` without the
   push-broom case. Measured once at 8192² on 2 shared cores: 16 detectors along y 40.2 s vs
   22.9 s for the match (35.0 vs 24.7 s in child processes, peak 493 vs 481 MiB); one
   detector per column 603 s vs 45 s, over 4 GB.
9. optimal LUTs; 10. exact specification (see their functions);
11. small in-memory images (issue #12): ``match_histograms(channel_axis=-1)`` on uint8
    256x256x3, 400x400x3, 512x512x3 and float32 101x100x13 pairs vs scikit-image's, 31 calls
    each interleaved, and the first call in a fresh process (kernels compiled or cached);
    ``--stages 11`` runs it alone in a minute, without inputs;
12. the in-memory path on large numpy scenes: ``--bands`` x ``--size``² uint16 with
    ``--threads`` threads and with one vs scikit-image per band (a plain 12-bit scene, and the
    stage-1 scene with its nodata border when stage 3 does not run in between);
13. compact counts: ``band_histograms`` of the stage-1 scene as dask chunks of 1024², 2048² and
    4096² (contiguous blocks, as decoded from Zarr; ``--threads`` threads) vs the dense
    per-block counts it replaced, ns/px per core (wall x threads; and process CPU time) and
    the 1024²/4096² time ratio, with dask's Profiler split of task time and serial gaps;
14. throughput: Zarr -> Zarr ``match_files`` vs the two-pass floor, MPx/s per core and the
    ratio, with the same split (where the time that is neither I/O nor kernels goes).

Every ratio compares two things measured in the same run, repeats interleaved (A B, B A, ...) so
that drift hits both alike; times are medians after an untimed warm-up. These are
measurements, not tests: a missed target is reported, never raised.

Uses only the public API (``rastermatch``, ``rastermatch.pipeline``, ``rastermatch.io``) and the
peers. Inputs are generated once into ``--workdir`` and reused. The full run (~8 min on 2
cores once the inputs exist, half of it rioxarray's ``to_raster`` in stage 4; generating the
inputs adds ~3 min)::

    python pipelines/benchmark.py --size 8192 --memory-sizes 4096,16384
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
import xarray as xr

import rastermatch
import rastermatch.io
import rastermatch.pipeline
from rastermatch.pipeline import local_cluster, match_files

_START_ENVIRON = dict(os.environ)
GENERATOR_VERSION = 1  # bump when the synthetic scenes change: cached inputs are regenerated
SEED = 20_240_601
REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
GB = 1e9


# -- synthetic scenes -------------------------------------------------------------------------
#
# A scene is a smooth field (a few long-wavelength sinusoids, every one of them separable into a
# row vector times a column vector, so a block costs a few outer products) plus Gaussian noise,
# 12-bit values in uint16, and a nodata border of zeros around a slanted footprint, as in an
# orthorectified swath. The reference is another field mapped through a gamma curve (skewed to
# the dark end) with its own footprint: a differently distributed scene. Every block depends
# only on its position and the seed, so a scene can be made block by block, in any order.


def _phases(role: int, band: int) -> np.ndarray:
    return np.random.default_rng([SEED, role, band]).uniform(0.0, 1.0, 4)


def _field(role: int, band: int, y0: int, y1: int, x0: int, x1: int, size: int) -> np.ndarray:
    """The smooth field in about [0, 1], float32, ``(y1 - y0, x1 - x0)``."""
    ph = _phases(role, band)
    u = (np.arange(x0, x1, dtype=np.float64) + 0.5) / size
    v = (np.arange(y0, y1, dtype=np.float64) + 0.5) / size
    tau = 2.0 * np.pi

    def outer(col: np.ndarray, row: np.ndarray, weight: float, out: np.ndarray | None) -> Any:
        col32 = (weight * col).astype(np.float32)
        row32 = row.astype(np.float32)
        if out is None:
            return np.multiply.outer(col32, row32)
        out += np.multiply.outer(col32, row32)
        return out

    # 0.5 + 0.22 cos(2pi(0.9v + p1)) sin(2pi(1.3u + p0))
    f = outer(np.cos(tau * (0.9 * v + ph[1])), np.sin(tau * (1.3 * u + ph[0])), 0.22, None)
    f += np.float32(0.5)
    # 0.15 sin(2pi(3.1(u + v) + p2)) = 0.15 (cos B sin A + sin B cos A)
    a, b = tau * (3.1 * u + ph[2]), tau * 3.1 * v
    outer(np.cos(b), np.sin(a), 0.15, f)
    outer(np.sin(b), np.cos(a), 0.15, f)
    # 0.08 cos(2pi(7.3u - 5.1v) + p3) = 0.08 (cos C cos D + sin C sin D)
    c, d = tau * (7.3 * u + ph[3]), tau * 5.1 * v
    outer(np.cos(d), np.cos(c), 0.08, f)
    outer(np.sin(d), np.sin(c), 0.08, f)
    return f


def _footprint(role: int, y0: int, y1: int, x0: int, x1: int, size: int) -> np.ndarray:
    """True inside the valid footprint (a slanted parallelogram), ``(y1 - y0, x1 - x0)``."""
    t = (np.arange(y0, y1, dtype=np.float64) + 0.5) / size
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    if role == 0:
        left, right, top, bottom = 0.03 + 0.07 * t, 0.90 + 0.07 * t, 0.02, 0.98
    else:
        left, right, top, bottom = 0.09 - 0.06 * t, 0.96 - 0.06 * t, 0.01, 0.97
    inside = (xs >= (left * size)[:, None]) & (xs < (right * size)[:, None])
    inside &= ((t >= top) & (t < bottom))[:, None]
    return inside


def synth_block(role: int, band: int, y0: int, y1: int, x0: int, x1: int, size: int) -> np.ndarray:
    """One band of one block of the source (role 0) or the reference (role 1), uint16."""
    f = _field(role, band, y0, y1, x0, x1, size)
    noise = np.random.default_rng([SEED, role, band, y0, x0]).standard_normal(
        f.shape, dtype=np.float32
    )
    if role == 0:  # source: linear, per-band gain and offset
        noise *= np.float32(0.04)
        f += noise
        f *= np.float32(2300 + 150 * band)
        f += np.float32(250 + 60 * band)
    else:  # reference: gamma-shaped, skewed to the dark end
        noise *= np.float32(0.05)
        f += noise
        np.clip(f, 0.0, 1.0, out=f)
        np.power(f, np.float32(1.6 + 0.25 * band), out=f)
        f *= np.float32(3900)
        f += np.float32(80)
    np.rint(f, out=f)
    np.clip(f, 1, 4095, out=f)
    out = f.astype(np.uint16)
    out[~_footprint(role, y0, y1, x0, x1, size)] = 0
    return out


def _synth_chunk(block: np.ndarray, block_info: Any = None, *, role: int, size: int) -> np.ndarray:
    (b0, b1), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    out = np.empty(block.shape, dtype=np.uint16)
    for b in range(b0, b1):
        out[b - b0] = synth_block(role, b, y0, y1, x0, x1, size)
    return out


def synth_scene(role: int, size: int, bands: int, chunk: int) -> xr.DataArray:
    """A lazy, georeferenced ``(band, y, x)`` scene, one task per ``1 x chunk x chunk`` block."""
    grid = da.zeros((bands, size, size), chunks=(1, chunk, chunk), dtype=np.uint8)
    data = grid.map_blocks(
        _synth_chunk, dtype=np.uint16, meta=np.empty((0, 0, 0), np.uint16), role=role, size=size
    )
    res = 10.0
    scene = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, bands + 1),
            "y": 5_000_000.0 - res * (np.arange(size) + 0.5),
            "x": 500_000.0 + res * (np.arange(size) + 0.5),
        },
        name="reflectance",
    )
    scene = scene.rio.write_crs("EPSG:32633")
    scene = scene.rio.write_transform()
    return scene.rio.write_nodata(0, encoded=False)


def scene_paths(workdir: Path, size: int, bands: int, chunk: int) -> dict[str, Path]:
    base = workdir / f"scene-{size}x{size}x{bands}-c{chunk}-v{GENERATOR_VERSION}"
    return {
        "dir": base,
        "src.zarr": base / "src.zarr",
        "ref.zarr": base / "ref.zarr",
        "src.tif": base / "src.tif",
        "ref.tif": base / "ref.tif",
        "manifest": base / "manifest.json",
    }


def ensure_scene(workdir: Path, size: int, bands: int, chunk: int, log: Callable) -> dict:
    """Generate the source and reference as Zarr and GeoTIFF once; reuse them afterwards.

    Zarr is written by ``write_raster`` (the codec and chunking rastermatch writes), block by
    block from the lazy generator; the GeoTIFF (tiled 512, ZSTD, horizontal predictor) is then
    copied from the Zarr store, so no step holds more than a few blocks in memory.
    """
    paths = scene_paths(workdir, size, bands, chunk)
    if paths["manifest"].exists():
        manifest = json.loads(paths["manifest"].read_text())
        log(f"  reusing {paths['dir']} (generated in {manifest['seconds']:.0f} s)")
        return paths | {"manifest_data": manifest}
    if paths["dir"].exists():
        shutil.rmtree(paths["dir"])
    paths["dir"].mkdir(parents=True)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        for role, name in ((0, "src"), (1, "ref")):
            t = time.perf_counter()
            rastermatch.write_raster(synth_scene(role, size, bands, chunk), paths[f"{name}.zarr"])
            t_zarr = time.perf_counter() - t
            t = time.perf_counter()
            rastermatch.write_raster(
                rastermatch.open_raster(paths[f"{name}.zarr"]), paths[f"{name}.tif"]
            )
            log(
                f"  generated {name}: zarr {t_zarr:.1f} s, tif {time.perf_counter() - t:.1f} s "
                f"({size}x{size}x{bands})"
            )
    manifest = {
        "size": size,
        "bands": bands,
        "chunk": chunk,
        "generator_version": GENERATOR_VERSION,
        "seconds": time.perf_counter() - t0,
        "bytes_on_disk": {k: _du(paths[k]) for k in ("src.zarr", "ref.zarr", "src.tif", "ref.tif")},
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=1))
    return paths | {"manifest_data": manifest}


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_numpy(path: Path) -> np.ndarray:
    """A stored scene as one numpy array, written block by block into a pre-touched output."""
    scene = rastermatch.open_raster(path)
    out = np.empty(scene.shape, dtype=scene.dtype)
    out.fill(0)
    da.store(scene.data, out, lock=False, scheduler="threads")
    return out


# -- measuring --------------------------------------------------------------------------------


class PeakRSS:
    """High-water mark of the RSS (this process, or this process and its children) while inside."""

    def __init__(
        self, tree: bool = False, interval: float = 0.02, pids: Sequence[int] = ()
    ) -> None:
        self.tree = tree
        self.pids = list(pids)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _rss(self) -> int:
        if self.pids:
            total = 0
            for pid in self.pids:
                with contextlib.suppress(psutil.Error):
                    total += psutil.Process(pid).memory_info().rss
            return total
        rss = self._proc.memory_info().rss
        if self.tree:
            for child in self._proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class Case:
    """One thing to time: ``fn()``, with an untimed ``setup()`` before every call."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], Any],
        setup: Callable[[], Any] | None = None,
        tree: bool = False,
    ) -> None:
        self.name, self.fn, self.setup, self.tree = name, fn, setup, tree
        self.pids: list[int] = []  # processes whose RSS is summed (default: this one)
        self.times: list[float] = []
        self.peaks: list[int] = []
        self.warmup: float | None = None

    def run(self) -> tuple[float, int]:
        if self.setup is not None:
            self.setup()
        gc.collect()
        with PeakRSS(self.tree, pids=self.pids) as mem:
            t0 = time.perf_counter()
            self.fn()
            t = time.perf_counter() - t0
        return t, mem.peak

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def peak(self) -> int:
        return max(self.peaks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "times_s": self.times,
            "warmup_s": self.warmup,
            "peak_rss_bytes": self.peak,
        }


def measure(cases: Sequence[Case], repeats: int, log: Callable, warmup: bool = True) -> None:
    """Warm every case up once (untimed), then time them interleaved, alternating the order."""
    if warmup:
        for case in cases:
            case.warmup, _ = case.run()
            log(f"    warm-up {case.name}: {case.warmup:.3f} s")
    for r in range(repeats):
        for case in cases if r % 2 == 0 else list(reversed(cases)):
            t, peak = case.run()
            case.times.append(t)
            case.peaks.append(peak)
    for case in cases:
        spread = ", ".join(f"{t:.3f}" for t in case.times)
        log(f"    {case.name}: median {case.median:.3f} s  [{spread}]")


def remove(*paths: Path) -> Callable[[], None]:
    def setup() -> None:
        for p in paths:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    return setup


# -- results ----------------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def add(
        self,
        stage: str,
        what: str,
        time_s: float | None,
        pixels: int | None,
        *,
        peer: str | None = None,
        peer_time_s: float | None = None,
        ratio: float | None = None,
        ratio_label: str = "",
        peak_rss: int | None = None,
        target: str = "",
        met: bool | None = None,
        ns_px: float | None = None,
        **details: Any,
    ) -> None:
        if ns_px is None and time_s is not None and pixels:
            ns_px = time_s / pixels * 1e9
        self.rows.append(
            {
                "stage": stage,
                "what": what,
                "time_s": time_s,
                "ns_per_px": ns_px,
                "peer": peer,
                "peer_time_s": peer_time_s,
                "ratio": ratio,
                "ratio_label": ratio_label,
                "peak_rss_bytes": peak_rss,
                "target": target,
                "met": met,
                **details,
            }
        )

    def table(self) -> str:
        head = (
            "stage",
            "what",
            "time s",
            "ns/px",
            "peer / floor",
            "peer s",
            "ratio",
            "peak RSS",
            "target",
            "",
        )
        lines = []
        for r in self.rows:
            lines.append(
                (
                    r["stage"],
                    r["what"],
                    _fmt(r["time_s"], "{:.3f}"),
                    _fmt(r["ns_per_px"], "{:.2f}"),
                    r["peer"] or "",
                    _fmt(r["peer_time_s"], "{:.3f}"),
                    (_fmt(r["ratio"], "{:.2f}") + (f" {r['ratio_label']}" if r["ratio"] else "")),
                    _fmt(r["peak_rss_bytes"], "{:.0f} MiB", scale=1 / MiB),
                    r["target"],
                    {True: "met", False: "MISSED", None: ""}[r["met"]],
                )
            )
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*row) for row in lines]
        return "\n".join(out)


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "" if value is None else spec.format(value * scale)


# -- stages -----------------------------------------------------------------------------------


def stage_in_memory(ctx: dict, res: Results) -> None:
    from skimage.exposure import match_histograms as sk_match

    src, ref = ctx["src_np"], ctx["ref_np"]
    npx = src.size

    def ours() -> None:
        ctx["_out"] = rastermatch.match_histograms(src, ref, nodata=0, reference_nodata=0)

    def skimage() -> None:
        out = np.empty_like(src)
        for b in range(src.shape[0]):
            out[b] = sk_match(src[b], ref[b], channel_axis=None)
        ctx["_out_sk"] = out

    # each case drops its previous output first: only the last output of each is kept (for the
    # comparison below), so both run with the same memory held
    a = Case("rastermatch.match_histograms (numpy, threads)", ours, lambda: ctx.pop("_out", 0))
    b = Case("skimage.exposure.match_histograms (per band)", skimage, lambda: ctx.pop("_out_sk", 0))
    with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
        measure([a, b], ctx["repeats"], ctx["log"])
    out, out_sk = ctx.pop("_out"), ctx.pop("_out_sk")
    valid = src != 0
    same = float(np.mean(out[valid] == out_sk[valid]))
    nodata_kept = bool(np.all(out[~valid] == 0))
    del out, out_sk, valid
    speedup = b.median / a.median
    res.add(
        "1 in memory",
        "rastermatch.match_histograms",
        a.median,
        npx,
        peer="skimage per band",
        peer_time_s=b.median,
        ratio=speedup,
        ratio_label="x faster",
        peak_rss=a.peak,
        target="≥ 10x faster than skimage",
        met=speedup >= 10,
        cases={"rastermatch": a.as_dict(), "skimage": b.as_dict()},
        equal_to_skimage_fraction=same,
        nodata_kept=nodata_kept,
    )
    res.add("1 in memory", "skimage.exposure.match_histograms", b.median, npx, peak_rss=b.peak)


def stage_histogram(ctx: dict, res: Results) -> None:
    src = ctx["src_np"]
    band = src[0]
    reps = max(ctx["repeats"], 5)
    log = ctx["log"]

    # one band, one thread: the numpy path calls the compiled kernel once on the whole band
    h1 = Case(
        "band_histograms(band, nodata=0)", lambda: rastermatch.band_histograms(band, nodata=0)
    )
    h0 = Case("band_histograms(band)", lambda: rastermatch.band_histograms(band))
    f1 = Case("band.max()", lambda: band.max())
    measure([h1, h0, f1], reps, log)
    for case, what in (
        (h1, "histogram 1 band, nodata=0, 1 thread"),
        (h0, "histogram 1 band, no nodata, 1 thread"),
    ):
        ns = case.median / band.size * 1e9
        res.add(
            "2 histogram",
            what,
            case.median,
            band.size,
            peer="band.max()",
            peer_time_s=f1.median,
            ratio=case.median / f1.median,
            ratio_label="x floor",
            target="≤ 0.5 ns/px per core",
            met=ns <= 0.5,
            cases={"histogram": case.as_dict(), "floor": f1.as_dict()},
        )
    res.add("2 histogram", "floor band.max(), 1 thread", f1.median, band.size)

    # the whole scene as dask chunks on the threaded scheduler
    chunk = ctx["chunk"]
    arr = da.from_array(src, chunks=(1, chunk, chunk))
    n = ctx["threads"]
    h2 = Case(
        f"band_histograms(dask scene, nodata=0), {n} threads",
        lambda: rastermatch.band_histograms(arr, nodata=0).compute(),
    )
    f2 = Case(f"dask scene.max(), {n} threads", lambda: arr.max().compute())
    with dask.config.set(scheduler="threads", num_workers=n):
        measure([h2, f2], reps, log)
    ns = h2.median / src.size * 1e9
    res.add(
        "2 histogram",
        f"histogram dask {chunk}² chunks, nodata=0, {n} threads",
        h2.median,
        src.size,
        peer="dask .max()",
        peer_time_s=f2.median,
        ratio=h2.median / f2.median,
        ratio_label="x floor",
        target=f"≤ 0.5 ns/px per core (= {0.5 / n:.2f} wall)",
        met=ns * n <= 0.5,
        ns_per_px_per_core=ns * n,
        cases={"histogram": h2.as_dict(), "floor": f2.as_dict()},
    )
    res.add("2 histogram", f"floor dask .max(), {n} threads", f2.median, src.size)

    # for comparison: whole numpy bands, one band_histograms call per band on a pool of threads
    # (no dask: no per-block counts, no tree reduction)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        bands = [src[b] for b in range(src.shape[0])]
        h3 = Case(
            f"band_histograms per numpy band, pool of {n}",
            lambda: list(pool.map(lambda x: rastermatch.band_histograms(x, nodata=0), bands)),
        )
        measure([h3], reps, log)
    ns = h3.median / src.size * 1e9
    res.add(
        "2 histogram",
        f"(info) band_histograms per band, pool of {n} threads",
        h3.median,
        src.size,
        peer="dask .max()",
        peer_time_s=f2.median,
        ratio=h3.median / f2.median,
        ratio_label="x floor",
        ns_per_px_per_core=ns * n,
        cases={"histogram": h3.as_dict()},
    )


def _read_both(src: Path, ref: Path) -> None:
    s = rastermatch.open_raster(src)
    r = rastermatch.open_raster(ref)
    dask.compute(s.data.max(), r.data.max())


def _floor(src: Path, ref: Path, out: Path) -> Callable[[], None]:
    """The two-pass I/O floor: read both inputs once, then copy the source to ``out``."""

    def run() -> None:
        _read_both(src, ref)
        rastermatch.write_raster(rastermatch.open_raster(src), out)

    return run


def stage_zarr(ctx: dict, res: Results) -> None:
    p, tmp = ctx["paths"], ctx["tmp"]
    out, copy = tmp / "matched.zarr", tmp / "copy.zarr"
    npx = ctx["npx"]
    m = Case(
        "match_files zarr",
        lambda: match_files(p["src.zarr"], p["ref.zarr"], out, nodata=0),
        setup=remove(out),
    )
    f = Case(
        "floor zarr (read both + write_raster copy)",
        _floor(p["src.zarr"], p["ref.zarr"], copy),
        setup=remove(copy),
    )
    r = Case("  of which read both", lambda: _read_both(p["src.zarr"], p["ref.zarr"]))
    with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
        measure([m, f, r], ctx["repeats"], ctx["log"])
    ratio = m.median / f.median
    res.add(
        "3 zarr→zarr",
        "match_files",
        m.median,
        npx,
        peer="two-pass floor",
        peer_time_s=f.median,
        ratio=ratio,
        ratio_label="x floor",
        peak_rss=m.peak,
        target="≤ 1.15x floor",
        met=ratio <= 1.15,
        cases={"match_files": m.as_dict(), "floor": f.as_dict(), "read": r.as_dict()},
    )
    res.add("3 zarr→zarr", "floor: read both + copy source", f.median, npx, peak_rss=f.peak)
    res.add("3 zarr→zarr", "  floor part: read both (.max())", r.median, npx, peak_rss=r.peak)
    ctx["zarr_threaded_time"] = m.median


def stage_geotiff(ctx: dict, res: Results) -> None:
    import threading as _threading

    p, tmp = ctx["paths"], ctx["tmp"]
    out, copy, rio_out = tmp / "matched.tif", tmp / "copy.tif", tmp / "matched-rio.tif"
    npx = ctx["npx"]

    def rioxarray_path() -> None:
        matched = rastermatch.match_histograms(
            rastermatch.open_raster(p["src.tif"]), rastermatch.open_raster(p["ref.tif"]), nodata=0
        )
        # rioxarray's documented dask write: tiled, with a threading lock; the same tiles,
        # codec, predictor and GDAL threads as rastermatch's writer
        matched.rio.to_raster(
            rio_out,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="ZSTD",
            predictor=2,
            num_threads="all_cpus",
            bigtiff="IF_SAFER",
            lock=_threading.Lock(),
        )

    m = Case(
        "match_files tif",
        lambda: match_files(p["src.tif"], p["ref.tif"], out, nodata=0),
        setup=remove(out),
    )
    f = Case(
        "floor tif (read both + write_raster copy)",
        _floor(p["src.tif"], p["ref.tif"], copy),
        setup=remove(copy),
    )
    x = Case("match_histograms + rio.to_raster", rioxarray_path, setup=remove(rio_out))
    r = Case("  of which read both", lambda: _read_both(p["src.tif"], p["ref.tif"]))
    with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
        measure([m, f, x, r], ctx["repeats"], ctx["log"])
        a, b = rastermatch.open_raster(out), rastermatch.open_raster(rio_out)
        differing = int((a.data != b.data).sum().compute())
    ratio = m.median / f.median
    speedup = x.median / m.median
    cases = {
        "match_files": m.as_dict(),
        "floor": f.as_dict(),
        "to_raster": x.as_dict(),
        "read": r.as_dict(),
    }
    res.add(
        "4 tif→tif",
        "match_files",
        m.median,
        npx,
        peer="two-pass floor",
        peer_time_s=f.median,
        ratio=ratio,
        ratio_label="x floor",
        peak_rss=m.peak,
        target="≤ 1.25x floor",
        met=ratio <= 1.25,
        cases=cases,
    )
    res.add(
        "4 tif→tif",
        "match_files",
        m.median,
        npx,
        peer="rio.to_raster path",
        peer_time_s=x.median,
        ratio=speedup,
        ratio_label="x faster",
        peak_rss=m.peak,
        target="≥ 2.5x faster than to_raster",
        met=speedup >= 2.5,
        pixels_differing_from_to_raster=differing,
    )
    res.add("4 tif→tif", "floor: read both + copy source", f.median, npx, peak_rss=f.peak)
    res.add("4 tif→tif", "  floor part: read both (.max())", r.median, npx, peak_rss=r.peak)
    res.add(
        "4 tif→tif",
        "match_histograms + rio.to_raster",
        x.median,
        npx,
        peak_rss=x.peak,
        pixels_differing_from_match_files=differing,
    )


def child_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one end-to-end job in this (child) process and report its memory high-water mark.

    ``spec["job"]``: ``"files"`` (default; ``match_files``), ``"stack"`` (the stack job of
    stage 7 on the first ``spec["dates"]`` dates, on ``spec["threads"]`` threads) or
    ``"destripe"`` (``destripe_file`` of stage 8 with the layout ``spec["layout"]``).
    """
    baseline = psutil.Process().memory_info().rss
    out = Path(spec["output"])
    env: Any = contextlib.nullcontext()
    if spec.get("gdal_cachemax_mb"):
        import rasterio

        env = rasterio.Env(GDAL_CACHEMAX=int(spec["gdal_cachemax_mb"]))
    if spec.get("job") == "stack":
        env = dask.config.set(scheduler="threads", num_workers=spec["threads"])
    with env, PeakRSS(interval=0.01) as mem:
        t0 = time.perf_counter()
        if spec.get("job") == "stack":
            stack_job(Path(spec["stack"]), Path(spec["reference"]), out, spec["dates"])
        elif spec.get("job") == "destripe":
            destripe_job(Path(spec["source"]), out, spec["layout"])
        elif spec.get("job") == "specify":
            rastermatch.pipeline.specify_file(spec["source"], spec["reference"], out, nodata=0)
        else:
            match_files(spec["source"], spec["reference"], out, nodata=0)
        elapsed = time.perf_counter() - t0
    # VmHWM is the high-water mark of this process image. Not ru_maxrss: Linux carries it over
    # fork + exec, so a child of a big parent reports at least the parent's RSS at fork time.
    return {
        "peak_rss_bytes": _vm_hwm(),
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "sampled_peak_rss_bytes": mem.peak,
        "baseline_rss_bytes": baseline,
        "seconds": elapsed,
    }


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-job", json.dumps(spec)]
    # the environment this benchmark started with (a LocalCluster may have changed os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_START_ENVIRON)
    if proc.returncode != 0:
        raise RuntimeError(f"child job failed:\n{proc.stdout}\n{proc.stderr}")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"child printed no result:\n{proc.stdout}\n{proc.stderr}")


def stage_memory(ctx: dict, res: Results) -> None:
    sizes = ctx["memory_sizes"]
    log, tmp = ctx["log"], ctx["tmp"]
    # "tif+cache256": the same GeoTIFF job inside rasterio.Env(GDAL_CACHEMAX=256), for
    # comparison (GDAL's block cache defaults to 5 % of RAM and also fills while reading)
    variants = {"zarr": ("zarr", None), "tif": ("tif", None), "tif+cache256": ("tif", 256)}
    by_format: dict[str, list[tuple[int, dict]]] = {k: [] for k in variants}
    for size in sizes:
        paths = ensure_scene(ctx["workdir"], size, ctx["bands"], ctx["chunk"], log)
        npx = ctx["bands"] * size * size
        for label, (fmt, cache) in variants.items():
            out = tmp / f"mem-{size}.{fmt}"
            remove(out)()
            r = run_child(
                {
                    "source": str(paths[f"src.{fmt}"]),
                    "gdal_cachemax_mb": cache,
                    "reference": str(paths[f"ref.{fmt}"]),
                    "output": str(out),
                }
            )
            remove(out)()
            log(
                f"    {label} {size}: peak {r['peak_rss_bytes'] / MiB:.0f} MiB "
                f"(after imports {r['baseline_rss_bytes'] / MiB:.0f} MiB), {r['seconds']:.1f} s"
            )
            by_format[label].append((size, r))
            what = f"{fmt} {ctx['bands']}x{size}² child process"
            if cache:
                what = f"(info) {what}, GDAL_CACHEMAX={cache} MB"
            res.add(
                "5 memory",
                what,
                r["seconds"],
                npx,
                peak_rss=r["peak_rss_bytes"],
                baseline_rss_bytes=r["baseline_rss_bytes"],
                size=size,
                child=r,
            )
    for label, runs in by_format.items():
        if len(runs) < 2:
            continue
        (s0, r0), (s1, r1) = runs[0], runs[-1]
        growth = r1["peak_rss_bytes"] / r0["peak_rss_bytes"]
        met = growth <= 1.25 and r1["peak_rss_bytes"] < 1.5 * GB
        info = label not in ("zarr", "tif")
        res.add(
            "5 memory",
            f"{'(info) ' if info else ''}{label}: peak RSS {s1}² vs {s0}² "
            f"({(s1 / s0) ** 2:.0f}x px)",
            None,
            None,
            peer=f"{s0}² run",
            ratio=growth,
            ratio_label="x growth",
            peak_rss=r1["peak_rss_bytes"],
            target="" if info else "≤ 1.25x growth and < 1.5 GB",
            met=None if info else met,
        )


def _cluster_pids(client: Any) -> list[int]:
    """This process (scheduler and, in a LocalCluster, the nannies) plus the worker processes."""
    workers = client.run(os.getpid)
    parents = client.run(os.getppid)
    return sorted({os.getpid(), *workers.values(), *parents.values()})


def stage_cluster(ctx: dict, res: Results) -> None:
    from distributed import Client, LocalCluster

    p, tmp, log = ctx["paths"], ctx["tmp"], ctx["log"]
    out_t, out_c = tmp / "matched-threads.zarr", tmp / "matched-cluster.zarr"
    out_n = tmp / "matched-cluster-notrim.zarr"
    npx = ctx["npx"]

    def start(stack: contextlib.ExitStack, config: dict[str, Any]) -> Any:
        """A LocalCluster and its client, workers up; ``config`` holds while they spawn."""
        with dask.config.set(config):
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
                )
            )
            client = stack.enter_context(Client(cluster, set_as_default=False))
            client.wait_for_workers(2)
        return client

    def job(out: Path, scheduler: Any) -> Callable[[], None]:
        def run() -> None:
            with dask.config.set(scheduler=scheduler, num_workers=ctx["threads"]):
                match_files(p["src.zarr"], p["ref.zarr"], out, nodata=0)

        return run

    t0 = time.perf_counter()
    # Two clusters up at once, timed interleaved with the threaded run: the default one, and
    # one whose workers do not get distributed's default MALLOC_TRIM_THRESHOLD_=65536 (setting
    # it turns off glibc's dynamic mmap threshold, so every decoded chunk is a fresh mmap,
    # paid in page faults). The scheduler of each run is chosen explicitly.
    # distributed's nanny writes its pre-spawn environment into *this* process's os.environ
    # before spawning (and os.environ then overrides the config for later clusters and every
    # child process): start the cluster without the variable first, and put os.environ back
    # afterwards so that later child processes (stage 5) get a clean environment.
    saved_environ = dict(os.environ)
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: (os.environ.clear(), os.environ.update(saved_environ)))
        # rastermatch's cluster (workers without the trim threshold, GDAL cache bounded) and,
        # for reference, distributed's default LocalCluster
        client = stack.enter_context(local_cluster(2, threads_per_worker=1, dashboard_address=None))
        client_nt = start(stack, {})
        startup = time.perf_counter() - t0
        env = {
            "local_cluster": sorted(
                set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()),
                key=str,
            ),
            "default": sorted(
                set(client_nt.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()),
                key=str,
            ),
        }
        log(
            f"    2 x LocalCluster(n_workers=2, threads_per_worker=1) up in {startup:.1f} s; "
            f"workers' MALLOC_TRIM_THRESHOLD_: {env}"
        )
        t = Case("match_files zarr, threads", job(out_t, "threads"), setup=remove(out_t))
        c = Case("match_files zarr, local_cluster 2x1", job(out_c, client), setup=remove(out_c))
        n = Case(
            "match_files zarr, distributed's default LocalCluster 2x1",
            job(out_n, client_nt),
            setup=remove(out_n),
        )
        c.pids, n.pids = _cluster_pids(client), _cluster_pids(client_nt)
        measure([c, t, n], ctx["repeats"], log)
        with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
            a, b, d = (rastermatch.open_raster(o) for o in (out_t, out_c, out_n))
            differing = int((a.data != b.data).sum().compute())
            differing_nt = int((a.data != d.data).sum().compute())
            same_meta = (
                a.rio.nodata == b.rio.nodata
                and a.dtype == b.dtype
                and a.shape == b.shape
                and a.chunks == b.chunks
            )
    ratio = c.median / t.median
    identical = differing == 0 and same_meta
    res.add(
        "6 cluster",
        "match_files zarr, local_cluster 2 proc x 1 thread",
        c.median,
        npx,
        peer="threaded, same run",
        peer_time_s=t.median,
        ratio=ratio,
        ratio_label="x threaded",
        peak_rss=c.peak,
        target="≤ 1.5x threaded, identical",
        met=ratio <= 1.5 and identical,
        pixels_differing=differing,
        identical=identical,
        cluster_startup_s=startup,
        worker_env=env,
        cases={"cluster": c.as_dict(), "threads": t.as_dict(), "cluster_default": n.as_dict()},
    )
    res.add(
        "6 cluster",
        f"  threaded (outputs identical: {identical}, {differing} px differ)",
        t.median,
        npx,
        peak_rss=t.peak,
    )
    res.add(
        "6 cluster",
        "(info) distributed's default LocalCluster 2x1 (malloc trim 65536)",
        n.median,
        npx,
        peer="threaded, same run",
        peer_time_s=t.median,
        ratio=n.median / t.median,
        ratio_label="x threaded",
        peak_rss=n.peak,
        pixels_differing=differing_nt,
    )


# -- time stacks (stage 7) --------------------------------------------------------------------
#
# A stack is T dates of one base scene: the source's smooth field plus noise drawn anew for
# every date, each (date, band) then mapped through its own strictly increasing level map
# (a random power curve over the 12-bit levels, spread over up to ~15 bits), so every date has
# its own histogram and every LUT is far from the identity. The nodata footprint is the
# source's, the same on every date. The reference is the stage-3 reference scene (another
# field through a gamma curve, its own footprint). Blocks depend only on position, date,
# band and the seed.

STACK_GENERATOR_VERSION = 1
STACK_START = np.datetime64("2024-01-05", "ns")
STACK_STEP = np.timedelta64(16, "D")


def stack_level_map(date: int, band: int) -> np.ndarray:
    """The strictly increasing level map of one (date, band): 4,096 entries, 0 (nodata) kept."""
    rng = np.random.default_rng([SEED, 8, date, band])
    power, span, offset = rng.uniform(0.6, 1.7), rng.uniform(3000, 12000), rng.integers(20, 600)
    x = np.arange(4096, dtype=np.float64) / 4095
    # floor(span x^power) never decreases and arange strictly increases: the sum strictly does
    table = offset + np.floor(span * x**power).astype(np.int64) + np.arange(4096)
    table[0] = 0
    return table.astype(np.uint16)


def stack_block(date: int, band: int, y0: int, y1: int, x0: int, x1: int, size: int) -> np.ndarray:
    """One band of one block of one date of the stack, uint16."""
    f = _field(0, band, y0, y1, x0, x1, size)
    noise = np.random.default_rng([SEED, 100 + date, band, y0, x0]).standard_normal(
        f.shape, dtype=np.float32
    )
    noise *= np.float32(0.04)
    f += noise
    f *= np.float32(2300 + 150 * band)
    f += np.float32(250 + 60 * band)
    np.rint(f, out=f)
    np.clip(f, 1, 4095, out=f)
    base = f.astype(np.uint16)
    base[~_footprint(0, y0, y1, x0, x1, size)] = 0
    return stack_level_map(date, band)[base]


def _stack_chunk(block: np.ndarray, block_info: Any = None, *, size: int) -> np.ndarray:
    (t0, t1), (b0, b1), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    out = np.empty(block.shape, dtype=np.uint16)
    for t in range(t0, t1):
        for b in range(b0, b1):
            out[t - t0, b - b0] = stack_block(t, b, y0, y1, x0, x1, size)
    return out


def synth_stack(dates: int, size: int, bands: int, chunk: int) -> xr.DataArray:
    """A lazy, georeferenced ``(time, band, y, x)`` stack, one task per ``chunk²`` block."""
    grid = da.zeros((dates, bands, size, size), chunks=(1, 1, chunk, chunk), dtype=np.uint8)
    data = grid.map_blocks(
        _stack_chunk, dtype=np.uint16, meta=np.empty((0, 0, 0, 0), np.uint16), size=size
    )
    like = synth_scene(0, size, bands, chunk)
    stack = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={
            "time": STACK_START + STACK_STEP * np.arange(dates),
            "band": like.band.values,
            "y": like.y.values,
            "x": like.x.values,
        },
        name="reflectance",
    )
    stack = stack.rio.write_crs(like.rio.crs)
    stack = stack.rio.write_transform(like.rio.transform())
    return stack.rio.write_nodata(0, encoded=False)


def stack_paths(workdir: Path, dates: int, size: int, bands: int, chunk: int) -> dict[str, Path]:
    base = workdir / f"stack-{dates}x{bands}x{size}x{size}-c{chunk}-v{STACK_GENERATOR_VERSION}"
    return {
        "dir": base,
        "stack.zarr": base / "stack.zarr",
        "ref.zarr": base / "ref.zarr",
        "manifest": base / "manifest.json",
    }


def ensure_stack(
    workdir: Path, dates: int, size: int, bands: int, chunk: int, log: Callable
) -> dict:
    """Generate the stack and the reference once with ``write_raster`` (Zarr, blosc-lz4);
    reuse them afterwards."""
    paths = stack_paths(workdir, dates, size, bands, chunk)
    if paths["manifest"].exists():
        manifest = json.loads(paths["manifest"].read_text())
        if manifest.get("writer", "write_raster") == "write_raster":
            log(f"  reusing {paths['dir']} (generated in {manifest['seconds']:.0f} s)")
            return paths | {"manifest_data": manifest}
    if paths["dir"].exists():
        shutil.rmtree(paths["dir"])
    paths["dir"].mkdir(parents=True)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        rastermatch.write_raster(synth_stack(dates, size, bands, chunk), paths["stack.zarr"])
        t_stack = time.perf_counter() - t0
        rastermatch.write_raster(synth_scene(1, size, bands, chunk), paths["ref.zarr"])
    manifest = {
        "dates": dates,
        "size": size,
        "bands": bands,
        "chunk": chunk,
        "writer": "write_raster",
        "generator_version": STACK_GENERATOR_VERSION,
        "seconds": time.perf_counter() - t0,
        "bytes_on_disk": {k: _du(paths[k]) for k in ("stack.zarr", "ref.zarr")},
    }
    log(
        f"  generated {dates}x{bands}x{size}² stack in {t_stack:.1f} s and the reference "
        f"({manifest['seconds']:.1f} s in all)"
    )
    paths["manifest"].write_text(json.dumps(manifest, indent=1))
    return paths | {"manifest_data": manifest}


def open_stack(path: Path, dates: int | None = None) -> xr.DataArray:
    """The stack, lazily, its first ``dates`` dates (all by default)."""
    stack = rastermatch.open_raster(path)
    if dates is not None:
        stack = stack.isel(time=slice(0, dates))
    return stack


def stack_job(stack_path: Path, ref_path: Path, out: Path, dates: int | None = None) -> None:
    """The job measured: the stack normalized to the reference in one call, written to Zarr."""
    matched = rastermatch.match_histograms(
        open_stack(stack_path, dates), rastermatch.open_raster(ref_path), nodata=0
    )
    rastermatch.write_raster(matched, out)


def date_loop(stack_path: Path, ref_path: Path, out_dir: Path, dates: int | None = None) -> None:
    """What one does without stacks: one match per date (each reads the reference again)."""
    stack = open_stack(stack_path, dates)
    out_dir.mkdir()
    for t in range(stack.sizes["time"]):
        ref = rastermatch.open_raster(ref_path)
        matched = rastermatch.match_histograms(stack.isel(time=t), ref, nodata=0)
        rastermatch.write_raster(matched, out_dir / f"date-{t:03d}.zarr")


def _read_stack_and_ref(stack_path: Path, ref_path: Path, dates: int | None = None) -> None:
    s, r = open_stack(stack_path, dates), rastermatch.open_raster(ref_path)
    dask.compute(s.data.max(), r.data.max())


def _copy_stack(stack_path: Path, out: Path, dates: int | None = None) -> None:
    """The floor's copy: the stack through ``write_raster``."""
    rastermatch.write_raster(open_stack(stack_path, dates), out)


def _stack_vs_loop(stack_out: Path, loop_dir: Path) -> int:
    """Pixels of the stack output differing from the per-date loop's outputs."""
    stack = rastermatch.open_raster(stack_out)
    differing = []
    for t in range(stack.sizes["time"]):
        date = rastermatch.open_raster(loop_dir / f"date-{t:03d}.zarr")
        differing.append((stack.data[t] != date.data).sum())
    return int(sum(dask.compute(*differing)))


def stage_stack(ctx: dict, res: Results) -> None:
    log, tmp = ctx["log"], ctx["tmp"]
    size, bands = ctx["stack_size"], ctx["bands"]
    chunk = min(ctx["chunk"], size)
    dates = ctx["dates"]
    memory_dates = ctx["memory_dates"]
    # the machine's load (other processes share the 2 cores): recorded with the results
    res.extra["stack_loadavg_start"] = os.getloadavg()
    stored = max([dates, *memory_dates])
    p = ensure_stack(ctx["workdir"], stored, size, bands, chunk, log)
    res.extra["stack_inputs"] = p["manifest_data"]
    sp, rp = p["stack.zarr"], p["ref.zarr"]
    npx = dates * bands * size * size
    label = f"{dates}x{bands}x{size}²"
    out, copy, loop = tmp / "stack-matched.zarr", tmp / "stack-copy.zarr", tmp / "stack-loop"
    f = Case(
        "floor (read stack and reference + write_raster copy)",
        lambda: (_read_stack_and_ref(sp, rp, dates), _copy_stack(sp, copy, dates)),
        setup=remove(copy),
    )
    r = Case("  of which read all", lambda: _read_stack_and_ref(sp, rp, dates))
    lp = Case(
        f"loop of {dates} match_histograms + write_raster",
        lambda: date_loop(sp, rp, loop, dates),
        setup=remove(loop),
    )
    m = Case(
        "match_histograms(stack) + write_raster",
        lambda: stack_job(sp, rp, out, dates),
        setup=remove(out),
    )
    st = Case(
        "  of which match_histograms (statistics pass + LUTs)",
        lambda: rastermatch.match_histograms(
            open_stack(sp, dates), rastermatch.open_raster(rp), nodata=0
        ),
    )
    cases = [m, f, lp, r, st]
    with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
        measure(cases, ctx["repeats"], log)
        differing = _stack_vs_loop(out, loop)
    load = os.getloadavg()
    res.extra["stack_loadavg_after_timing"] = load
    log(f"    load average after timing: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    detail = {"cases": {c.name: c.as_dict() for c in cases}}
    ratio = m.median / f.median
    res.add(
        "7 stack",
        f"stack {label}: match_histograms + write_raster",
        m.median,
        npx,
        peer="two-pass floor",
        peer_time_s=f.median,
        ratio=ratio,
        ratio_label="x floor",
        peak_rss=m.peak,
        target="≤ 1.2x floor",
        met=ratio <= 1.2,
        **detail,
    )
    res.add(
        "7 stack",
        f"stack {label} (output = loop's: {differing == 0}, {differing} px differ)",
        m.median,
        npx,
        peer=f"loop of {dates} matches",
        peer_time_s=lp.median,
        ratio=lp.median / m.median,
        ratio_label="x faster",
        peak_rss=m.peak,
        pixels_differing_from_loop=differing,
    )
    res.add(
        "7 stack",
        "  stack part: match_histograms (statistics pass + LUTs)",
        st.median,
        npx,
        peak_rss=st.peak,
    )
    res.add("7 stack", "floor: read all + copy stack", f.median, npx, peak_rss=f.peak)
    res.add("7 stack", "  floor part: read all (.max())", r.median, npx, peak_rss=r.peak)
    res.add(
        "7 stack",
        f"loop: {dates} x (match_histograms(date) + write_raster)",
        lp.median,
        npx,
        peer="two-pass floor",
        peer_time_s=f.median,
        ratio=lp.median / f.median,
        ratio_label="x floor",
        peak_rss=lp.peak,
    )

    if len(memory_dates) < 1:
        return
    # peak RSS of the stack job in a fresh process per T, on the first T dates of the store
    runs = []
    for t in memory_dates:
        o = tmp / f"stack-mem-{t}.zarr"
        remove(o)()
        spec = {"job": "stack", "stack": str(sp), "reference": str(rp)}
        r_ = run_child(spec | {"dates": t, "output": str(o), "threads": ctx["threads"]})
        remove(o)()
        log(
            f"    stack T={t}: peak {r_['peak_rss_bytes'] / MiB:.0f} MiB "
            f"(after imports {r_['baseline_rss_bytes'] / MiB:.0f} MiB), {r_['seconds']:.1f} s"
        )
        runs.append((t, r_))
        res.add(
            "7 stack",
            f"stack {t}x{bands}x{size}² child process",
            r_["seconds"],
            t * bands * size * size,
            peak_rss=r_["peak_rss_bytes"],
            baseline_rss_bytes=r_["baseline_rss_bytes"],
            dates=t,
            child=r_,
        )
    if len(runs) >= 2:
        (t0, r0), (t1, r1) = runs[0], runs[-1]
        growth = r1["peak_rss_bytes"] / r0["peak_rss_bytes"]
        res.add(
            "7 stack",
            f"peak RSS T={t1} vs T={t0}",
            None,
            None,
            peer=f"T={t0} run",
            ratio=growth,
            ratio_label="x growth",
            peak_rss=r1["peak_rss_bytes"],
            target="≤ 1.25x growth",
            met=growth <= 1.25,
        )


# -- detector balancing (stage 8) -------------------------------------------------------------
#
# The stage-3 source scene seen through a scanner's detectors: every (band, detector) has its own
# response v -> 4095 ((g v + o) / 4095) ** gamma (rounded, clipped to 1..4095, 0 stays nodata),
# with 16 detectors along y (line i is detector i mod 16, a whisk-broom scanner) or one detector
# per column (a push-broom sensor). Each striped scene is made block by block from the stored
# source and kept in the workdir.

STRIPE_LAYOUTS = {"y16": ("y", 16), "column": ("x", None)}


def stripe_responses(bands: int, count: int, layout: str) -> np.ndarray:
    """Gain, offset and gamma of every (band, detector): ``(3, bands, count)`` float64."""
    rng = np.random.default_rng([SEED, 8, len(layout), count])
    return np.stack(
        [
            rng.uniform(0.85, 1.15, (bands, count)),
            rng.uniform(-150.0, 150.0, (bands, count)),
            rng.uniform(0.9, 1.1, (bands, count)),
        ]
    )


def _stripe_chunk(
    block: np.ndarray, block_info: Any = None, *, axis: str, count: int, response: np.ndarray
) -> np.ndarray:
    (b0, b1), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    if axis == "y":
        det = np.arange(y0, y1) % count
        g, o, gamma = (r[b0:b1][:, det][:, :, None] for r in response)
    else:
        g, o, gamma = (r[b0:b1][:, x0:x1][:, None, :] for r in response)
    v = block.astype(np.float32)
    lin = np.clip(g * v + o, 0.0, 4095.0) / 4095.0
    out = np.clip(np.rint(4095.0 * lin**gamma), 1, 4095).astype(np.uint16)
    return np.where(block == 0, np.uint16(0), out)


def ensure_striped(ctx: dict, layout: str) -> Path:
    """The striped copy of the stage-3 source (Zarr), generated once per layout."""
    paths, log = ctx["paths"], ctx["log"]
    out = paths["dir"] / f"striped-{layout}-v1.zarr"
    marker = out.with_suffix(".done")
    if marker.exists():
        log(f"  reusing {out}")
        return out
    remove(out)()
    axis, count = STRIPE_LAYOUTS[layout]
    src = rastermatch.open_raster(paths["src.zarr"])
    count = count or src.sizes["x"]
    response = stripe_responses(src.sizes["band"], count, layout)
    data = src.data.map_blocks(
        _stripe_chunk, dtype=np.uint16, axis=axis, count=count, response=response
    )
    t = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        rastermatch.write_raster(src.copy(data=data), out)
    marker.write_text(json.dumps({"seconds": time.perf_counter() - t}))
    log(f"  generated {out.name} in {time.perf_counter() - t:.1f} s")
    return out


def destripe_job(source: Path, out: Path, layout: str) -> Any:
    axis, count = STRIPE_LAYOUTS[layout]
    return rastermatch.pipeline.destripe_file(
        source, out, detectors=count if count else "column", axis=axis, nodata=0
    )


def stage_destripe(ctx: dict, res: Results) -> None:
    """Destriping vs a plain match of the same striped scene (Zarr -> Zarr, threads), then
    the peak RSS of each job in a child process. Targets: <= 1.3x the match's time, < 1.5 GB."""
    p, tmp, log, npx = ctx["paths"], ctx["tmp"], ctx["log"], ctx["npx"]
    for layout in ctx["destripe_layouts"]:
        striped = ensure_striped(ctx, layout)
        out_d, out_m = tmp / f"destriped-{layout}.zarr", tmp / f"striped-matched-{layout}.zarr"
        last: dict[str, Any] = {}

        def destripe(
            s: Path = striped, o: Path = out_d, k: str = layout, last: dict = last
        ) -> None:
            last["quality"] = destripe_job(s, o, k).quality

        d = Case(f"destripe_file {layout}", destripe, setup=remove(out_d))
        m = Case(f"match_files {layout} scene", lambda s=striped, o=out_m: match_files(
            s, p["ref.zarr"], o, nodata=0), setup=remove(out_m))  # fmt: skip
        with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
            measure([d, m], ctx["repeats"], log, warmup=ctx["repeats"] > 1)
        remove(out_d, out_m)()
        children = {}
        for job, o in (("destripe", out_d), ("files", out_m)):
            spec = {"job": job, "source": str(striped), "reference": str(p["ref.zarr"]),
                    "output": str(o), "layout": layout}  # fmt: skip
            children[job] = run_child(spec)
            remove(o)()
            log(f"    {job} {layout}: peak {children[job]['peak_rss_bytes'] / MiB:.0f} MiB, "
                f"{children[job]['seconds']:.1f} s")  # fmt: skip
        ratio = d.median / m.median
        peak = children["destripe"]["peak_rss_bytes"]
        what = "16 detectors along y" if layout == "y16" else "one detector per column"
        res.add(
            "8 destripe",
            f"destripe_file zarr, {what}",
            d.median,
            npx,
            peer="match_files, same scene",
            peer_time_s=m.median,
            ratio=ratio,
            ratio_label="x match",
            peak_rss=peak,
            target="≤ 1.3x match, < 1.5 GB",
            met=ratio <= 1.3 and peak < 1.5 * GB,
            cases={"destripe": d.as_dict(), "match": m.as_dict()},
            children=children,
            quality=last.get("quality"),
        )
        res.add(
            "8 destripe",
            f"  match_files of the striped scene ({layout})",
            m.median,
            npx,
            peak_rss=children["files"]["peak_rss_bytes"],
        )


def stage_optimal(ctx: dict, res: Results) -> None:
    """Stage 9: optimal monotone LUTs (``method="optimal"``) on 16-bit histograms, 4 bands with
    4,096 present levels each in source and reference (random level sets of uint16), vs the
    nearest-CDF LUT of the same histograms; and ``fit_multi`` of three such pairs (their level
    sets differ: ~12,000 levels on each side). Target: <= 1 s per LUT of 4 bands.
    ``--stages 9`` runs it alone in seconds (no inputs)."""
    log, bands, levels = ctx["log"], 4, 4096
    rng = np.random.default_rng(SEED)

    def scene() -> np.ndarray:
        out = np.empty((bands, 128, 128), dtype=np.uint16)
        for b in range(bands):
            present = np.sort(rng.choice(65536, levels, replace=False)).astype(np.uint16)
            out[b] = np.concatenate([present, rng.choice(present, 128 * 128 - levels)]).reshape(
                128, 128
            )
        return out

    pairs = [(rastermatch.band_histograms(scene()), rastermatch.band_histograms(scene()))
             for _ in range(3)]  # fmt: skip
    h_src, h_ref = pairs[0]

    def fit(method: str = "nearest", objective: str | None = None) -> Any:
        return rastermatch.LUT.from_histograms(h_src, h_ref, method=method, objective=objective)

    nearest = Case("nearest", fit)
    cases = {o: Case(f"optimal {o}", lambda o=o: fit("optimal", o)) for o in ("ks", "w1")}
    multi = Case("fit_multi 3 pairs w1", lambda: rastermatch.fit_multi(pairs, objective="w1"))
    measure([nearest, *cases.values(), multi], max(ctx["repeats"], 3), log)
    for objective, case in cases.items():
        res.add(
            "9 optimal",
            f"LUT optimal/{objective}, 4 bands x 4,096 x 4,096 levels",
            case.median,
            None,
            peer="nearest LUT, same histograms",
            peer_time_s=nearest.median,
            ratio=case.median / nearest.median,
            ratio_label="x nearest",
            target="≤ 1 s",
            met=case.median <= 1.0,
            cases={"optimal": case.as_dict(), "nearest": nearest.as_dict()},
        )
    res.add(
        "9 optimal",
        "fit_multi w1, 3 pairs, 4 bands x 4,096 levels",
        multi.median,
        None,
        target="≤ 1 s",
        met=multi.median <= 1.0,
        cases={"fit_multi": multi.as_dict()},
    )


def stage_specify(ctx: dict, res: Results) -> None:
    """Stage 10: exact histogram specification (``pipeline.specify_file``, Zarr -> Zarr) of the
    stage-3 scene vs ``match_files`` of the same pair (threads), then the peak RSS of each job in
    a child process. Targets: <= 3x the match's time, < 1.5 GB. ``--stages 10`` runs it alone."""
    p, tmp, log, npx = ctx["paths"], ctx["tmp"], ctx["log"], ctx["npx"]
    out_s, out_m = tmp / "specified.zarr", tmp / "matched-10.zarr"
    last: dict[str, Any] = {}

    def specify() -> None:
        report = rastermatch.pipeline.specify_file(p["src.zarr"], p["ref.zarr"], out_s, nodata=0)
        last["position_share"] = report.position_share.tolist()
        last["windows_share"] = report.windows_share.tolist()

    s = Case("specify_file zarr", specify, setup=remove(out_s))
    m = Case("match_files zarr", lambda: match_files(p["src.zarr"], p["ref.zarr"], out_m, nodata=0),
             setup=remove(out_m))  # fmt: skip
    with dask.config.set(scheduler="threads", num_workers=ctx["threads"]):
        measure([s, m], ctx["repeats"], log, warmup=ctx["repeats"] > 1)
    remove(out_s, out_m)()
    children = {}
    for job, o in (("specify", out_s), ("files", out_m)):
        spec = {"job": job, "source": str(p["src.zarr"]), "reference": str(p["ref.zarr"]),
                "output": str(o)}  # fmt: skip
        children[job] = run_child(spec)
        remove(o)()
        log(f"    {job}: peak {children[job]['peak_rss_bytes'] / MiB:.0f} MiB, "
            f"{children[job]['seconds']:.1f} s")  # fmt: skip
    ratio = s.median / m.median
    peak = children["specify"]["peak_rss_bytes"]
    res.add(
        "10 specify",
        "specify_file zarr (exact histogram specification)",
        s.median,
        npx,
        peer="match_files, same scene",
        peer_time_s=m.median,
        ratio=ratio,
        ratio_label="x match",
        peak_rss=peak,
        target="≤ 3x match, < 1.5 GB",
        met=ratio <= 3 and peak < 1.5 * GB,
        cases={"specify": s.as_dict(), "match": m.as_dict()},
        children=children,
        report=last,
    )
    res.add("10 specify", "  match_files, same scene", m.median, npx,
            peak_rss=children["files"]["peak_rss_bytes"])  # fmt: skip


# -- stages 11-12: the in-memory path ---------------------------------------------------------

SMALL_CASES = (
    ("uint8 256x256x3", (256, 256, 3), "uint8"),
    ("uint8 400x400x3", (400, 400, 3), "uint8"),
    ("uint8 512x512x3", (512, 512, 3), "uint8"),
    ("float32 101x100x13", (101, 100, 13), "float32"),
)


def small_pair(shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A channel-last source and reference as notebooks hold them: a smooth field plus noise,
    the reference gamma-skewed (uint8: 0-255; float32: reflectance-like 0-0.6)."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[: shape[0], : shape[1]] / max(shape[:2])
    c = np.arange(shape[2])[None, None, :]
    base = 0.5 + 0.3 * np.sin(6 * x[..., None] + c) * np.cos(4 * y[..., None] - c)
    src = np.clip(base + rng.normal(0, 0.08, shape), 0, 1)
    ref = np.clip(base, 0, 1) ** 2.2 + rng.normal(0, 0.03, shape)
    ref = np.clip(ref, 0, 1)
    if dtype == "uint8":
        return (src * 255).astype(np.uint8), (ref * 255).astype(np.uint8)
    return (src * 0.6).astype(np.float32), (ref * 0.6).astype(np.float32)


_FIRST_CALL = """
import time, sys
t0 = time.perf_counter()
import numpy as np
import rastermatch
t1 = time.perf_counter()
rng = np.random.default_rng(0)
for shape, dtype in ((64, 64, 3), np.uint8), ((32, 32, 4), np.float32):
    a = (rng.random(shape) * 200).astype(dtype)
    rastermatch.match_histograms(a, a[::-1], channel_axis=-1)
t2 = time.perf_counter()
print("RESULT", t1 - t0, t2 - t1)
"""


def first_call(cache_dir: Path | None) -> tuple[float, float]:
    """``import rastermatch`` and the first uint8 and float32 matches in a fresh process:
    with the kernels compiled afresh (an empty ``NUMBA_CACHE_DIR``) or loaded from the cache."""
    env = dict(_START_ENVIRON)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    imported, called = (float(v) for v in line.split()[1:])
    return imported, called


def stage_small(ctx: dict, res: Results) -> None:
    """Stage 11: small in-memory images, the calls notebooks and training pipelines make:
    ``rastermatch.match_histograms(src, ref, channel_axis=-1)`` vs scikit-image's
    ``match_histograms(src, ref, channel_axis=-1)``, 31 calls each, interleaved, medians.
    Targets: <= scikit-image on the uint8 pairs, <= 2x on the float32 one. Then the cost of the
    first call in a fresh process (import, then the first uint8 and float32 matches) with the
    compiled kernels cached and compiled afresh. ``--stages 11`` runs it alone (no inputs)."""
    from skimage.exposure import match_histograms as sk_match

    log, reps = ctx["log"], max(ctx["repeats"], 31)
    for label, shape, dtype in SMALL_CASES:
        src, ref = small_pair(shape, dtype)
        ours = Case(label + " rastermatch", lambda s=src, r=ref: rastermatch.match_histograms(
            s, r, channel_axis=-1))  # fmt: skip
        peer = Case(label + " skimage", lambda s=src, r=ref: sk_match(s, r, channel_axis=-1))
        _quiet_measure([ours, peer], reps, log)
        ratio = ours.median / peer.median
        limit = 1.0 if dtype == "uint8" else 2.0
        res.add(
            "11 small",
            f"match_histograms {label}",
            ours.median,
            src.size,
            peer="skimage channel_axis=-1",
            peer_time_s=peer.median,
            ratio=ratio,
            ratio_label="x skimage",
            target=f"≤ {limit:g}x skimage",
            met=ratio <= limit,
            cases={"rastermatch": ours.as_dict(), "skimage": peer.as_dict()},
        )
    cold_dir = ctx["tmp"] / "numba-cold-cache"
    shutil.rmtree(cold_dir, ignore_errors=True)
    cold = first_call(cold_dir)
    warm = first_call(None)
    warm = first_call(None)  # the user's cache, filled by the call before if it was empty
    log(f"    first call, kernels compiled: import {cold[0]:.2f} s, first matches {cold[1]:.2f} s")
    log(f"    first call, kernels cached:   import {warm[0]:.2f} s, first matches {warm[1]:.2f} s")
    for what, (imported, called) in (("compiled afresh", cold), ("cached", warm)):
        res.add("11 small", f"fresh process, kernels {what}: import", imported, None)
        res.add("11 small", f"fresh process, kernels {what}: first 2 matches", called, None)
    shutil.rmtree(cold_dir, ignore_errors=True)


def _quiet_measure(cases: Sequence[Case], repeats: int, log: Callable) -> None:
    """:func:`measure` without the peak-RSS sampler, whose thread start costs more than these
    calls take (the times of one call, interleaved, medians)."""
    for case in cases:
        case.fn()
    for r in range(repeats):
        for case in cases if r % 2 == 0 else list(reversed(cases)):
            t0 = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - t0)
            case.peaks.append(0)
    for case in cases:
        log(f"    {case.name}: median {case.median * 1e3:.2f} ms")


def plain_pair(size: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit scene without nodata and its reference, built in place (no big temporaries)."""
    rng = np.random.default_rng(SEED)
    src = np.empty((bands, size, size), np.uint16)
    ref = np.empty_like(src)
    ramp = np.linspace(0, 1, size)
    for b in range(bands):
        for y0 in range(0, size, 1024):
            y1 = min(y0 + 1024, size)
            field = np.outer(np.sin(3 * ramp[y0:y1] + b) ** 2, np.cos(2 * ramp + b) ** 2)
            noise = rng.normal(0, 0.05, field.shape)
            src[b, y0:y1] = np.clip((field + noise) * 4095, 0, 4095).astype(np.uint16)
            ref[b, y0:y1] = np.clip((field**2.2 + noise) * 4095, 0, 4095).astype(np.uint16)
    return src, ref


def stage_direct(ctx: dict, res: Results) -> None:
    """Stage 12: the in-memory path on large numpy scenes, ``--bands`` x ``--size``² uint16
    (12-bit): the stage-1 scene (nodata border, ``nodata=0``) and a plain one without nodata.
    ``rastermatch.match_histograms`` with ``--threads`` threads and with one vs scikit-image
    band by band (as stage 1), 5 calls each at least, interleaved, medians. Target: >= 10x
    scikit-image."""
    from skimage.exposure import match_histograms as sk_match

    log, reps = ctx["log"], max(ctx["repeats"], 5)
    scenes = {"plain 12-bit": plain_pair(ctx["size"], ctx["bands"])}
    if "src_np" in ctx:
        scenes["stage-1 scene, nodata=0"] = (ctx["src_np"], ctx["ref_np"])
    for label, (src, ref) in scenes.items():
        kw = {"nodata": 0, "reference_nodata": 0} if "nodata" in label else {}

        def ours(threads: int, src=src, ref=ref, kw=kw) -> None:
            ctx.pop("_out", None)
            with dask.config.set(num_workers=threads):
                ctx["_out"] = rastermatch.match_histograms(src, ref, **kw)

        def skimage(src=src, ref=ref) -> None:
            ctx.pop("_out_sk", None)
            out = np.empty_like(src)
            for b in range(src.shape[0]):
                out[b] = sk_match(src[b], ref[b], channel_axis=None)
            ctx["_out_sk"] = out

        many = Case(f"{label}: rastermatch, {ctx['threads']} threads",
                    lambda: ours(ctx["threads"]))  # fmt: skip
        one = Case(f"{label}: rastermatch, 1 thread", lambda: ours(1))
        peer = Case(f"{label}: skimage per band", skimage)
        measure([many, one, peer], reps, log)
        ctx.pop("_out", None), ctx.pop("_out_sk", None)
        for case, what in ((many, f"{ctx['threads']} threads"), (one, "1 thread")):
            speedup = peer.median / case.median
            res.add(
                "12 in-memory",
                f"match_histograms {label}, {what}",
                case.median,
                src.size,
                peer="skimage per band",
                peer_time_s=peer.median,
                ratio=speedup,
                ratio_label="x faster",
                peak_rss=case.peak,
                target="≥ 10x faster than skimage",
                met=speedup >= 10,
                cases={"rastermatch": case.as_dict(), "skimage": peer.as_dict()},
            )
        res.add(
            "12 in-memory",
            f"{ctx['threads']} threads vs 1",
            many.median,
            src.size,
            peer="1 thread",
            peer_time_s=one.median,
            ratio=one.median / many.median,
            ratio_label="x",
        )


# -- stages 13-14: compact counts and Zarr throughput -------------------------------------------


def _dense_counts(arr: da.Array) -> da.Array:
    """The dask histogram path before compact counts, as the peer of stage 13: a fresh table of
    every level per block (``block_counts``), summed by dask's own tree into int64."""
    from rastermatch.histogram import block_counts

    per_block = da.blockwise(
        block_counts, "byxn", arr, "byx", new_axes={"n": 65_536},
        adjust_chunks={"y": 1, "x": 1}, dtype=np.int32, meta=np.empty((0,) * 4, np.int32),
        kind="levels", nbins=65_536, offset=0, nodata=0,
    )  # fmt: skip
    return per_block.sum(axis=(1, 2), dtype=np.int64)


def _contiguous_blocks(src: np.ndarray, c: int) -> da.Array:
    """``src`` as dask chunks ``(1, c, c)`` that are contiguous arrays of their own, as decoded
    Zarr or GeoTIFF chunks are. Chunks of ``da.from_array(src)`` are strided views instead,
    rows a power of two apart: reading them conflicts in the cache, and counting a 1024² view
    of an 8192-wide band took 1.4-1.7x the time of counting the same block contiguous here."""
    from dask.highlevelgraph import HighLevelGraph

    nb, ny, nx = src.shape
    name = f"contiguous-{c}-{dask.base.tokenize(src)}"
    pieces = {
        (name, b, i // c, j // c): np.ascontiguousarray(src[b : b + 1, i : i + c, j : j + c])
        for b in range(nb)
        for i in range(0, ny, c)
        for j in range(0, nx, c)
    }  # one layer, as an opened Zarr array has (da.block would make one per block)
    chunks = (
        (1,) * nb,
        da.core.normalize_chunks(c, (ny,))[0],
        da.core.normalize_chunks(c, (nx,))[0],
    )
    graph = HighLevelGraph.from_collections(name, pieces, dependencies=())
    return da.Array(graph, name, chunks, dtype=src.dtype, meta=np.empty((0, 0, 0), src.dtype))


def _cpu_timed(fn: Callable[[], Any], sink: list[float]) -> Callable[[], None]:
    """``fn`` that also records the CPU seconds of this process (all its threads) per call: on
    a shared machine they drift less than the wall time, which other work stretches."""

    def run() -> None:
        t = time.process_time()
        fn()
        sink.append(time.process_time() - t)

    return run


def _task_share(fn: Callable[[], Any], threads: int) -> dict[str, float]:
    """One run of ``fn`` under dask's Profiler: wall time, the seconds its tasks ran (summed
    over threads), and the serial gaps (no task running: graph building, client-side work)."""
    from dask.diagnostics import Profiler

    with Profiler() as prof:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
    spans = sorted((r.start_time, r.end_time) for r in prof.results)
    idle, reach = 0.0, t0
    for a, b in spans:
        idle += max(0.0, a - reach)
        reach = max(reach, b)
    idle += max(0.0, t1 - reach)
    busy = sum(b - a for a, b in spans)
    return {
        "wall_s": t1 - t0,
        "task_s": busy,
        "no_task_s": idle,
        "slot_idle_share": 1 - busy / (threads * (t1 - t0)),
        "tasks": len(spans),
    }


def stage_compact(ctx: dict, res: Results) -> None:
    """Compact per-block counts: ``band_histograms`` of the numpy scene as dask chunks of
    1024², 2048² and 4096² on the threaded scheduler, against the dense per-block path it
    replaced, interleaved. Targets (#12): <= 0.5 ns/px per core (wall x threads) at 2048², and
    1024² no more than 1.3x the time of 4096²."""
    if "src_np" not in ctx:  # stage 3 dropped it
        ctx["src_np"] = load_numpy(ctx["paths"]["src.zarr"])
    src, n, log = ctx["src_np"], ctx["threads"], ctx["log"]
    reps = max(ctx["repeats"], 5)
    cases: dict[tuple[str, int], Case] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    arrays = {c: _contiguous_blocks(src, c) for c in (1024, 2048, 4096)}
    for c, arr in arrays.items():
        for kind, what, fn in (
            ("compact", f"band_histograms {c}² chunks (compact)",
             lambda arr=arr: rastermatch.band_histograms(arr, nodata=0).compute()),
            ("dense", f"dense per-block counts {c}² chunks",
             lambda arr=arr: _dense_counts(arr).compute()),
        ):  # fmt: skip
            cpu[kind, c] = []
            cases[kind, c] = Case(what, _cpu_timed(fn, cpu[kind, c]))
    with dask.config.set(scheduler="threads", num_workers=n):
        measure(list(cases.values()), reps, log)
        same = np.array_equal(
            rastermatch.band_histograms(arrays[1024], nodata=0).compute().counts,
            _dense_counts(arrays[4096]).compute(),
        )
        shares = {
            c: _task_share(cases["compact", c].fn, n) for c in (1024, 2048, 4096)
        }  # fmt: skip
    for c in (1024, 2048, 4096):
        comp, dense = cases["compact", c], cases["dense", c]
        per_core = comp.median / src.size * 1e9 * n
        cpu_ns = {
            k: statistics.median(cpu[k, c][1:]) / src.size * 1e9 for k in ("compact", "dense")
        }
        res.add(
            "13 compact",
            f"band_histograms dask {c}², {n} threads",
            comp.median,
            src.size,
            peer="dense per-block counts",
            peer_time_s=dense.median,
            ratio=dense.median / comp.median,
            ratio_label="x faster",
            target="≤ 0.5 ns/px per core" if c == 2048 else "",
            met=per_core <= 0.5 if c == 2048 else None,
            ns_per_px_per_core=per_core,
            equal_to_dense=same,
            cpu_ns_per_px=cpu_ns,
            profile=shares[c],
            cases={"compact": comp.as_dict(), "dense": dense.as_dict()},
        )
        log(
            f"    {c}²: {per_core:.2f} ns/px per core (wall x {n}), CPU {cpu_ns['compact']:.2f} "
            f"ns/px (dense {cpu_ns['dense']:.2f}); tasks {shares[c]['tasks']}, "
            f"{shares[c]['task_s']:.2f} task-s in {shares[c]['wall_s']:.2f} s wall, "
            f"{shares[c]['no_task_s']:.2f} s with no task running"
        )
    for kind in ("compact", "dense"):
        ratio = cases[kind, 1024].median / cases[kind, 4096].median
        cpu_ratio = statistics.median(cpu[kind, 1024][1:]) / statistics.median(cpu[kind, 4096][1:])
        log(f"    {kind}: 1024²/4096² wall {ratio:.2f}x, CPU {cpu_ratio:.2f}x")
        res.add(
            "13 compact",
            f"{kind}: 1024² time / 4096² time",
            None,
            None,
            ratio=ratio,
            ratio_label="x",
            target="≤ 1.3x" if kind == "compact" else "",
            met=ratio <= 1.3 if kind == "compact" else None,
            cpu_ratio=cpu_ratio,
        )


def stage_throughput(ctx: dict, res: Results) -> None:
    """Zarr (blosc-lz4) end to end: ``match_files`` of the stage-3 pair against the two-pass
    floor (read both, copy the source with ``write_raster``), interleaved; MPx/s per core and
    the ratio to the floor. One more run of each under dask's Profiler splits the wall time
    into task time and serial gaps (no task running: opening, graph building, LUT and quality
    between the passes, metadata). Targets (#12): >= 80 MPx/s per core, <= 1.15x the floor."""
    p, tmp, n, npx = ctx["paths"], ctx["tmp"], ctx["threads"], ctx["npx"]
    out, copy = tmp / "throughput-matched.zarr", tmp / "throughput-copy.zarr"
    cpu_m: list[float] = []
    cpu_f: list[float] = []
    m = Case(
        "match_files zarr",
        _cpu_timed(lambda: match_files(p["src.zarr"], p["ref.zarr"], out, nodata=0), cpu_m),
        setup=remove(out),
    )
    f = Case(
        "two-pass floor",
        _cpu_timed(_floor(p["src.zarr"], p["ref.zarr"], copy), cpu_f),
        setup=remove(copy),
    )
    with dask.config.set(scheduler="threads", num_workers=n):
        measure([m, f], max(ctx["repeats"], 3), ctx["log"])
        remove(out)()
        prof_m = _task_split(m.fn, n)
        remove(copy)()
        prof_f = _task_split(f.fn, n)
    remove(out, copy)()
    rate = npx / m.median / n / 1e6
    ratio = m.median / f.median
    cm, cf = statistics.median(cpu_m[1:]), statistics.median(cpu_f[1:])
    res.add(
        "14 throughput",
        f"match_files zarr, {n} threads",
        m.median,
        npx,
        peer="two-pass floor",
        peer_time_s=f.median,
        ratio=ratio,
        ratio_label="x floor",
        peak_rss=m.peak,
        target="≤ 1.15x floor",
        met=ratio <= 1.15,
        profile={"match": prof_m, "floor": prof_f},
        cpu_s={"match_files": cm, "floor": cf},
        cases={"match_files": m.as_dict(), "floor": f.as_dict()},
    )
    res.add(
        "14 throughput",
        "match_files MPx/s per core",
        None,
        None,
        ratio=rate,
        ratio_label="MPx/s/core",
        target="≥ 80 MPx/s per core",
        met=rate >= 80,
        floor_mpx_s_per_core=npx / f.median / n / 1e6,
    )
    ctx["log"](f"    CPU: match_files {cm:.2f} s, floor {cf:.2f} s ({cm / cf:.2f}x)")
    for what, pr in (("match_files", prof_m), ("floor", prof_f)):
        ctx["log"](
            f"    {what}: {pr['wall_s']:.2f} s wall, {pr['task_s']:.2f} task-s over {n} "
            f"threads, {pr['no_task_s']:.2f} s with no task running, "
            f"{pr['slot_idle_share']:.0%} of thread time idle"
        )
        split = ", ".join(f"{k} {v:.2f}" for k, v in pr["task_s_by_kind"].items() if v >= 0.005)
        ctx["log"](f"      task-s by kind: {split}")


def _task_split(fn: Callable[[], Any], threads: int) -> dict[str, Any]:
    """:func:`_task_share`, and the task seconds by kind of task (the key's name without its
    token: ``open_raster`` reads, ``rastermatch-counts``, ``store-map`` read+map+write, ...),
    largest first."""
    import re

    from dask.diagnostics import Profiler

    with Profiler() as prof:
        share = _task_share(fn, threads)
    by_kind: dict[str, float] = {}
    for r in prof.results:
        key = r.key[0] if isinstance(r.key, tuple) else r.key
        kind = re.sub(r"-[0-9a-f]{8,}(-[0-9a-f-]+)?$", "", str(key))
        by_kind[kind] = by_kind.get(kind, 0.0) + (r.end_time - r.start_time)
    share["task_s_by_kind"] = dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))
    return share


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8192, help="scene edge for stages 1-4 and 6")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=2048, help="Zarr chunk edge of the inputs")
    ap.add_argument(
        "--memory-sizes",
        default=None,
        help="scene edges for the peak-RSS stage, small,large (default 4096,16384: "
        "16x the pixels); one value measures one size only",
    )
    ap.add_argument(
        "--large-size",
        type=int,
        default=None,
        help="shorthand: --memory-sizes SIZE,LARGE; 0 measures --size only",
    )
    ap.add_argument(
        "--stack-size",
        type=int,
        default=4096,
        help="scene edge of the time stack of stage 7 (e.g. 1024 for a quick check)",
    )
    ap.add_argument("--dates", type=int, default=12, help="dates of the stack timed in stage 7")
    ap.add_argument(
        "--memory-dates",
        default="3,12",
        help="stage 7: dates of the stack jobs whose peak RSS is compared, small,large "
        "(empty: none)",
    )
    ap.add_argument(
        "--destripe-layouts",
        default="y16,column",
        help="stage 8: detector layouts, y16 (16 along y) and/or column (one per column; at "
        "8192² this took 10 min per job on 2 cores)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--stages", default="1,2,3,4,5,6,7,8,9,10,11,12,13,14")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rastermatch-benchmark"))
    ap.add_argument("--json", type=Path, default=REPO / "benchmark-results" / "benchmark.json")
    ap.add_argument("--child-job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_sizes is not None:
        args.memory_sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
    elif args.large_size is not None:
        args.memory_sizes = [args.size] + ([args.large_size] if args.large_size else [])
    else:
        args.memory_sizes = [4096, 16384]
    args.stages = sorted({int(s) for s in args.stages.split(",") if s.strip()})
    args.memory_dates = [int(s) for s in args.memory_dates.split(",") if s.strip()]
    args.destripe_layouts = [s.strip() for s in args.destripe_layouts.split(",") if s.strip()]
    unknown = set(args.destripe_layouts) - set(STRIPE_LAYOUTS)
    if unknown:
        ap.error(f"--destripe-layouts: unknown {sorted(unknown)}; use y16 and/or column")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_job is not None:
        print("RESULT " + json.dumps(child_job(json.loads(args.child_job))), flush=True)
        return 0

    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = args.workdir / "outputs"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    res = Results()
    ctx: dict[str, Any] = {
        "log": log,
        "repeats": args.repeats,
        "threads": args.threads,
        "chunk": args.chunk,
        "bands": args.bands,
        "workdir": args.workdir,
        "tmp": tmp,
        "memory_sizes": args.memory_sizes,
        "npx": args.bands * args.size**2,
        "size": args.size,
        "stack_size": args.stack_size,
        "dates": args.dates,
        "memory_dates": args.memory_dates,
        "destripe_layouts": args.destripe_layouts,
    }
    stage_seconds: dict[str, float] = {}
    log(
        f"rastermatch {rastermatch.__version__}: {args.bands}x{args.size}² uint16, "
        f"{args.threads} threads, stages {args.stages}, workdir {args.workdir}"
    )

    if set(args.stages) & {1, 2, 3, 4, 6, 8, 10, 12, 13, 14}:
        t = time.perf_counter()
        log("inputs")
        ctx["paths"] = ensure_scene(args.workdir, args.size, args.bands, args.chunk, log)
        res.extra["inputs"] = ctx["paths"]["manifest_data"]
        stage_seconds["inputs"] = time.perf_counter() - t
    if set(args.stages) & {1, 2, 12}:
        ctx["src_np"] = load_numpy(ctx["paths"]["src.zarr"])
        ctx["ref_np"] = load_numpy(ctx["paths"]["ref.zarr"])
    stages = {
        1: ("in memory", stage_in_memory),
        2: ("histogram kernel", stage_histogram),
        3: ("zarr→zarr", stage_zarr),
        4: ("geotiff→geotiff", stage_geotiff),
        5: ("peak memory", stage_memory),
        6: ("LocalCluster", stage_cluster),
        7: ("time stack", stage_stack),
        8: ("detector balancing", stage_destripe),
        9: ("optimal LUTs", stage_optimal),
        10: ("exact specification", stage_specify),
        11: ("small images", stage_small),
        12: ("in-memory path", stage_direct),
        13: ("compact counts", stage_compact),
        14: ("zarr throughput", stage_throughput),
    }
    # the memory stage runs last: its large scene (several GB of files) evicts the other
    # inputs from the page cache
    for number in sorted(args.stages, key=lambda k: (k == 5, k)):
        name, fn = stages[number]
        if number == 3 and "src_np" in ctx:  # the numpy scene is not needed any more
            del ctx["src_np"], ctx["ref_np"]
            gc.collect()
        log(f"stage {number}: {name}")
        t = time.perf_counter()
        fn(ctx, res)
        stage_seconds[f"{number} {name}"] = time.perf_counter() - t
        log(f"stage {number} done in {stage_seconds[f'{number} {name}']:.0f} s")

    table = res.table()
    print()
    print(table)
    print()
    total = time.perf_counter() - t_start
    print(
        "stage seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in stage_seconds.items())
        + f"; total {total:.0f} s"
    )
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": rastermatch.pipeline.versions(),
        "rows": res.rows,
        "extra": res.extra,
        "stage_seconds": stage_seconds,
        "total_seconds": total,
        "table": table,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=_json_default))
    print(f"wrote {args.json}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    sys.exit(main())
