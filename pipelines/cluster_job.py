"""Histogram matching as a dask.distributed job: the same code on a laptop or a cluster.

By default a local cluster of ``--workers`` processes is started (and stopped at the end); with
``--scheduler ADDRESS`` the job joins a running cluster instead (``dask scheduler`` /
``dask worker``, dask-jobqueue, dask-gateway, Coiled, ...). Either way the job is the same
:func:`rastermatch.pipeline.match_files` call: once a ``distributed.Client`` exists, dask runs
every step on it.

1. The statistics pass: both inputs are histogrammed on the workers, in one pass.
2. The application pass: the workers map the source through the LUT and each writes its own
   chunks of the Zarr output (so on a real cluster OUTPUT must be on storage every worker sees,
   as must the inputs).

Run::

    python pipelines/cluster_job.py SOURCE REFERENCE OUTPUT.zarr [--workers 2]
    python pipelines/cluster_job.py SOURCE REFERENCE OUTPUT.zarr --scheduler tcp://host:8786

for example::

    python pipelines/cluster_job.py data/arrnorm_target.tif \\
        data/arrnorm_ref_adjusted2target.tif /tmp/matched.zarr --nodata 0

Inputs and output may be URLs (``https://.../scene.tif``, ``s3://bucket/out.zarr``; install
``rastermatch[remote]`` for object stores): on a real cluster that is storage every worker
sees. Credentials come from the environment of every process (``AWS_*``, ...).

The dashboard link is printed first: open it to watch the tasks.
"""

from __future__ import annotations

import argparse
import sys

from rastermatch import RastermatchError
from rastermatch.io import check_output_path
from rastermatch.pipeline import dask_cluster, match_files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # str, not pathlib.Path: Path("https://host/a.tif") is "https:/host/a.tif"
    parser.add_argument("source", help="a path or URL")
    parser.add_argument("reference", help="a path or URL")
    parser.add_argument("output", help="output, normally a .zarr store (a path or a URL)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local worker processes (default 2)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="join this cluster instead")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--nodata", type=float, help="source nodata (default: the file's own)")
    parser.add_argument("--reference-nodata", type=float)
    parser.add_argument("--chunks", type=int, help="chunk edge in pixels (default: auto)")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before starting a cluster for nothing (match_files checks again, as it always does)
    check_output_path(args.output, inputs=[args.source, args.reference], overwrite=args.overwrite)
    workers = None if args.scheduler else (args.workers or 2)
    with dask_cluster(
        workers, args.scheduler, threads_per_worker=args.threads_per_worker
    ) as client:
        print(f"dashboard: {client.dashboard_link}", flush=True)
        result = match_files(
            args.source,
            args.reference,
            args.output,
            nodata=args.nodata,
            reference_nodata=args.reference_nodata,
            chunks={"y": args.chunks, "x": args.chunks} if args.chunks else "auto",
            overwrite=args.overwrite,
            show_progress=sys.stderr.isatty(),
        )
    print()
    print(result.quality_text())
    print(f"written: {result.output}")
    return 0


if __name__ == "__main__":  # required: the worker processes re-import this module
    try:
        sys.exit(main())
    except RastermatchError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)
