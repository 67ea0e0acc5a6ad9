"""l2l-jax: Listen to Look (Gao et al., CVPR 2020) in JAX/Flax."""

__version__ = "0.1.0"
