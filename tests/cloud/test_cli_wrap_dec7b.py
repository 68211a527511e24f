"""``dangol-cloud`` never breaks a long path or URL across lines in its messages (rich wrapped them at 80 columns
when stderr is not a terminal — a journal, a log file, a pipe —, so "…/missing\\n.toml" could not be found with
grep, nor copied; seen in the suite, whose temporary paths grew under pytest-xdist)."""

from __future__ import annotations

from dangol_cloud.cli import main as cli


def test_a_long_missing_config_path_is_printed_whole(tmp_path, capsys):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / ("and-another-one-" * 4)
    missing = deep / "missing-cloud-config.toml"
    assert len(str(missing)) > 160
    assert cli(["--config", str(missing), "train"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err, err
