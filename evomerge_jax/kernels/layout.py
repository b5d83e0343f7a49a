"""Where each per-candidate scalar of the fused merge lives: two small packed arrays per tensor.

floats [P, F]: the fields of tile.SOURCE_FIELDS (column field · K + k), then tile.GLOBAL_FIELDS;
words [P, U] (uint32): each source's two key words and its TIES cutoff (column field · K + k).
Widths are padded to a power of two (GPU block shapes want one); padding columns are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from .tile import GLOBAL_FIELDS, SOURCE_FIELDS

WORD_FIELDS = ("key0", "key1", "cutoff")


def pow2_at_least(n: int, floor: int = 1) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


@dataclass(frozen=True)
class ScalarLayout:
    num_sources: int

    @property
    def float_width(self) -> int:
        return pow2_at_least(len(SOURCE_FIELDS) * self.num_sources + len(GLOBAL_FIELDS), 8)

    @property
    def word_width(self) -> int:
        return pow2_at_least(len(WORD_FIELDS) * self.num_sources, 8)

    def column(self, field: str, k: int | None) -> tuple[bool, int]:
        """(is a word field, column) of a field of source k (k None: a global field)."""
        if field in WORD_FIELDS:
            return True, WORD_FIELDS.index(field) * self.num_sources + k
        if field in GLOBAL_FIELDS:
            return False, len(SOURCE_FIELDS) * self.num_sources + GLOBAL_FIELDS.index(field)
        return False, SOURCE_FIELDS.index(field) * self.num_sources + k

    def getter(self, read_float, read_word):
        """get(field, k=None) -> scalar, reading columns with the given functions."""
        def get(field, k=None):
            is_word, column = self.column(field, k)
            return read_word(column) if is_word else read_float(column)
        return get

    def pack(self, floats: dict, words: dict, num_candidates: int, dtype):
        """floats/words: {field: [P, K] or [P]} -> ([P, F] dtype, [P, U] uint32); fields not
        given are zero."""
        def build(fields, width, table, array_dtype):
            columns = [jnp.zeros((num_candidates,), array_dtype)] * width
            for field in fields:
                if field not in table:
                    continue
                value = jnp.asarray(table[field]).astype(array_dtype)
                if value.ndim == 1:
                    columns[self.column(field, None)[1]] = value
                    continue
                for k in range(self.num_sources):
                    columns[self.column(field, k)[1]] = value[:, k]
            return jnp.stack(columns, axis=1)

        return (build(SOURCE_FIELDS + GLOBAL_FIELDS, self.float_width, floats, dtype),
                build(WORD_FIELDS, self.word_width, words, jnp.uint32))
