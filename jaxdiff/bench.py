"""Throughput of the compiled train step and of a full sampler run, compile time apart.

The train step is the one `jaxdiff train` runs (families.compile_step, jitted over the device mesh);
sampling is `Model.sample`'s compiled function. Inputs are random: speed does not depend on data.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import families, sampling
from jaxdiff.train import sharding as sharding_lib


def _block(tree):
  jax.block_until_ready(tree)
  return tree


def _mb(nbytes):
  return None if nbytes is None else round(nbytes / 2**20, 1)


def bench(exp, steps: int = 10, sample_batch: int | None = None) -> dict:
  """{train_img_per_s, sample_img_per_s, compile_s, ...} of the Experiment `exp` (its training
  batch size): `steps` timed train steps after one compiling call; one timed sampler run after
  one compiling run."""
  from jaxdiff.model import make_sample_fn, sample_keys
  batch = exp.training.batch_size
  mesh = sharding_lib.make_mesh()
  sharding_lib.check_batch(batch, exp.training.grad_accum, mesh)
  graphdef, params = families.make_network(exp, seed=0)
  optimizer = families.make_optimizer(exp)
  step_cfg = families.step_config(exp, graphdef, optimizer)
  state = families.train_state(exp, params, optimizer, seed=0)
  state_sh = sharding_lib.state_sharding(state, mesh, exp.training.fsdp)
  state = jax.device_put(state, state_sh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  step_fn = families.compile_step(exp, step_cfg, donate_argnums=0,
                                  in_shardings=(state_sh, batch_sh),
                                  out_shardings=(state_sh, sharding_lib.replicated(mesh)))
  res, ch = exp.data.resolution, exp.data.channels
  rng = np.random.default_rng(0)
  data = {"image": rng.uniform(-1, 1, (batch, res, res, ch)).astype(np.float32),
          "label": rng.integers(0, max(exp.data.num_classes, 1), batch).astype(np.int32)}
  data = sharding_lib.global_batch(data, mesh)

  t0 = time.perf_counter()
  memory = None
  if hasattr(step_fn, "lower"):  # one program (a multi-stage dispatch compiles per stage instead)
    step_fn = step_fn.lower(state, data).compile()
    # XLA's buffer plan for one step: activations kept for the backward pass live in the
    # temporaries (what `model.remat` trades for recomputation).
    memory = step_fn.memory_analysis()
  state, _ = _block(step_fn(state, data))
  train_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, data)
  _block((state, metrics))
  train_time = time.perf_counter() - t0

  label_dim = exp.label_dim
  sample_batch = int(sample_batch or batch)
  kwargs = exp.sampling.kwargs()
  fn = make_sample_fn(graphdef, exp.precond, label_dim, exp.data.shape,
                      tuple(sorted(kwargs.items())), exp.sampling.guidance,
                      exp.sampling.cpu_eltwise_fusions)
  keys = sample_keys(0, 0, sample_batch)
  labels = jnp.arange(sample_batch, dtype=jnp.int32) % max(label_dim, 1)
  t0 = time.perf_counter()
  _block(fn(state.ema, keys, labels))
  sample_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  _block(fn(state.ema, keys, labels))
  sample_time = time.perf_counter() - t0
  nfe = sampling.nfe(kwargs["solver"], kwargs["num_steps"])
  return dict(train_img_per_s=round(steps * batch / train_time, 2),
              sample_img_per_s=round(sample_batch / sample_time, 2),
              compile_s=round(train_compile + max(sample_first - sample_time, 0.0), 2),
              train_compile_s=round(train_compile, 2),
              sample_compile_s=round(max(sample_first - sample_time, 0.0), 2),
              train_step_ms=round(1000 * train_time / steps, 1),
              train_temp_mb=_mb(getattr(memory, "temp_size_in_bytes", None)),
              remat=bool(exp.network.get("remat", False)),
              batch=batch, sample_batch=sample_batch, steps=steps, devices=jax.device_count(),
              backend=jax.default_backend(), dtype=str(exp.network.get("dtype", "float32")),
              solver=kwargs["solver"], sampler_steps=kwargs["num_steps"], nfe=nfe,
              params=int(sum(np.size(x) for x in jax.tree.leaves(params))))
