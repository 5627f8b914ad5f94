"""Compiled inner loops of :mod:`degradations.kernels` (numba; imported on first use, compiled once, cached).

Random bits: SplitMix64 (Steele, Lea and Flood 2014) from a 64-bit ``key`` that the caller draws from its
``rng``. Word ``w`` is ``mix(key + (w + 1) * GAMMA)``, so the stream depends on nothing but the key and any
word can be computed alone (the fused loops below need no state). Each word gives four 16-bit draws, lowest
bits first, the same order as viewing the words as little-endian ``uint16``. Integer arithmetic only: the bits
are identical on every platform.
"""

from __future__ import annotations

import numba
import numpy as np

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S16 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(16)
_LOW16 = np.uint64(0xFFFF)

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)


@_jit
def _word(key: np.uint64, w: int) -> np.uint64:
    z = key + np.uint64(w + 1) * GAMMA
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@_jit
def splitmix_words(key: np.uint64, n: int) -> np.ndarray:
    """The first ``n`` 64-bit words of the stream of ``key``."""
    out = np.empty(n, np.uint64)
    for w in range(n):
        out[w] = _word(key, w)
    return out


#: Words per block of the fused loop: their 16-bit draws (4,096) are made in one vectorised pass, then used.
BLOCK_WORDS = 1024


@_jit
def add_table_noise_clip(src: np.ndarray, dst: np.ndarray, table: np.ndarray, key: np.uint64) -> None:
    """``dst[i] = clip(src[i] + table[u16[i]], 0, 1)`` over flat float32 arrays, ``u16`` the 16-bit draws of
    ``key``: look-up, add and clip in one pass over the image, the draws never leaving a 8 KiB buffer."""
    n = src.size
    n_words = (n + 3) // 4
    words = np.empty(BLOCK_WORDS, np.uint64)
    draws = words.view(np.uint16)
    for first in range(0, n_words, BLOCK_WORDS):
        for j in range(min(BLOCK_WORDS, n_words - first)):
            words[j] = _word(key, first + j)
        base = 4 * first
        for i in range(min(4 * BLOCK_WORDS, n - base)):
            v = src[base + i] + table[draws[i]]
            dst[base + i] = min(max(v, np.float32(0.0)), np.float32(1.0))
