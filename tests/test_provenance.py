"""Provenance (rastermatch.provenance): one versioned record, small headers, the full LUT in a
Zarr array or a GeoTIFF sidecar, read back whole; damaged or hostile records refused."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

import rastermatch
from rastermatch import LUT, RasterReadError, RasterWriteError
from rastermatch import provenance as prov
from rastermatch.errors import OutputExistsError
from rastermatch.io import check_output_path, open_raster, read_provenance, write_raster

DATA = Path(__file__).resolve().parent.parent / "data"
SOURCE = DATA / "arrnorm_target.tif"  # 4 bands of uint16
REFERENCE = DATA / "arrnorm_ref_adjusted2target.tif"
SMALL = DATA / "rasterio_RGB.byte.tif"
LIMIT = 16 * 1024


def _sizes_script():
    """``pipelines/provenance_sizes.py``, whose header measurements the tests assert on."""
    script = Path(__file__).resolve().parents[1] / "pipelines" / "provenance_sizes.py"
    spec = importlib.util.spec_from_file_location("provenance_sizes", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SIZES = _sizes_script()
gdal_metadata_bytes = _SIZES.gdal_metadata_bytes  # bytes of the GDAL metadata XML (tag 42112)
first_tile_offset = _SIZES.first_tile_offset  # where the first tile of any image starts


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    """A 4-band uint16 match, written as GeoTIFF (by match_files: staged), COG and Zarr."""
    from rastermatch.pipeline import match_files

    folder = tmp_path_factory.mktemp("prov")
    result = match_files(SOURCE, REFERENCE, folder / "m.tif", nodata=0)
    record = prov.match_record(result.lut, result.quality, source=SOURCE, reference=REFERENCE,
                               mask=None, reference_mask=None)  # fmt: skip
    data = result.lut.apply(open_raster(SOURCE), nodata=0)
    cog = write_raster(data, folder / "c.tif", cog=True, tile_size=128, provenance=record)
    zarr = write_raster(data, folder / "z.zarr", provenance=record)
    return {"folder": folder, "tif": result.output, "cog": cog, "zarr": zarr, "record": record,
            "lut": result.lut}  # fmt: skip


def test_headers_are_small(matched):
    for key in ("tif", "cog"):
        path = matched[key]
        assert gdal_metadata_bytes(path) < LIMIT
        assert first_tile_offset(path) < LIMIT  # 555,614 bytes before this change
        assert prov.sidecar_path(path).exists()  # the LUT did not fit: its sidecar
    root = json.loads((matched["zarr"] / "zarr.json").read_text())
    assert (matched["zarr"] / "zarr.json").stat().st_size < LIMIT  # 1.75 MB before
    assert (matched["zarr"] / "data" / "zarr.json").stat().st_size < LIMIT  # 1.35 MB before
    # stored once: on the root group, not again on the variable (nor in consolidated metadata)
    assert root["attributes"]["rastermatch"]["lut"]["array"] == prov.ZARR_ARRAY
    text = (matched["zarr"] / "zarr.json").read_text()
    assert text.count(f'"schema": "{prov.SCHEMA}"') == 1
    assert (
        "rastermatch"
        not in json.loads((matched["zarr"] / "data" / "zarr.json").read_text())["attributes"]
    )
    # the summary: inputs, operation, method, quality, versions and where the LUT is
    summary = root["attributes"]["rastermatch"]
    assert summary["schema"] == prov.SCHEMA and summary["operation"] == "match"
    assert summary["inputs"]["source"] == str(SOURCE) and len(summary["quality"]) == 4
    assert {"rastermatch", "gdal", "zarr"} <= set(summary["versions"])


def test_full_record_reads_back_as_built(matched):
    record = matched["record"]
    for key in ("tif", "cog", "zarr"):
        assert read_provenance(matched[key]) == record, key
    # no leftovers of the staged write: raster and sidecar under their final names only
    assert sorted(p.name for p in matched["folder"].iterdir()) == [
        "c.tif", "c.tif.lut.json", "m.tif", "m.tif.lut.json", "z.zarr",
    ]  # fmt: skip
    # open_raster does not take the record array for a raster
    assert open_raster(matched["zarr"]).dims == ("band", "y", "x")


def test_lut_from_sidecar_and_array_reapplies_identically(matched):
    scene = open_raster(SOURCE)
    expected = open_raster(matched["tif"]).values
    from_sidecar = LUT.load(prov.sidecar_path(matched["tif"]))
    np.testing.assert_array_equal(from_sidecar.apply(scene, nodata=0).values, expected)
    from_array = LUT.from_dict(read_provenance(matched["zarr"])["lut"])
    np.testing.assert_array_equal(from_array.apply(scene, nodata=0).values, expected)
    np.testing.assert_array_equal(open_raster(matched["zarr"]).values, expected)


def test_small_record_stays_in_the_tag(tmp_path):
    scene = open_raster(SMALL).isel(x=slice(300, 364), y=slice(300, 364))
    lut = rastermatch.fit_lut(scene, scene)
    record = prov.match_record(lut, [], operation="apply", source="a.tif", lut=None)
    stored = prov.prepare(record, "gtiff")
    if stored.payload is not None:  # a 3-band uint8 LUT of a 64 x 64 crop is a few KB
        pytest.skip("the LUT document is larger than the header bound here")
    out = write_raster(scene, tmp_path / "s.tif", provenance=record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    assert read_provenance(out) == record
    # a Zarr store puts the LUT in its array whatever its size
    zarr = write_raster(scene, tmp_path / "s.zarr", provenance=record)
    assert (zarr / prov.ZARR_ARRAY).is_dir() and read_provenance(zarr) == record


def test_large_other_fields_travel_in_the_sidecar(matched, tmp_path):
    """A record whose non-LUT fields outgrow the header (thousands of references) keeps a
    small header; the sidecar still loads as a LUT."""
    record = dict(matched["record"])
    record["inputs"] = {"source": "a.tif", "references": [f"/s/{i:05d}.tif" for i in range(3000)]}
    data = open_raster(matched["tif"])
    out = write_raster(data, tmp_path / "big.tif", provenance=record)
    assert gdal_metadata_bytes(out) < LIMIT
    assert read_provenance(out) == record
    LUT.load(prov.sidecar_path(out))  # still a LUT file
    header = json.loads(prov.prepare(record, "gtiff").header)
    assert set(header["lut"]["fields"]) == {"lut", "inputs"}


def test_caller_records_are_stored_whole_once(tmp_path):
    scene = open_raster(SMALL).isel(x=slice(0, 32), y=slice(0, 32))
    out = write_raster(scene, tmp_path / "s.zarr", provenance={"step": "copy"})
    assert read_provenance(out) == {"step": "copy"}
    assert json.loads((out / "zarr.json").read_text())["attributes"]["rastermatch"] == {
        "step": "copy"
    }
    assert not (out / prov.ZARR_ARRAY).exists()


def test_damaged_or_hostile_records_are_refused(matched, tmp_path):
    import shutil

    tif = tmp_path / "t.tif"
    shutil.copy(matched["tif"], tif)
    side = prov.sidecar_path(tif)
    with pytest.raises(RasterReadError, match="is missing"):
        read_provenance(tif)
    good = prov.sidecar_path(matched["tif"]).read_bytes()
    side.write_bytes(good.replace(b'"nodata"', b'"nodatA"', 1))  # edited: hash differs
    with pytest.raises(RasterReadError, match="SHA-256"):
        read_provenance(tif)
    side.write_bytes(good + b" ")
    with pytest.raises(RasterReadError, match="does not belong"):
        read_provenance(tif)
    side.unlink()
    os.mkfifo(side)  # a FIFO in its place would block a reader: refused unopened
    with pytest.raises(RasterReadError, match="not a regular file"):
        read_provenance(tif)
    side.unlink()
    side.write_bytes(good)
    assert read_provenance(tif) == matched["record"]

    # the header itself: strict JSON only, a location whose fields are checked
    header = json.loads(prov.prepare(matched["record"], "gtiff").header)
    for bad, message in [
        ('{"schema": "rastermatch.provenance/2", "x": NaN}', "NaN"),
        ('{"a": 1, "a": 2}', "twice"),
        (json.dumps({**header, "lut": {**header["lut"], "sha256": "00"}}), "sha256"),
        (json.dumps({**header, "lut": {**header["lut"], "bytes": 2**40}}), "bytes"),
        (json.dumps({**header, "lut": {**header["lut"], "fields": ["../x"]}}), "fields"),
        (json.dumps({**header, "lut": {**header["lut"], "fields": ["lut", "schema"]}}), "fields"),
        (json.dumps({**header, "lut": {**header["lut"], "evil": 1}}), "location"),
        (json.dumps({**header, "schema": "rastermatch.provenance/9"}), "upgrade"),
        ("[1, 2]", "not an object"),
    ]:
        with rasterio.open(tif, "r+") as dst:
            dst.update_tags(ns="RASTERMATCH", provenance=bad)
        with pytest.raises(RasterReadError, match=message):
            read_provenance(tif)

    # a Zarr record array that is not what the header says
    import zarr

    store = tmp_path / "z.zarr"
    shutil.copytree(matched["zarr"], store)
    group = zarr.open_group(store, mode="r+")
    size = group[prov.ZARR_ARRAY].shape[0]
    del group[prov.ZARR_ARRAY]
    with pytest.raises(RasterReadError):
        read_provenance(store)
    zarr.create_array(store, name=prov.ZARR_ARRAY, shape=(size + 1,), dtype="uint8")
    with warnings.catch_warnings():  # zarr's notice that v3 has no consolidated metadata yet
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store)
    with pytest.raises(RasterReadError, match="uint8 of"):
        read_provenance(store)


def test_sidecar_never_replaces_an_input_or_an_existing_file(matched, tmp_path):
    data = open_raster(matched["tif"])
    record = matched["record"]
    # an input named like the sidecar: refused before any work, whatever overwrite says
    with pytest.raises(RasterWriteError, match="input"):
        check_output_path(tmp_path / "o.tif", inputs=[tmp_path / "o.tif.lut.json"], overwrite=True)
    # an existing sidecar: refused without overwrite, and nothing is left behind
    (tmp_path / "o.tif.lut.json").write_text("mine")
    with pytest.raises(OutputExistsError):
        write_raster(data, tmp_path / "o.tif", provenance=record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif.lut.json"]
    assert (tmp_path / "o.tif.lut.json").read_text() == "mine"
    out = write_raster(data, tmp_path / "o.tif", provenance=record, overwrite=True)
    assert read_provenance(out) == record


def test_sidecar_goes_with_a_raster_that_fails_to_move_in(matched, tmp_path, monkeypatch):
    import rastermatch.io as io

    real = io.move_into_place

    def failing(tmp, final, *, overwrite):
        if Path(final).suffix == ".tif":
            raise OSError(28, "No space left on device")
        return real(tmp, final, overwrite=overwrite)

    data, record = open_raster(matched["tif"]), matched["record"]
    write_raster(data, tmp_path / "old.tif", provenance=record)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(io, "move_into_place", failing)
    with pytest.raises(RasterWriteError, match="No space"):
        write_raster(data, tmp_path / "f.tif", provenance=record)
    # an overwrite that fails keeps the previous raster and its sidecar as they were
    other = {**record, "lut": {**record["lut"], "rastermatch_version": "other"}}
    with pytest.raises(RasterWriteError, match="No space"):
        write_raster(data, tmp_path / "old.tif", provenance=other, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_provenance(tmp_path / "old.tif") == record


def test_inputs_are_recorded_without_credentials():
    assert prov.input_text("s3://bucket/k/a.tif") == "s3://bucket/k/a.tif"
    assert prov.input_text("https://u:p@host:8443/a.tif?sig=1#x") == "https://host:8443/a.tif"
    assert prov.input_text([Path("a.tif"), None]) == ["a.tif", None]


def test_stale_sidecar_of_a_killed_job_is_removed(tmp_path):
    from rastermatch.io.atomic import _host_hash, _temp_prefix

    final = tmp_path / "x.tif"
    dead = f"{_temp_prefix(final)}-999999999-{_host_hash()}-0123abcd.tmp.tif{prov.SIDECAR_SUFFIX}"
    (tmp_path / dead).write_text("{}")
    assert [p.name for p in prov.remove_stale_sidecars(final)] == [dead]
    assert list(tmp_path.iterdir()) == []


def test_remote_outputs_read_back_whole(matched, tmp_path):
    """A GeoTIFF and its sidecar over HTTP (a loopback server in its own process), and a Zarr
    store written to memory://, read back whole."""
    import shutil

    import fsspec
    from servers import start_http_server

    for name in ("m.tif", "m.tif.lut.json"):
        shutil.copy(matched["folder"] / name, tmp_path / name)
    server = start_http_server(tmp_path)
    try:
        assert read_provenance(server.url("m.tif")) == matched["record"]
        (tmp_path / "m.tif.lut.json").unlink()
        with pytest.raises(RasterReadError, match="missing"):
            read_provenance(server.url("m.tif"))
    finally:
        server.stop()
    url = "memory://rastermatch-prov/z.zarr"
    try:
        write_raster(open_raster(matched["zarr"]), url, provenance=matched["record"])
        assert read_provenance(url) == matched["record"]
    finally:
        fsspec.filesystem("memory").rm("/rastermatch-prov", recursive=True)


def test_stack_zarr_header_stays_small_and_reads_back(tmp_path, monkeypatch):
    """A normalized (time, band, y, x) stack of 8 dates x 4 bands: its quality rows (and, for
    many inputs, the inputs) leave the root zarr.json as zarr indents it (was 20.7 KB with
    the GeoTIFF bound applied to unindented JSON), and the record reads back whole."""
    from rastermatch.pipeline import normalize_files

    scene = open_raster(SOURCE).isel(x=slice(0, 48), y=slice(0, 40))
    monkeypatch.chdir(tmp_path)  # short input names: the quality rows are most of the record
    sources = [f"2021-03-{day:02d}.tif" for day in range(1, 9)]
    for day, path in enumerate(sources, 1):
        write_raster(scene + day, path)
    built, real = [], prov.stack_record

    def keep(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(prov, "stack_record", keep)
    out = normalize_files(sources, REFERENCE, "stack.zarr", nodata=0).outputs[0]
    assert (out / "zarr.json").stat().st_size < LIMIT
    summary = json.loads((out / "zarr.json").read_text())["attributes"]["rastermatch"]
    assert "quality" in summary["lut"]["fields"]
    assert prov.zarr_header_bytes(summary) <= prov.ZARR_HEADER_MAX_BYTES
    assert read_provenance(out) == built[0]


def test_record_with_a_null_lut_and_a_sidecar_reads_back_whole(tmp_path):
    """A record whose LUT was omitted ("lut": null) and whose other fields outgrow the header:
    its sidecar carries the null, so the record reads back with its "lut" key (was lost)."""
    scene = open_raster(SMALL).isel(x=slice(0, 16), y=slice(0, 16))
    record = {"schema": prov.SCHEMA, "operation": "match", "lut": None, "lut_omitted": "big",
              "inputs": {"references": [f"/s/{i:05d}.tif" for i in range(3000)]}}  # fmt: skip
    out = write_raster(scene, tmp_path / "n.tif", provenance=record)
    assert prov.sidecar_path(out).exists() and gdal_metadata_bytes(out) < LIMIT
    assert read_provenance(out) == record


def test_remote_zarr_with_a_huge_metadata_document_is_refused_unread(monkeypatch):
    """A store's zarr.json larger than any record is refused from its size (a local store was;
    a remote one was read whole into memory)."""
    import fsspec

    url = "memory://rastermatch-prov-huge/z.zarr"
    try:
        fsspec.filesystem("memory").pipe("/rastermatch-prov-huge/z.zarr/zarr.json", b"{}")
        monkeypatch.setattr(prov, "_HEADER_READ_MAX", 1)
        with pytest.raises(RasterReadError, match="larger than"):
            read_provenance(url)
    finally:
        fsspec.filesystem("memory").rm("/rastermatch-prov-huge", recursive=True)


def test_owned_sidecar_is_only_the_one_the_raster_records(matched, tmp_path):
    import shutil

    tif = tmp_path / "t.tif"
    shutil.copy(matched["tif"], tif)
    side = prov.sidecar_path(tif)
    shutil.copy(prov.sidecar_path(matched["tif"]), side)
    assert prov.owned_sidecar(tif) == side
    side.write_bytes(side.read_bytes() + b" ")  # not the one the raster records
    assert prov.owned_sidecar(tif) is None
    side.unlink()
    side.symlink_to(prov.sidecar_path(matched["tif"]))  # a link: never removed through
    assert prov.owned_sidecar(tif) is None
    assert prov.owned_sidecar(tmp_path / "missing.tif") is None


def test_overwrite_without_a_sidecar_removes_the_replaced_outputs_own(matched, tmp_path):
    """A GeoTIFF with a sidecar replaced by one whose record fits its tag: the old sidecar (whose
    LUT LUT.load/apply would take for the new raster's) goes; a file of that name that is not
    the replaced raster's own stays."""
    data = open_raster(matched["tif"]).isel(x=slice(0, 16), y=slice(0, 16))
    out = write_raster(data, tmp_path / "o.tif", provenance=matched["record"])
    assert prov.sidecar_path(out).exists()
    write_raster(data, out, provenance={"step": "copy"}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]
    prov.sidecar_path(out).write_text("mine")
    write_raster(data, out, provenance={"step": "again"}, overwrite=True)
    assert prov.sidecar_path(out).read_text() == "mine"


def test_job_overwrite_without_a_sidecar_removes_the_replaced_outputs_own(matched, tmp_path):
    """A job's staged commit does the same as write_raster: an equalized output replacing a
    match's drops the match's sidecar."""
    import shutil

    from rastermatch.pipeline import equalize_file

    out = tmp_path / "m.tif"
    shutil.copy(matched["tif"], out)
    shutil.copy(prov.sidecar_path(matched["tif"]), prov.sidecar_path(out))
    equalize_file(SMALL, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]
    assert read_provenance(out)["operation"] == "equalize"
