import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DIGITS, TINY
from jaxdiff.config import load_config
from jaxdiff.build import make_augment
from jaxdiff.data.augment import SYM6, AugmentConfig, _translate, augment, draw, warp
from jaxdiff.errors import JaxdiffError

OFF = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def _images(n=6, h=8, c=3):
  return np.random.default_rng(0).uniform(-1, 1, (n, h, h, c)).astype(np.float32)


def test_identity_when_nothing_fires():
  x = _images()
  out, labels = augment(AugmentConfig(p=0.0), jax.random.PRNGKey(0), x)
  # Still resampled (as the reference): up- then down-sampling with the orthonormal sym6 filter
  # gives the image back to float rounding.
  np.testing.assert_allclose(out, x, atol=1e-6)
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


def _numpy_reference_warp(img, g_inv):
  """The reference AugmentPipe's geometric block in float64 NumPy, step by step: reflect pad,
  zero-insert + sym6 upsample, affine_grid / grid_sample(bilinear, zeros, align_corners=False)
  through its matrix chain in normalised coordinates, sym6 downsample, crop."""
  h, w, _ = img.shape
  hz = SYM6.astype(np.float64)
  hz_pad = len(hz) // 4
  x = np.pad(img.astype(np.float64), ((h - 1, h - 1), (w - 1, w - 1), (0, 0)), mode="reflect")

  def along(a, axis, fn):
    return np.moveaxis(np.apply_along_axis(fn, 0, np.moveaxis(a, axis, 0)), 0, axis)

  def up(v):  # zero-insert; correlate with hz[::-1], pad 6 == full convolution with hz, from 5
    z = np.zeros(2 * len(v) - 1)
    z[::2] = v
    return np.convolve(z, hz)[5:5 + 2 * len(v)]

  def down(v):  # correlate with hz, pad 5, stride 2 == full convolution with hz[::-1], from 6
    n = (len(v) + 10 - 12) // 2 + 1
    return np.convolve(v, hz[::-1])[6:6 + 2 * n:2]

  x = along(along(x, 1, up), 0, up)
  hu, wu = x.shape[:2]
  ho, wo = 2 * (h + 2 * hz_pad), 2 * (w + 2 * hz_pad)
  s = lambda sx, sy: np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0]])  # noqa: E731
  t = lambda tx, ty: np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])  # noqa: E731
  g = np.asarray(g_inv, np.float64)
  g = s(2, 2) @ g @ s(0.5, 0.5)
  g = t(-0.5, -0.5) @ g @ t(0.5, 0.5)
  g = s(2 / wu, 2 / hu) @ g @ s(wo / 2, ho / 2)
  out = np.zeros((ho, wo, x.shape[2]))
  for i in range(ho):
    for j in range(wo):
      xn, yn, _ = g @ np.array([(2 * j + 1) / wo - 1, (2 * i + 1) / ho - 1, 1.0])
      px, py = ((xn + 1) * wu - 1) / 2, ((yn + 1) * hu - 1) / 2
      x0, y0 = int(np.floor(px)), int(np.floor(py))
      for yy, xx, wt in [(y0, x0, (1 - (py - y0)) * (1 - (px - x0))),
                         (y0, x0 + 1, (1 - (py - y0)) * (px - x0)),
                         (y0 + 1, x0, (py - y0) * (1 - (px - x0))),
                         (y0 + 1, x0 + 1, (py - y0) * (px - x0))]:
        if 0 <= yy < hu and 0 <= xx < wu:
          out[i, j] += wt * x[yy, xx]
  out = along(along(out, 1, down), 0, down)
  return out[hz_pad:-hz_pad, hz_pad:-hz_pad]


def test_warp_matches_a_float64_numpy_transcription_of_the_reference():
  img = _images(1)[0]
  _, _, g, t, _ = draw(AugmentConfig(p=1.0), jax.random.PRNGKey(3), 3)
  g = g @ _translate(-t[0] * 8, -t[1] * 8)
  for k in range(3):
    got = warp(jnp.asarray(img), g[k])
    chex.assert_shape(got, img.shape)
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, _numpy_reference_warp(img, g[k]), atol=2e-5)


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
  from jaxdiff import families
  from jaxdiff.train.state import init_state
  cfg = load_config(DIGITS, TINY + ["--config.data.augment_p=0.5", "--config.model.augment_dim=9"])
  exp = build.experiment(cfg)
  graphdef, params = families.make_network(exp)
  assert params["map_augment"]["kernel"][...].shape[0] == 9
  sc = families.step_config(exp, graphdef, families.make_optimizer(exp))
  state = init_state(params, sc.optimizer, 0)
  images, labels = build.make_source(cfg).get(np.arange(16))
  state, metrics = families.compile_step(exp, sc, donate_argnums=0)(state, {"image": images, "label": labels})
  assert np.isfinite(float(metrics["loss"])) and bool(metrics["grads_finite"])
  # The augmentation labels reach the network: its augment mapping receives a gradient.
  assert float(metrics["grad_norm"]) > 0
