"""Posterior samplers: vectorised ensemble vs loop, bootstrap training, MC dropout, neural-linear."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from deepbandit.losses.objectives import ObjectiveConfig, compute_loss
from deepbandit.models.encoders import PAD_LOGIT, ModelConfig, random_inputs
from deepbandit.models.scorer import ArtworkScorer
from deepbandit.models.uncertainty import (
    UNCERTAINTY,
    BayesianLinearRegression,
    EnsembleScorer,
    MCDropoutScorer,
    NeuralLinearScorer,
    UncertaintyConfig,
    build_scorer,
    irls_weights,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CFG = ModelConfig(
    n_titles=20,
    n_countries=3,
    n_languages=4,
    n_devices=2,
    n_images=30,
    n_genres=5,
    embedding_dim=8,
    id_dim=8,
    tower_dim=16,
    hidden_dim=16,
    head_dim=16,
    image_id_hash_buckets=11,
)


GENRES = (torch.rand(22, 5, generator=torch.Generator().manual_seed(0)) < 0.4).float()


def _inputs(cfg: ModelConfig = CFG, b: int = 7, a: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    return random_inputs(cfg, b, a, 6, torch.Generator().manual_seed(seed))


# --- ensemble -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pooling", "prior_scale"), [("mean", 0.0), ("mean", 3.0), ("attention", 1.0)])
def test_vectorised_ensemble_equals_python_loop(pooling, prior_scale):
    cfg = replace(CFG, pooling=pooling, member_features_dim=2)
    torch.manual_seed(0)
    ens = EnsembleScorer(cfg, GENRES, n_members=4, prior_scale=prior_scale)
    with torch.no_grad():  # a trained-looking id table, so the hashed path is compared too
        ens.net.image_tower.ids.weight.normal_()
    x = _inputs(cfg)
    vec, loop = ens.member_logits(x), ens.forward_loop(x)
    assert vec.shape == (7, 4, 5)
    torch.testing.assert_close(vec, loop, rtol=0, atol=1e-5)
    torch.testing.assert_close(ens(x), loop.mean(1), rtol=0, atol=1e-5)
    # members are different networks, not copies
    valid = x["candidate_mask"]
    assert all(not torch.allclose(vec[:, 0][valid], vec[:, k][valid]) for k in range(1, 4))


def test_ensemble_posterior_samples_are_members():
    torch.manual_seed(0)
    ens = EnsembleScorer(CFG, GENRES, n_members=3).eval()
    x = _inputs()
    members = ens.member_logits(x)
    torch.testing.assert_close(ens.posterior_samples(x), members)
    draws = ens.posterior_samples(x, 50, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (7, 50, 5)
    # every draw is one member's logits for the whole batch, and all members get drawn
    match = [(draws[:, s : s + 1] == members).all(-1).all(0) for s in range(50)]
    assert all(int(m.sum()) == 1 for m in match)
    assert set(int(m.nonzero()) for m in match) == {0, 1, 2}
    again = ens.posterior_samples(x, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_randomised_prior_is_frozen_and_added_with_its_scale():
    torch.manual_seed(0)
    ens = EnsembleScorer(CFG, GENRES, n_members=3, prior_scale=2.5)
    x = _inputs()
    with_prior = ens.member_logits(x)
    prior = ens.prior.member_logits(x)
    ens.prior_scale = 0.0
    valid = x["candidate_mask"].unsqueeze(1).expand_as(prior)
    torch.testing.assert_close(with_prior[valid], (ens.member_logits(x) + 2.5 * prior)[valid])
    ens.prior_scale = 2.5
    with_prior.sum().backward()
    assert all(p.grad is None for p in ens.prior.parameters())
    assert all(p.grad is not None for p in ens.net.parameters())


def test_each_member_trains_only_on_its_own_bootstrap_weights():
    torch.manual_seed(0)
    ens = EnsembleScorer(CFG, GENRES, n_members=3)
    x = _inputs(b=16)
    b = x["candidate_mask"].shape[0]
    member_weights = torch.ones(b, 3)
    member_weights[:, 1] = 0  # member 1 drew no rows of this batch
    action = torch.zeros(b, dtype=torch.long)
    out = compute_loss(
        ObjectiveConfig(),
        ens.member_logits(x),
        x["candidate_mask"],
        action,
        torch.ones(b),
        torch.full((b,), 0.5),
        member_weights,
    )
    out["loss"].backward()
    for name, p in ens.net.named_parameters():
        if p.grad is None:
            continue
        assert torch.all(p.grad[1] == 0), name
    assert ens.net.head.out.weight.grad[0].abs().sum() > 0 and ens.net.head.out.weight.grad[2].abs().sum() > 0


# --- MC dropout ---------------------------------------------------------------------------------------


def test_mc_dropout_draws_vary_and_eval_forward_is_deterministic():
    torch.manual_seed(0)
    model = MCDropoutScorer(replace(CFG, dropout=0.3, last_layer_dropout=0.3), GENRES).eval()
    x = _inputs()
    draws = model.posterior_samples(x, 8)
    assert draws.shape == (7, 8, 5)
    valid = x["candidate_mask"]
    assert (draws.std(1)[valid] > 0).all()  # every valid cell varies across draws
    assert torch.all(draws.transpose(1, 2)[~valid] == PAD_LOGIT)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(
        model.posterior_samples(x, 8, generator=g()), model.posterior_samples(x, 8, generator=g())
    )


def test_mc_dropout_mean_is_the_eval_prediction_when_only_the_last_layer_drops():
    # the logit is linear in the last hidden layer, so inverted dropout there is unbiased: the mean of the
    # draws converges to the eval-mode output; tolerance from each cell's standard error
    torch.manual_seed(0)
    model = MCDropoutScorer(replace(CFG, last_layer_dropout=0.4), GENRES).eval()
    x = _inputs()
    torch.manual_seed(1)
    draws = model.posterior_samples(x, 4000)
    valid = x["candidate_mask"]
    mean, se = draws.mean(1)[valid], draws.std(1)[valid] / 4000**0.5
    assert (se > 0).all()
    z = (mean - model(x)[valid]) / se
    assert z.abs().max() < 5, z


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="needs ModelConfig.dropout"):
        MCDropoutScorer(CFG, GENRES)


# --- Bayesian linear regression and neural-linear -----------------------------------------------------


def test_blr_posterior_mean_is_the_ridge_solution_and_covariance_the_inverse_precision():
    rng = np.random.default_rng(0)
    phi, w_true = rng.normal(size=(40, 4)), np.array([1.0, -2.0, 0.5, 0.0])
    y, c = phi @ w_true + 0.3 * rng.normal(size=40), rng.uniform(0.2, 2.0, size=40)
    alpha, sigma2 = 2.0, 0.5
    blr = BayesianLinearRegression(4, alpha, sigma2)
    blr.update(torch.tensor(phi[:25]), torch.tensor(y[:25]), torch.tensor(c[:25]))
    blr.update(torch.tensor(phi[25:]), torch.tensor(y[25:]), torch.tensor(c[25:]))  # streaming = batch
    ridge = np.linalg.solve(phi.T @ (c[:, None] * phi) + alpha * sigma2 * np.eye(4), phi.T @ (c * y))
    np.testing.assert_allclose(blr.mean.numpy(), ridge, rtol=1e-5, atol=1e-6)
    precision = alpha * np.eye(4) + phi.T @ (c[:, None] * phi) / sigma2
    np.testing.assert_allclose(blr.covariance().numpy(), np.linalg.inv(precision), rtol=1e-4, atol=1e-7)
    assert blr.n_seen == 40


def test_blr_posterior_variance_shrinks_with_data():
    rng = np.random.default_rng(1)
    blr = BayesianLinearRegression(3, prior_precision=1.0, noise_variance=1.0)
    probe = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float32)
    variances = [((probe @ blr.covariance()) * probe).sum(1)]
    for _ in range(4):
        blr.update(torch.tensor(rng.normal(size=(20, 3))), torch.tensor(rng.normal(size=20)))
        variances.append(((probe @ blr.covariance()) * probe).sum(1))
    v = torch.stack(variances)
    assert (v[1:] < v[:-1]).all()
    assert (v[-1] < 0.05 * v[0]).all()  # 80 unit-variance rows: variance ~ 1/80 of the prior's


def test_blr_samples_follow_the_posterior():
    rng = np.random.default_rng(2)
    blr = BayesianLinearRegression(2, prior_precision=0.5)
    blr.update(torch.tensor(rng.normal(size=(10, 2))), torch.tensor(rng.normal(size=10)))
    n = 20000
    w = blr.sample(n, torch.Generator().manual_seed(0)).double()
    cov = blr.covariance().double()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((w.mean(0) - blr.mean.double()).abs() < 5 * se_mean).all()
    # sample covariance: entry (i, j) has variance (S_ii S_jj + S_ij^2) / n for Gaussians
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(w.T) - cov).abs() < 5 * se_cov).all()


def _neural_linear(**kw) -> NeuralLinearScorer:
    torch.manual_seed(0)
    return NeuralLinearScorer(CFG, GENRES, **kw).eval()


def test_neural_linear_prior_is_centred_on_the_trained_last_layer():
    model, x = _neural_linear(prior_precision=1e6), _inputs()
    _, phi = model._features(x)
    torch.testing.assert_close(
        (phi @ model.blr.mean)[x["candidate_mask"]], model(x)[x["candidate_mask"]], rtol=1e-5, atol=1e-5
    )
    draws = model.posterior_samples(x, 6, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (7, 6, 5) and torch.all(draws.transpose(1, 2)[~x["candidate_mask"]] == PAD_LOGIT)
    # with a tight prior every draw sits at the point prediction
    torch.testing.assert_close(draws, model(x).unsqueeze(1).expand_as(draws), rtol=0, atol=1e-2)


def test_neural_linear_update_is_one_newton_step_of_last_layer_logistic_regression():
    alpha = 3.0
    model, x = _neural_linear(prior_precision=alpha), _inputs(b=40)
    g = torch.Generator().manual_seed(4)
    action = torch.zeros(40, dtype=torch.long)  # candidate 0 is always valid
    reward = (torch.rand(40, generator=g) < 0.5).float()
    model.update_posterior(x, action, reward)
    logits, phi = model._features(x)
    phi, eta = phi[:, 0].detach().double().numpy(), logits[:, 0].detach().double().numpy()
    w0 = model.blr.prior_mean.numpy()
    p = 1 / (1 + np.exp(-eta))
    hessian = alpha * np.eye(len(w0)) + phi.T @ ((p * (1 - p))[:, None] * phi)
    gradient = phi.T @ (reward.double().numpy() - p)  # log-likelihood gradient at w0 (prior term is 0 there)
    newton = w0 + np.linalg.solve(hessian, gradient)
    np.testing.assert_allclose(model.blr.mean.numpy(), newton, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.blr.covariance().numpy(), np.linalg.inv(hessian), rtol=1e-3, atol=1e-6)


def test_neural_linear_step_never_passes_a_confident_rows_own_optimum():
    """A network predicting 0.99999 where the soft label is 0.998: the plain Newton step (curvature
    p (1 - p) = 1e-5) would move that row's logit by about 190 past logit(0.998); the step lands on it."""
    model, x = _neural_linear(prior_precision=1e-6), _inputs(b=1)
    with torch.no_grad():
        model.net.head.out.bias += 11.5 - model(x)[0, 0]  # candidate 0 predicted at logit 11.5
    model.reset_posterior()
    label = torch.tensor([0.998])
    model.update_posterior(x, torch.zeros(1, dtype=torch.long), label)
    _, phi = model._features(x)
    moved = float(phi[0, 0] @ model.blr.mean)
    assert abs(moved - float(torch.logit(label))) < 0.05, moved
    # and for a 0/1 label the step is the Newton step (see the test above): irls_weights is p (1 - p)
    eta = torch.tensor([-0.3, 0.2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        irls_weights(eta, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)),
        torch.sigmoid(eta) * torch.sigmoid(-eta),
    )


def test_neural_linear_draws_tighten_with_data_and_reset_forgets():
    model, x = _neural_linear(prior_precision=1.0), _inputs()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    valid = x["candidate_mask"].unsqueeze(1).expand(-1, 200, -1)
    spread = lambda: model.posterior_samples(x, 200, generator=g())[valid].std()  # noqa: E731
    before = spread()
    big = _inputs(b=400, seed=9)
    model.update_posterior(big, torch.zeros(400, dtype=torch.long), torch.ones(400))
    after = spread()
    assert after < 0.5 * before
    model.reset_posterior()
    torch.testing.assert_close(spread(), before)


# --- registry -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(UNCERTAINTY))
def test_every_uncertainty_kind_shares_the_interface(kind):
    cfg = replace(CFG, dropout=0.1)
    torch.manual_seed(0)
    model = build_scorer(cfg, UncertaintyConfig(kind=kind, n_members=3, prior_scale=1.0), GENRES).eval()
    x = _inputs(cfg)
    k = 3 if kind == "ensemble" else 1
    assert model(x).shape == (7, 5)
    assert model.member_logits(x).shape == (7, k, 5) and model.n_members == k
    assert model.posterior_samples(x, 4, generator=torch.Generator().manual_seed(0)).shape == (7, 4, 5)
    assert isinstance(model, ArtworkScorer) == (kind == "none")


def test_unknown_uncertainty_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown uncertainty kind 'bootstrap'; choose one of"):
        UncertaintyConfig(kind="bootstrap")
    config = UncertaintyConfig()
    config.kind = "bootstrap"  # dataclasses do not revalidate on assignment; the builder does
    with pytest.raises(ValueError, match="unknown uncertainty kind 'bootstrap'"):
        build_scorer(CFG, config, GENRES)
    with pytest.raises(ValueError, match="an ensemble needs n_members >= 2"):
        build_scorer(CFG, UncertaintyConfig(kind="ensemble", n_members=1), GENRES)


def test_every_uncertainty_model_says_what_it_offers():
    from deepbandit.models.uncertainty import CAPABILITIES, UNCERTAINTY, UncertaintyConfig, capabilities

    assert set(CAPABILITIES) == set(UNCERTAINTY)
    offers = {kind: capabilities(UncertaintyConfig(kind=kind, n_samples=7)) for kind in UNCERTAINTY}
    assert offers["none"].posterior == "none" and not offers["none"].posterior_in_training
    ensemble = offers["ensemble"]
    assert ensemble.posterior == "exact" and ensemble.exported_posterior and ensemble.bootstrap_members
    assert ensemble.posterior_draws is None and ensemble.thompson_kind == "ensemble"
    assert not capabilities(UncertaintyConfig(kind="ensemble", bootstrap=False)).bootstrap_members
    dropout = offers["mc_dropout"]
    assert dropout.posterior == "sampled" and dropout.posterior_draws == 7 and not dropout.exported_posterior
    assert dropout.thompson_kind == "mc_dropout"
    assert (
        offers["neural_linear"].posterior == "sampled" and not offers["neural_linear"].posterior_in_training
    )
