"""`model.remat`: the same values and gradients, activations recomputed in the backward pass."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import build, families
from jaxdiff.config import load_config
from jaxdiff.train import checkpoint

SMALL = {
    "unet": ("configs/digits.py", ["--config.model.model_channels=8",
                                   "--config.model.channel_mult=(1,2)"]),
    "ddpmpp": ("configs/cifar10_ddpmpp.py", [
        "--config.model.model_channels=8", "--config.model.channel_mult=(1,2)",
        "--config.model.num_blocks=1", "--config.model.attn_resolutions=(4,)",
        "--config.model.num_groups=4", "--config.data.resolution=8"]),
    "adm": ("configs/imagenet64_adm.py", [
        "--config.model.model_channels=8", "--config.model.channel_mult=(1,2)",
        "--config.model.num_blocks=1", "--config.model.attn_resolutions=(4,)",
        "--config.model.channels_per_head=8", "--config.model.dtype=float32",
        "--config.data.resolution=8"]),
    "multistage": ("configs/digits_multistage.py", [
        "--config.model.model_channels=8", "--config.model.decoder_channels=(8,8,4)",
        "--config.model.num_blocks=1", "--config.model.num_groups=4"]),
}


def _loss_and_grad(arch: str, remat: bool):
  cfg = load_config(*SMALL[arch])
  with cfg.unlocked():
    cfg.model.remat = remat
  graphdef, params = families.make_network(build.experiment(cfg), seed=3)
  # Zero-initialised output layers would make every gradient below them vanish: perturb all.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                        for p, k in zip(leaves, keys)])
  res, ch = cfg.data.resolution, cfg.data.channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, res, res, ch)), jnp.float32)
  c_noise = jnp.asarray([-0.5, 0.1, 0.3, 1.0], jnp.float32)  # one stage for the multi-stage net
  labels = (jax.nn.one_hot(jnp.arange(4) % cfg.data.num_classes, cfg.data.num_classes)
            if cfg.data.num_classes else None)

  def loss(p):
    net = nnx.merge(graphdef, p)
    # train=True: dropout is on, so the recomputation must draw the forward pass's masks.
    out = net(x, c_noise, labels, train=True, rngs=nnx.Rngs(dropout=7))
    return jnp.mean(out ** 2)

  # One trace serves both the program text and the values (tracing the multi-stage switch and its
  # linearisation is most of this test's time).
  traced = jax.jit(jax.value_and_grad(loss)).trace(params)
  value, grads = traced.lower().compile()(params)
  return value, grads, str(traced.jaxpr)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_remat_gives_the_same_loss_and_gradients(arch):
  v0, g0, jaxpr0 = _loss_and_grad(arch, remat=False)
  v1, g1, jaxpr1 = _loss_and_grad(arch, remat=True)
  # The remat program holds checkpoint regions; the plain one does not.
  assert "checkpoint" in jaxpr1 or "remat" in jaxpr1
  assert "checkpoint" not in jaxpr0 and "remat" not in jaxpr0
  assert float(v0) > 0
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  chex.assert_trees_all_equal_shapes_and_dtypes(g0, g1)
  flat0, flat1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
  assert any(float(jnp.abs(g).max()) > 0 for g in flat0)
  for a, b in zip(flat0, flat1):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-7)


def test_remat_does_not_change_the_workdir_fingerprint():
  cfg = load_config(*SMALL["unet"]).to_dict()
  other = load_config(*SMALL["unet"]).to_dict()
  other["model"]["remat"] = True
  assert checkpoint.fingerprint(cfg) == checkpoint.fingerprint(other)
  other["model"]["model_channels"] = 16
  assert checkpoint.fingerprint(cfg) != checkpoint.fingerprint(other)
