"""ONNX export: parity with torch, fp16 tolerance, manifest, ONNX metadata, Triton config, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

from deepbandit.data.layout import file_sha256
from deepbandit.data.vocab import FeatureVocabs
from deepbandit.export.graph import read_metadata
from deepbandit.export.onnx_export import export_bundle
from deepbandit.export.parity import FP16_ATOL, FP32_ATOL, check_parity
from deepbandit.models.bundle import ModelBundle
from deepbandit.policies import masked_argmax

N_TITLES, N_IMAGES, D = 20, 50, 8


@pytest.fixture(scope="session")
def make_bundle(tiny_bundle):
    """A freshly initialised small model with vocabularies (titles 100.., images 1000..; conftest)."""

    def build(kind: str = "none", seed: int = 0, **model_kw) -> ModelBundle:
        meta = {"train_window": ["2026-01-01", "2026-02-01"], "metrics": {"val_loss": 0.5}, "max_history": 16}
        return tiny_bundle(kind, seed, meta=meta, **{"image_id_hash_buckets": 7, **model_kw})

    return build


@pytest.fixture(scope="module")
def ensemble_export(tmp_path_factory, make_bundle):
    bundle = make_bundle("ensemble")
    out = tmp_path_factory.mktemp("ens")
    result = export_bundle(
        bundle, out, policy={"name": "thompson", "kind": "ensemble"}, fp16=True, triton=True,
        parity_batch_sizes=(1,), parity_candidates=(25,),
    )  # fmt: skip
    return bundle, result


@pytest.mark.parametrize(
    "kind,model_kw,batch_sizes",
    [
        ("none", {}, (1, 7, 512, 8192)),
        ("none", {"pooling": "attention", "member_features_dim": 3}, (1, 7, 512)),
        ("ensemble", {}, (1, 7, 512)),
    ],
)
def test_fp32_parity_grid(tmp_path, kind, model_kw, batch_sizes, make_bundle):
    """Batch sizes x candidates 1..64 with random padding: <= 1e-5 and the same choice (and winners).
    The 8192 row runs for the default model only, to keep the file fast on a shared 2-core machine."""
    bundle = make_bundle(kind, **model_kw)
    result = export_bundle(bundle, tmp_path, parity_batch_sizes=(1,), parity_candidates=(1,))
    records = check_parity(
        bundle.build_model(), bundle, result.files["model"], batch_sizes, (1, 25, 64), seed=3
    )
    assert len(records) == 3 * len(batch_sizes)
    assert all(r["max_abs_diff"] <= FP32_ATOL and r["same_choice"] for r in records)


def test_parity_check_can_fail(tmp_path, make_bundle):
    bundle = make_bundle()
    result = export_bundle(bundle, tmp_path, parity_batch_sizes=(1,), parity_candidates=(1,))
    other = make_bundle(seed=1).build_model()  # different weights behind the same graph
    with pytest.raises(AssertionError, match="disagrees with torch"):
        check_parity(other, bundle, result.files["model"], (7,), (25,))


def test_fp16_variant_within_stated_tolerance(ensemble_export):
    bundle, result = ensemble_export
    records = check_parity(
        bundle.build_model(), bundle, result.files["model_fp16"], (7, 512), (25,), atol=FP16_ATOL,
        same_choice=False,
    )  # fmt: skip
    worst = max(r["max_abs_diff"] for r in records)
    assert FP32_ATOL < worst <= FP16_ATOL  # really half precision inside, and within the stated bound
    inputs = {i.name: i.type.tensor_type.elem_type for i in onnx.load(result.files["model_fp16"]).graph.input}
    assert inputs["candidate_embeddings"] == onnx.TensorProto.FLOAT  # fp32 at the boundary


def test_ensemble_outputs_and_winners(ensemble_export):
    import onnxruntime as ort

    from deepbandit.export.graph import sample_inputs

    bundle, result = ensemble_export
    session = ort.InferenceSession(str(result.files["model"]), providers=["CPUExecutionProvider"])
    feeds = sample_inputs(bundle, 64, 25, 6, seed=5)
    scores, samples, winners = session.run(["scores", "posterior_samples", "winners"], feeds)
    assert samples.shape == (64, 3, 25) and winners.shape == (64, 3) and winners.dtype == np.int64
    np.testing.assert_array_equal(winners, masked_argmax(samples, feeds["candidate_mask"]))
    np.testing.assert_allclose(scores, samples.mean(1), atol=1e-5)
    assert (samples[~np.broadcast_to(feeds["candidate_mask"][:, None], samples.shape)] == -1e4).all()


def test_manifest_files_and_metadata(ensemble_export):
    bundle, result = ensemble_export
    out = result.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    for key in (
        "schema_version",
        "package_version",
        "inputs",
        "outputs",
        "vocabularies",
        "feature_transforms",
        "model_config",
        "uncertainty_config",
        "policy",
        "train_window",
        "metrics",
        "parity",
        "files",
    ):
        assert key in manifest, key  # fmt: skip
    assert manifest["train_window"] == ["2026-01-01", "2026-02-01"] and manifest["max_history"] == 16
    assert FeatureVocabs.from_dict(manifest["vocabularies"]) == bundle.vocabs
    for entry in manifest["files"].values():
        assert file_sha256(out / entry["path"]) == entry["sha256"]
    np.testing.assert_array_equal(np.load(out / "images.npy"), bundle.image_embedding.numpy())
    metadata = read_metadata(out / "model.onnx")
    assert metadata == {k: v for k, v in manifest.items() if k != "files"}
    graph = onnx.load(out / "model.onnx").graph
    assert [i.name for i in graph.input] == list(manifest["inputs"])
    assert [o.name for o in graph.output] == ["scores", "posterior_samples", "winners"]


_ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


def _parse_pbtxt_tensors(text: str, section: str) -> dict[str, tuple[str, int]]:
    """name -> (data_type, rank including the batch axis) for the ``input``/``output`` section."""
    body = re.search(rf"^{section} \[\n(.*?)\n\]", text, re.S | re.M).group(1)
    out = {}
    for block in re.findall(r"\{(.*?)\n  \}", body, re.S):
        name = re.search(r'name: "(\w+)"', block).group(1)
        dtype = re.search(r"data_type: (\w+)", block).group(1)
        dims = re.search(r"dims: \[ ([^\]]*) \]", block).group(1).split(", ")
        rank = 1 + (0 if "reshape: { shape: [ ] }" in block else len(dims))
        out[name] = (dtype, rank)
    return out


def test_triton_config_consistent_with_graph(ensemble_export):
    _, result = ensemble_export
    folder = result.files["triton"]
    text = (folder / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" in text
    assert "max_batch_size: 16384" in text
    graph = onnx.load(folder / "1" / "model.onnx").graph
    for section, tensors in (("input", graph.input), ("output", graph.output)):
        expected = {
            t.name: (_ONNX_TO_TRITON[t.type.tensor_type.elem_type], len(t.type.tensor_type.shape.dim))
            for t in tensors
        }
        assert _parse_pbtxt_tensors(text, section) == expected


def test_thompson_needs_an_exported_posterior(tmp_path, make_bundle):
    with pytest.raises(ValueError, match="ensembles and neural-linear models only"):
        export_bundle(make_bundle(), tmp_path, policy={"name": "thompson", "kind": "mc_dropout"})


def test_neural_linear_exports_its_fitted_posterior(tmp_path, make_bundle):
    """The Bayesian last layer travels with the model: the graph takes standard-normal noise (S, P) and
    returns the S draws' logits and winners; parity covers them (random noise, S = 4)."""
    import torch

    from deepbandit.models.encoders import random_inputs

    def fit(model):
        g = torch.Generator().manual_seed(3)
        x = random_inputs(model.net.cfg, 64, 4, 5, generator=g)
        model.update_posterior(
            x, torch.zeros(64, dtype=torch.long), (torch.rand(64, generator=g) < 0.3).float()
        )

    bundle = make_bundle("neural_linear", prepare=fit)
    assert bundle.build_model().blr.n_seen.item() == 64  # the fitted posterior is in the bundle
    result = export_bundle(bundle, tmp_path, policy={"name": "thompson"}, parity_batch_sizes=(5,),
                           parity_candidates=(3,))  # fmt: skip
    manifest = result.manifest
    assert manifest["posterior_noise"] == {
        "dtype": "float32",
        "shape": ["samples", bundle.model_cfg.head_dim + 1],
    }
    assert manifest["outputs"]["winners"]["shape"] == ["batch", "samples"]
    assert manifest["policy"]["kind"] == "mc_dropout"  # Monte Carlo propensities (mc_estimate:S)
    assert result.parity[0]["max_abs_diff"] <= FP32_ATOL and result.parity[0]["same_choice"]
    with pytest.raises(ValueError, match="Triton's dynamic batching"):
        export_bundle(bundle, tmp_path / "t", policy={"name": "thompson"}, triton=True)


def test_mc_dropout_exports_its_mean(tmp_path, make_bundle):
    bundle = make_bundle("mc_dropout", last_layer_dropout=0.2)
    result = export_bundle(bundle, tmp_path, parity_batch_sizes=(7,), parity_candidates=(25,))
    assert list(result.manifest["outputs"]) == ["scores"]
    assert result.parity[0]["max_abs_diff"] <= FP32_ATOL  # the eval-mode (dropout off) prediction


def test_cli_run(tmp_path, make_bundle):
    from hydra import compose, initialize_config_module

    from deepbandit.cli.export import run

    path = make_bundle("ensemble").save(tmp_path / "model.pt")
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(
            "export",
            overrides=[f"bundle={path}", f"out_dir={tmp_path / 'out'}", "policy=thompson",
                       "policy.min_propensity=0.01", "parity_batch_sizes=[3]",
                       "parity_candidates=[4]"],
        )  # fmt: skip
        with pytest.raises(Exception, match="temperatur"):
            compose("export", overrides=[f"bundle={path}", "out_dir=x", "temperatur=1"])
    summary = run(cfg)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["policy"] == {
        "name": "thompson",
        "epsilon": 0.0,
        "min_propensity": 0.01,
        "kind": "ensemble",
    }
    assert (tmp_path / "out" / "triton" / "artwork_scorer" / "config.pbtxt").is_file()
    assert summary["parity"][0]["batch"] == 3


@pytest.mark.parametrize(
    "kind,trained,expected",
    [
        ("ensemble", {"name": "thompson", "epsilon": 0.05, "temperature": 1.0, "n_samples": None},
         {"name": "thompson", "epsilon": 0.05, "kind": "ensemble"}),
        ("none", {"name": "softmax", "epsilon": 0.0, "temperature": 0.5, "n_samples": None},
         {"name": "softmax", "temperature": 0.5}),
        ("none", None, {"name": "greedy"}),
        ("mc_dropout", {"name": "thompson", "epsilon": 0.0, "temperature": 1.0, "n_samples": 8}, ValueError),
    ],
)  # fmt: skip
def test_serving_policy_from_the_training_run(kind, trained, expected, make_bundle):
    from deepbandit.export.onnx_export import serving_policy

    bundle = make_bundle(kind, last_layer_dropout=0.1 if kind == "mc_dropout" else 0.0)
    bundle.meta["policy"] = trained
    if expected is ValueError:
        with pytest.raises(ValueError, match="ensembles and neural-linear models only"):
            serving_policy(bundle)
    else:
        assert serving_policy(bundle) == expected
    with pytest.raises(ValueError, match="temperature"):
        serving_policy(bundle, {"name": "softmax", "temperature": -1.0})


def _randomise_id_embeddings(model) -> None:
    """Hashed image-id (and member-id) embeddings start at zero; give them values, so the precomputed table
    must carry them."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ids.weight"):
                p.normal_()


@pytest.mark.parametrize(
    "kind,model_kw",
    [
        ("none", {}),
        ("none", {"image_id_hash_buckets": 0, "member_features_dim": 2}),
        ("ensemble", {}),  # with its randomised prior, whose image tower is precomputed too
        ("neural_linear", {}),
        ("mc_dropout", {"dropout": 0.2}),
    ],
)
def test_precomputed_image_tower_graph_equals_the_embedding_path(tmp_path, kind, model_kw, make_bundle):
    """model_precomputed.onnx takes image indices and gathers the stored tower outputs: on catalogue images
    it gives the embedding path's outputs (parity within 1e-5, same choices), for every uncertainty model."""
    bundle = make_bundle(kind, prepare=_randomise_id_embeddings, **model_kw)
    result = export_bundle(bundle, tmp_path, parity_batch_sizes=(1,), parity_candidates=(1,))
    manifest = result.manifest
    path = result.files["model_precomputed"]
    assert manifest["files"]["model_precomputed"]["path"] == "model_precomputed.onnx"
    inputs = [i.name for i in onnx.load(path).graph.input]
    assert inputs == list(manifest["precomputed_inputs"]) + (
        ["posterior_noise"] if kind == "neural_linear" else []
    )
    assert "candidate_embeddings" not in inputs and "candidate_image_idx" in inputs
    assert any(r["label"] == "fp32 precomputed" for r in manifest["parity"])
    records = check_parity(bundle.build_model(), bundle, path, (1, 7, 300), (1, 25), seed=5, precomputed=True)
    assert all(r["max_abs_diff"] <= FP32_ATOL and r["same_choice"] for r in records)
    other = make_bundle(kind, seed=1, prepare=_randomise_id_embeddings, **model_kw).build_model()
    with pytest.raises(AssertionError, match="disagrees with torch"):
        check_parity(other, bundle, path, (7,), (25,), precomputed=True)


def test_export_without_the_precomputed_graph(tmp_path, make_bundle):
    from deepbandit.serving import ArtworkService

    result = export_bundle(
        make_bundle(), tmp_path, precomputed=False, parity_batch_sizes=(1,), parity_candidates=(1,)
    )
    assert (
        "model_precomputed" not in result.manifest["files"] and result.manifest["precomputed_inputs"] is None
    )
    assert not (tmp_path / "model_precomputed.onnx").exists()
    assert ArtworkService.from_dir(tmp_path, providers=["CPUExecutionProvider"]).precomputed_session is None
