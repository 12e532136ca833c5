"""A user's mistake is one or two lines on stderr naming what is wrong, with exit code 2, for every
subcommand; --debug (or HYDRA_FULL_ERROR=1) shows the traceback instead. The commands run in-process
through the same dispatcher as the console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deepbandit.cli.main import main
from deepbandit.errors import ConfigError
from deepbandit.sim.simulator import SimulateConfig, simulate
from deepbandit.sim.world import WorldConfig


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A valid tiny dataset, a file that is not a bundle, an empty folder and a fake OBD root."""
    root = tmp_path_factory.mktemp("user_errors")
    world = WorldConfig(n_members=50, n_titles=8, n_genres=3, n_themes=4, n_cast=10, cast_per_title=2,
                        favourite_cast=1, images_min=2, images_max=4, images_mean=3.0, embedding_dim=4)  # fmt: skip
    simulate(SimulateConfig(world=world, n_impressions=400, out_dir=str(root / "ds"), progress=False))
    (root / "garbage.pt").write_bytes(b"not a model bundle")
    (root / "empty").mkdir()
    (root / "obd" / "random" / "all").mkdir(parents=True)
    (root / "obd_out").mkdir()
    (root / "obd_out" / "something.txt").write_text("not an import")
    return {k: str(root / v) for k, v in [("root", "."), ("ds", "ds"), ("garbage", "garbage.pt"),
                                           ("empty", "empty"), ("obd", "obd"), ("obd_out", "obd_out")]}  # fmt: skip


def _run(argv: list[str], capsys, monkeypatch, tmp_path) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)  # any folder a command might make lands here
    monkeypatch.setattr(sys, "argv", ["deepbandit"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored after the test (main sets it for itself)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


# (command line with {placeholders} from `places`, a fragment the message must hold)
MISTAKES = [
    ("train", "data.path is required"),
    ("train data.path={root}/nope", "data.path={root}/nope: no such folder"),
    ("train data.path={garbage}", "not a folder"),
    ("train data.path={ds} policy=thompson", "policy=thompson needs a posterior"),
    ("train data.path={ds} model=big", "choose one of: default, small"),
    ("train data.path={ds} model.hiden=3", "hiden"),
    ("train data.path={ds} trainer.lr=abc", "trainer.lr=abc"),
    ("train data.path={ds} uncertainty=ensemble uncertainty.n_members=1", "n_members >= 2"),
    ("train data.path={ds} uncertainty=mc_dropout", "needs dropout"),
    ("train data.path={ds} trainer.logger=wandb", "trainer.logger must be"),
    ("train data.path=[", "cannot parse the override"),
    ("train data.path={empty}", "{empty}"),
    ("train data.path={ds} trainer.max_epochs=-1", "trainer.max_epochs must be >= 1"),
    ("train data.path={ds} trainer.devices=abc", "trainer.devices must be"),
    ("train data.path={ds} data.split_at=notadate", "data.split_at='notadate' is not an ISO date"),
    ("train data.path={ds} data.val_fraction=0", "data.val_fraction must be in (0, 1)"),
    ("train -m data.path={root}/nope", "no such folder"),
    ("train data.path={ds} trainer.precision=fp64", "trainer.precision must be one of"),
    ("train data.path={ds} model.pooling=max", "model.pooling must be one of mean, attention"),
    ("validate", "dataset is required"),
    ("validate dataset={root}/nope", "no such folder"),
    ("validate dataset={ds} mode=lenient", "lenient"),
    ("validate dataset={ds} mode=quarantine quarantine_dir={ds}/impressions", "lies inside the dataset"),
    ("validate dataset={ds} mode=quarantine quarantine_dir={ds}", "lies inside the dataset"),
    ("train data.path={ds} trainer.ckpt_path=https://example.com/x.ckpt", "is a URL"),
    ("train data.path={ds} trainer.ckpt_path={root}/nope.ckpt", "no such file"),
    ("export bundle={garbage} model_name=../../x", "must be one plain name"),
    ("simulate n_impressions=0 out_dir={root}/sim0", "n_impressions must be >= 1"),
    ("simulate world=huge", "choose one of: large, learnable, small, tiny"),
    ("simulate world=tiny n_impressions=10 out_dir={ds}", "overwrite=true"),
    ("simulate start_date=yesterday world=tiny n_impressions=10 out_dir={root}/sim1", "start_date"),
    ("evaluate", "dataset is required"),
    ("evaluate dataset={ds} bundle={root}/nope.pt", "bundle={root}/nope.pt: no such file"),
    ("evaluate dataset={ds} estimators=[ipx]", "unknown estimator"),
    ("evaluate dataset={ds} estimators=[ips] plot_estimator=dm", "plot_estimator"),
    ("evaluate dataset={ds} bundle={garbage}", "not a readable deepbandit model bundle"),
    ("evaluate dataset={ds} train_fraction=1.5", "train_fraction must be in [0, 1)"),
    ("evaluate dataset={ds} model_policy=random", "model_policy must be greedy or thompson"),
    ("evaluate dataset={ds} interval=exact", "interval must be one of bootstrap, normal"),
    ("evaluate dataset={ds} alpha=2", "alpha must be in (0, 1)"),
    ("evaluate dataset={empty}", "no impressions/ folder"),
    ("evaluate dataset={ds} segments=[nosuchcol]", "segment column 'nosuchcol' not found"),
    ("evaluate dataset={ds} interval=bernstein", "snips, sndr are ratios"),
    (
        "evaluate dataset={ds} estimators=[dros] estimator_params.dros.lam=-1",
        "estimator_params.dros: DRos: lam must be >= 0",
    ),
    ("evaluate dataset={ds} estimators=[mips] mips_groups=0", "mips_groups must be a positive integer"),
    (
        "evaluate dataset={ds} +targets.mine={root}/nope.parquet",
        "target policy {root}/nope.parquet: no such file",
    ),
    ("evaluate dataset={ds} +logging_policies.a=uniform", "no logging_policy column"),
    ("evaluate dataset={ds} window_start=yesterday", "window_start"),
    ("gate dataset={ds}", "candidate"),
    ("gate dataset={ds} candidate=uniform estimator=dm", "estimator must be one of ips, snips, dr, sndr"),
    ("gate dataset={ds} candidate={root}/nope.parquet", "no such file"),
    ("export bundle={garbage} policy=greedy", "not a readable deepbandit model bundle"),
    ("export bundle={garbage} policy.epsilon=0.2", "policy.epsilon needs policy chosen first: policy=<name>"),
    ("export", "bundle is required"),
    ("export bundle={root}/nope.pt", "train writes <run dir>/model.pt"),
    ("export bundle={garbage}", "not a readable deepbandit model bundle"),
    ("import-obd", "source is required"),
    ("import-obd source={obd} campaign=kids", "found there: all"),
    ("import-obd source={obd} behavior_policy=greedy", "behavior_policy must be one of"),
    ("import-obd source={obd} out_dir={obd_out}", "overwrite=true"),
    ("loop agents=[foo]", "agents must be distinct names"),
    ("loop environment=moon", "environment must be one of"),
    ("loop environment=wheel wheel.delta=2", "wheel: delta must be in"),
    ("loop n_rounds=0", "n_rounds must be >= 1"),
    ("pipeline n_impressions=abc", "n_impressions=abc"),
    ("sweep-report {root}/nope", "not a directory"),
]


@pytest.mark.parametrize(("command", "fragment"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_or_two_lines_and_exit_code_2(
    places, command, fragment, capsys, monkeypatch, tmp_path
):
    code, err = _run(command.format(**places).split(), capsys, monkeypatch, tmp_path)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert not (tmp_path / "outputs").exists(), "a run stopped by a mistake left its empty run folder"
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    assert lines[0].startswith(f"deepbandit {command.split()[0]}: error: "), err
    assert fragment.format(**places) in err, err


def test_at_least_25_mistakes_across_every_subcommand():
    from deepbandit.cli.main import SUBCOMMANDS

    assert len(MISTAKES) >= 25
    assert {m[0].split()[0] for m in MISTAKES} == set(SUBCOMMANDS)


@pytest.mark.parametrize("how", ["--debug", "HYDRA_FULL_ERROR=1"])
def test_debug_shows_the_exception_itself(places, how, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["deepbandit"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1" if how.startswith("HYDRA") else "0")
    monkeypatch.delenv("DEEPBANDIT_DEBUG", raising=False)
    argv = [
        "train",
        f"data.path={places['ds']}",
        "policy=thompson",
        *(["--debug"] if how == "--debug" else []),
    ]
    with pytest.raises(ConfigError, match="posterior"):
        main(argv)


def test_a_bug_keeps_its_traceback(monkeypatch):
    from deepbandit.cli._hydra import user_error_message

    assert user_error_message(KeyError("x"), "train") is None
    assert user_error_message(ConfigError("bad"), "train") == ("bad", None)


def test_options_are_checked_before_lightning_loads():
    code = (
        "import sys\nfrom deepbandit.cli.main import main\n"
        "try:\n    main(['train'])\nexcept SystemExit as e:\n"
        "    print(e.code, 'lightning' in sys.modules, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False", "True"], done.stdout + done.stderr


def test_validate_reports_logs_that_break_the_contract_in_one_line_with_exit_code_1(
    places, capsys, monkeypatch, tmp_path
):
    # invalid data is what validate is for: its finding (exit 1), not a usage mistake (exit 2)
    code, err = _run(["validate", f"dataset={places['empty']}"], capsys, monkeypatch, tmp_path)
    assert (
        code == 1 and err.startswith("deepbandit validate: invalid: ") and len(err.strip().splitlines()) == 1
    )
    assert "impressions" in err
