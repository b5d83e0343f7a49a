"""Pallas kernels for the hot merge ops, each beside its pure-jnp reference (installed as
`evomerge_jax.kernels`, so that it cannot collide with the PyPI package named `kernels`)."""
