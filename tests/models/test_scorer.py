"""The default scorer: shapes, masking, once-per-request member tower, cold start, input validation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from deepbandit.models import encoders
from deepbandit.models.encoders import (
    PAD_LOGIT,
    ImageEmbeddingLookup,
    ModelConfig,
    StackedEmbedding,
    StackedLinear,
    random_inputs,
    validate_inputs,
)
from deepbandit.models.scorer import ArtworkScorer

pytestmark = pytest.mark.usefixtures("single_thread")

CFG = ModelConfig(
    n_titles=20,
    n_countries=3,
    n_languages=4,
    n_devices=2,
    n_images=30,
    n_genres=5,
    embedding_dim=8,
    member_features_dim=3,
    id_dim=8,
    tower_dim=16,
    hidden_dim=16,
    head_dim=16,
    image_id_hash_buckets=11,
)


def _genres(cfg: ModelConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    genres = (torch.rand(cfg.n_titles + 2, cfg.n_genres, generator=g) < 0.4).float()
    genres[:2] = 0  # padding and unknown titles have no genre
    return genres


def _model(cfg: ModelConfig = CFG, seed: int = 0) -> ArtworkScorer:
    torch.manual_seed(seed)
    return ArtworkScorer(cfg, _genres(cfg)).eval()


def _inputs(
    cfg: ModelConfig = CFG, b: int = 7, a: int = 5, h: int = 6, seed: int = 1
) -> dict[str, torch.Tensor]:
    return random_inputs(cfg, b, a, h, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_logits_have_one_column_per_candidate_and_padding_holds_pad_logit(pooling):
    cfg = replace(CFG, pooling=pooling)
    model, x = _model(cfg), _inputs(cfg)
    logits = model(x)
    assert logits.shape == (7, 5)
    assert torch.all(logits[~x["candidate_mask"]] == PAD_LOGIT)
    assert torch.isfinite(logits).all() and (logits[x["candidate_mask"]] > PAD_LOGIT / 2).all()
    assert model.member_logits(x).shape == (7, 1, 5)
    assert torch.equal(model.member_logits(x)[:, 0], logits)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padding_never_affects_valid_logits(pooling):
    cfg = replace(CFG, pooling=pooling)
    model, x = _model(cfg), _inputs(cfg)
    ref = model(x)
    g = torch.Generator().manual_seed(5)
    y = dict(x)
    cmask, hmask = x["candidate_mask"], x["history_mask"]
    # garbage in every padded slot, and three more padded candidate columns and history slots
    y["candidate_embeddings"] = torch.where(
        cmask.unsqueeze(-1),
        x["candidate_embeddings"],
        100 * torch.randn(x["candidate_embeddings"].shape, generator=g),
    )
    y["candidate_image_idx"] = torch.where(
        cmask, x["candidate_image_idx"], torch.randint(2, 32, cmask.shape, generator=g)
    )
    y["history_title_idx"] = torch.where(
        hmask, x["history_title_idx"], torch.randint(0, 22, hmask.shape, generator=g)
    )
    pad3 = torch.zeros(7, 3, dtype=torch.bool)
    y["candidate_mask"] = torch.cat([cmask, pad3], 1)
    y["candidate_embeddings"] = torch.cat([y["candidate_embeddings"], torch.randn(7, 3, 8, generator=g)], 1)
    y["candidate_image_idx"] = torch.cat([y["candidate_image_idx"], torch.full((7, 3), 9)], 1)
    y["history_mask"] = torch.cat([hmask, pad3], 1)
    y["history_title_idx"] = torch.cat([y["history_title_idx"], torch.full((7, 3), 4)], 1)
    out = model(y)
    torch.testing.assert_close(out[:, :5][cmask], ref[cmask], rtol=0, atol=1e-5)
    assert torch.all(out[~y["candidate_mask"]] == PAD_LOGIT)


def test_padded_candidates_never_win_softmax_or_argmax():
    model, x = _model(), _inputs()
    with torch.no_grad():  # push valid logits far down: padding must still lose
        model.head.out.bias.fill_(-500.0)
    logits = model(x)
    probs = torch.softmax(logits, -1)
    assert torch.all(probs[~x["candidate_mask"]] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))
    assert x["candidate_mask"].gather(1, logits.argmax(-1, keepdim=True)).all()


def test_empty_history_gives_finite_logits_for_both_poolings():
    for pooling in ("mean", "attention"):
        cfg = replace(CFG, pooling=pooling)
        x = _inputs(cfg)
        x["history_mask"] = torch.zeros_like(x["history_mask"])
        x["history_title_idx"] = torch.zeros_like(x["history_title_idx"])
        assert torch.isfinite(_model(cfg)(x)).all()


def test_member_tower_runs_once_per_request_and_image_tower_once_per_candidate():
    model, x = _model(), _inputs()
    seen: dict[str, list[tuple[int, ...]]] = {"member": [], "image": []}
    model.member_tower.register_forward_hook(lambda m, i, o: seen["member"].append(tuple(o.shape)))
    model.image_tower.register_forward_hook(lambda m, i, o: seen["image"].append(tuple(o.shape)))
    model.member_tower.mlp.inner.register_forward_hook(
        lambda m, i, o: seen.setdefault("rows", []).append(i[0].shape)
    )
    model(x)
    real = int(x.candidate_mask.sum())
    assert real < 0.8 * x.candidate_mask.numel()  # enough padding for the packed path
    assert seen["member"] == [(1, 7, CFG.tower_dim)]  # (members, B, d), never (B * A, d)
    assert seen["image"] == [(1, 1, real, CFG.tower_dim)]  # the real candidates only, packed
    assert seen["rows"][0][:2] == (1, 7)
    seen["image"].clear()
    model.pack_candidates = False
    model(x)
    assert seen["image"] == [(1, 7, 5, CFG.tower_dim)]  # padded: every (request, slot)


def test_little_padding_keeps_the_padded_path():
    model, x = _model(), _inputs()
    x.candidate_mask[:] = True
    x.candidate_mask[0, -1] = False
    assert model._real_pairs(x.candidate_mask) is None


def _set_packing(model: torch.nn.Module, on: bool) -> None:
    for part in model.modules():
        if isinstance(part, ArtworkScorer):
            part.pack_candidates = on


@pytest.mark.parametrize("kind", ["none", "ensemble", "mc_dropout", "neural_linear"])
def test_packed_candidates_give_the_padded_paths_loss_and_gradients(kind):
    """The packed path is an implementation detail: logits at real candidates, the training loss and
    every parameter's gradient equal the padded path's (to float rounding)."""
    from deepbandit.losses.objectives import ObjectiveConfig, compute_loss
    from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer

    cfg = replace(CFG, member_id_hash_buckets=5, dropout=0.2 if kind == "mc_dropout" else 0.0)
    u = UncertaintyConfig(kind=kind, n_members=3, prior_scale=1.0)
    torch.manual_seed(0)
    model = build_scorer(cfg, u, _genres(cfg))
    x = random_inputs(cfg, 32, 9, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    action = (torch.rand(32, generator=g) * x.candidate_mask.sum(1)).long()
    target = (torch.rand(32, generator=g) < 0.4).float()
    pscore = 1.0 / x.candidate_mask.sum(1).float()

    def loss_and_grads(packed: bool):
        _set_packing(model, packed)
        model.train(kind != "mc_dropout")  # dropout draws differ between shapes: compare without them
        logits = model.member_logits(x)
        parts = compute_loss(ObjectiveConfig(name="dr"), logits, x.candidate_mask, action, target, pscore)
        params = [p for p in model.parameters() if p.requires_grad]
        return logits, parts["loss"], torch.autograd.grad(parts["loss"], params)

    (lp, loss_p, grads_p), (lq, loss_q, grads_q) = loss_and_grads(True), loss_and_grads(False)
    real = x.candidate_mask.unsqueeze(1).expand_as(lp)
    torch.testing.assert_close(lp[real], lq[real], rtol=1e-5, atol=1e-6)
    assert torch.equal(lp[~real], lq[~real])  # PAD_LOGIT on padding, both ways
    torch.testing.assert_close(loss_p, loss_q, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads_p, grads_q, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if kind == "neural_linear":  # the last-layer features at real candidates too (the posterior reads them)
        model.eval()
        feats = []
        for packed in (True, False):
            _set_packing(model, packed)
            feats.append(model._features(x)[1][x.candidate_mask])
        torch.testing.assert_close(feats[0], feats[1], rtol=1e-5, atol=1e-6)


def test_cold_start_new_image_scored_from_its_embedding_alone():
    model, x = _model(), _inputs()
    with torch.no_grad():  # an image-id table that has learned something
        model.image_tower.ids.weight.normal_()
    g = torch.Generator().manual_seed(3)
    new = dict(x)
    new["candidate_image_idx"] = torch.where(x["candidate_mask"], 1, 0)  # unknown to the catalogue
    new["candidate_embeddings"] = torch.randn(x["candidate_embeddings"].shape, generator=g)
    no_ids = {k: v for k, v in new.items() if k != "candidate_image_idx"}
    cold = model(new)
    assert torch.isfinite(cold).all()
    torch.testing.assert_close(cold, model(no_ids), rtol=0, atol=0)  # unknown images read no id embedding
    other = dict(no_ids, candidate_embeddings=torch.randn(x["candidate_embeddings"].shape, generator=g))
    assert not torch.allclose(model(other)[x["candidate_mask"]], cold[x["candidate_mask"]])  # content matters
    # known images do read their id embedding
    known = model(x)
    assert not torch.allclose(
        known[x["candidate_mask"]], model({**x, "candidate_image_idx": None})[x["candidate_mask"]]
    )


def test_image_id_embedding_starts_at_zero_so_warm_and_cold_start_agree_at_init():
    model, x = _model(), _inputs()
    torch.testing.assert_close(model(x), model({**x, "candidate_image_idx": None}), rtol=0, atol=0)


def test_title_and_context_reach_the_logits():
    model, x = _model(), _inputs()
    ref = model(x)[x["candidate_mask"]]
    for name, value in [("title_idx", (x["title_idx"] - 2 + 1) % 20 + 2), ("hour", (x["hour"] + 12) % 24)]:
        changed = model({**x, name: value})[x["candidate_mask"]]
        assert not torch.allclose(changed, ref), name


def test_hour_is_cyclical():
    model, x = _model(), _inputs()
    at = {h: model({**x, "hour": torch.full_like(x["hour"], h)}) for h in (0, 12, 23)}
    # 23h is closer to 0h than 12h is
    assert (at[23] - at[0]).abs().sum() < (at[12] - at[0]).abs().sum()


def test_image_lookup_reads_the_catalogue_table():
    table = torch.randn(32, 8)
    lookup = ImageEmbeddingLookup(table)
    idx = torch.tensor([[2, 5, 0], [31, 1, 0]])
    torch.testing.assert_close(lookup(idx), table[idx])
    assert not lookup.image_embeddings.requires_grad and "image_embeddings" in dict(lookup.named_buffers())
    with pytest.raises(ValueError, match="float"):
        ImageEmbeddingLookup(torch.zeros(4, 3, dtype=torch.long))


def test_stacked_layers_equal_their_per_member_counterparts():
    torch.manual_seed(0)
    lin, emb = StackedLinear(3, 4, 5), StackedEmbedding(3, 9, 4)
    x_shared, x_member = torch.randn(1, 6, 4), torch.randn(3, 6, 4)
    for k in range(3):
        ref = torch.nn.functional.linear(x_shared[0], lin.weight[k].T, lin.bias[k])
        torch.testing.assert_close(lin(x_shared)[k], ref)
        torch.testing.assert_close(
            lin(x_member)[k], torch.nn.functional.linear(x_member[k], lin.weight[k].T, lin.bias[k])
        )
    idx, w = torch.randint(0, 9, (6, 4)), torch.rand(6, 4)
    for k in range(3):
        torch.testing.assert_close(emb(idx)[k], emb.weight[k][idx])
        torch.testing.assert_close(emb.bag(idx, w)[k], (w.unsqueeze(-1) * emb.weight[k][idx]).sum(1))
    with pytest.raises(ValueError, match="neither 1 nor n_members=3"):
        lin(torch.randn(2, 6, 4))


def test_export_path_of_the_embedding_bag_matches_the_fused_kernel(monkeypatch):
    idx, table, w = torch.randint(0, 9, (6, 4)), torch.randn(9, 3), torch.rand(6, 4)
    fused = encoders.embedding_bag(idx, table, w)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.testing.assert_close(encoders.embedding_bag(idx, table, w), fused)


def test_bf16_autocast_forward_is_finite_and_close():
    model, x = _model(), _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    ref = model(x)
    mask = x["candidate_mask"]
    assert torch.isfinite(low).all() and torch.all(low[~mask] <= PAD_LOGIT * 0.99)
    torch.testing.assert_close(low[mask].float(), ref[mask], rtol=0.05, atol=0.05)


def test_member_features_required_when_configured():
    x = _inputs()
    del x["member_features"]
    with pytest.raises(ValueError, match="member_features"):
        _model()(x)


def test_random_inputs_are_valid():
    validate_inputs(CFG, _inputs(b=50))


def _set(name, value):
    def edit(x):
        x[name] = value(x[name]) if callable(value) else value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _set("country_idx", lambda t: t.clone().index_fill_(0, torch.tensor([3]), 5)),
            r"country_idx at row 3 .* is 5, outside \[0, 4\]",
        ),
        (_set("hour", lambda t: t.clone().index_fill_(0, torch.tensor([2]), 24)), r"hour at row 2 .* is 24"),
        (_set("weekday", lambda t: t.float()), "weekday must be an integer"),
        (
            _set("candidate_image_idx", lambda t: t.clone().index_fill_(0, torch.tensor([1]), 32)),
            "candidate_image_idx at row 1",
        ),
        (
            _set("recommender_score", lambda t: t.clone().index_fill_(0, torch.tensor([4]), float("nan"))),
            "recommender_score is not finite at row 4",
        ),
        (_set("history_mask", lambda t: t.long()), "history_mask must be bool"),
        (
            _set("candidate_embeddings", lambda t: t[..., :7]),
            r"candidate_embeddings has shape \(7, 5, 7\), expected \(7, 5, 8\)",
        ),
        (
            _set("candidate_mask", lambda t: t.clone().index_fill_(0, torch.tensor([6]), False)),
            "candidate_mask row 6 has no valid candidate",
        ),
        (_set("title_idx", None), "missing scorer inputs: .'title_idx'"),
        (_set("member_feature", torch.zeros(7, 3)), "unknown scorer inputs"),
    ],
)
def test_validate_inputs_names_input_row_and_value(edit, message):
    x = dict(_inputs())  # a plain mapping, so that a misspelt name can be put in
    edit(x)
    with pytest.raises(ValueError, match=message):
        validate_inputs(CFG, x)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pooling", "max", "pooling must be one of"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
        ("tower_dim", 0, "tower_dim must be >= 1"),
        ("n_titles", -1, "n_titles must be >= 0"),
    ],
)
def test_model_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(CFG, **{field: value})


def test_title_genres_shape_is_checked():
    with pytest.raises(ValueError, match=r"title_genres has shape \(21, 5\), expected"):
        ArtworkScorer(CFG, torch.zeros(21, 5))


def test_member_id_embedding_learns_what_the_context_cannot_say():
    """Two members in the same context prefer opposite images: only a model with member_id_hash_buckets
    can tell them apart (without it member_id is not even an input and both get the same logits)."""
    import torch.nn.functional as F

    cfg = replace(CFG, member_id_hash_buckets=17)
    g = torch.Generator().manual_seed(0)
    x = random_inputs(cfg, 1, 2, 3, generator=g)
    n = 64
    same = x.apply(lambda v: v.expand(n, *v.shape[1:]).clone())
    same = same.replace(candidate_mask=torch.ones(n, 2, dtype=torch.bool))
    member = torch.arange(n) % 2
    inputs = same.replace(member_id=member * 1000 + 3)  # ids 3 and 1003: buckets 3 and 15
    action = torch.randint(0, 2, (n,), generator=g)
    reward = (action == member).float()  # member 0 plays image 0, member 1 image 1
    for buckets in (17, 0):
        torch.manual_seed(0)
        model = ArtworkScorer(replace(cfg, member_id_hash_buckets=buckets), _genres(cfg))
        feed = inputs if buckets else inputs.replace(member_id=None)
        opt = torch.optim.Adam(model.parameters(), lr=0.03)
        for _ in range(150):
            logit = model(feed).gather(1, action[:, None]).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logit, reward)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pick = model(feed).argmax(1)
        if buckets:
            assert torch.equal(pick, member)
        else:
            assert (pick == pick[0]).all()  # one choice for both members


@pytest.mark.parametrize("packed", [True, False])
def test_precomputed_image_tower_equals_the_embedding_path(packed):
    """``precompute_image_towers`` stores each catalogue row's tower output (with its hashed id embedding):
    gathering it gives the embedding path's logits, packed or padded."""
    from deepbandit.models.scorer import precompute_image_towers

    model = _model()
    with torch.no_grad():
        model.image_tower.ids.weight.normal_()  # starts at zero; make the stored table carry it
    table = torch.randn(CFG.n_images + 2, CFG.embedding_dim)
    table[0] = 0
    x = random_inputs(CFG, 16, 6, 4, torch.Generator().manual_seed(2), image_embeddings=table)
    _set_packing(model, packed)
    want = model(x)
    precompute_image_towers(model, table)
    assert model.image_vectors.shape == (1, CFG.n_images + 2, CFG.tower_dim)
    torch.testing.assert_close(model(x.replace(candidate_embeddings=None)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="candidate_image_idx"):
        model(x.replace(candidate_embeddings=None, candidate_image_idx=None))
