"""The package installs its Hydra configs and exposes one console command."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from deepbandit.cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_every_config_file_is_shipped_in_the_wheel():
    # A yaml in a folder that is not a listed package (or without a package-data glob) would work from a
    # checkout and vanish from a wheel install.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    configs = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))
    assert configs, "conf/ holds no yaml"
    for config in configs:
        package = ".".join(["deepbandit", "conf", *config.parent.parts])
        assert package in setuptools["packages"], f"add {package} to [tool.setuptools] packages"
        assert "*.yaml" in setuptools["package-data"].get(package, []), f"add package-data for {package}"


def test_the_wheel_holds_every_config_and_builds_without_warnings(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is importable" not in done.stdout + done.stderr, "a config folder is missing from packages"
    (wheel,) = tmp_path.glob("deepbandit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            n.removeprefix("deepbandit/conf/") for n in zf.namelist() if n.startswith("deepbandit/conf/")
        }
    configs = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert configs <= shipped, sorted(configs - shipped)


def test_configs_resolve_as_a_package():
    assert files("deepbandit.conf").joinpath("simulate.yaml").is_file()


def test_every_subcommand_module_imports_and_has_main():
    import importlib

    for name, (module, *_) in SUBCOMMANDS.items():
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
