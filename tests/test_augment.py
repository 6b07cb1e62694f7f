import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, TINY
from jaxdiff.config import load_config
from jaxdiff.data.augment import AugmentConfig, _rot, _translate, augment, make_augment, warp
from jaxdiff.errors import JaxdiffError

OFF = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def _images(n=6, h=8, c=3):
  return np.random.default_rng(0).uniform(-1, 1, (n, h, h, c)).astype(np.float32)


def test_identity_when_nothing_fires():
  x = _images()
  out, labels = augment(AugmentConfig(p=0.0), jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(labels, np.zeros((6, 9)))
  chex.assert_type([out, labels], jnp.float32)


def test_xflip_only_flips_and_labels():
  x = _images(64)
  out, labels = augment(AugmentConfig(p=1.0, **dict(OFF, xflip=1e8)), jax.random.PRNGKey(1), x)
  flipped = labels[:, 0] == 1
  assert 10 < int(flipped.sum()) < 54                     # about half, as in the reference
  np.testing.assert_allclose(out[flipped], x[flipped][:, :, ::-1], atol=1e-6)
  np.testing.assert_allclose(out[~flipped], x[~flipped], atol=1e-6)
  np.testing.assert_array_equal(labels[:, 1:], 0)


def test_warp_integer_translation_matches_numpy_reflect():
  img = _images(1)[0]
  g = _translate(jnp.float32(1.0), jnp.float32(-2.0))    # source = output + (1, -2)
  padded = np.pad(img, ((2, 2), (1, 1), (0, 0)), mode="reflect")
  expected = padded[0:8, 2:10]                           # rows y-2, columns x+1
  np.testing.assert_allclose(warp(jnp.asarray(img), g), expected, atol=1e-5)


def test_warp_quarter_turn_matches_rot90():
  img = _images(1)[0]
  np.testing.assert_allclose(warp(jnp.asarray(img), _rot(jnp.float32(np.pi / 2))),
                             np.rot90(img, 1, axes=(0, 1)), atol=1e-4)


def test_label_distributions_follow_the_reference():
  _, labels = augment(AugmentConfig(p=1.0), jax.random.PRNGKey(2), np.zeros((4000, 4, 4, 1),
                                                                            np.float32))
  labels = np.asarray(labels)
  assert abs(labels[:, 0].mean() - 0.5) < 0.05           # xflip: always drawn, half flipped
  assert abs(labels[:, 1].mean() - 0.5) < 0.05           # yflip at p=1
  assert abs(labels[:, 2].std() - 1.0) < 0.05            # scale exponent w ~ N(0, 1)
  rot = np.arctan2(labels[:, 4], labels[:, 3] + 1)       # angle ~ U(-π, π)
  assert abs(np.abs(rot).mean() - np.pi / 2) < 0.1
  np.testing.assert_allclose(np.hypot(labels[:, 3] + 1, labels[:, 4]), 1, atol=1e-5)
  assert abs(labels[:, 7].std() - 1.0) < 0.05 and abs(labels[:, 8].std() - 1.0) < 0.05
  _, low = augment(AugmentConfig(p=0.12), jax.random.PRNGKey(3), np.zeros((4000, 4, 4, 1),
                                                                           np.float32))
  assert abs((np.asarray(low)[:, 2] != 0).mean() - 0.12) < 0.02   # each transform fires with p


def test_make_augment_checks_config():
  cfg = load_config(DIGITS, TINY)
  assert make_augment(cfg) is None
  cfg = load_config(DIGITS, TINY + ["--config.data.augment_p=0.2"])
  with pytest.raises(JaxdiffError, match="model.augment_dim=9"):
    make_augment(cfg)
  cfg = load_config(DIGITS, TINY + ["--config.data.augment_p=0.2", "--config.model.augment_dim=9"])
  assert make_augment(cfg).p == 0.2
  with pytest.raises(JaxdiffError, match="not a probability"):
    make_augment(load_config(DIGITS, TINY + ["--config.data.augment_p=1.5",
                                             "--config.model.augment_dim=9"]))


def test_train_step_with_augmentation():
  from jaxdiff import build
  from jaxdiff.train.loop import make_step_config
  from jaxdiff.train.state import init_state
  from jaxdiff.train.step import make_train_step
  cfg = load_config(DIGITS, TINY + ["--config.data.augment_p=0.5", "--config.model.augment_dim=9"])
  graphdef, params = build.make_network(cfg)
  assert params["map_augment"]["kernel"].value.shape[0] == 9
  sc = make_step_config(cfg, graphdef, build.make_optimizer(cfg))
  state = init_state(params, sc.optimizer, 0)
  images, labels = build.make_source(cfg).get(np.arange(16))
  state, metrics = make_train_step(sc)(state, {"image": images, "label": labels})
  assert np.isfinite(float(metrics["loss"])) and bool(metrics["grads_finite"])
  # The augmentation labels reach the network: its augment mapping receives a gradient.
  assert float(metrics["grad_norm"]) > 0
