import os
import stat

import pytest

from neurounlearn.atomic import atomic_path, write_json, write_text


def test_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json({"mae": 1.0}, target)
    with pytest.raises(ValueError):
        write_json({"mae": float("nan")}, target)  # NaN is never written as a number
    assert target.read_text().strip() == '{\n  "mae": 1.0\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_usual_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_text("x", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_an_os_error_without_a_file_name_is_raised_naming_the_file_written(tmp_path):
    import errno

    target = tmp_path / "out.csv"
    with pytest.raises(OSError) as err, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() on a full disk
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
