from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from models.atomic import atomic_open, write_json_atomic


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


def test_strict_json_and_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(tmp_path / "n.json", float("nan"), allow_nan=False)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="whole files"), atomic_open(tmp_path / "a", "a"):
        pass
