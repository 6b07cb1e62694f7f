"""Guidance transforms (jaxdiff/guidance.py) against hand-computed values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.guidance import autoguidance, cfg_guidance

B, H, W, C, L = 3, 2, 2, 1, 4


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((B, H, W, C))
  sigma = np.array([0.5, 1.0, 2.0])
  labels = np.eye(L)[[1, 3, 0]]
  return x, sigma, labels


# A conditional denoiser whose value is easy to write out in NumPy: D = x/(1+σ²) + Σ_c label_c·c
# (+ the augment label sum when given).
def _np_denoiser(x, sigma, labels, aug=None):
  out = x / (1 + sigma[:, None, None, None] ** 2) + (labels @ np.arange(L))[:, None, None, None]
  if aug is not None:
    out = out + aug.sum(axis=1)[:, None, None, None]
  return out


def _denoiser(calls=None):
  def denoise(x, sigma, class_labels=None, augment_labels=None):
    if calls is not None:
      calls.append((x.shape, sigma.shape, class_labels.shape,
                    None if augment_labels is None else augment_labels.shape))
    out = x / (1 + sigma[:, None, None, None] ** 2)
    out = out + (class_labels @ jnp.arange(L, dtype=jnp.float32))[:, None, None, None]
    if augment_labels is not None:
      out = out + augment_labels.sum(axis=1)[:, None, None, None]
    return out
  return denoise


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_cfg_guidance_is_the_uncond_plus_w_times_the_difference(w):
  x, sigma, labels = _inputs()
  calls = []
  guided = cfg_guidance(_denoiser(calls), w)
  got = guided(jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32),
               class_labels=jnp.asarray(labels, jnp.float32))
  chex.assert_shape(got, (B, H, W, C))
  chex.assert_type(got, jnp.float32)
  d_cond = _np_denoiser(x, sigma, labels)
  d_uncond = _np_denoiser(x, sigma, np.zeros_like(labels))  # the all-zero one-hot: no label
  np.testing.assert_allclose(np.asarray(got), d_uncond + w * (d_cond - d_uncond), rtol=1e-6,
                             atol=1e-6)
  if w == 1.0:
    np.testing.assert_allclose(np.asarray(got), d_cond, rtol=1e-6, atol=1e-6)
  # One network call on the doubled batch, conditional half first.
  assert calls == [((2 * B, H, W, C), (2 * B,), (2 * B, L), None)]


def test_cfg_guidance_by_hand_and_with_augment_labels():
  # One example, by hand: x = 2, σ = 1 (so x/(1+σ²) = 1), label 3 -> D_cond = 4, D_uncond = 1;
  # w = 2: 1 + 2·(4 − 1) = 7. An augment label of 0.5 adds 0.5 to both halves: 7.5.
  x = jnp.full((1, 1, 1, 1), 2.0, jnp.float32)
  sigma = jnp.ones((1,), jnp.float32)
  onehot = jax.nn.one_hot(jnp.array([3]), L)
  got = cfg_guidance(_denoiser(), 2.0)(x, sigma, class_labels=onehot)
  np.testing.assert_allclose(np.asarray(got).ravel(), [7.0])
  calls = []
  aug = jnp.full((1, 9), 0.5 / 9, jnp.float32)
  got = jax.jit(lambda x, s, c, a: cfg_guidance(_denoiser(calls), 2.0)(
      x, s, class_labels=c, augment_labels=a))(x, sigma, onehot, aug)
  np.testing.assert_allclose(np.asarray(got).ravel(), [7.5], rtol=1e-6)
  assert calls[0][3] == (2, 9)  # the augment labels are doubled with the batch


def _main(x, sigma, class_labels=None):
  return 2.0 * x + (0.0 if class_labels is None else class_labels[:, :1, None, None])


def _guide(x, sigma, class_labels=None):
  return x + 1.0 + 0.0 * sigma[:, None, None, None]


def test_autoguidance_by_hand():
  # D_main = 2x, D_guide = x + 1, w = 3: (x + 1) + 3·(2x − x − 1) = 4x − 2.
  x = jnp.array([1.0, 2.0], jnp.float32).reshape(2, 1, 1, 1)
  sigma = jnp.ones((2,), jnp.float32)
  got = autoguidance(_main, _guide, 3.0)(x, sigma)
  chex.assert_shape(got, (2, 1, 1, 1))
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(np.asarray(got).ravel(), [2.0, 6.0])


@pytest.mark.parametrize("w", [0.0, 1.0, 1.7])
def test_autoguidance_is_guide_plus_w_times_the_difference(w):
  x, sigma, labels = _inputs(1)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32))
  cond = dict(class_labels=jnp.asarray(labels, jnp.float32))
  got = jax.jit(lambda x, s, c: autoguidance(_main, _guide, w)(x, s, class_labels=c))(
      *args, cond["class_labels"])
  chex.assert_shape(got, (B, H, W, C))
  chex.assert_type(got, jnp.float32)
  d_main = 2.0 * x + labels[:, :1, None, None]  # the conditioning reaches the main model
  d_guide = x + 1.0
  np.testing.assert_allclose(np.asarray(got), d_guide + w * (d_main - d_guide), rtol=1e-6,
                             atol=1e-6)
  if w == 1.0:
    np.testing.assert_allclose(np.asarray(got), np.asarray(_main(*args, **cond)), rtol=1e-6)
  if w == 0.0:
    np.testing.assert_allclose(np.asarray(got), np.asarray(_guide(*args, **cond)), rtol=1e-6)


def test_guidance_transforms_compose():
  # Autoguidance of two CFG-guided models: each side is its own CFG, then the autoguidance mix.
  x, sigma, labels = _inputs(2)
  w_cfg, w_auto = 1.5, 2.0
  main = cfg_guidance(_denoiser(), w_cfg)
  guide = cfg_guidance(lambda x, s, class_labels=None: 0.5 * _denoiser()(x, s, class_labels),
                       w_cfg)
  got = autoguidance(main, guide, w_auto)(jnp.asarray(x, jnp.float32),
                                          jnp.asarray(sigma, jnp.float32),
                                          class_labels=jnp.asarray(labels, jnp.float32))
  d_c, d_u = _np_denoiser(x, sigma, labels), _np_denoiser(x, sigma, np.zeros_like(labels))
  m = d_u + w_cfg * (d_c - d_u)
  g = 0.5 * m
  np.testing.assert_allclose(np.asarray(got), g + w_auto * (m - g), rtol=1e-5, atol=1e-6)
