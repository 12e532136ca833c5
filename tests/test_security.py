"""Files a user or another file can point at never run code and never reach outside their folder: a crafted
checkpoint is refused before anything unpickles it, an export's manifest may name only files inside the
export and each must match its sha256, names that become paths are plain names, and quarantine output never
lands inside the dataset it reports on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepbandit.data.layout import checked_name, inside
from deepbandit.errors import ConfigError, DataError
from deepbandit.serving import ArtworkService
from deepbandit.training.config import TrainerConfig
from deepbandit.training.train import check_ckpt_path

TINY_EXPORT = Path(__file__).resolve().parent / "serving" / "tiny_export"


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: the shape of every pickle exploit."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, crafted)
    with pytest.raises(DataError, match="refused: it holds objects other than tensors"):
        check_ckpt_path(TrainerConfig(ckpt_path=str(crafted)))
    assert not marker.exists()


def test_checkpoint_paths_are_local_files_unless_urls_are_allowed(tmp_path):
    with pytest.raises(ConfigError, match="is a URL"):
        check_ckpt_path(TrainerConfig(ckpt_path="https://example.com/last.ckpt"))
    check_ckpt_path(
        TrainerConfig(ckpt_path="s3://bucket/last.ckpt", allow_remote_ckpt=True)
    )  # Lightning fetches
    with pytest.raises(ConfigError, match="no such file"):
        check_ckpt_path(TrainerConfig(ckpt_path=str(tmp_path / "missing.ckpt")))
    (tmp_path / "junk.ckpt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(DataError, match="refused: not a PyTorch checkpoint file"):
        check_ckpt_path(TrainerConfig(ckpt_path=str(tmp_path / "junk.ckpt")))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(DataError, match="no state_dict"):
        check_ckpt_path(TrainerConfig(ckpt_path=str(tmp_path / "plain.ckpt")))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "ok.ckpt")
    check_ckpt_path(TrainerConfig(ckpt_path=str(tmp_path / "ok.ckpt")))


@pytest.fixture
def export(tmp_path):
    out = tmp_path / "export"
    shutil.copytree(TINY_EXPORT, out)
    return out


def _edit_manifest(export: Path, edit) -> None:
    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_the_untouched_export_loads(export):
    assert ArtworkService.from_dir(export, providers=["CPUExecutionProvider"]).embeddings.shape[0] > 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"]["model"].update(path="../elsewhere/model.onnx"), "points outside"),
        (lambda m: m["files"]["model"].update(path="/etc/passwd"), "not a relative path"),
        (lambda m: m["files"]["images"].update(path="."), "points outside"),
        (lambda m: m["files"]["images"].pop("sha256"), "no sha256 recorded"),
        (lambda m: m["files"]["model"].update(sha256="0" * 64), "does not match the manifest's sha256"),
    ],
    ids=["parent", "absolute", "the folder itself", "no hash", "wrong hash"],
)
def test_a_tampered_manifest_is_refused(export, edit, message):
    _edit_manifest(export, edit)
    with pytest.raises(DataError, match=message):
        ArtworkService.from_dir(export, providers=["CPUExecutionProvider"])


def test_a_changed_file_is_refused_before_use(export):
    images = np.load(export / "images.npy")
    images[0, 0] += 1.0  # one value: same size, same format, a different model
    np.save(export / "images.npy", images)
    with pytest.raises(DataError, match="images.npy does not match the manifest's sha256"):
        ArtworkService.from_dir(export, providers=["CPUExecutionProvider"])


def test_a_symlink_out_of_the_export_is_refused(export, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(export / "model.onnx", outside)
    (export / "model.onnx").unlink()
    (export / "model.onnx").symlink_to(outside)
    with pytest.raises(DataError, match="points outside"):
        ArtworkService.from_dir(export, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "-rf", "x" * 129, 3, "sp ace"])
def test_names_that_become_paths_are_plain(name):
    with pytest.raises(ConfigError, match="must be one plain name"):
        checked_name(name, "model_name")


def test_plain_names_and_inside_paths_pass(tmp_path):
    assert checked_name("artwork_scorer-v2.1", "model_name") == "artwork_scorer-v2.1"
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a/b.onnx", "files.model.path") == (tmp_path / "a" / "b.onnx").resolve()


def test_triton_folders_stay_inside_the_export(tiny_bundle, tmp_path):
    from deepbandit.export.onnx_export import export_bundle

    with pytest.raises(ConfigError, match="model_name='../../x'"):
        export_bundle(tiny_bundle(), tmp_path / "export", triton=True, model_name="../../x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "export").exists()


KILLED_MID_RUN = """
import os, signal, sys
from deepbandit.sim.simulator import SimulateConfig, simulate
from deepbandit.sim.world import WorldConfig

world = WorldConfig(n_members=50, n_titles=8, n_genres=3, n_themes=4, n_cast=10, cast_per_title=2,
                    favourite_cast=1, images_min=2, images_max=4, images_mean=3.0, embedding_dim=4)
config = SimulateConfig(world=world, n_impressions=4000, chunk_rows=1000, batch_rows=500,
                        out_dir=sys.argv[1], progress=False, overwrite=True)

def kill_after_two_parts(rows_done):
    if rows_done >= 2000:  # the first parts are on disk; kill -9 leaves no chance to clean up
        os.kill(os.getpid(), signal.SIGKILL)

simulate(config, on_progress=kill_after_two_parts)
"""


@pytest.mark.parametrize("earlier", [False, True], ids=["new folder", "over a complete dataset"])
def test_a_writer_killed_mid_run_leaves_a_dataset_every_reader_refuses(tmp_path, earlier):
    import subprocess
    import sys

    from deepbandit.data.validation import ValidationError, gate_dataset, validate_dataset
    from deepbandit.evaluation.evaluate import read_dataset
    from deepbandit.sim.simulator import SimulateConfig, simulate
    from deepbandit.sim.world import WorldConfig

    out = tmp_path / "data"
    if earlier:  # a finished dataset the killed run was replacing
        world = WorldConfig(n_members=50, n_titles=8, n_genres=3, n_themes=4, n_cast=10, cast_per_title=2,
                            favourite_cast=1, images_min=2, images_max=4, images_mean=3.0, embedding_dim=4)  # fmt: skip
        simulate(SimulateConfig(world=world, n_impressions=300, out_dir=str(out), progress=False))
        validate_dataset(out)
    run = subprocess.run([sys.executable, "-c", KILLED_MID_RUN, str(out)], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    assert list((out / "impressions").glob("part-*.parquet")), "the killed writer had written parts"
    for check in (
        lambda: validate_dataset(out),
        lambda: gate_dataset(out, validate=False),
        lambda: read_dataset(out),
    ):
        with pytest.raises((ValidationError, DataError), match="incomplete dataset"):
            check()
