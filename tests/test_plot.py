"""Plots: they run headless on small data, return matplotlib objects and write valid PNGs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rastermatch import band_histograms, fit_lut
from rastermatch.metrics import matched_histogram, quality_table
from rastermatch.plot import (
    figure_png,
    plot_histogram,
    plot_lut,
    report_figure,
    save_report,
)

DATA = Path(__file__).resolve().parent.parent / "data"
PNG = b"\x89PNG\r\n\x1a\n"


def _axes() -> Axes:
    return Figure().add_subplot()


@pytest.fixture(scope="module")
def cross_sensor():
    """A crop of the NAIP (uint8) -> Landsat (uint16, nodata 0) pair, dask-backed."""
    import rioxarray

    src = rioxarray.open_rasterio(DATA / "riohist_source1_naip.tif", chunks={"y": 128})
    ref = rioxarray.open_rasterio(DATA / "riohist_reference1_landsat.tif", chunks={"y": 128})
    src, ref = src[:, :300, :200], ref[:, :150, :120]
    lut = fit_lut(src, ref)
    return src, ref, lut.apply(src), lut


def test_plot_histogram_draws_one_cdf_per_band():
    h = band_histograms(np.array([[[0, 1, 1], [3, 3, 3]], [[5, 5, 6], [7, 7, 7]]], np.uint8))
    ax = plot_histogram(h, ax=_axes(), color="k")
    assert isinstance(ax, Axes)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["band 1", "band 2"]
    # a step from 0 at the first level up to 1 at the last, in value units
    assert lines[0].get_xdata().tolist() == [0, 0, 1, 3]
    assert lines[0].get_ydata().tolist() == pytest.approx([0, 1 / 6, 3 / 6, 1])
    assert ax.get_legend() is not None


def test_plot_histogram_without_axes_needs_no_pyplot():
    h = band_histograms(np.array([[1, 2, 2, 9]], dtype=np.uint16))
    assert isinstance(plot_histogram(h), Axes)


def test_plot_lut_spans_the_source_values():
    source = np.array([[10, 10, 20, 30]], dtype=np.uint8)
    lut = fit_lut(source, np.array([[1, 5, 5, 9]], dtype=np.uint8))
    ax = plot_lut(lut, ax=_axes())
    (line,) = ax.get_lines()
    assert line.get_xdata()[[0, -1]].tolist() == [10, 30]
    assert line.get_ydata()[[0, -1]].tolist() == [1, 9]
    assert ax.get_xlabel() == "source value (uint8)"


def test_repr_png_of_histogram_and_lut():
    source = np.arange(100, dtype=np.uint8).reshape(1, 10, 10)
    lut = fit_lut(source, source[:, ::-1] // 2)
    assert lut.source_hist._repr_png_().startswith(PNG)
    assert lut._repr_png_().startswith(PNG)
    assert figure_png(lut.plot).startswith(PNG)
    lazy = band_histograms(da.from_array(source))
    assert lazy._repr_png_() is None  # notebooks fall back to the text repr


def test_report_figure_rows_panels_and_titles(cross_sensor):
    src, ref, matched, lut = cross_sensor
    rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    fig = report_figure(src, ref, matched, lut, metrics=rows, max_quicklook=64, title="check")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "check"
    assert len(fig.subfigs) == 3
    for row, label, metrics in zip(fig.subfigs, lut.bands, rows, strict=True):
        cdf, curve, *looks = row.axes[:5]  # a twin axis for the source CDF comes last
        assert row.get_suptitle().startswith(f"band {label}")
        assert f"KS {metrics['ks_before']:.3f} → {metrics['ks_after']:.3f}" in row.get_suptitle()
        assert {line.get_label() for line in cdf.get_lines()} >= {"reference", "matched"}
        assert curve.get_lines()
        for ax in looks:
            (image,) = ax.get_images()
            assert max(image.get_array().shape) <= 64  # decimated before it was computed
    fig.savefig(io.BytesIO(), format="png")  # it renders


def test_report_stretch_and_nodata(rng):
    """Same units: source and matched take the reference's stretch; nodata is masked."""
    source = rng.integers(20, 120, (1, 40, 50)).astype(np.uint8)
    source[0, :5] = 0
    reference = rng.integers(40, 160, (1, 30, 30)).astype(np.uint8)
    lut = fit_lut(source, reference, nodata=0)
    fig = report_figure(source, reference, lut.apply(source), lut)
    images = [ax.get_images()[0] for ax in fig.subfigs[0].axes if ax.get_images()]
    assert len(images) == 3
    src_img, ref_img, out_img = images
    assert src_img.get_clim() == ref_img.get_clim() == out_img.get_clim()
    assert np.ma.getmaskarray(src_img.get_array())[:5].all()  # nodata drawn transparent
    assert not np.ma.getmaskarray(src_img.get_array())[5:].any()

    # different dtypes: the source keeps its own stretch, and its panel says so
    lut16 = fit_lut(source, reference.astype(np.uint16) * 100, nodata=0)
    fig = report_figure(source, reference.astype(np.uint16) * 100, None, lut16)
    axes = [ax for ax in fig.subfigs[0].axes if ax.get_images()]
    assert axes[0].get_images()[0].get_clim() != axes[1].get_images()[0].get_clim()
    assert "uint8" in axes[0].get_title(loc="left")


def test_report_reads_lazily_loaded_rasters_at_quicklook_size(cross_sensor):
    import rioxarray

    *_, lut = cross_sensor
    src = rioxarray.open_rasterio(DATA / "riohist_source1_naip.tif")[:, :300, :200]
    fig = report_figure(src, src, None, lut, max_quicklook=50)
    assert not src._in_memory  # only the strided pixels were read
    (image,) = fig.subfigs[0].axes[2].get_images()
    assert image.get_array().shape == (50, 34)


def test_save_report_writes_a_png(tmp_path, cross_sensor):
    import matplotlib.image

    src, ref, matched, lut = cross_sensor
    path = save_report(tmp_path / "report.png", src, ref, matched, lut, max_quicklook=48, dpi=50)
    assert path == tmp_path / "report.png"
    assert path.read_bytes().startswith(PNG)
    assert matplotlib.image.imread(path).ndim == 3


def test_report_refuses_band_mismatch(cross_sensor):
    from rastermatch.errors import BandMismatchError

    src, ref, matched, lut = cross_sensor
    with pytest.raises(BandMismatchError):
        report_figure(src[:2], ref, matched, lut)


def test_plotting_never_imports_pyplot(tmp_path):
    """Reports render on servers: no pyplot, no backend switch, matplotlib only when plotting."""
    code = (
        "import sys, numpy as np, rastermatch\n"
        "assert 'matplotlib' not in sys.modules\n"
        "from rastermatch.plot import save_report\n"
        "s = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)\n"
        "lut = rastermatch.fit_lut(s, s * 2)\n"
        "save_report('report.png', s, s * 2, None, lut, dpi=30)\n"
        "assert lut._repr_png_()[:4] == b'\\x89PNG'\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.png").read_bytes().startswith(PNG)


# -- the destriping report --------------------------------------------------------------------


def _striped(n: int = 8, shape: tuple[int, int, int] = (2, 64, 56)):
    """A smooth scene and the same scene with a gain per detector along y, uint16."""
    y, x = np.mgrid[: shape[1], : shape[2]]
    scene = (300 + 2 * x + 40 * np.sin(y / 7.0))[None] * np.arange(1, shape[0] + 1)[:, None, None]
    gain = 1 + 0.05 * np.sin(np.arange(shape[1]) * 2.4)[np.arange(shape[1]) % n]
    striped = scene * gain[None, :, None]
    return striped.astype(np.uint16), scene.astype(np.uint16)


@pytest.mark.parametrize("axis", ["y", "x"])
def test_destripe_report_renders_lazily_in_one_compute(axis):
    from conftest import raise_if_dask_computes

    from rastermatch.plot import destripe_report_figure

    striped, scene = _striped()
    striped[:, :6, :10] = 0  # a corner of nodata
    scene[:, :6, :10] = 0
    if axis == "x":
        striped, scene = np.swapaxes(striped, 1, 2).copy(), np.swapaxes(scene, 1, 2).copy()
    before = da.from_array(striped, chunks=(1, 32, 32))
    after = da.from_array(scene, chunks=(2, 20, 64))
    with raise_if_dask_computes(max_computes=1):
        fig = destripe_report_figure(before, after, 8, axis=axis, nodata=0, zoom=32)
    assert isinstance(fig, Figure)
    assert len(fig.subfigs) == 2 and all(len(sub.axes) == 4 for sub in fig.subfigs)
    title = fig._suptitle.get_text()
    assert title.startswith(f"Detector balancing, 8 detectors along {axis}: stripe power down")
    full, near, before_ax, _ = fig.subfigs[0].axes
    line = "line" if axis == "y" else "column"
    assert full.get_xlabel() == near.get_xlabel() == line
    assert [ln.get_label() for ln in full.get_lines()] == ["before", "after"]
    assert len(full.get_lines()[0].get_xdata()) == 64
    window = before_ax.get_images()[0].get_array()
    assert window.shape == (32, 32) and np.isfinite(window).mean() > 0.5
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:8] == PNG


def test_destripe_report_of_a_dataarray_with_a_mask_and_one_detector_per_column(tmp_path):
    import xarray as xr

    from rastermatch.metrics import destripe_quality
    from rastermatch.plot import save_destripe_report

    striped, scene = _striped(shape=(1, 40, 70))
    striped = np.swapaxes(striped, 1, 2)[0]  # 2-D (y, x), stripes down the columns
    scene = np.swapaxes(scene, 1, 2)[0]
    mask = np.zeros(striped.shape, bool)
    mask[:, :4] = True
    before = xr.DataArray(striped, dims=("y", "x"))
    path, rows = save_destripe_report(
        tmp_path / "destripe.png", before, before.copy(data=scene), None, axis="x", mask=mask,
        title="push-broom", return_quality=True, dpi=40,
    )  # fmt: skip
    assert path.read_bytes()[:8] == PNG
    after = before.copy(data=scene)
    assert rows == destripe_quality(before, after, None, axis="x", mask=mask)
