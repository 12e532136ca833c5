"""Vocabularies: raw ids and category strings to contiguous embedding-row indices.

Index 0 is padding (the filler of padded candidate and history matrices) and index 1 is *unknown*: every
value not seen when the vocabulary was fitted, e.g. a title launched after training, maps to 1 instead of
failing, so serving can still score it (with the unknown row's embedding). Known values map to 2..n+1 in
sorted order. Vocabularies are JSON-serialisable (``to_dict``/``from_dict``) so the export manifest can ship
them with the model.

Lookups are vectorised: int64 ids go through a dense table when the id range is compact (one gather) and
``np.searchsorted`` on the sorted keys otherwise; strings go through pyarrow dictionary encoding, so only the
distinct strings of a batch are ever looked at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

PAD = 0
UNK = 1
N_RESERVED = 2  # rows 0 (pad) and 1 (unknown) come before the first known value
_DENSE_MAX_SPAN = 1 << 24  # largest id range served by a dense table (128 MiB of int64)

Kind = Literal["int64", "string"]


class Vocab:
    """A sorted set of known values (int64 ids or strings) and their indices ``2 + position``.

    ``len(vocab)`` is the number of embedding rows it needs, ``n_keys + 2``.
    """

    def __init__(self, name: str, keys: np.ndarray | list, kind: Kind | None = None):
        if kind is None:
            kind = "string" if len(keys) and isinstance(keys[0], str) else "int64"
        self.name = name
        self.kind: Kind = kind
        if kind == "int64":
            self.keys = np.asarray(keys, dtype=np.int64)
        elif kind == "string":
            self.keys = np.asarray(keys, dtype=object)
            bad = [k for k in self.keys if not isinstance(k, str)]
            if bad:
                raise TypeError(f"vocab {name!r}: string keys expected, got {bad[:3]!r}")
        else:
            raise ValueError(f"vocab {name!r}: kind must be 'int64' or 'string', got {kind!r}")
        if self.keys.ndim != 1:
            raise ValueError(f"vocab {name!r}: keys must be one-dimensional, got shape {self.keys.shape}")
        if len(self.keys) > 1:
            out_of_order = np.flatnonzero(~(self.keys[1:] > self.keys[:-1]).astype(bool))
            if len(out_of_order):
                i = int(out_of_order[0])
                prev, key = self.keys[i : i + 2].tolist()
                raise ValueError(
                    f"vocab {name!r}: keys must be sorted and unique; key {i + 1} ({key!r}) follows {prev!r}"
                )
        # int64 lookup strategy, fastest first: contiguous keys (index = id - lo + 2), a dense table over
        # the id range (one gather), or Arrow's hash lookup for sparse ids (e.g. hashed string ids).
        self._lo = int(self.keys[0]) if kind == "int64" and len(self.keys) else 0
        self._span = int(self.keys[-1]) - self._lo + 1 if kind == "int64" and len(self.keys) else 0
        self._table: np.ndarray | None = None
        self._set_lookup: pc.SetLookupOptions | None = None
        # numpy strings (serving's requests) are matched by one searchsorted on the sorted keys
        self._str_keys = self.keys.astype(np.str_) if kind == "string" and len(self.keys) else None
        if kind == "string":
            self._set_lookup = pc.SetLookupOptions(value_set=pa.array(self.keys.tolist(), pa.string()))
        elif len(self.keys) and self._span != len(self.keys):
            # dense only when the table stays small next to the keys themselves (ids mostly contiguous)
            if self._span <= _DENSE_MAX_SPAN and self._span <= 64 * len(self.keys) + 4096:
                self._table = np.full(self._span, UNK, dtype=np.int64)
                self._table[self.keys - self._lo] = np.arange(N_RESERVED, N_RESERVED + len(self.keys))
            else:
                self._set_lookup = pc.SetLookupOptions(value_set=pa.array(self.keys, pa.int64()))

    # --- construction --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, name: str, values: Any) -> Vocab:
        """The vocabulary of the distinct non-null values in ``values`` (array-like, Arrow array or column)."""
        array = _as_arrow(values)
        if array.null_count:
            raise ValueError(f"vocab {name!r}: {array.null_count} null values among those to fit")
        kind: Kind = "string" if _is_string(array.type) else "int64"
        unique = pc.unique(array)
        if pa.types.is_dictionary(unique.type):
            unique = unique.dictionary_decode()
        if kind == "string":
            return cls(name, sorted(unique.to_pylist()), "string")
        return cls(name, np.sort(unique.cast(pa.int64()).to_numpy()), "int64")

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(data["name"], data["keys"], data["kind"])
        except KeyError as e:
            raise ValueError(f"vocab dict lacks {e.args[0]!r}; expected keys name, kind, keys") from e

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"name", "kind", "keys", "pad": 0, "unknown": 1}``."""
        return {"name": self.name, "kind": self.kind, "keys": self.keys.tolist(), "pad": PAD, "unknown": UNK}

    # --- lookup --------------------------------------------------------------------------------------
    @property
    def n_keys(self) -> int:
        return len(self.keys)

    def __len__(self) -> int:
        return len(self.keys) + N_RESERVED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.name == other.name and self.kind == other.kind and np.array_equal(self.keys, other.keys)

    def __reduce__(self):
        # rebuilt from its keys: the lookup structures (Arrow options, dense table) do not pickle or
        # need not travel to loader workers
        return (Vocab, (self.name, self.keys, self.kind))

    def __repr__(self) -> str:
        return f"Vocab({self.name!r}, kind={self.kind}, n_keys={self.n_keys})"

    def lookup(self, values: Any) -> np.ndarray:
        """Indices of ``values``: 2.. for known values, 1 (``UNK``) for unseen ones.

        Args:
            values: (N,) int ids (numpy or Arrow) for an int64 vocab; strings (Arrow string or dictionary
                array, or a sequence) for a string vocab.

        Returns:
            (N,) int64 indices.

        Raises:
            ValueError: ``values`` holds nulls (they are not "unknown": they are missing data).
        """
        if self.kind == "string":
            if isinstance(values, np.ndarray) and values.dtype.kind == "U":
                pos, found = self.find(values)
                return np.where(found, pos + N_RESERVED, UNK).astype(np.int64)
            return self._lookup_strings(_as_arrow(values))
        if isinstance(values, pa.Array | pa.ChunkedArray):
            if values.null_count:
                raise ValueError(f"vocab {self.name!r}: {values.null_count} null values to look up")
            values = values.to_numpy()
        values = np.asarray(values)
        if values.dtype != np.int64:
            if not np.issubdtype(values.dtype, np.integer) and values.size:
                raise TypeError(f"vocab {self.name!r}: integer ids expected, got dtype {values.dtype}")
            values = values.astype(np.int64)
        if values.size == 0 or not len(self.keys):
            return np.full(values.shape, UNK, dtype=np.int64)
        if self._set_lookup is not None:
            return _index_in(pa.array(values, pa.int64()), self._set_lookup)
        # Subtracting wraps around for ids far outside the range, but a wrapped difference never lands in
        # [0, span) (that would need lo + k >= 2**63), so one unsigned comparison bounds-checks exactly.
        offset = values - self._lo
        outside = None
        if offset.view(np.uint64).max() >= self._span:
            outside = offset.view(np.uint64) >= self._span
            offset[outside] = 0
        if self._table is not None:
            out = self._table[offset]
        else:
            out = offset
            out += N_RESERVED
        if outside is not None:
            out[outside] = UNK
        return out

    def find(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``keys`` (N,), found (N,) bool) of numpy ids or strings, by one searchsorted:
        serving's image index uses the positions of images it has embeddings for."""
        keys = self._str_keys if self.kind == "string" else self.keys
        values = np.asarray(values)
        if keys is None or not len(keys) or not len(values):
            return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
        pos = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
        return pos, keys[pos] == values

    def _lookup_strings(self, array: pa.Array) -> np.ndarray:
        if array.null_count:
            raise ValueError(f"vocab {self.name!r}: {array.null_count} null values to look up")
        if not (_is_string(array.type)):
            raise TypeError(f"vocab {self.name!r}: strings expected, got Arrow type {array.type}")
        encoded = array if pa.types.is_dictionary(array.type) else array.dictionary_encode()
        # Only the dictionary (distinct strings) is matched against the keys; rows are a gather after.
        mapped = _index_in(encoded.dictionary.cast(pa.string()), self._set_lookup)
        return mapped[encoded.indices.to_numpy(zero_copy_only=False)]

    def decode(self, indices: Any) -> np.ndarray:
        """The values at ``indices`` (inverse of :meth:`lookup` for known values).

        Raises:
            ValueError: an index is padding, unknown or out of range (it has no value).
        """
        indices = np.asarray(indices, dtype=np.int64)
        bad = (indices < N_RESERVED) | (indices >= len(self))
        if bad.any():
            raise ValueError(
                f"vocab {self.name!r}: index {int(indices[bad][0])} has no value "
                f"(0 = pad, 1 = unknown, known values are 2..{len(self) - 1})"
            )
        return self.keys[indices - N_RESERVED]


def _index_in(array: pa.Array, options: pc.SetLookupOptions) -> np.ndarray:
    """Vocab indices of ``array`` by hash lookup in the keys: position + 2, or UNK where absent."""
    found = pc.index_in(array, options=options)
    out = pc.fill_null(found, -1).to_numpy().astype(np.int64)
    out += N_RESERVED
    out[out < N_RESERVED] = UNK
    return out


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _as_arrow(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind in "US":
        return pa.array(values.tolist(), pa.string())
    return pa.array(values)


@dataclass
class FeatureVocabs:
    """The vocabularies of every id or category a model embeds.

    Members are not embedded by id (too many, too few impressions each), so there is no member vocab.
    ``image`` is aligned with the rows of ``deepbandit.data.tensors.ImageTable``.
    """

    title: Vocab
    image: Vocab
    country: Vocab
    language: Vocab
    device: Vocab
    genre: Vocab

    NAMES: ClassVar[tuple[str, ...]] = ("title", "image", "country", "language", "device", "genre")

    @classmethod
    def build(
        cls,
        impressions: str | os.PathLike | ds.Dataset | pa.Table,
        *,
        images: pa.Table | None = None,
        titles: pa.Table | None = None,
        batch_rows: int = 1 << 18,
    ) -> FeatureVocabs:
        """Fit every vocabulary from the catalogue tables and one streaming pass over the impressions.

        titles: ``titles.title_id`` and every ``title_id`` and ``played_title_ids`` value in the impressions
        (a played title missing from the catalogue still gets its own row). images: ``images.image_id``
        when the images table is given (the image table's rows must all exist), else the candidate ids of
        the impressions. countries, languages, devices: the values in the impressions. genres: the values
        in ``titles.genres`` (empty without a titles table: every genre is then unknown).
        """
        from deepbandit.data.io import iter_record_batches  # io imports nothing from here; avoid a cycle

        columns = ["title_id", "played_title_ids", "country", "language", "device"]
        if images is None:
            columns.append("candidate_image_ids")
        if isinstance(impressions, pa.Table):
            batches = impressions.select(columns).to_batches(max_chunksize=batch_rows)
        else:
            batches = iter_record_batches(
                impressions, columns=columns, batch_rows=batch_rows, categories_as_dictionary=True
            )
        seen: dict[str, list[pa.Array]] = {c: [] for c in columns}
        for batch in batches:
            for c in columns:
                col = batch.column(c)
                if isinstance(col, pa.ChunkedArray):
                    col = col.combine_chunks()
                if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                    col = col.flatten()
                seen[c].append(pc.unique(col))
        title_values = seen["title_id"] + seen["played_title_ids"]
        if titles is not None:
            title_values.append(_column(titles, "title_id", "titles"))
        image_values = (
            [_column(images, "image_id", "images")] if images is not None else seen["candidate_image_ids"]
        )
        genre_values = [pc.list_flatten(_column(titles, "genres", "titles"))] if titles is not None else []
        return cls(
            title=Vocab.fit("title", _concat(title_values, pa.int64())),
            image=Vocab.fit("image", _concat(image_values, pa.int64())),
            country=Vocab.fit("country", _concat(seen["country"], pa.string())),
            language=Vocab.fit("language", _concat(seen["language"], pa.string())),
            device=Vocab.fit("device", _concat(seen["device"], pa.string())),
            genre=Vocab.fit("genre", _concat(genre_values, pa.string())),
        )

    def to_dict(self) -> dict:
        """JSON-serialisable form: one :meth:`Vocab.to_dict` per name."""
        return {name: getattr(self, name).to_dict() for name in self.NAMES}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureVocabs:
        """Inverse of :meth:`to_dict`."""
        missing = [n for n in cls.NAMES if n not in data]
        if missing:
            raise ValueError(f"feature vocabs dict lacks {missing}; expected {list(cls.NAMES)}")
        return cls(**{n: Vocab.from_dict(data[n]) for n in cls.NAMES})


def _column(table: pa.Table, name: str, kind: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise KeyError(f"{kind} table has no column {name!r}; it has {table.column_names}")
    return table.column(name)


def _concat(parts: list[pa.Array | pa.ChunkedArray], value_type: pa.DataType) -> pa.Array:
    """One array of ``value_type`` from pieces (decoding dictionaries): input to :meth:`Vocab.fit`."""
    arrays = []
    for p in parts:
        chunks = p.chunks if isinstance(p, pa.ChunkedArray) else [p]
        for c in chunks:
            if pa.types.is_dictionary(c.type):
                c = c.dictionary_decode()
            arrays.append(c.cast(value_type))
    return pa.concat_arrays(arrays) if arrays else pa.array([], value_type)


__all__ = ["N_RESERVED", "PAD", "UNK", "FeatureVocabs", "Vocab"]
