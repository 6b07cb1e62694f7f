"""`jaxdiff.load` and `Model`: denoise and sample, as a notebook uses them."""

import chex
import jax
import numpy as np
import pytest

import jaxdiff
from conftest import DIGITS, TINY
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.build import run_training as train


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("m") / "w"
  train(load_config(DIGITS, TINY + ["--config.training.steps=2"]), str(w))
  return str(w)


def test_denoise_shapes_and_identity_at_tiny_sigma(workdir):
  model = jaxdiff.load(workdir)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1)))
  y = model.denoise(x, np.full(3, 1.0), labels=[0, 1, 2])
  chex.assert_shape(y, (3, 8, 8, 1))
  chex.assert_type(y, np.float32)
  # EDM: c_skip -> 1 and c_out -> 0 as sigma -> 0, so D(x; ~0) ~= x whatever the weights.
  y0 = model.denoise(x, np.full(3, 1e-6), labels=[0, 1, 2])
  np.testing.assert_allclose(y0, x, atol=1e-4)
  with pytest.raises(JaxdiffError, match="class-conditional"):
    model.denoise(x, np.ones(3))


def test_sample_independent_of_batching(workdir):
  model = jaxdiff.load(workdir)
  a = model.sample(num=10, seed=3, steps=3, batch_size=10)
  b = model.sample(num=10, seed=3, steps=3, batch_size=4)  # 4 + 4 + 2 (padded)
  chex.assert_shape(a, (10, 8, 8, 1))
  assert a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  c = model.sample(num=10, seed=4, steps=3, batch_size=10)
  assert not np.array_equal(a, c)


def test_new_seed_or_labels_do_not_recompile(workdir, monkeypatch):
  from jaxdiff import model as model_lib
  traces = []
  real = model_lib.sampling.sample

  def counting(*args, **kwargs):  # runs only while jax traces the sampling function
    traces.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(model_lib.sampling, "sample", counting)
  model_lib.make_sample_fn.cache_clear()
  model = jaxdiff.load(workdir)
  model.sample(num=4, seed=0, steps=3, batch_size=4)
  model.sample(num=4, seed=1, steps=3, batch_size=4)
  model.sample(num=4, seed=2, label=7, steps=3, batch_size=4)
  assert len(traces) == 1
  model.sample(num=4, seed=2, steps=4, batch_size=4)  # a new step count is a new program
  assert len(traces) == 2
  model_lib.make_sample_fn.cache_clear()


def test_raw_and_ema_weights_differ(workdir):
  ema, raw = jaxdiff.load(workdir), jaxdiff.load(workdir, ema=False)
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), ema.params, raw.params)
  assert max(jax.tree.leaves(diff)) > 0


def test_load_reads_only_weights_without_an_optimizer(workdir, monkeypatch):
  """restore_weights is a partial restore: no optimizer is built, no Adam moment is read, and the
  weights equal those of a full TrainState restore."""
  import orbax.checkpoint as ocp
  from jaxdiff import build, families
  from jaxdiff.config import from_json
  from jaxdiff.train import checkpoint as ckpt_lib
  from jaxdiff.train.state import halflives, init_state
  cfg = from_json(__import__("json").dumps(ckpt_lib.read_config_dict(workdir)))
  _, abstract_params = build.abstract_network(cfg)
  mngr = ckpt_lib.manager(workdir, async_save=False)
  abstract = jax.eval_shape(lambda p: init_state(p, families.make_optimizer(build.experiment(cfg)), 0, len(
      halflives(cfg.training.ema_halflife_images))), abstract_params)
  full, _ = ckpt_lib.restore(mngr, abstract)
  mngr.close()

  seen = []
  real = ocp.CheckpointManager.restore

  def spy(self, step, args=None, **kw):
    seen.append(args)
    return real(self, step, args=args, **kw)
  monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
  from jaxdiff import families
  from jaxdiff.train import optim
  monkeypatch.setattr(optim, "adam", lambda *a, **k: 1 / 0)  # what the plain family builds
  monkeypatch.setattr(families, "make_optimizer", lambda exp: 1 / 0)
  ema, raw = jaxdiff.load(workdir), jaxdiff.load(workdir, ema=False)
  chex.assert_trees_all_equal(ema.params, full.ema)
  chex.assert_trees_all_equal(raw.params, full.params)
  # Each load reads the checkpoint's meta (its layout), then the state: only params and EMA.
  assert [set(a.keys()) for a in seen] == [{"meta"}, {"state"}] * 2
  asked = [set(a["state"].item) for a in seen if "state" in a.keys()]
  assert asked == [{"params", "ema"}] * 2             # never opt_state, rng or the extra EMAs
  with pytest.raises(ValueError, match="which"):
    ckpt_lib.restore_weights(workdir, abstract_params, which="opt_state")
