"""A counter-based hash PRNG for merge masks, as a `jax.extend.random` implementation.

Why. DARE and DELLA draw one Bernoulli per element of every task vector, for every candidate. On
CPU, JAX's default threefry (20 rounds of a 2x32 block cipher per pair of outputs) generated about
16M bits/s on this machine, which made the masks the dominant cost of the population pass: a 56M
model's masks took seconds per candidate, more than its forward pass. This generator hashes
(key, element index) with three rounds of MurmurHash3's 32-bit finalizer (`fmix32`), roughly 100x
faster on CPU, and is, like threefry, a pure elementwise function of key and counter: its bits are
identical under jit, vmap, sharding and chunking, so a candidate's masks are the same in the
population pass and at export. It is not a cryptographic generator; its quality is that of fmix32
(full avalanche of every input bit), ample for dropout-style masks. Set `compute.prng: threefry`
for JAX's default instead.

Every function works on raw uint32 words; `uint32` arithmetic wraps, as the hash requires.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import define_prng_impl

_GOLDEN = 0x9E3779B9
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35
# Domain tags, so that bits, split keys, folded keys and seeds never share a hash input.
_BITS_HI, _SPLIT, _FOLD, _SEED = 0x5BD1E995, 0x27D4EB2F, 0x165667B1, 0x61C88647


def fmix32(h, xp=jnp):
    """MurmurHash3's finalizer: every input bit flips each output bit with probability ~1/2."""
    u32 = xp.uint32
    h = h ^ (h >> u32(16))
    h = h * u32(_C1)
    h = h ^ (h >> u32(13))
    h = h * u32(_C2)
    return h ^ (h >> u32(16))


def hash3(k0, k1, counter, xp=jnp):
    """The generator: 32 random bits for (key words k0, k1; counter). uint32 in, uint32 out."""
    u32 = xp.uint32
    h = fmix32(counter * u32(_GOLDEN) + k0, xp)
    h = fmix32(h ^ k1, xp)
    return fmix32(h + u32(_GOLDEN), xp)


def _counters(n: int):
    if n > 2**32:
        raise ValueError(f"hash PRNG: {n} random values exceed the 2^32 counter range")
    return jax.lax.iota(jnp.uint32, n)


def _random_bits(key, bit_width: int, shape):
    n = math.prod(shape)
    bits = hash3(key[0], key[1], _counters(n)).reshape(shape)
    if bit_width == 32:
        return bits
    if bit_width in (8, 16):
        return bits.astype(jnp.uint8 if bit_width == 8 else jnp.uint16)
    high = hash3(key[0] ^ jnp.uint32(_BITS_HI), key[1], _counters(n)).reshape(shape)
    return (high.astype(jnp.uint64) << jnp.uint64(32)) | bits.astype(jnp.uint64)


def _split(key, shape):
    n = math.prod(shape)
    return hash3(key[0] ^ jnp.uint32(_SPLIT), key[1], _counters(2 * n)).reshape(*shape, 2)


def _fold_in(key, data):
    counter = jnp.asarray(data).astype(jnp.uint32) * jnp.uint32(2) + jnp.arange(2, dtype=jnp.uint32)
    return hash3(key[0] ^ jnp.uint32(_FOLD), key[1], counter)


def _seed(seed):
    counter = jnp.asarray(seed).astype(jnp.uint32) * jnp.uint32(2) + jnp.arange(2, dtype=jnp.uint32)
    return hash3(jnp.uint32(_SEED), jnp.uint32(0), counter)


@functools.cache
def hash_impl():
    """The registered implementation (created once per process, on first use)."""
    return define_prng_impl(key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits,
                            fold_in=_fold_in, name="evomerge_hash", tag="emh")


def wrap(key_data, prng: str):
    """Typed key of the named generator ("hash" or "threefry") from raw uint32 key data [2]."""
    if prng == "threefry":
        return jax.random.wrap_key_data(key_data)
    return jax.random.wrap_key_data(key_data, impl=hash_impl())


def reference_bits(key_data, n: int) -> np.ndarray:
    """`random_bits(key, 32, (n,))` of the hash generator computed in numpy (tests' oracle)."""
    k0, k1 = (np.uint32(x) for x in np.asarray(key_data, np.uint32))
    with np.errstate(over="ignore"):
        return hash3(k0, k1, np.arange(n, dtype=np.uint32), xp=np)
