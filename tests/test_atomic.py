import pytest

from neurounlearn.atomic import atomic_path, write_json


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
