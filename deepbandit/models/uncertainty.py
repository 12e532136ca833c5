"""Posterior uncertainty for Thompson sampling: ensemble, MC dropout, neural-linear.

Every scorer here (and the plain ``ArtworkScorer``, whose posterior is a point mass) has:

- ``forward(inputs) -> (B, A)`` point logits (the mean prediction), padding = PAD_LOGIT;
- ``member_logits(inputs) -> (B, K, A)`` the logits the loss trains, K = ``n_members`` (1 unless an
  ensemble);
- ``posterior_samples(inputs, n_samples=None, generator=None) -> (B, S, A)`` posterior draws of the
  **logits** (apply sigmoid for expected rewards; argmax is the Thompson choice either way). One draw is
  shared by the whole batch (one ensemble member, one weight vector), except MC dropout whose masks are
  drawn per row; both are valid Thompson sampling for independent requests.

``inputs`` is a ``ModelInputs`` (``deepbandit.data.features``; a mapping of its names is converted).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from deepbandit.data.features import ModelInputs
from deepbandit.errors import ConfigError
from deepbandit.models.capabilities import Capabilities
from deepbandit.models.encoders import PAD_LOGIT, ModelConfig
from deepbandit.models.scorer import ArtworkScorer

Inputs = ModelInputs | Mapping[str, Tensor]


@dataclass
class UncertaintyConfig:
    """One config group, one option per ``kind``; fields of other kinds are ignored.

    kind: "none" | "ensemble" | "mc_dropout" | "neural_linear" (keys of ``UNCERTAINTY``).
    ensemble: ``n_members`` K, ``prior_scale`` beta of the randomised prior functions (0 = none),
    ``bootstrap`` (train each member on Poisson(1) weights from ``losses.weights.poisson_bootstrap_weights``
    with ``bootstrap_seed``; read by the trainer). mc_dropout / neural_linear: ``n_samples`` default
    draws. neural_linear: ``prior_precision`` alpha and ``noise_variance`` sigma^2 of the last-layer
    Bayesian linear regression.
    """

    kind: str = "none"  # posterior for Thompson sampling: none | ensemble | mc_dropout | neural_linear
    n_members: int = 10  # ensemble: members K (>= 2)
    prior_scale: float = 0.0  # ensemble: scale beta of the randomised prior networks; 0 = none
    bootstrap: bool = True  # ensemble: train each member on its own Poisson(1) bootstrap of the rows
    bootstrap_seed: int = 0  # ensemble: seed of the bootstrap weights
    n_samples: int = 16  # mc_dropout, neural_linear: default number of posterior draws
    prior_precision: float = 1.0  # neural_linear: prior precision alpha of the last-layer weights
    noise_variance: float = 1.0  # neural_linear: noise variance sigma^2; 1 = exact Laplace, larger = tempered

    def __post_init__(self) -> None:
        if self.kind not in UNCERTAINTY:
            raise ConfigError(f"unknown uncertainty kind {self.kind!r}; choose one of {sorted(UNCERTAINTY)}")
        if self.n_samples < 1 or self.n_members < 1:
            raise ConfigError(f"n_samples and n_members must be >= 1, got {self.n_samples}, {self.n_members}")


class EnsembleScorer(nn.Module):
    """K members in one vectorised network (stacked weights, batched matmuls), optional randomised priors.

    Randomised prior functions (Osband, Aslanides & Cassirer 2018): member k outputs
    f_k(x) + beta * p_k(x), where p_k is a fixed, randomly initialised network of the same architecture
    (frozen: requires_grad False, no dropout) that keeps members apart where data is scarce. Train each
    member on its own bootstrap by passing per-member Poisson(1) weights to the loss.
    """

    def __init__(self, cfg: ModelConfig, title_genres: Tensor, n_members: int, prior_scale: float = 0.0):
        super().__init__()
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
        if prior_scale < 0:
            raise ValueError(f"prior_scale must be >= 0, got {prior_scale}")
        self.net = ArtworkScorer(cfg, title_genres, n_members)
        self.prior_scale = prior_scale
        self.prior = None
        if prior_scale > 0:
            prior_cfg = replace(cfg, dropout=0.0, last_layer_dropout=0.0)
            self.prior = ArtworkScorer(prior_cfg, title_genres, n_members).requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: ModelConfig, u: UncertaintyConfig, title_genres: Tensor) -> EnsembleScorer:
        return cls(cfg, title_genres, u.n_members, u.prior_scale)

    @staticmethod
    def offers(u: UncertaintyConfig) -> Capabilities:
        return Capabilities(
            posterior="exact",
            posterior_in_training=True,
            exported_posterior=True,
            bootstrap_members=u.bootstrap,
        )

    @property
    def n_members(self) -> int:
        return self.net.n_members

    def member_logits(self, inputs: Inputs) -> Tensor:
        """(B, K, A) logits of every member, one batched forward."""
        x = ModelInputs.of(inputs)
        logits = self.net.member_logits(x)
        if self.prior is not None:
            logits = logits + self.prior_scale * self.prior.member_logits(x, dropout_active=False)
        return logits.masked_fill(~x.candidate_mask.unsqueeze(1), PAD_LOGIT)

    def forward_loop(self, inputs: Inputs) -> Tensor:
        """Reference for ``member_logits``: a Python loop over members, each run on its own weight slice."""
        x = ModelInputs.of(inputs)
        mask = ~x.candidate_mask
        out = []
        for k in range(self.n_members):
            logits = functional_call(self.net, _member_slice(self.net, k), args=(x,))
            if self.prior is not None:
                prior = functional_call(self.prior, _member_slice(self.prior, k), args=(x,))
                logits = (logits + self.prior_scale * prior).masked_fill(mask, PAD_LOGIT)
            out.append(logits)
        return torch.stack(out, dim=1)

    def forward(self, inputs: Inputs) -> Tensor:
        """(B, A) mean of the member logits."""
        return self.member_logits(inputs).mean(1)

    def posterior_samples(
        self, inputs: Inputs, n_samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, S, A): all K members in order when n_samples is None (deterministic, exportable), else
        n_samples members drawn uniformly with replacement."""
        logits = self.member_logits(inputs)
        if n_samples is None:
            return logits
        pick = torch.randint(self.n_members, (n_samples,), generator=generator)
        return logits[:, pick.to(logits.device)]


def _member_slice(net: nn.Module, k: int) -> dict[str, Tensor]:
    # Every parameter is stacked on dim 0; layers read K from the weight shape, so a K = 1 slice runs the
    # single-member code path.
    return {name: p[k : k + 1] for name, p in net.named_parameters()}


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device):
    """Run under the global RNG reseeded from ``generator`` (dropout has no generator argument)."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class MCDropoutScorer(nn.Module):
    """Monte Carlo dropout (Gal & Ghahramani 2016): posterior draws are forward passes with dropout on.

    ``forward`` is the deterministic eval-mode prediction (dropout off, inverted-dropout scaling), which
    equals the mean of the draws exactly when the only dropout is ``last_layer_dropout`` (the logit is
    linear in that layer) and approximately otherwise. All draws run in one batched pass; layers before
    the first dropout run once. Draws use the global RNG, reseeded from ``generator`` when one is given.
    """

    def __init__(self, cfg: ModelConfig, title_genres: Tensor, n_samples: int = 16):
        super().__init__()
        if cfg.dropout == 0 and cfg.last_layer_dropout == 0:
            raise ValueError("MC dropout needs ModelConfig.dropout or last_layer_dropout > 0")
        self.net = ArtworkScorer(cfg, title_genres)
        self.n_samples = n_samples

    n_members = 1  # member_logits is (B, 1, A), as for the plain scorer

    @classmethod
    def from_config(cls, cfg: ModelConfig, u: UncertaintyConfig, title_genres: Tensor) -> MCDropoutScorer:
        return cls(cfg, title_genres, u.n_samples)

    @staticmethod
    def offers(u: UncertaintyConfig) -> Capabilities:
        return Capabilities(posterior="sampled", posterior_in_training=True, posterior_draws=u.n_samples)

    def member_logits(self, inputs: Inputs) -> Tensor:
        return self.net.member_logits(inputs)

    def forward(self, inputs: Inputs) -> Tensor:
        return self.net(inputs)

    def posterior_samples(
        self, inputs: Inputs, n_samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        x = ModelInputs.of(inputs)
        with _seeded(generator, x.candidate_mask.device):
            return self.net.member_logits(x, dropout_active=True, n_samples=n_samples or self.n_samples)


class BayesianLinearRegression(nn.Module):
    """Conjugate Bayesian linear regression y = phi^T w + eps, eps ~ N(0, sigma^2 / weight).

    Prior w ~ N(m0, alpha^-1 I). Posterior after data (Phi (N, P), y (N,), weights c (N,)):
    precision Lambda = alpha I + Phi^T C Phi / sigma^2, mean mu = Lambda^-1 (alpha m0 + Phi^T C y / sigma^2).
    With m0 = 0 and c = 1, mu is the ridge solution with penalty alpha * sigma^2. Sufficient statistics
    accumulate in float64 across ``update`` calls; ``mean`` (P,) and ``cov_factor`` (P, P), with
    covariance = cov_factor @ cov_factor.T, are refreshed in closed form after each update, so sampling
    is a matmul (no factorisation in the serving graph).
    """

    def __init__(self, dim: int, prior_precision: float = 1.0, noise_variance: float = 1.0):
        super().__init__()
        if prior_precision <= 0 or noise_variance <= 0:
            raise ValueError(
                f"prior_precision and noise_variance must be > 0, got {prior_precision}, {noise_variance}"
            )
        self.prior_precision = prior_precision
        self.noise_variance = noise_variance
        f64 = torch.float64
        self.register_buffer("prior_mean", torch.zeros(dim, dtype=f64))
        self.register_buffer("gram", torch.zeros(dim, dim, dtype=f64))
        self.register_buffer("moment", torch.zeros(dim, dtype=f64))
        self.register_buffer("n_seen", torch.zeros((), dtype=f64))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("cov_factor", torch.eye(dim) / prior_precision**0.5)

    @torch.no_grad()
    def reset(self, prior_mean: Tensor | None = None) -> None:
        """Forget all data; optionally move the prior mean m0 (P,)."""
        self.prior_mean.copy_(prior_mean if prior_mean is not None else torch.zeros_like(self.prior_mean))
        self.gram.zero_()
        self.moment.zero_()
        self.n_seen.zero_()
        self.refresh()

    @torch.no_grad()
    def update(self, features: Tensor, targets: Tensor, weights: Tensor | None = None) -> None:
        """Add observations: features (N, P), targets (N,), weights (N,) >= 0 (default 1)."""
        c = torch.ones_like(targets, dtype=torch.float64) if weights is None else weights.double()
        self.accumulate(features, c, c * targets.double())

    @torch.no_grad()
    def accumulate(self, features: Tensor, weights: Tensor, weighted_targets: Tensor) -> None:
        """Add sum_i c_i phi_i phi_i^T and sum_i phi_i (c_i y_i) (for callers holding c * y but not y)."""
        phi = features.double()
        if phi.dim() != 2 or phi.shape[1] != self.gram.shape[0] or weights.shape != (phi.shape[0],):
            raise ValueError(
                f"features must be (N, {self.gram.shape[0]}) and weights (N,), got {tuple(phi.shape)} "
                f"and {tuple(weights.shape)}"
            )
        if (
            (weights < 0).any()
            or not torch.isfinite(weights).all()
            or not torch.isfinite(weighted_targets).all()
        ):
            raise ValueError("weights must be finite and >= 0 and targets finite")
        self.gram += (phi * weights.double().unsqueeze(1)).T @ phi / self.noise_variance
        self.moment += phi.T @ weighted_targets.double() / self.noise_variance
        self.n_seen += phi.shape[0]
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        eye = torch.eye(self.gram.shape[0], dtype=self.gram.dtype, device=self.gram.device)
        chol = torch.linalg.cholesky(self.prior_precision * eye + self.gram)  # Lambda = U U^T
        rhs = (self.prior_precision * self.prior_mean + self.moment).unsqueeze(1)
        self.mean.copy_(torch.cholesky_solve(rhs, chol).squeeze(1))
        # Sigma = Lambda^-1 = U^-T U^-1, so cov_factor = U^-T
        self.cov_factor.copy_(torch.linalg.solve_triangular(chol, eye, upper=False).T)

    def covariance(self) -> Tensor:
        return self.cov_factor @ self.cov_factor.T

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """(n_samples, P) draws of w from the posterior."""
        eps = torch.randn(n_samples, self.mean.shape[0], generator=generator).to(self.mean.device)
        return self.mean + eps @ self.cov_factor.T


def irls_weights(eta: Tensor, target: Tensor) -> Tensor:
    """Curvatures (B,) for one IRLS step of logistic regression from logits eta (B,) toward labels (B,) in [0, 1].

    The Newton step's curvature p (1 - p) at the current logit vanishes where the network is confident,
    so a row whose label lies on the flat side (a soft label 0.998 predicted 0.99999, or a confidently
    wrong 0/1 label) gets a step of many logits past its own optimum logit(label): one such row can carry
    a whole posterior past every other arm. Taking the larger of p (1 - p) and the secant slope
    (label - p) / (logit(label) - eta) bounds every row's step by the distance to its optimum; where the
    prediction is not past the label in a flat region (most rows, and every row of an untrained network)
    this is the plain Laplace / Newton step.
    """
    p, q = torch.sigmoid(eta), torch.sigmoid(-eta)
    curvature = p * q  # a product, so it stays > 0 where 1 - p would round to 0
    gap = torch.logit(target.clamp(1e-6, 1 - 1e-6)) - eta
    secant = (target - p) / torch.where(gap.abs() > 1e-9, gap, 1.0)
    return torch.maximum(curvature, torch.where(gap.abs() > 1e-9, secant, curvature))


class NeuralLinearScorer(nn.Module):
    """Neural-linear (Riquelme, Tucker & Snoek 2018): Bayesian regression on the network's last hidden layer.

    Rewards are binary or graded in [0, 1], so the regression is on the **logit scale**: the posterior is
    the Laplace approximation of Bayesian logistic regression on the last-layer features phi (with a bias
    column), written as a weighted linear regression (one IRLS step): weights c = p (1 - p) and working
    targets z = eta + (r - p) / c at the network's own logit eta = phi^T w_net, p = sigmoid(eta), with c
    raised where that step would pass the row's own optimum (``irls_weights``). The prior
    is N(w_net, alpha^-1 I), centred on the trained last layer, so before any update the posterior mean
    reproduces ``forward`` and, after one, it is one Newton step from the trained layer. noise_variance
    sigma^2 = 1 is the exact Laplace approximation; larger values widen the posterior (tempering).

    Fit after training the network (features move while it trains): ``reset_posterior()`` then
    ``update_posterior(inputs, action, reward)`` over the data (or a recent window).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        title_genres: Tensor,
        prior_precision: float = 1.0,
        noise_variance: float = 1.0,
        n_samples: int = 16,
    ):
        super().__init__()
        self.net = ArtworkScorer(cfg, title_genres)
        self.blr = BayesianLinearRegression(cfg.head_dim + 1, prior_precision, noise_variance)
        self.n_samples = n_samples
        self.reset_posterior()

    n_members = 1  # member_logits is (B, 1, A), as for the plain scorer

    @classmethod
    def from_config(cls, cfg: ModelConfig, u: UncertaintyConfig, title_genres: Tensor) -> NeuralLinearScorer:
        return cls(cfg, title_genres, u.prior_precision, u.noise_variance, u.n_samples)

    @staticmethod
    def offers(u: UncertaintyConfig) -> Capabilities:
        # the head is fitted after training, so validation has no draws from it
        return Capabilities(
            posterior="sampled",
            posterior_draws=u.n_samples,
            exported_posterior=True,
            posterior_noise=True,
            conjugate_last_layer=True,
        )

    def member_logits(self, inputs: Inputs) -> Tensor:
        return self.net.member_logits(inputs)

    def forward(self, inputs: Inputs) -> Tensor:
        return self.net(inputs)

    @torch.no_grad()
    def reset_posterior(self) -> None:
        """Drop all data and centre the prior on the network's current last layer."""
        out = self.net.head.out
        self.blr.reset(torch.cat([out.weight[0, :, 0], out.bias[0]]).double())

    def _features(self, inputs: Inputs) -> tuple[Tensor, Tensor]:
        logits, features = self.net.scores(inputs, dropout_active=False)
        phi = features[0]
        return logits[0], torch.cat(
            [phi, phi.new_ones(*phi.shape[:-1], 1)], dim=-1
        )  # (B, A), (B, A, head_dim + 1)

    @torch.no_grad()
    def update_posterior(self, inputs: Inputs, action: Tensor, reward: Tensor) -> None:
        """Add logged rows: action (B,) position of the shown candidate, reward (B,) target in [0, 1]."""
        logits, phi = self._features(inputs)
        rows = torch.arange(action.shape[0], device=action.device)
        eta = logits[rows, action].double()
        c = irls_weights(eta, reward.double())
        self.blr.accumulate(phi[rows, action], c, c * eta + reward.double() - torch.sigmoid(eta))

    @property
    def noise_dim(self) -> int:
        """P, the width of the standard-normal noise one posterior draw takes (``posterior_from_noise``)."""
        return self.blr.mean.shape[0]

    def posterior_samples(
        self, inputs: Inputs, n_samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        noise = torch.randn(n_samples or self.n_samples, self.noise_dim, generator=generator)
        return self.posterior_from_noise(inputs, noise.to(self.blr.mean.device))

    def posterior_from_noise(self, inputs: Inputs, noise: Tensor) -> Tensor:
        """(B, S, A) logits of the draws w_s = mean + L eps_s for standard-normal noise (S, P): the
        exported graph takes the noise as an input, so the host's generator drives the draws."""
        x = ModelInputs.of(inputs)
        _, phi = self._features(x)
        w = self.blr.mean + noise.to(self.blr.mean.dtype) @ self.blr.cov_factor.T  # (S, P)
        logits = torch.einsum("bap,sp->bsa", phi, w.to(phi.dtype))
        return logits.masked_fill(~x.candidate_mask.unsqueeze(1), PAD_LOGIT)


# kind -> its scorer class; each says how it is built from the config (``from_config``) and what it
# offers (``offers``). Adding an uncertainty model: its class, its line here, conf/uncertainty/<kind>.yaml.
UNCERTAINTY: dict[str, type[nn.Module]] = {
    "none": ArtworkScorer,
    "ensemble": EnsembleScorer,
    "mc_dropout": MCDropoutScorer,
    "neural_linear": NeuralLinearScorer,
}
CAPABILITIES: dict[str, Callable[[UncertaintyConfig], Capabilities]] = {
    k: c.offers for k, c in UNCERTAINTY.items()
}


def capabilities(uncertainty: UncertaintyConfig) -> Capabilities:
    """What the uncertainty model of ``uncertainty`` offers (see ``Capabilities``)."""
    return CAPABILITIES[uncertainty.kind](uncertainty)


def check_uncertainty(uncertainty: UncertaintyConfig, dropout: float, last_layer_dropout: float) -> None:
    """Refuse an uncertainty model that cannot give a posterior with these settings (before any data is read)."""
    if uncertainty.kind == "mc_dropout" and dropout == 0 and last_layer_dropout == 0:
        raise ConfigError(
            "uncertainty=mc_dropout needs dropout to sample: set model.last_layer_dropout (e.g. 0.1) or "
            "model.dropout above 0"
        )
    if uncertainty.kind == "ensemble" and uncertainty.n_members < 2:
        raise ConfigError(
            f"uncertainty=ensemble needs uncertainty.n_members >= 2, got {uncertainty.n_members}"
        )


def build_scorer(cfg: ModelConfig, uncertainty: UncertaintyConfig, title_genres: Tensor) -> nn.Module:
    """The scorer for ``uncertainty.kind`` (see ``UNCERTAINTY``)."""
    if uncertainty.kind not in UNCERTAINTY:
        raise ValueError(
            f"unknown uncertainty kind {uncertainty.kind!r}; choose one of {sorted(UNCERTAINTY)}"
        )
    return UNCERTAINTY[uncertainty.kind].from_config(cfg, uncertainty, title_genres)
