"""AlignedPyramid: the one place that decides pyramid levels, strides and the level shift m.

With a high-resolution input of size (H, W) the head reads levels P3..P7. A low-resolution copy
x[:, ::k, ::k, :] read at levels P(3-m)'..P(7-m)' (m = log2 k) gives maps of exactly the same
spatial sizes, so level i of both lists describes the same image locations and shares targets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AlignedPyramid:
    """Level bookkeeping for a head that reads ``head_levels`` at high resolution.

    Attributes:
      head_levels: pyramid levels the head reads for a high-resolution input, e.g. (3, ..., 7).
      k: resolution ratio between the high- and low-resolution inputs (power of two).
    """

    head_levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    k: int = 2

    def __post_init__(self):
        if self.k < 1 or self.k & (self.k - 1):
            raise ValueError(f"k = {self.k} must be a power of two")
        if min(self.head_levels) - self.shift < 1:
            raise ValueError(
                f"k = {self.k} shifts levels {self.head_levels} below P1; use a smaller k"
            )

    @property
    def shift(self) -> int:
        """m = log2(k): how many levels the low-resolution branch is shifted down."""
        return int(math.log2(self.k))

    @property
    def num_levels(self) -> int:
        return len(self.head_levels)

    def levels(self, shift: int = 0) -> tuple[int, ...]:
        """Pyramid levels read for an input ``2**shift`` times smaller than high resolution."""
        return tuple(level - shift for level in self.head_levels)

    def strides(self, shift: int = 0) -> tuple[int, ...]:
        """Strides of ``levels(shift)`` in the pixel frame of the input those levels come from."""
        return tuple(2**level for level in self.levels(shift))

    @property
    def low_levels(self) -> tuple[int, ...]:
        return self.levels(self.shift)

    @property
    def min_level(self) -> int:
        """Lowest FPN level any branch reads (P2 for k = 2, P1 for k = 4)."""
        return min(self.low_levels)

    @property
    def max_level(self) -> int:
        return max(self.head_levels)

    def subsample(self, images):
        """Low-resolution copy of a padded high-resolution batch: [B, H, W, 3] -> [B, H/k, W/k, 3]."""
        return images[:, :: self.k, :: self.k, :]
