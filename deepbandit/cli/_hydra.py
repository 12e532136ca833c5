"""Shared plumbing for the thin entry points: `entry_point` (Hydra's main with the required-option check
and one-line user errors), the path checks that run before heavy imports, and the console they print to.

Configs live in the top-level `conf/` folder, installed as the package `deepbandit.conf`, so that
`pkg://deepbandit.conf` finds them from an editable checkout and from an installed wheel alike.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from deepbandit.errors import ConfigError

CONFIG_PATH = "pkg://deepbandit.conf"
HYDRA_VERSION_BASE = "1.3"
DEBUG_ENV = "DEEPBANDIT_DEBUG"  # set by `deepbandit ... --debug`: every error keeps its traceback
MAX_MESSAGE = 600  # characters of an error message; the rest is one --debug away
# what the path checks say a folder or file should be
DATASET_ROOT = "a dataset root holds impressions/, images.parquet and titles.parquet"
BUNDLE_FILE = (
    "deepbandit train writes <run dir>/model.pt; deepbandit pipeline writes <run dir>/train/model.pt"
)


def run_dir() -> Path:
    """The directory Hydra made for this run (outputs/<date>/<time> or the sweep's job folder)."""
    return Path(HydraConfig.get().runtime.output_dir)


def require_options(cfg: DictConfig, config_name: str, command: str) -> None:
    """Refuse a run whose required options (``???``) are not set, naming each with its description."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return
    from deepbandit.cli.help import descriptions

    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed without a Hydra run (tests): the root config's comments only
        choices = {}
    described = descriptions(config_name, choices)
    key = missing[0]
    what = f"{key} is required" + (f" ({described[key]})" if key in described else "")
    if len(missing) > 1:
        what += f"; so are {', '.join(missing[1:])}"
    raise ConfigError(f"{what}. Add {key}=<value> to the command line (`deepbandit {command} --help`)")


def require_dir(path: str, option: str, what: str) -> Path:
    """``path`` as a folder, or a one-line error naming the option."""
    folder = Path(path)
    if not folder.exists():
        raise ConfigError(f"{option}={path}: no such folder ({what})")
    if not folder.is_dir():
        raise ConfigError(f"{option}={path}: not a folder ({what})")
    return folder


def require_file(path: str, option: str, what: str) -> Path:
    """``path`` as a file, or a one-line error naming the option."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"{option}={path}: {'a folder, not a file' if file.is_dir() else 'no such file'} ({what})"
        )
    return file


def _one_line(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ... (--debug shows the whole message)"


def user_error_message(err: BaseException, command: str) -> tuple[str, str | None] | None:
    """(what is wrong, how to fix it or None) when ``err`` is a user's mistake; None for a bug."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from deepbandit.errors import UserError

    help_hint = f"`deepbandit {command} --help` lists the options and their defaults"
    if isinstance(err, UserError):
        return _one_line(str(err)), None
    if isinstance(
        err, FileNotFoundError | FileExistsError | NotADirectoryError | IsADirectoryError | PermissionError
    ):
        return _one_line(str(err)), None
    if isinstance(err, MissingConfigException):
        # "In 'train': Could not find 'model/big'\n\nAvailable options in 'model':\n\tdefault\n\tsmall\n
        # Config search path: ..." -> one line with the options, without Hydra's search path
        text = str(err).split("Config search path:")[0]
        head, _, options = text.partition("Available options in")
        head = re.sub(r"^In '[^']*': ", "", head.strip())
        choices = [s.strip() for s in options.splitlines()[1:] if s.strip()]
        return (f"{head}; choose one of: {', '.join(choices)}" if choices else _one_line(head)), help_hint
    if isinstance(err, OverrideParseException):
        return (
            f"cannot parse the override: {_one_line(str(err))}",
            "write options as key=value (quote lists: 'key=[a,b]')",
        )
    if isinstance(err, HydraException | OmegaConfBaseException):
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
        text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        key = getattr(cause, "full_key", None)
        if isinstance(err, HydraException) and cause is not err:
            text = f"{str(err).splitlines()[0]} {text}"
        if key and key not in text:
            text = f"{key}: {text}"
        return _one_line(text), help_hint
    return None


def report_user_error(err: BaseException, command: str) -> bool:
    """Print ``err`` as one or two lines on stderr if it is a user's mistake; False (nothing printed) if not."""
    message = user_error_message(err, command)
    if message is None:
        return False
    what, fix = message
    print(f"deepbandit {command}: error: {what}", file=sys.stderr)
    if fix:
        print(f"  {fix}", file=sys.stderr)
    return True


def _remove_empty_run_dir() -> None:
    """A run stopped by a mistake leaves no outputs/<date>/<time>/ behind that holds only Hydra's own
    files (.hydra/ and the log): it produced nothing."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    run = Path(hydra_cfg.runtime.output_dir)
    own = {".hydra", f"{hydra_cfg.job.name}.log"}
    if hydra_cfg.mode.name != "RUN" or not run.is_dir() or run.resolve() == Path.cwd().resolve():
        return
    if {p.name for p in run.iterdir()} <= own:
        logging.shutdown()  # the log file's handler lets go of it
        shutil.rmtree(run, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for folder in run.resolve().parents:  # outputs/<date>/, outputs/: when this run was all they held
            if folder == cwd or cwd not in folder.parents or any(folder.iterdir()):
                break
            folder.rmdir()


def entry_point(config_name: str, command: str | None = None):
    """``@hydra.main`` on ``conf/<config_name>.yaml`` for ``deepbandit <command>``. The task first refuses
    unset required options; a user's mistake raised inside it exits with code 2 after one or two lines on
    stderr (SystemExit passes through Hydra's job runner, which would otherwise print the failing job's
    overrides and a traceback first). With ``--debug`` it propagates as it is."""
    command = command or config_name.replace("_", "-")
    from deepbandit.cli.schemas import register_schema

    register_schema(config_name)

    def decorate(task):
        @functools.wraps(task)
        def checked(cfg: DictConfig):
            try:
                require_options(cfg, config_name, command)
                return task(cfg)
            except Exception as err:
                if os.environ.get(DEBUG_ENV) == "1" or not report_user_error(err, command):
                    raise
                _remove_empty_run_dir()
                raise SystemExit(2) from None

        return hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base=HYDRA_VERSION_BASE)(
            checked
        )

    return decorate


def console(stderr: bool = False) -> Console:
    """The console the commands print to. Not on a terminal (a pipe, a log file, CI) rich would assume 80
    columns and wrap or cut tables and paths: there it takes 160, or $COLUMNS when set."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, width=width, highlight=False)
