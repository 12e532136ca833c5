"""`deepbandit <subcommand> --help`: that subcommand's options only, each with its default and a one-line
description, and examples; no internal schema names; no heavy imports."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from deepbandit.cli import help as help_page
from deepbandit.cli.main import SUBCOMMANDS, main

HYDRA_COMMANDS = [name for name, (_, config, _) in SUBCOMMANDS.items() if config is not None]


def _help(capsys, *argv: str) -> str:
    main([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", HYDRA_COMMANDS)
def test_every_option_is_listed_with_its_default_and_a_description(command, capsys):
    module, config_name, _ = SUBCOMMANDS[command]
    importlib.import_module(module)
    cfg, _ = help_page.compose_with_choices(config_name, [])
    keys = [key for key, _ in help_page._leaves(cfg)]
    out = _help(capsys, command)
    options = out.split("options (key, default, description; ??? = required):\n")[1].splitlines()
    listed = {line.split()[0]: line for line in options}
    assert sorted(listed) == sorted(keys)
    undescribed = [k for k, line in listed.items() if len(line.split()) < 3]
    assert not undescribed, f"{command}: options without a description: {undescribed}"
    assert "_schema" not in out
    assert out.startswith(f"deepbandit {command}: ")


def test_help_shows_only_the_commands_own_groups(capsys):
    out = _help(capsys, "validate")
    assert "dataset" in out and "trainer" not in out and "world" not in out and "loss" not in out
    train = _help(capsys, "train")
    assert re.search(r"^  trainer\s+cpu\s+choices: cpu, ddp, gpu$", train, re.M), train
    assert "examples:\n  deepbandit train data.path=data/sim" in train


def test_help_shows_the_values_of_the_chosen_group_options(capsys):
    out = _help(capsys, "train", "model=small", "trainer.lr=0.5")
    default = _help(capsys, "train")
    row = lambda text, key: next(line for line in text.splitlines() if line.startswith(f"  {key} "))  # noqa: E731
    assert row(out, "model.hidden") != row(default, "model.hidden")
    assert row(out, "trainer.lr").split()[1] == "0.5"


def test_help_with_a_bad_override_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "model=big", "--help"])
    assert exit_info.value.code == 2
    assert "choose one of: default, small" in capsys.readouterr().err


def test_help_needs_no_torch():
    code = "import sys\nfrom deepbandit.cli.main import main\nmain(['validate', '--help'])\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("False"), done.stdout[-500:] + done.stderr


def test_yaml_comments_nest_and_skip_the_file_header(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "# title of the file\n#   deepbandit x a=1\ndefaults:\n  - s\n\n"
        "a: 1  # the a\n# above b\nb:\n  c: 'x # y'  # the c\n  d: 2\n"
    )
    assert help_page.yaml_comments(path) == {"a": "the a", "b": "above b", "b.c": "the c"}
    assert help_page.header_lines(path) == ["title of the file", "  deepbandit x a=1"]
