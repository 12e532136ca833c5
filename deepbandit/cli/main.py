"""The `deepbandit` console command: `deepbandit <subcommand> [hydra overrides ...]`.

Each subcommand is a thin `@hydra.main` wrapper living in its own module under `deepbandit.cli`; this
dispatcher only picks the module and hands it the rest of the command line, so Hydra sees the same argv
it would if the module were run on its own (`python -m deepbandit.cli.simulate key=value`).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported lazily: `deepbandit --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": (
        "deepbandit.cli.pipeline",
        "the whole job on the simulator: simulate, train, evaluate, export, serve",
    ),
    "simulate": ("deepbandit.cli.simulate", "simulate the artwork world and write logs as Parquet"),
    "validate": ("deepbandit.cli.validate", "validate a dataset against the log contract"),
    "import-obd": ("deepbandit.cli.import_obd", "convert the Open Bandit Dataset into the log contract"),
    "train": ("deepbandit.cli.train", "train a deep contextual bandit on logged impressions"),
    "sweep-report": ("deepbandit.cli.sweep_report", "rank the runs of a hyperparameter sweep"),
    "evaluate": ("deepbandit.cli.evaluate", "off-policy evaluation report of policies on logged data"),
    "loop": (
        "deepbandit.cli.loop",
        "closed-loop simulation: serve, log, retrain, redeploy; regret per agent",
    ),
    "export": ("deepbandit.cli.export", "export a trained model to ONNX with manifest and Triton repository"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: deepbandit <subcommand> [hydra overrides ...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`deepbandit <subcommand> --help` shows that subcommand's configuration."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"deepbandit: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"deepbandit {name}", *rest]
    module.main()


if __name__ == "__main__":
    main()
