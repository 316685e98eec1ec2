"""The one atomic write: a reader sees the old file or the whole new one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from contract.atomic import atomic_open, write_atomic, write_json_atomic


def test_whole_file_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_open(path, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left


def test_strict_json_by_default_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    write_json_atomic(path, {"a": float("nan")}, allow_nan=True)  # (asked for: a training log's NaN loss)
    assert "NaN" in path.read_text()


def test_text_and_bytes_and_modes(tmp_path: Path) -> None:
    write_atomic(tmp_path / "t.md", "é\n")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "t.md").read_bytes() == "é\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="whole files"), atomic_open(tmp_path / "a", "a"):
        pass
