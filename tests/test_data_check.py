"""`plexlab data check`: a user's data read and validated by a data module without training."""

from __future__ import annotations

from pathlib import Path

import pytest
from plexlab import api, cli
from plexlab.config_files import read_composed

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _data_sections() -> list[tuple[str, dict]]:
    """Each distinct data section of the shipped experiment files: every real data set they read."""
    seen: dict[tuple, tuple[str, dict]] = {}
    for path in sorted(SWEEPS.glob("*.yaml")):
        data = dict(read_composed(path)[0]["data"])  # a sweep file's data comes from its base
        key = (data["name"], data.get("path"))
        seen.setdefault(key, (path.name, data))
    return list(seen.values())


@pytest.mark.parametrize(("file", "data"), _data_sections(), ids=[f for f, _ in _data_sections()])
def test_data_check_summarizes_every_shipped_data_set(file: str, data: dict, shared_data, workdir) -> None:
    data = {**data}
    name, path = data.pop("name"), data.pop("path", None)
    if path is None:
        pytest.skip(f"{file} generates its data")
    # The files' paths are relative to the repository root, where the README runs them.
    path = path if path.startswith("bundled:") else str((SWEEPS.parent / path).resolve())
    data = {k: str((SWEEPS.parent / v).resolve()) if str(v).startswith("../") else v for k, v in data.items()}
    if "cache_dir" in data:
        data["cache_dir"] = str(workdir / "cache")
    summary = api.check_data(path, name, data)
    assert summary["data module"] == name
    assert summary["model arguments from the data"], summary
    sizes = [v for k, v in summary.items() if k.startswith(("train", "val", "test")) and isinstance(v, int)]
    assert sizes and all(v > 0 for v in sizes), summary


def test_data_check_prints_the_bundled_hypergraph(capsys) -> None:
    assert cli.main(["data", "check", "bundled:cocitation_cora", "--data", "hypergraph"]) == 0
    out = capsys.readouterr().out
    for expected in ("nodes", "2708", "hyperedges", "1579", "train nodes", "140", "num_classes", "7"):
        assert expected in out, expected


def test_data_check_on_a_bad_file_is_one_line_and_exit_2(workdir, capsys) -> None:
    (workdir / "graph").mkdir()
    (workdir / "graph" / "hyperedges.json").write_text("{not json")
    assert cli.main(["data", "check", str(workdir / "graph"), "--data", "hypergraph"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plexlab: error: ") and "\n" not in err and "graph" in err


def test_data_check_names_a_bad_setting(workdir, capsys) -> None:
    assert (
        cli.main(["data", "check", "bundled:cocitation_cora", "--data", "hypergraph", "--set", "splat=1"])
        == 2
    )
    assert "data.splat: unknown key for hypergraph" in capsys.readouterr().err
