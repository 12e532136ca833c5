"""The log contract: Arrow schemas of the three tables deepbandit reads and writes.

Every table written by deepbandit carries ``SCHEMA_VERSION`` in its Parquet key-value metadata under
``deepbandit.schema_version`` (and the table kind under ``deepbandit.table``), so a reader can tell a file
written under another contract apart from a file that is merely malformed.

Identifiers (members, titles, images) are int64. Users whose ids are strings hash them to int64 once, at
export from their serving logs; the contract keeps ids numeric so that mapping them to embedding rows is a
vectorised lookup rather than a Python dictionary walk.
"""

from __future__ import annotations

import pyarrow as pa

# The dataset and export folder layouts live in layout.py (no pyarrow there, so serving can name its files);
# they are re-exported here, beside the tables they hold.
from deepbandit.data.layout import (  # noqa: F401
    EXPORT_IMAGES_FILE,
    EXPORT_MODEL_FILE,
    EXPORT_MODEL_FP16_FILE,
    EXPORT_MODEL_PRECOMPUTED_FILE,
    IMAGES_FILE,
    IMPRESSIONS_DIR,
    MANIFEST_FILE,
    MAX_TIMESTAMP_US,
    MIN_PROPENSITY,
    MIN_TIMESTAMP_US,
    TITLES_FILE,
    TRUTH_FILE,
    WORLD_FILE,
)

SCHEMA_VERSION = "1.0"
METADATA_VERSION_KEY = b"deepbandit.schema_version"
METADATA_TABLE_KEY = b"deepbandit.table"

# Candidate images per impression: 1..MAX_CANDIDATES, unique. Artwork pools run from a handful to a few
# dozen; 128 leaves room for real logs such as the Open Bandit Dataset's 80-item campaign.
MAX_CANDIDATES = 128
MAX_HISTORY = 256  # recently played titles kept per impression (most recent first)

# --- impressions: one row per decision -------------------------------------------------------------
IMPRESSION_FIELDS: list[pa.Field] = [
    pa.field("request_id", pa.string(), nullable=False),  # unique per decision
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),  # when the image was shown
    pa.field("member_id", pa.int64(), nullable=False),
    pa.field("title_id", pa.int64(), nullable=False),
    pa.field("candidate_image_ids", pa.list_(pa.int64()), nullable=False),  # 1..MAX_CANDIDATES unique ids
    pa.field("chosen_image_id", pa.int64(), nullable=False),  # one of candidate_image_ids
    pa.field("propensity", pa.float64(), nullable=False),  # P(chosen | context) under logging, in (0, 1]
    pa.field("reward", pa.float64(), nullable=True),  # quality play in [0, 1]; null while window open
    pa.field("played_title_ids", pa.list_(pa.int64()), nullable=False),  # recent plays, most recent first
    pa.field("country", pa.string(), nullable=False),
    pa.field("language", pa.string(), nullable=False),
    pa.field("device", pa.string(), nullable=False),
    pa.field("hour", pa.int8(), nullable=False),  # 0..23, member's local hour
    pa.field("weekday", pa.int8(), nullable=False),  # 0..6, Monday = 0
    pa.field("recommender_score", pa.float32(), nullable=False),  # upstream ranker's score for the title
    pa.field("prior_interaction", pa.bool_(), nullable=False),  # member already interacted with title
]
# Optional impression columns: present or absent as a whole.
OPTIONAL_IMPRESSION_FIELDS: list[pa.Field] = [
    # full logging distribution aligned with candidate_image_ids; sums to 1; entry of chosen == propensity
    pa.field("action_dist", pa.list_(pa.float64()), nullable=True),
    # dense extra member features (same length on every row), for sources with features beyond the contract
    pa.field("member_features", pa.list_(pa.float32()), nullable=True),
    # how the propensity was obtained: "exact" or e.g. "mc_estimate:64" (Monte Carlo with 64 samples)
    pa.field("propensity_kind", pa.string(), nullable=True),
    # which logging policy wrote the row, when several did (e.g. one per week): balanced IPS/DR weigh by
    # their mixture (deepbandit evaluate logging_policies=...)
    pa.field("logging_policy", pa.string(), nullable=True),
]

IMPRESSIONS_SCHEMA = pa.schema(
    IMPRESSION_FIELDS,
    metadata={METADATA_VERSION_KEY: SCHEMA_VERSION.encode(), METADATA_TABLE_KEY: b"impressions"},
)

# --- images: one row per candidate image -----------------------------------------------------------
IMAGE_FIELDS: list[pa.Field] = [
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("title_id", pa.int64(), nullable=False),
    # vision features; float32, same length on every row (stored as fixed_size_list when written by us)
    pa.field("embedding", pa.list_(pa.float32()), nullable=False),
]
OPTIONAL_IMAGE_FIELDS: list[pa.Field] = [
    pa.field("launched_at", pa.timestamp("us", tz="UTC"), nullable=True),  # first time it could be shown
]


def images_schema(embedding_dim: int) -> pa.Schema:
    """Images schema as written by deepbandit: the embedding is a fixed-size list of ``embedding_dim``."""
    fields = [f for f in IMAGE_FIELDS if f.name != "embedding"]
    fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_dim), nullable=False))
    return pa.schema(
        fields + OPTIONAL_IMAGE_FIELDS,
        metadata={METADATA_VERSION_KEY: SCHEMA_VERSION.encode(), METADATA_TABLE_KEY: b"images"},
    )


# --- titles: one row per title ----------------------------------------------------------------------
TITLE_FIELDS: list[pa.Field] = [
    pa.field("title_id", pa.int64(), nullable=False),
    pa.field("genres", pa.list_(pa.string()), nullable=False),
]
OPTIONAL_TITLE_FIELDS: list[pa.Field] = [
    pa.field("launched_at", pa.timestamp("us", tz="UTC"), nullable=True),
]

TITLES_SCHEMA = pa.schema(
    TITLE_FIELDS + OPTIONAL_TITLE_FIELDS,
    metadata={METADATA_VERSION_KEY: SCHEMA_VERSION.encode(), METADATA_TABLE_KEY: b"titles"},
)

REQUIRED_FIELDS: dict[str, list[pa.Field]] = {
    "impressions": IMPRESSION_FIELDS,
    "images": IMAGE_FIELDS,
    "titles": TITLE_FIELDS,
}
OPTIONAL_FIELDS: dict[str, list[pa.Field]] = {
    "impressions": OPTIONAL_IMPRESSION_FIELDS,
    "images": OPTIONAL_IMAGE_FIELDS,
    "titles": OPTIONAL_TITLE_FIELDS,
}
TABLE_KINDS = tuple(REQUIRED_FIELDS)
