"""`deepbandit import-obd`: convert one (policy, campaign) of the Open Bandit Dataset into the log contract.

    deepbandit import-obd source=/path/to/open_bandit_dataset behavior_policy=random campaign=all
    deepbandit import-obd -m source=... behavior_policy=random,bts campaign=all,men,women   # all six, one per job

Each run writes one dataset to ``out_dir`` (default ``data/obd/<policy>/<campaign>``) and logs a summary
with the take rate (mean click) of the behaviour policy. docs/open-bandit-dataset.md describes the mapping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import MISSING, DictConfig

from deepbandit.cli._hydra import entry_point, require_dir
from deepbandit.data.obd import import_obd

log = logging.getLogger(__name__)


@dataclass
class ImportObdConfig:
    source: str = MISSING  # OBD root: holds <policy>/<campaign>/<campaign>.csv and item_context.csv
    # OBD's behaviour policy, random | bts (`policy` is the name of the exploration config group)
    behavior_policy: str = "random"
    campaign: str = "all"  # all | men | women
    out_dir: str = "data/obd/${behavior_policy}/${campaign}"  # relative to the working directory
    max_candidates: int | None = None  # None: the contract's MAX_CANDIDATES
    overwrite: bool = False  # replace an earlier import in out_dir


def run(cfg: DictConfig) -> dict:
    """Import and return the summary (counts, take rate and its standard error, feature names)."""
    summary = import_obd(
        cfg.source,
        cfg.behavior_policy,
        cfg.campaign,
        cfg.out_dir,
        max_candidates=cfg.max_candidates,
        overwrite=cfg.overwrite,
    )
    log.info(
        "OBD %s/%s -> %s: %d impressions, %d items x %d positions, %d member profiles",
        cfg.behavior_policy,
        cfg.campaign,
        summary["out_dir"],
        summary["n_impressions"],
        summary["n_items"],
        len(summary["positions"]),
        summary["n_member_profiles"],
    )
    log.info(
        "take rate of the %s policy (mean click): %.5f +- %.5f (1 s.e.); by position: %s",
        cfg.behavior_policy,
        summary["take_rate"],
        summary["take_rate_se"],
        ", ".join(f"{p}: {r['take_rate']:.5f}" for p, r in summary["take_rate_by_position"].items()),
    )
    return summary


@entry_point("import_obd")
def main(cfg: DictConfig) -> None:
    require_dir(
        cfg.source, "source", "the Open Bandit Dataset's root: <source>/<policy>/<campaign>/<campaign>.csv"
    )
    run(cfg)


if __name__ == "__main__":
    main()
