"""The `deepbandit` console command: `deepbandit <subcommand> [hydra overrides ...]`.

Each subcommand is a thin `@hydra.main` wrapper living in its own module under `deepbandit.cli`; this
dispatcher picks the module, answers `--help` itself (`deepbandit.cli.help`: that command's options only),
and turns a user's mistake into one or two lines on stderr with exit code 2 (`user_error_message`). Any other
exception is a bug and keeps its traceback; `--debug` (or `HYDRA_FULL_ERROR=1`) shows the traceback of
every error. Hydra sees the same argv it would if the module were run on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

# subcommand -> (module, config name, one-line help). Modules are imported lazily: `deepbandit --help`
# stays fast. sweep-report takes a folder, not a config.
SUBCOMMANDS: dict[str, tuple[str, str | None, str]] = {
    "pipeline": (
        "deepbandit.cli.pipeline",
        "pipeline",
        "the whole job on the simulator: simulate, train, evaluate, export, serve",
    ),
    "simulate": (
        "deepbandit.cli.simulate",
        "simulate",
        "simulate the artwork world and write logs as Parquet",
    ),
    "validate": ("deepbandit.cli.validate", "validate", "validate a dataset against the log contract"),
    "import-obd": (
        "deepbandit.cli.import_obd",
        "import_obd",
        "convert the Open Bandit Dataset into the log contract",
    ),
    "train": ("deepbandit.cli.train", "train", "train a deep contextual bandit on logged impressions"),
    "sweep-report": ("deepbandit.cli.sweep_report", None, "rank the runs of a hyperparameter sweep"),
    "evaluate": (
        "deepbandit.cli.evaluate",
        "evaluate",
        "off-policy evaluation report of policies on logged data",
    ),
    "gate": (
        "deepbandit.cli.gate",
        "gate",
        "deployment gate: does a candidate policy beat the incumbent on the logs (exit 0 / 1)",
    ),
    "loop": (
        "deepbandit.cli.loop",
        "loop",
        "closed-loop simulation: serve, log, retrain, redeploy; regret per agent",
    ),
    "export": (
        "deepbandit.cli.export",
        "export",
        "export a trained model to ONNX with manifest and Triton repository",
    ),
}
HELP_FLAGS = {"-h", "--help"}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: deepbandit <subcommand> [key=value ...] [--debug]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "`deepbandit <subcommand> --help` lists that subcommand's options, defaults and examples."]
    return "\n".join(lines)


def _run(name: str, rest: list[str], debug: bool) -> None:
    from deepbandit.cli._hydra import DEBUG_ENV, report_user_error

    sys.argv = [f"deepbandit {name}", *rest]
    # Exceptions come back to us, not to Hydra's trimmed-traceback printer: those raised while Hydra composes
    # the config here, those raised by the task to its `entry_point` wrapper.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the task's wrapper re-raises too
    try:
        importlib.import_module(SUBCOMMANDS[name][0]).main()
    except KeyboardInterrupt:
        print(f"deepbandit {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if debug or not report_user_error(err, name):
            raise
        raise SystemExit(2) from None


def _unchosen_groups(name: str, overrides: list[str]) -> None:
    """Options of a config group the command leaves unchosen by default (``- policy: null`` in its yaml,
    e.g. export's serving policy) can only be set once the group is chosen; Hydra's own error for
    ``policy.epsilon=0.1`` alone is an internal assertion."""
    import yaml

    from deepbandit.cli.help import conf_dir

    config_name = SUBCOMMANDS[name][1]
    if config_name is None:
        return
    defaults = yaml.safe_load((conf_dir() / f"{config_name}.yaml").read_text()).get("defaults", [])
    unchosen = {k for d in defaults if isinstance(d, dict) for k, v in d.items() if v is None}
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    for group in sorted(unchosen - set(keys)):
        given = [k for k in keys if k.startswith(f"{group}.")]
        if given:
            print(
                f"deepbandit {name}: error: {given[0]} needs {group} chosen first: {group}=<name> {given[0]}=... "
                f"(`deepbandit {name} --help` lists the choices)",
                file=sys.stderr,
            )
            raise SystemExit(2)


def _needs_train_extra(name: str) -> None:
    """A core install (serving only) has no Hydra, torch or Lightning: say which extra the command needs."""
    missing = [m for m in ("hydra", "torch", "lightning") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"deepbandit {name}: error: needs {', '.join(missing)}, which this install lacks (it serves only)\n"
            "  pip install 'deepbandit[train]'",
            file=sys.stderr,
        )
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {*HELP_FLAGS, "help"}:
        print(_usage())
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"deepbandit: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    _needs_train_extra(name)
    debug = "--debug" in rest or os.environ.get("HYDRA_FULL_ERROR") == "1"
    rest = [a for a in rest if a != "--debug"]
    config_name = SUBCOMMANDS[name][1]
    if config_name is not None and HELP_FLAGS & set(rest):
        _help(name, config_name, [a for a in rest if a not in HELP_FLAGS], debug)
        return
    _unchosen_groups(name, rest)
    _run(name, rest, debug)


def _help(name: str, config_name: str, overrides: list[str], debug: bool) -> None:
    from deepbandit.cli import help as help_page
    from deepbandit.cli._hydra import report_user_error

    importlib.import_module(SUBCOMMANDS[name][0])  # registers the command's typed config
    try:
        print(help_page.render(name, config_name, SUBCOMMANDS[name][2], overrides))
    except Exception as err:
        if debug or not report_user_error(err, name):
            raise
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
