"""Fixtures the tests share: the commands' config schemas registered once, torch on one thread, and the
tiny catalogue (vocabularies and a freshly initialised model bundle) that export and serving tests build on."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _config_schemas():
    """Every command's typed config in Hydra's ConfigStore, so a test can compose any config."""
    from deepbandit.cli.schemas import register_schemas

    register_schemas()


@pytest.fixture(scope="module")
def single_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("single_thread")``): tiny
    tensors gain nothing from intra-op threads, which spin-wait for minutes on a busy 2-core box."""
    import torch

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def tiny_vocabs(n_titles: int, n_images: int, genres: int = 3):
    """Vocabularies of a tiny catalogue: titles 100.., images 1000.., three countries, two languages and
    devices, ``genres`` genres."""
    from deepbandit.data.vocab import FeatureVocabs, Vocab

    return FeatureVocabs(
        title=Vocab("title", np.arange(100, 100 + n_titles)),
        image=Vocab("image", np.arange(1000, 1000 + n_images)),
        country=Vocab("country", ["DE", "FR", "US"]),
        language=Vocab("language", ["de", "en"]),
        device=Vocab("device", ["tv", "web"]),
        genre=Vocab("genre", ["action", "drama", "kids"][:genres]),
    )


@pytest.fixture(scope="session")
def tiny_bundle():
    """Builder of a freshly initialised small model bundle on ``tiny_vocabs``:
    ``tiny_bundle(kind, seed=0, n_titles=20, n_images=50, embedding_dim=8, n_members=3, genres=3,
    prior_scale=None, meta=None, **model_config_fields)``."""
    import torch

    from deepbandit.models.bundle import ModelBundle
    from deepbandit.models.encoders import ModelConfig
    from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer

    def build(kind="none", seed=0, n_titles=20, n_images=50, embedding_dim=8, n_members=3, genres=3,
              prior_scale=None, meta=None, **model_kw):  # fmt: skip
        torch.manual_seed(seed)
        cfg = ModelConfig(
            n_titles=n_titles, n_countries=3, n_languages=2, n_devices=2, n_images=n_images, n_genres=genres,
            embedding_dim=embedding_dim, **{"id_dim": 8, "tower_dim": 16, "hidden_dim": 16, "head_dim": 16, **model_kw},
        )  # fmt: skip
        if prior_scale is None:
            prior_scale = 1.0 if kind == "ensemble" else 0.0
        unc = UncertaintyConfig(kind=kind, n_members=n_members, prior_scale=prior_scale)
        title_genres = (torch.rand(n_titles + 2, genres) < 0.5).float()
        model = build_scorer(cfg, unc, title_genres)
        return model, cfg, unc, tiny_vocabs(n_titles, n_images, genres), title_genres

    def bundle(kind="none", seed=0, *, meta=None, embedding_dim=8, n_images=50, prepare=None, **kw):
        model, cfg, unc, vocabs, title_genres = build(
            kind, seed, embedding_dim=embedding_dim, n_images=n_images, **kw
        )
        if prepare is not None:
            prepare(model)  # e.g. give a zero-initialised parameter values that matter
        emb = torch.randn(n_images + 2, embedding_dim)
        emb[:2] = 0
        return ModelBundle.from_model(model, cfg, unc, vocabs, emb, title_genres, meta or {})

    return bundle
