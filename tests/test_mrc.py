"""MRC input/output: round trips and every validation error."""
import os

import mrcfile
import numpy as np
import pytest

from cryohess_plugin.core.errors import InvalidDataError, MrcFileError, ShapeError
from cryohess_plugin.core.mrc import read_image, read_stack, read_volume, write_stack, write_volume


@pytest.fixture
def volume():
    return np.random.default_rng(0).standard_normal((12, 12, 12)).astype(np.float32)


def test_volume_round_trip(tmp_path, volume):
    path = tmp_path / "map.mrc"
    write_volume(path, volume, 1.37)
    data, voxel = read_volume(path)
    assert data.dtype == np.float32 and data.flags.writeable
    np.testing.assert_array_equal(data, volume)
    assert voxel == pytest.approx(1.37, rel=1e-6)
    # Files written by mrcfile directly (independent writer) read back the same, float64 too.
    other = tmp_path / "other.mrc"
    with mrcfile.new(other) as mrc:
        mrc.set_data(volume.astype(np.float64).astype(np.float32) * 2)
        mrc.voxel_size = 0.9
    data, voxel = read_volume(other)
    np.testing.assert_array_equal(data, volume * 2)
    assert voxel == pytest.approx(0.9, rel=1e-6)


def test_stack_round_trip_and_single_images(tmp_path):
    stack = np.random.default_rng(1).standard_normal((5, 10, 10)).astype(np.float32)
    path = tmp_path / "particles.mrcs"
    write_stack(path, stack, 2.1)
    np.testing.assert_array_equal(read_stack(path), stack)
    np.testing.assert_array_equal(read_image(path, 3), stack[3])
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
        assert float(mrc.voxel_size.x) == pytest.approx(2.1, rel=1e-6)
    with pytest.raises(IndexError, match="outside 0 .. 4"):
        read_image(path, 5)


def test_single_image_reads_as_stack_of_one(tmp_path):
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "image.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(image)
    stack = read_stack(path)
    assert stack.shape == (1, 8, 8)
    np.testing.assert_array_equal(stack[0], image)
    np.testing.assert_array_equal(read_image(path, 0), image)


def test_missing_file(tmp_path):
    with pytest.raises(MrcFileError, match="does not exist"):
        read_volume(tmp_path / "absent.mrc")


def test_truncated_file_reports_sizes(tmp_path, volume):
    path = tmp_path / "map.mrc"
    write_volume(path, volume, 1.0)
    full = os.path.getsize(path)
    assert full == 1024 + 12 ** 3 * 4
    with open(path, "r+b") as handle:
        handle.truncate(full - 100)
    with pytest.raises(MrcFileError, match=f"truncated.*{full} bytes.*{full - 100} bytes"):
        read_volume(path)
    with pytest.raises(MrcFileError, match="truncated"):
        read_image(path, 0)


@pytest.mark.parametrize("content, problem", [
    (np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an MRC file"),
    (b"hello", "not a readable MRC file")])
def test_garbage_file(tmp_path, content, problem):
    path = tmp_path / "garbage.mrc"
    path.write_bytes(content)
    with pytest.raises(MrcFileError, match=problem) as info:
        read_stack(path)
    assert str(path) in str(info.value)


@pytest.mark.filterwarnings("ignore:Data array contains NaN values")
def test_nan_and_inf_are_counted(tmp_path, volume):
    volume[1, 2, 3] = np.nan
    volume[4, 5, 6] = np.inf
    volume[7, 8, 9] = -np.inf
    path = tmp_path / "bad.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(volume)
    with pytest.raises(InvalidDataError, match=f"{path} contains 3 NaN or infinite values"):
        read_volume(path)
    with pytest.raises(InvalidDataError, match="contains 3 NaN"):
        write_volume(tmp_path / "out.mrc", volume, 1.0)
    assert not (tmp_path / "out.mrc").exists()


def test_non_cubic_volume(tmp_path):
    path = tmp_path / "slab.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(ShapeError, match=r"volume must be cubic, got \(4, 8, 8\)"):
        read_volume(path)
    with pytest.raises(ShapeError, match=r"volume must be cubic, got \(4, 8, 8\)"):
        write_volume(tmp_path / "out.mrc", np.zeros((4, 8, 8)), 1.0)


def test_refuse_overwrite_keeps_existing_file(tmp_path, volume):
    path = tmp_path / "map.mrc"
    write_volume(path, volume, 1.0)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_volume(path, volume * 0, 1.0)
    with pytest.raises(FileExistsError):
        write_stack(path, volume, 1.0)
    assert path.read_bytes() == before
    # A failed overwrite (invalid data) leaves the old file and no temporary behind.
    with pytest.raises(InvalidDataError):
        write_volume(path, np.full_like(volume, np.nan), 1.0, overwrite=True)
    assert path.read_bytes() == before
    write_volume(path, volume * 3, 2.0, overwrite=True)
    data, voxel = read_volume(path)
    np.testing.assert_array_equal(data, volume * 3)
    assert voxel == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_invalid_pixel_size(tmp_path, volume):
    with pytest.raises(InvalidDataError, match="pixel size"):
        write_volume(tmp_path / "map.mrc", volume, 0.0)
    with pytest.raises(ShapeError, match=r"stack must be \(n, y, x\)"):
        write_stack(tmp_path / "s.mrcs", volume[0], 1.0)
