"""Faults as a user's machine meets them: disk full, bit rot, NaN, SIGTERM, symlink loops, EXIF.

Each test runs one row of issue 14 end to end (CliRunner or a subprocess) and checks what a user
sees: one line naming the file, exit 2 for input the user can fix or 1 for the environment, no
traceback, and nothing already finished damaged.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from headstart.features.errors import StoreError
from headstart.features.store import open_cache
from headstart.pipeline.cli import main
from test_train_head import make_cache


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, code: int, *names: str) -> str:
    """The command failed with ``code``, one "Error: …" line naming ``names``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], result.output
    return errors[0]


# -- bit rot --------------------------------------------------------------------------------------


def _rot(path: Path, dataset: str, nbytes: int = 4096) -> None:
    """Overwrites ``nbytes`` of the first chunk of ``dataset`` with 0xff, as a bad copy would."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * nbytes)


def test_bit_rot_is_named_on_read_and_train_head_refuses(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    _rot(cache, "train/features")
    with open_cache(cache) as c, pytest.raises(StoreError) as err:
        c.split("train").features[:10]
    assert "corrupted" in str(err.value) and "train/features" in str(err.value)
    result = _invoke(["train-head", cache, "--out", tmp_path / "run", "--epochs", "2"])
    line = _assert_one_line_error(result, 2, str(cache), "corrupted", "checksum")
    assert "extract the features again" in line
    assert not (tmp_path / "run" / "head.keras").exists()


def test_rotted_keys_are_caught_by_their_digest(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    with h5py.File(cache, "r+") as f:  # a flipped byte in the string heap: same length, new text
        f["validation/keys"][0] = "validation/X"
    with open_cache(cache) as c, pytest.raises(StoreError, match="corrupted: validation/keys"):
        c.split("validation")


def test_cache_of_format_1_still_reads(tmp_path, monkeypatch):
    """A cache written before checksums existed: format_version 1, no filters, no digests."""
    import headstart.features._store_io as store_io
    from headstart.features.store import StoreWriter

    def create_rows_v1(group, name, row_shape, dtype, chunk):
        return group.create_dataset(name, shape=(0, *row_shape), dtype=dtype,
                                    maxshape=(None, *row_shape), chunks=(chunk, *row_shape))

    monkeypatch.setattr(store_io, "FORMAT_VERSION", 1)
    monkeypatch.setattr(store_io, "create_rows", create_rows_v1)
    monkeypatch.setattr(StoreWriter, "_write_digests", lambda self, f: None)
    cache = make_cache(tmp_path / "old.h5")
    monkeypatch.undo()
    with h5py.File(cache, "r") as f:
        assert int(f.attrs["format_version"]) == 1 and not f["train/features"].fletcher32
    with open_cache(cache) as c:
        assert c.format_version == 1 and len(c.split("train").features[:]) == 160
    result = _invoke(["train-head", cache, "--out", tmp_path / "run", "--epochs", "1"])
    assert result.exit_code == 0, result.output


def test_new_caches_checksum_every_fixed_size_dataset(tmp_path):
    cache = make_cache(tmp_path / "f.h5", views=2)
    with h5py.File(cache, "r") as f:
        assert int(f.attrs["format_version"]) == 2
        for split in ("train", "validation", "test"):
            g = f[split]
            for name, ds in g.items():
                if h5py.check_string_dtype(ds.dtype) is None:
                    assert ds.fletcher32, f"{split}/{name}"
                else:
                    assert f"{name}_sha256" in g.attrs, f"{split}/{name}"
        assert "views" in f["train"]
