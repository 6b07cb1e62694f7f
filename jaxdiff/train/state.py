"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: optimizer steps taken; also the data position (see data.source)
  params: Any           # nnx.State of the network's Params
  ema: Any              # "the" EMA of params (the first half-life): the one sampled from
  opt_state: Any        # optax state
  rng: jax.Array        # base PRNG key (uint32[2]); step keys are fold_in(rng, step), so no RNG drifts
  extra_emas: tuple = ()  # EMAs for the further half-lives of training.ema_halflife_images
  aux: Any = None         # a family's own state beside the network's (e.g. the adversarial
                          #   family's discriminator and its optimizer); None for most


def halflives(value) -> tuple:
  """training.ema_halflife_images as a tuple: a number, or several tracked at once."""
  return tuple(float(h) for h in value) if isinstance(value, (tuple, list)) else (float(value),)


def init_state(params, optimizer, seed: int, num_emas: int = 1) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params),
                    rng=jax.random.PRNGKey(seed),
                    extra_emas=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_emas - 1)))
