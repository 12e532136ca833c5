"""The package installs its Hydra configs and exposes one console command."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from deepbandit.cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_every_config_file_is_shipped_in_the_wheel():
    # A yaml that no package-data glob matches would work from a checkout and vanish from a wheel install.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["deepbandit.conf"]
    configs = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert configs, "conf/ holds no yaml"
    unmatched = [
        c for c in configs if not any(fnmatch.fnmatch(c, g) and c.count("/") == g.count("/") for g in globs)
    ]
    assert not unmatched, f"add package-data globs for {unmatched}"


def test_configs_resolve_as_a_package():
    assert files("deepbandit.conf").joinpath("simulate.yaml").is_file()


def test_every_subcommand_module_imports_and_has_main():
    import importlib

    for name, (module, _) in SUBCOMMANDS.items():
        assert callable(importlib.import_module(module).main), name


def test_unknown_subcommand_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["simulat"])
    assert excinfo.value.code == 2
    assert "unknown subcommand 'simulat'" in capsys.readouterr().err


def test_console_script_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "deepbandit.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out
