"""Checkpoints store a TrainState's small arrays as one vector per dtype (jaxdiff.train.packing):
values, dtypes and layouts come back exactly, large arrays stay arrays of their own, and
checkpoints written the earlier way (one orbax array per leaf) still restore."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.errors import JaxdiffError
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train import packing
from jaxdiff.train.state import init_state

BIG = packing.PACK_MAX + 3  # one element over the limit: stored on its own


def _tree():
  rng = np.random.default_rng(0)
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "big": jnp.asarray(rng.normal(size=(BIG,)), jnp.float32),
          "count": jnp.int32(7),
          "key": jax.random.PRNGKey(3),
          "half": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
          "none": ()}


def test_pack_groups_small_leaves_by_dtype_and_unpack_inverts_it():
  tree = _tree()
  stored = packing.pack(tree)
  leaves = jax.tree.leaves(tree)
  big_index = [i for i, x in enumerate(leaves) if x.size == BIG]
  assert sorted(stored) == sorted(["small_float32", "small_int32", "small_uint32",
                                   "small_bfloat16", f"leaf_{big_index[0]}"])
  # Flatten order (dict keys sorted): big, conv.bias, conv.kernel, count, half, key.
  want_f32 = np.concatenate([np.ravel(tree["conv"]["bias"]), np.ravel(tree["conv"]["kernel"])])
  np.testing.assert_array_equal(stored["small_float32"], want_f32)
  np.testing.assert_array_equal(stored["small_uint32"], np.asarray(tree["key"]))
  np.testing.assert_array_equal(stored["small_int32"], [7])
  assert stored["small_bfloat16"].dtype == jnp.bfloat16 and stored["small_bfloat16"].shape == (5,)
  assert isinstance(stored[f"leaf_{big_index[0]}"], jax.Array)  # not moved to the host

  back = packing.unpack(stored, jax.eval_shape(lambda: tree))
  chex.assert_trees_all_equal(back, tree)
  chex.assert_trees_all_equal_shapes_and_dtypes(back, tree)


def test_unpack_places_small_leaves_on_the_target_sharding():
  tree = _tree()
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(mesh, P())), tree)
  back = packing.unpack(packing.pack(tree), target)
  for leaf in jax.tree.leaves(back):
    if leaf.size <= packing.PACK_MAX:  # a large leaf is orbax's to place (restored in place)
      assert leaf.sharding == NamedSharding(mesh, P())
  chex.assert_trees_all_equal(back, tree)


def _state():
  params = {"w": jnp.arange(6.0).reshape(2, 3), "big": jnp.linspace(-1.0, 1.0, BIG)}
  state = init_state(params, optax.adam(1e-3), seed=0, num_emas=2)
  return state.replace(ema=jax.tree.map(lambda x: x * 0.5, state.ema), step=jnp.int32(9))


def test_train_state_round_trip_through_orbax_with_few_stored_arrays(tmp_path):
  state = _state()
  mngr = ckpt_lib.manager(str(tmp_path), async_save=False)
  ckpt_lib.save(mngr, 9, state, {"step": 9})
  mngr.wait_until_finished()
  mngr.close()
  with open(tmp_path / "checkpoints" / "9" / "state" / "_METADATA") as f:
    stored = json.load(f)["tree_metadata"]
  # params, ema, each extra EMA, Adam's mu and nu: one vector each, plus their large leaf; the
  # step, Adam's count and the key: one vector each per field. Per leaf: 13 arrays.
  n_leaves = len(jax.tree.leaves(state))
  assert n_leaves == 13 and len(stored) == 12, sorted(stored)

  abstract = jax.eval_shape(lambda: state)
  mngr = ckpt_lib.manager(str(tmp_path), async_save=False)  # a later process reads it
  back, meta = ckpt_lib.restore(mngr, abstract)
  mngr.close()
  chex.assert_trees_all_equal(back, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(back, state)
  assert meta["layout"] == ckpt_lib.PACKED and meta["step"] == 9
  # The recorded Σ|x| (host float64 over the packed vectors) is the device's float32 sum.
  np.testing.assert_allclose(meta["checksum"], _device_sums(state), rtol=1e-6)
  np.testing.assert_allclose(meta["checksum"][0], sum(np.abs(np.asarray(x, np.float64)).sum()
                                                      for x in jax.tree.leaves(state.params)))
  chex.assert_trees_all_equal(ckpt_lib.restore_weights(str(tmp_path), abstract.params), state.ema)
  chex.assert_trees_all_equal(ckpt_lib.restore_weights(str(tmp_path), abstract.params, "params"),
                              state.params)


@jax.jit
def _device_float32_sums(p, e, o):
  return [sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(t)
              if jnp.issubdtype(x.dtype, jnp.floating)) for t in (p, e, o)]


def _device_sums(state) -> list[float]:
  """Σ|x| of params / EMA / optimizer state in float32 on the device, as checkpoints recorded it
  before the packed layout: an independent computation of the recorded checksum."""
  return [float(v) for v in _device_float32_sums(state.params, state.ema, state.opt_state)]


def test_a_changed_packed_vector_fails_its_checksum(tmp_path):
  state = _state()
  mngr = ckpt_lib.manager(str(tmp_path), async_save=False)
  ckpt_lib.save(mngr, 9, state, {"step": 9})
  mngr.wait_until_finished()
  packed = {name: packing.pack(tree) for name, tree in ckpt_lib._fields(state).items()}
  packed["ema"]["small_float32"] = packed["ema"]["small_float32"] * 2.0  # Σ|x| +4.6e-4 rel
  mngr.save(10, args=ocp.args.Composite(state=ocp.args.PyTreeSave(packed), meta=ocp.args.JsonSave(
      {"step": 10, "layout": ckpt_lib.PACKED,
       "checksum": ckpt_lib._packed_checksum({**packed, "ema": packing.pack(state.ema)},
                                             ckpt_lib._CHECKSUMMED)})))
  mngr.wait_until_finished()
  abstract = jax.eval_shape(lambda: state)
  with pytest.raises(JaxdiffError, match="checkpoint 10 .* cannot be read"):
    ckpt_lib.restore(mngr, abstract, step=10)
  back, _ = ckpt_lib.restore(mngr, abstract)  # the newest readable one: step 9
  chex.assert_trees_all_equal(back, state)
  mngr.close()


def test_per_leaf_checkpoints_of_earlier_versions_still_restore(tmp_path):
  """Written as jaxdiff wrote checkpoints before the packed layout: the state's fields as one
  orbax array per leaf, a meta with the checksum and no layout."""
  state = _state()
  old = {k: getattr(state, k) for k in ("step", "params", "ema", "opt_state", "rng", "extra_emas")}
  mngr = ocp.CheckpointManager(os.path.join(str(tmp_path), "checkpoints"),
                               options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(9, args=ocp.args.Composite(state=ocp.args.StandardSave(old), meta=ocp.args.JsonSave(
      {"step": 9, "checksum": _device_sums(state)})))  # as the per-leaf versions recorded it
  mngr.wait_until_finished()
  mngr.close()

  abstract = jax.eval_shape(lambda: state)
  mngr = ckpt_lib.manager(str(tmp_path), async_save=False)
  back, meta = ckpt_lib.restore(mngr, abstract)
  chex.assert_trees_all_equal(back, state)
  assert "layout" not in meta
  # A resumed run then writes the packed layout beside it, with the same manager.
  ckpt_lib.save(mngr, 10, back.replace(step=jnp.int32(10)), {"step": 10})
  mngr.wait_until_finished()
  assert ckpt_lib.restore(mngr, abstract, step=10)[1]["layout"] == ckpt_lib.PACKED
  mngr.close()
  chex.assert_trees_all_equal(
      ckpt_lib.restore_weights(str(tmp_path), abstract.params, step=9), state.ema)
