"""LLaVA-NeXT's any-resolution layout, host-side: which grid of tiles an image of a given size
gets, and how the tiles' features are stitched back, unpadded and given a newline embedding per
row. Shapes depend on each image's size, so this runs on the host in numpy (pure data movement,
exact) between the jitted tower (all tiles at once) and the jitted decoder.
"""

from __future__ import annotations

import numpy as np

from .spec import VlmSpec


def best_resolution(size_hw: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The pinpoint (height, width) that keeps most of the image and wastes least (the rule of
    transformers' image processor, which tiles the image to it)."""
    height, width = size_hw
    best, best_effective, best_waste = None, 0, float("inf")
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_h, cand_w), effective, waste
    return best


def tile_grid(spec: VlmSpec, size_hw) -> tuple[int, int]:
    """Tiles down and across for an image of `size_hw` (the base tile not counted)."""
    h, w = best_resolution((int(size_hw[0]), int(size_hw[1])), spec.grid_pinpoints)
    return h // spec.vision.image_size, w // spec.vision.image_size


def num_tiles(spec: VlmSpec, size_hw) -> int:
    rows, cols = tile_grid(spec, size_hw)
    return rows * cols + 1


def unpadded_extent(size_hw, grid_hw: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a [H, W] feature grid that cover the image (the processor padded
    it, centred, to the grid's aspect ratio)."""
    orig_h, orig_w = int(size_hw[0]), int(size_hw[1])
    cur_h, cur_w = grid_hw
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return slice(pad, cur_h - pad), slice(0, cur_w)
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return slice(0, cur_h), slice(pad, cur_w - pad)


def num_features(spec: VlmSpec, size_hw) -> int:
    """How many tokens `pack_image` gives an image of `size_hw` (what the processor expands its
    placeholder to), from the sizes alone."""
    rows, cols = tile_grid(spec, size_hw)
    g = spec.vision.grid
    row_slice, col_slice = unpadded_extent(size_hw, (rows * g, cols * g))
    height = len(range(rows * g)[row_slice])
    width = len(range(cols * g)[col_slice])
    return spec.tokens_per_tile + height * (width + 1)


def pack_image(spec: VlmSpec, tiles_ttd: np.ndarray, size_hw, newline_d) -> np.ndarray:
    """One image's features [tiles, T, D] -> its token sequence [n, D]: the base tile's tokens,
    then the stitched grid row by row (unpadded), each row closed by the newline embedding."""
    if tiles_ttd.shape[0] == 1:
        return np.concatenate([tiles_ttd[0], newline_d[None].astype(tiles_ttd.dtype)], axis=0)
    g = spec.vision.grid
    rows, cols = tile_grid(spec, size_hw)
    d = tiles_ttd.shape[-1]
    grid = tiles_ttd[1:].reshape(rows, cols, g, g, d).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * g, cols * g, d)
    row_slice, col_slice = unpadded_extent(size_hw, (rows * g, cols * g))
    grid = grid[row_slice, col_slice]
    newline = np.broadcast_to(newline_d.astype(grid.dtype), (grid.shape[0], 1, d))
    grid = np.concatenate([grid, newline], axis=1).reshape(-1, d)
    return np.concatenate([tiles_ttd[0], grid], axis=0)
