"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: optimizer steps taken; also the data position (see data.source)
  params: Any           # nnx.State of the network's Params
  ema: Any              # EMA of params, same structure
  opt_state: Any        # optax state
  rng: jax.Array        # base PRNG key (uint32[2]); step keys are fold_in(rng, step), so no RNG drifts


def init_state(params, optimizer, seed: int) -> TrainState:
  import jax.numpy as jnp
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params),
                    rng=jax.random.PRNGKey(seed))
