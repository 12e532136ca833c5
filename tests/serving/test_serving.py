"""Serving from an export folder: features match training's, per-request errors, Arrow input, new images,
impressions in the log contract, and the import-time constraint (no torch, no Lightning)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from deepbandit.data.tensors import table_to_batch
from deepbandit.data.validation import validate_table
from deepbandit.export.onnx_export import export_bundle
from deepbandit.models.bundle import ModelBundle
from deepbandit.policies import Softmax
from deepbandit.serving import ArtworkService

N_TITLES, N_IMAGES, D = 20, 50, 8
CPU = ["CPUExecutionProvider"]


def _perturb_ids(model) -> None:
    with torch.no_grad():  # the hashed id embedding starts at zero; make it matter for the test
        for name, p in model.named_parameters():
            if "image_tower.ids" in name or "member_tower.member_ids" in name:
                p.normal_()


@pytest.fixture(scope="session")
def make_bundle(tiny_bundle):
    """A freshly initialised small model (hashed image ids on) on conftest's tiny catalogue: titles
    100..119, images 1000..1049, countries DE/FR/US, languages de/en, devices tv/web, two genres."""

    def build(
        kind: str = "none", seed: int = 0, member_features_dim: int = 0, member_buckets: int = 0
    ) -> ModelBundle:
        return tiny_bundle(
            kind, seed, n_members=4, genres=2, prior_scale=0.0, image_id_hash_buckets=7,
            member_features_dim=member_features_dim, member_id_hash_buckets=member_buckets,
            meta={"max_history": 4}, prepare=_perturb_ids,
        )  # fmt: skip

    return build


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_bundle):
    out = {}
    for kind in ("none", "ensemble", "members"):
        # "members": one network with a hashed member-id embedding (member_id is a graph input)
        bundle = make_bundle("none", member_buckets=13) if kind == "members" else make_bundle(kind)
        policy = {"name": "thompson", "kind": "ensemble"} if kind == "ensemble" else {"name": "greedy"}
        path = tmp_path_factory.mktemp(kind)
        export_bundle(bundle, path, policy=policy, parity_batch_sizes=(3,), parity_candidates=(4,))
        out[kind] = (bundle, path)
    return out


def random_requests(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(n):
        n_cand = int(rng.integers(1, 9))
        requests.append(
            {
                "request_id": f"r{i}",
                "member_id": int(rng.integers(1, 10**9)),
                "title_id": int(rng.integers(99, 122)),  # 99, 120, 121 are unknown titles
                "candidate_image_ids": rng.choice(
                    np.arange(1000, 1000 + N_IMAGES), n_cand, replace=False
                ).tolist(),
                "played_title_ids": rng.integers(98, 122, int(rng.integers(0, 7))).tolist(),  # > max_history
                "country": str(rng.choice(["DE", "FR", "US", "BR"])),  # BR is unknown
                "language": str(rng.choice(["de", "en"])),
                "device": str(rng.choice(["tv", "web", "phone"])),
                "hour": int(rng.integers(0, 24)),
                "weekday": int(rng.integers(0, 7)),
                "recommender_score": float(rng.normal() * 3),
                "prior_interaction": bool(rng.random() < 0.3),
                "timestamp": int(1_760_000_000_000_000 + rng.integers(0, 10**12)),
            }
        )
    return requests


def torch_scores(bundle: ModelBundle, table: pa.Table) -> np.ndarray:
    """The torch model on features built by training's own ``table_to_batch`` (the reference)."""
    batch = table_to_batch(table, bundle.vocabs, max_history=4)
    inputs = batch.inputs.replace(
        candidate_embeddings=bundle.image_embedding[batch.inputs.candidate_image_idx]
    )
    with torch.no_grad():
        return bundle.build_model()(inputs).numpy()


@pytest.mark.parametrize("kind", ["none", "ensemble", "members"])
def test_scores_match_torch_on_training_features(exported, kind):
    bundle, path = exported[kind]
    service = ArtworkService.from_dir(path, providers=CPU)
    out = service.decide(random_requests(300), rng=np.random.default_rng(0))
    assert out.ok.all() and not out.errors
    table = service.to_impressions(out)
    ref = torch_scores(bundle, table)
    mask = (
        np.arange(ref.shape[1])
        < np.array([len(c) for c in table["candidate_image_ids"].to_pylist()])[:, None]
    )
    np.testing.assert_allclose(out.scores[:, : ref.shape[1]][mask], ref[mask], atol=1e-5)
    chosen_pos = out.action
    np.testing.assert_array_equal(out.propensity, out.action_dist[np.arange(300), chosen_pos])
    if kind == "members":
        assert "member_id" in service.input_names
    if kind != "ensemble":  # greedy: the best valid candidate, propensity 1
        np.testing.assert_array_equal(chosen_pos, np.where(mask, ref, -np.inf).argmax(1))
        assert (out.propensity == 1).all() and out.propensity_kind == "exact"
    else:  # Thompson on 4 members: the share of members whose best is the chosen one
        assert out.propensity_kind == "exact" and set(np.unique(out.propensity * 4)) <= {1.0, 2.0, 3.0, 4.0}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"title_id": None}, "missing field 'title_id'"),
        ({"candidate_image_ids": []}, "candidate_image_ids is empty"),
        ({"hour": 25}, "hour is 25.0, expected an integer in 0..23"),
        ({"weekday": 2.5}, "weekday must be an integer, got 2.5"),
        ({"recommender_score": float("nan")}, "recommender_score is nan"),
        ({"candidate_image_ids": [1001, 1002, 1001]}, "repeats image 1001"),
        ({"candidate_image_ids": list(range(1000, 1000 + 129))}, "129 images, more than 128"),
        ({"candidate_image_ids": [1001, 77]}, "candidate_image_ids: image 77 has no embedding"),
        ({"country": 3}, "country must be a string"),
        ({"played_title_ids": ["a"]}, "played_title_ids must be a list of integer ids"),
    ],
)
def test_bad_request_fails_alone(exported, change, message):
    _, path = exported["none"]
    service = ArtworkService.from_dir(path, providers=CPU)
    requests = random_requests(5)
    requests[2] = {k: v for k, v in {**requests[2], **change}.items() if v is not None}
    good = service.decide(random_requests(5), rng=np.random.default_rng(0))
    out = service.decide(requests, rng=np.random.default_rng(0))
    assert list(out.errors) == [2] and message in out.errors[2]
    assert out.ok.tolist() == [True, True, False, True, True]
    assert out.chosen_image_id[2] == -1 and np.isnan(out.propensity[2])
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(out.chosen_image_id[keep], good.chosen_image_id[keep])
    assert service.to_impressions(out).num_rows == 4


def test_arrow_input_matches_dicts(exported):
    _, path = exported["none"]
    service = ArtworkService.from_dir(path, providers=CPU, policy=Softmax(0.5))
    requests = random_requests(50, seed=3)
    from_dicts = service.decide(requests, rng=np.random.default_rng(7))
    table = service.to_impressions(from_dicts).drop_columns(["chosen_image_id", "propensity", "action_dist"])
    from_arrow = service.decide(table, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(from_arrow.chosen_image_id, from_dicts.chosen_image_id)
    np.testing.assert_allclose(from_arrow.action_dist, from_dicts.action_dist)
    nulls = table.set_column(table.column_names.index("hour"), "hour", pa.array([None] + [3] * 49, pa.int8()))
    out = service.decide(nulls, rng=np.random.default_rng(7))
    assert out.errors == {0: "missing field 'hour'"} and out.ok[1:].all()


def test_add_images_scores_new_images_from_content(exported):
    bundle, path = exported["none"]
    service = ArtworkService.from_dir(path, providers=CPU)
    request = random_requests(1)[0] | {"candidate_image_ids": [5000, 1003]}
    assert 0 in service.decide([request], rng=np.random.default_rng(0)).errors
    new = np.random.default_rng(1).normal(size=(1, D)).astype(np.float32)
    service.add_images([5000], new)
    out = service.decide([request], rng=np.random.default_rng(0))
    assert out.ok.all()
    table = service.to_impressions(out)
    batch = table_to_batch(table, bundle.vocabs, max_history=4)  # 5000 is unknown to the vocab -> index 1
    emb = bundle.image_embedding[batch.inputs.candidate_image_idx]
    emb[0, 0] = torch.from_numpy(new[0])
    with torch.no_grad():
        ref = bundle.build_model()(batch.inputs.replace(candidate_embeddings=emb)).numpy()
    np.testing.assert_allclose(out.scores, ref, atol=1e-5)
    with pytest.raises(ValueError, match="already has an embedding"):
        service.add_images([1003], new)
    with pytest.raises(ValueError, match="shape"):
        service.add_images([6000], new[:, :3])


def test_impressions_validate_against_the_log_contract(exported):
    _, path = exported["ensemble"]
    service = ArtworkService.from_dir(path, providers=CPU, policy={"name": "thompson", "kind": "ensemble",
                                                                   "min_propensity": 0.01})  # fmt: skip
    requests = random_requests(40)
    requests[5]["hour"] = -1
    out = service.decide(requests, rng=np.random.default_rng(0))
    table = service.to_impressions(out)
    report = validate_table(table, "impressions")
    assert report.rows_read == 39 and report.kept.num_rows == 39
    assert table["request_id"].to_pylist() == [f"r{i}" for i in range(40) if i != 5]
    assert (np.array(table["propensity"].to_pylist()) >= 0.01).all()


def test_sticky_policy_repeats_within_a_window(exported):
    _, path = exported["none"]
    service = ArtworkService.from_dir(
        path, providers=CPU, policy=Softmax(2.0, sticky_window_seconds=3600, seed=9)
    )
    requests = random_requests(200)
    first = service.decide(requests)
    later = [r | {"timestamp": r["timestamp"] - r["timestamp"] % 3_600_000_000 + 1} for r in requests]
    np.testing.assert_array_equal(service.decide(later).chosen_image_id, first.chosen_image_id)


def test_member_features_from_dicts_and_arrow(tmp_path, make_bundle):
    bundle = make_bundle(member_features_dim=2)
    export_bundle(bundle, tmp_path, parity_batch_sizes=(3,), parity_candidates=(4,))
    service = ArtworkService.from_dir(tmp_path, providers=CPU)
    rng = np.random.default_rng(4)
    requests = [r | {"member_features": rng.normal(size=2).tolist()} for r in random_requests(20)]
    requests[3]["member_features"] = [1.0, 2.0, 3.0]
    out = service.decide(requests, rng=np.random.default_rng(0))
    assert list(out.errors) == [3] and "member_features must have 2 values" in out.errors[3]
    table = service.to_impressions(out)
    assert validate_table(table, "impressions", member_features_dim=2).kept.num_rows == 19
    again = service.decide(table.drop_columns(["chosen_image_id"]), rng=np.random.default_rng(0))
    np.testing.assert_allclose(again.scores, out.scores[out.ok], atol=1e-6)
    batch = table_to_batch(table, bundle.vocabs, max_history=4)
    with torch.no_grad():
        ref = bundle.build_model()(
            batch.inputs.replace(
                candidate_embeddings=bundle.image_embedding[batch.inputs.candidate_image_idx]
            )
        ).numpy()
    valid = batch.candidate_mask.numpy()
    np.testing.assert_allclose(again.scores[:, : ref.shape[1]][valid], ref[valid], atol=1e-5)


def test_thompson_refused_without_winners(exported):
    _, path = exported["none"]
    with pytest.raises(ValueError, match="winners"):
        ArtworkService.from_dir(path, providers=CPU, policy={"name": "thompson", "kind": "ensemble"})


def test_neural_linear_thompson_is_served_with_monte_carlo_propensities(tmp_path, make_bundle):
    """The service draws the posterior noise from its generator: seeded calls repeat, the propensities are
    the share of the S draws (mc_estimate:S) and the action is drawn from exactly that share."""
    bundle = make_bundle("neural_linear")
    export_bundle(
        bundle, tmp_path, policy={"name": "thompson"}, parity_batch_sizes=(3,), parity_candidates=(4,)
    )
    service = ArtworkService.from_dir(tmp_path, providers=CPU)
    requests = random_requests(40, seed=2)
    first = service.decide(requests, rng=np.random.default_rng(5))
    again = service.decide(requests, rng=np.random.default_rng(5))
    s = bundle.uncertainty_cfg.n_samples
    assert first.propensity_kind == f"mc_estimate:{s}"
    np.testing.assert_array_equal(first.action, again.action)
    np.testing.assert_array_equal(first.action_dist, again.action_dist)
    ok = first.ok
    shares = first.action_dist[ok] * s  # multiples of 1/S
    np.testing.assert_allclose(shares, np.round(shares), atol=1e-9)
    np.testing.assert_allclose(
        first.propensity[ok], first.action_dist[ok][np.arange(ok.sum()), first.action[ok]]
    )
    with pytest.raises(ValueError, match="sticky"):
        ArtworkService.from_dir(tmp_path, providers=CPU, policy={"name": "thompson", "kind": "mc_dropout",
                                                                  "sticky_window_seconds": 3600})  # fmt: skip


def _cuda_works() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_works(), reason="needs a CUDA device and onnxruntime's CUDA provider")
def test_cuda_io_binding_matches_cpu(exported):
    _, path = exported["ensemble"]
    cpu = ArtworkService.from_dir(path, providers=CPU)
    gpu = ArtworkService.from_dir(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.session.cuda
    requests = random_requests(100)
    a, b = (
        cpu.decide(requests, rng=np.random.default_rng(0)),
        gpu.decide(requests, rng=np.random.default_rng(0)),
    )
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


@pytest.mark.parametrize("kind", ["none", "ensemble"])
def test_precomputed_graph_serves_catalogue_batches_with_the_same_decisions(exported, kind):
    """Batches of catalogue images go to model_precomputed.onnx (the stored image tower) and decide as the
    embedding graph does; a batch holding an image added after export goes to the embedding graph."""
    from deepbandit.serving import check_graph_inputs
    from deepbandit.serving.features import build_inputs

    bundle, path = exported[kind]
    fast = ArtworkService.from_dir(path, providers=CPU)
    plain = ArtworkService.from_dir(path, providers=CPU, precomputed=False)
    assert fast.precomputed_session is not None and plain.precomputed_session is None
    requests = random_requests(40, seed=11)
    batch = fast.parse(requests)
    graph = build_inputs(batch, fast.vocabs, fast.images, fast.embeddings, fast.input_names, fast.max_history,
                         precomputed_names=fast.precomputed_names, catalogue_rows=fast.catalogue_rows)  # fmt: skip
    assert graph.precomputed and "candidate_embeddings" not in graph.feeds
    check_graph_inputs(graph.feeds, fast.manifest, precomputed=True)
    with pytest.raises(ValueError, match="candidate_embeddings"):
        check_graph_inputs(graph.feeds, fast.manifest)
    a, b = (s.decide(requests, rng=np.random.default_rng(0)) for s in (fast, plain))
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.chosen_image_id, b.chosen_image_id)
    np.testing.assert_allclose(a.propensity, b.propensity)
    # an image added after export: that batch takes the embedding path, in both services alike
    new = np.random.default_rng(1).normal(size=(1, D)).astype(np.float32)
    for s in (fast, plain):
        s.add_images([5000], new)
    with_new = [dict(requests[0], candidate_image_ids=[5000, 1001])] + requests[1:]
    graph = build_inputs(fast.parse(with_new), fast.vocabs, fast.images, fast.embeddings, fast.input_names,
                         fast.max_history, precomputed_names=fast.precomputed_names,
                         catalogue_rows=fast.catalogue_rows)  # fmt: skip
    assert not graph.precomputed and "candidate_embeddings" in graph.feeds
    a, b = (s.decide(with_new, rng=np.random.default_rng(0)) for s in (fast, plain))
    np.testing.assert_allclose(a.scores, b.scores, atol=0)
    np.testing.assert_array_equal(a.chosen_image_id, b.chosen_image_id)
