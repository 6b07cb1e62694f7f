"""Layers of the reference networks (jaxdiff/nets/layers.py) against NumPy float64 computations."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.nets import layers as L

RTOL = 2e-5


def _rand(rng, *shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


# ---- NumPy references (NHWC, float64) ---------------------------------------------------------

def np_conv(x, w, pad):
  """Cross-correlation, x [B,H,W,I], w [k,k,I,O] HWIO, zero padding `pad` (may be 0)."""
  x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = w.shape[0]
  b, h, wd, _ = x.shape
  out = np.zeros((b, h - k + 1, wd - k + 1, w.shape[3]))
  for i in range(k):
    for j in range(k):
      out += np.einsum("bhwi,io->bhwo", x[:, i:i + out.shape[1], j:j + out.shape[2]], w[i, j])
  return out


def np_depthwise(x, f, stride, pad):
  """The same 2-D filter over each channel, with stride and zero padding."""
  x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = f.shape[0]
  oh = (x.shape[1] - k) // stride + 1
  ow = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k]
      out[:, i, j] = np.einsum("bhwc,hw->bc", patch, f)
  return out


def np_transposed(x, f, stride, pad):
  """torch conv_transpose2d semantics by scattering: out[s*i + a - pad] += x[i] * f[a]."""
  b, h, w, c = x.shape
  k = f.shape[0]
  full = np.zeros((b, (h - 1) * stride + k, (w - 1) * stride + k, c))
  for i in range(h):
    for j in range(w):
      full[:, i * stride:i * stride + k, j * stride:j * stride + k] += (
          x[:, i, j][:, None, None, :] * f[None, :, :, None])
  if pad > 0:
    full = full[:, pad:-pad, pad:-pad]
  elif pad < 0:
    full = np.pad(full, ((0, 0), (-pad, -pad), (-pad, -pad), (0, 0)))
  return full


def np_group_norm(x, groups, gamma, beta, eps):
  b, h, w, c = x.shape
  xg = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = xg.var(axis=(1, 2, 4), keepdims=True)
  y = ((xg - mean) / np.sqrt(var + eps)).reshape(b, h, w, c)
  return y * gamma + beta


def np_silu(x):
  return x / (1 + np.exp(-x))


def np_attention_block(x, qkv_w, qkv_b, proj_w, proj_b, gn, heads, skip_scale):
  """Reference attention: qkv channels laid out [head, channel, (q,k,v)], logits / sqrt(c)."""
  b, h, w, c = x.shape
  y = np_group_norm(x, *gn)
  qkv = np.einsum("bhwi,io->bhwo", y, qkv_w[0, 0]) + qkv_b
  qkv = qkv.reshape(b, h * w, heads, c // heads, 3)
  q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
  logits = np.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(c // heads)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  a = np.einsum("bhqk,bkhc->bqhc", p, v).reshape(b, h, w, c)
  return (np.einsum("bhwi,io->bhwo", a, proj_w[0, 0]) + proj_b + x) * skip_scale


def _randomize(module, rng):
  """All params random (zero inits would hide whole paths); GroupNorm near identity."""
  state = nnx.state(module, nnx.Param)
  for path, var in nnx.to_flat_state(state):
    shape = var.shape
    if len(path) > 1 and str(path[-2]).startswith("norm"):
      base = 1.0 if path[-1] == "weight" else 0.0
      var[...] = jnp.asarray(base + _rand(rng, *shape, scale=0.2))
    else:
      fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      var[...] = jnp.asarray(_rand(rng, *shape, scale=1 / np.sqrt(fan_in)))
  nnx.update(module, state)


def _p(var):
  return np.asarray(var[...], np.float64)


# ---- flax-default initialisers drawn through shared programs ---------------------------------

@pytest.mark.parametrize("make", ["conv", "conv1x1", "linear"])
def test_host_drawn_inits_match_flax_defaults(make):
  """layers.conv / layers.linear give nnx.Conv / nnx.Linear's default-initialised values to a few
  float32 ulps, eagerly and under jit (XLA's erfinv rounds a few elements differently between a
  padded flat draw, a shaped draw and a fused one)."""
  build = {"conv": lambda m, r: m.Conv(5, 7, (3, 3), rngs=r),
           "conv1x1": lambda m, r: m.Conv(6, 3, (1, 1), rngs=r),
           "linear": lambda m, r: m.Linear(40, 33, rngs=r)}[make]

  class Host:  # the module namespace build() takes, with the host-drawn initialisers
    Conv, Linear = staticmethod(L.conv), staticmethod(L.linear)

  want = nnx.state(build(nnx, nnx.Rngs(params=3)))
  w = np.asarray(want["kernel"][...])
  for got in (nnx.state(build(Host, nnx.Rngs(params=3))),
              jax.jit(lambda: nnx.split(build(Host, nnx.Rngs(params=3)))[1])()):
    chex.assert_type(got["kernel"][...], jnp.float32)
    chex.assert_shape(got["kernel"][...], w.shape)
    kernel = np.asarray(got["kernel"][...])
    np.testing.assert_allclose(kernel, w, rtol=5e-7, atol=0)  # a few float32 ulps (2^-23)
    chex.assert_trees_all_equal(np.asarray(got["bias"][...]), np.asarray(want["bias"][...]))


def test_host_group_norm_init_equals_flax():
  want, got = nnx.GroupNorm(12, num_groups=4, rngs=nnx.Rngs(0)), L.group_norm_module(
      12, num_groups=4, rngs=nnx.Rngs(0))
  for name in ("scale", "bias"):
    chex.assert_trees_all_equal(np.asarray(got.__dict__[name][...]),
                                np.asarray(want.__dict__[name][...]))


def test_lecun_normal_statistics():
  """Truncated at two standard deviations and scaled to variance 1 / fan_in (independent check
  of the constant 0.8796: the standard deviation of N(0, 1) truncated to (-2, 2))."""
  from scipy import stats
  w = np.asarray(L.lecun_normal(jax.random.key(0), (3, 3, 64, 256)), np.float64)
  fan_in = 3 * 3 * 64
  assert np.abs(w).max() <= 2 * stats.truncnorm(-2, 2).std() ** -1 / np.sqrt(fan_in) + 1e-7
  np.testing.assert_allclose(w.std() * np.sqrt(fan_in), 1.0, rtol=0.01)
  np.testing.assert_allclose(stats.truncnorm(-2, 2).std(), 0.87962566103423978, rtol=1e-12)


# ---- resampling -------------------------------------------------------------------------------

@pytest.mark.parametrize("f", [(1, 1), (1, 3, 3, 1), (1, 2, 1)])
def test_resample_kernel_is_normalised_outer_product(f):
  k = L.resample_kernel(f)
  fa = np.asarray(f, np.float64)
  np.testing.assert_allclose(k, np.outer(fa, fa) / fa.sum() ** 2, rtol=1e-7)
  assert k.dtype == np.float32
  np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("f", [(1, 1), (1, 3, 3, 1)])
def test_downsample_matches_numpy(f):
  rng = np.random.default_rng(0)
  x = _rand(rng, 2, 8, 8, 3)
  out = L.downsample2d(jnp.asarray(x), f)
  chex.assert_shape(out, (2, 4, 4, 3))
  k = L.resample_kernel(f).astype(np.float64)
  np.testing.assert_allclose(out, np_depthwise(x, k, 2, (k.shape[0] - 1) // 2), rtol=RTOL, atol=1e-6)


def test_downsample_box_filter_is_average_pooling():
  rng = np.random.default_rng(1)
  x = _rand(rng, 1, 6, 6, 2)
  pooled = x.astype(np.float64).reshape(1, 3, 2, 3, 2, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(L.downsample2d(jnp.asarray(x), (1, 1)), pooled, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("f", [(1, 1), (1, 3, 3, 1)])
def test_upsample_matches_transposed_conv_scatter(f):
  rng = np.random.default_rng(2)
  x = _rand(rng, 2, 4, 4, 3)
  out = L.upsample2d(jnp.asarray(x), f)
  chex.assert_shape(out, (2, 8, 8, 3))
  k = L.resample_kernel(f).astype(np.float64) * 4
  np.testing.assert_allclose(out, np_transposed(x, k, 2, (k.shape[0] - 1) // 2), rtol=RTOL,
                             atol=1e-6)


def test_upsample_box_filter_is_nearest_neighbour():
  rng = np.random.default_rng(3)
  x = _rand(rng, 1, 3, 3, 2)
  nearest = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(L.upsample2d(jnp.asarray(x), (1, 1)), nearest, rtol=1e-6)


@pytest.mark.parametrize("up", [True, False])
def test_box_resampling_is_the_depthwise_convolution_it_replaces(up):
  """(1, 1) resampling runs as a repeat / 2x2 mean rather than a depthwise convolution (XLA:CPU's
  is slow): the same values and input gradients as that convolution, to float32 round-off."""
  x = jnp.asarray(_rand(np.random.default_rng(4), 2, 6, 6, 5))
  k = L.resample_kernel((1, 1)) * (4 if up else 1)
  fast = L.upsample2d if up else L.downsample2d
  conv = functools.partial(L._depthwise, kernel2d=k, stride=2, padding=0, transpose=up)
  chex.assert_trees_all_close(fast(x), conv(x), atol=1e-6, rtol=0)
  ct = jnp.asarray(_rand(np.random.default_rng(5), *fast(x).shape))
  grad = lambda f: jax.grad(lambda x_: jnp.vdot(f(x_), ct))(x)
  chex.assert_trees_all_close(grad(fast), grad(conv), atol=1e-6, rtol=0)
  chex.assert_shape(fast(x), (2, 12, 12, 5) if up else (2, 3, 3, 5))


def test_upsample_preserves_constant_images():
  x = jnp.full((1, 5, 5, 1), 3.0)
  out = np.asarray(L.upsample2d(x, (1, 3, 3, 1)))
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], 3.0, rtol=1e-6)  # interior: filter sums to one


# ---- convolution -------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_plain_matches_numpy(kernel):
  rng = np.random.default_rng(4)
  conv = L.Conv2d(3, 5, kernel, rngs=nnx.Rngs(0))
  _randomize(conv, rng)
  x = _rand(rng, 2, 6, 6, 3)
  out = conv(jnp.asarray(x))
  chex.assert_shape(out, (2, 6, 6, 5))
  ref = np_conv(x, _p(conv.weight), kernel // 2) + _p(conv.bias)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("f", [(1, 1), (1, 3, 3, 1)])
@pytest.mark.parametrize("mode", ["up", "down"])
@pytest.mark.parametrize("fused", [False, True])
def test_conv_resampling_matches_numpy(f, mode, fused):
  rng = np.random.default_rng(5)
  conv = L.Conv2d(3, 4, 3, up=mode == "up", down=mode == "down", resample_filter=f,
                  fused_resample=fused, rngs=nnx.Rngs(0))
  _randomize(conv, rng)
  x = _rand(rng, 2, 8, 8, 3)
  w, b = _p(conv.weight), _p(conv.bias)
  k = L.resample_kernel(f).astype(np.float64)
  f_pad = (k.shape[0] - 1) // 2
  if mode == "down" and fused:
    ref = np_depthwise(np_conv(x, w, 1 + f_pad), k, 2, 0)
  elif mode == "down":
    ref = np_conv(np_depthwise(x, k, 2, f_pad), w, 1)
  elif fused:  # transposed with the conv's padding added, then an unpadded conv
    ref = np_conv(np_transposed(x, 4 * k, 2, 1 + f_pad), w, 0)
  else:
    ref = np_conv(np_transposed(x, 4 * k, 2, f_pad), w, 1)
  out = conv(jnp.asarray(x))
  chex.assert_shape(out, ref.shape)
  np.testing.assert_allclose(out, ref + b, rtol=RTOL, atol=1e-5)


def test_kernel_zero_conv_is_pure_resampling_without_params():
  conv = L.Conv2d(3, 3, 0, down=True, resample_filter=(1, 3, 3, 1), rngs=nnx.Rngs(0))
  assert conv.weight is None and conv.bias is None
  assert L.count_params(conv) == 0
  x = jnp.asarray(_rand(np.random.default_rng(6), 1, 8, 8, 3))
  np.testing.assert_allclose(conv(x), L.downsample2d(x, (1, 3, 3, 1)), rtol=1e-6)


# ---- normalisation, embeddings, attention -----------------------------------------------------

@pytest.mark.parametrize("channels,expected_groups", [(8, 2), (64, 16), (128, 32), (256, 32)])
def test_group_count_rule(channels, expected_groups):
  # min(num_groups, C // min_channels_per_group), worked out by hand for each row.
  assert L.group_count(channels) == expected_groups
  assert L.GroupNorm(channels).num_groups == expected_groups


@pytest.mark.parametrize("channels,eps", [(12, 1e-5), (64, 1e-6)])
def test_group_norm_matches_numpy(channels, eps):
  rng = np.random.default_rng(7)
  gn = L.GroupNorm(channels, eps=eps)
  _randomize(nnx.Dict({"norm": gn}), rng)
  x = _rand(rng, 2, 5, 5, channels, scale=3.0) + 1.5
  out = gn(jnp.asarray(x))
  chex.assert_shape(out, x.shape)
  ref = np_group_norm(x, L.group_count(channels), _p(gn.weight), _p(gn.bias), eps)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def _assert_central_differences(grads, f, args, h=1e-6):
  """Each float32 gradient in `grads` against central differences of the float64 scalar f."""
  for i, got in enumerate(grads):
    chex.assert_shape(got, args[i].shape)
    chex.assert_type(got, jnp.float32)
    want = np.zeros(args[i].size)
    for j in range(args[i].size):
      up = [a.copy() for a in args]
      dn = [a.copy() for a in args]
      up[i].reshape(-1)[j] += h
      dn[i].reshape(-1)[j] -= h
      want[j] = (f(*up) - f(*dn)) / (2 * h)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("channels,eps", [(8, 1e-5), (12, 1e-6)])
def test_group_norm_gradient_is_the_numpy_finite_difference(channels, eps):
  """The closed-form backward (custom_vjp) against central differences of the float64 NumPy
  GroupNorm, for x, weight and bias, through <y, ct>."""
  rng = np.random.default_rng(11)
  groups = L.group_count(channels)
  x = _rand(rng, 2, 3, 3, channels, scale=2.0) + 0.7
  gamma = 1.0 + 0.3 * _rand(rng, channels)
  beta = 0.2 * _rand(rng, channels)
  ct = _rand(rng, 2, 3, 3, channels)
  f = lambda x_, g_, b_: float(np.sum(np_group_norm(x_, groups, g_, b_, eps) * ct))  # noqa: E731
  grads = jax.grad(lambda *a: jnp.sum(L.group_norm(*a, groups, eps) * ct), argnums=(0, 1, 2))(
      jnp.asarray(x, jnp.float32), jnp.asarray(gamma, jnp.float32),
      jnp.asarray(beta, jnp.float32))
  args = [np.asarray(a, np.float64) for a in (x, gamma, beta)]
  _assert_central_differences(grads, f, args)


@pytest.mark.parametrize("adaptive", [False, True])
def test_group_norm_silu_matches_numpy_and_its_finite_difference(adaptive):
  """group_norm_silu (one custom_vjp) against float64 NumPy silu(shift + GN(x) * a): the output,
  and central differences for x, weight, bias, a and shift through <y, ct>."""
  rng = np.random.default_rng(13)
  channels, groups, eps = 8, 4, 1e-5
  x = _rand(rng, 2, 3, 3, channels, scale=2.0) + 0.7
  gamma = 1.0 + 0.3 * _rand(rng, channels)
  beta = 0.2 * _rand(rng, channels)
  a = 1.0 + 0.3 * _rand(rng, 2, 1, 1, channels)
  shift = 0.3 * _rand(rng, 2, 1, 1, channels)
  ct = _rand(rng, 2, 3, 3, channels)
  args = [x, gamma, beta] + ([a, shift] if adaptive else [])

  def np_f(x_, g_, b_, a_=None, s_=None):
    y = np_group_norm(x_, groups, g_, b_, eps)
    return np_silu(y if a_ is None else s_ + y * a_)

  def jx_f(x_, g_, b_, a_=None, s_=None):
    return L.group_norm_silu(x_, g_, b_, a_, s_, groups, eps)

  f32 = [jnp.asarray(v, jnp.float32) for v in args]
  out = jx_f(*f32)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(out, np_f(*args), rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda *v: jnp.sum(jx_f(*v) * ct), argnums=tuple(range(len(args))))(*f32)
  f = lambda *v: float(np.sum(np_f(*v) * ct))  # noqa: E731
  args64 = [np.asarray(v, np.float64) for v in args]
  _assert_central_differences(grads, f, args64)


def test_group_norm_silu_method_is_the_composition():
  """GroupNorm.silu gives the same float32 values as nnx.silu of the module's output (the
  networks' parity with the reference rests on it) and gradients within float32 round-off."""
  rng = np.random.default_rng(14)
  gn = L.GroupNorm(16)
  _randomize(nnx.Dict({"norm": gn}), rng)
  x = jnp.asarray(_rand(rng, 2, 4, 4, 16, scale=2.0) + 0.5)
  scale, shift = (jnp.asarray(0.3 * _rand(rng, 2, 1, 1, 16)) for _ in range(2))
  ct = jnp.asarray(_rand(rng, 2, 4, 4, 16))
  cases = ((lambda x_, s_, t_: gn.silu(x_), lambda x_, s_, t_: nnx.silu(gn(x_))),
           (lambda x_, s_, t_: gn.silu(x_, scale=s_, shift=t_),
            lambda x_, s_, t_: nnx.silu(t_ + gn(x_) * (s_ + 1))))
  for fused, composed in cases:
    np.testing.assert_array_equal(fused(x, scale, shift), composed(x, scale, shift))
    g1 = jax.grad(lambda *v: jnp.sum(fused(*v) * ct), argnums=(0, 1, 2))(x, scale, shift)
    g2 = jax.grad(lambda *v: jnp.sum(composed(*v) * ct), argnums=(0, 1, 2))(x, scale, shift)
    for p, q in zip(g1, g2):
      np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="both scale and shift"):
    gn.silu(x, scale=scale)


def test_group_norm_bf16_keeps_input_dtype():
  gn = L.GroupNorm(8)
  x = jnp.asarray(_rand(np.random.default_rng(8), 1, 4, 4, 8)).astype(jnp.bfloat16)
  chex.assert_type(gn(x), jnp.bfloat16)


@pytest.mark.parametrize("endpoint", [False, True])
def test_positional_embedding_closed_form(endpoint):
  x = np.array([0.0, -1.3, 2.5, 999.0])
  n = 16
  out = L.positional_embedding(jnp.asarray(x, jnp.float32), n, endpoint=endpoint)
  chex.assert_shape(out, (4, n))
  chex.assert_type(out, jnp.float32)
  denom = n // 2 - (1 if endpoint else 0)
  freqs = (1 / 10000.0) ** (np.arange(n // 2) / denom)
  ang = x[:, None] * freqs[None]
  np.testing.assert_allclose(out, np.concatenate([np.cos(ang), np.sin(ang)], 1), atol=2e-4)
  if endpoint:  # the last frequency reaches 1/max_positions exactly
    np.testing.assert_allclose(freqs[-1], 1e-4)


def test_fourier_embedding_closed_form_and_frequencies():
  freqs = L.fourier_frequencies(256, scale=16.0, seed=3)
  assert len(freqs) == 128 and freqs == L.fourier_frequencies(256, scale=16.0, seed=3)
  assert freqs != L.fourier_frequencies(256, scale=16.0, seed=4)
  assert 10 < np.std(freqs) < 22  # N(0, 16^2); 128 draws
  x = np.array([0.1, -0.2, 0.0])
  out = L.fourier_embedding(jnp.asarray(x, jnp.float32), freqs[:8])
  ang = 2 * np.pi * x[:, None] * np.asarray(freqs[:8])[None]
  np.testing.assert_allclose(out, np.concatenate([np.cos(ang), np.sin(ang)], 1), atol=2e-5)


def test_attention_matches_numpy_softmax():
  rng = np.random.default_rng(9)
  q, k, v = (_rand(rng, 2, 6, 3, 4) for _ in range(3))
  out = L.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
  logits = np.einsum("bqhc,bkhc->bhqk", q.astype(np.float64), k) / np.sqrt(4)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhc->bqhc", p, v), rtol=RTOL, atol=1e-6)


def test_linear_layout_in_out():
  rng = np.random.default_rng(10)
  lin = L.Linear(5, 3, rngs=nnx.Rngs(0))
  _randomize(nnx.Dict({"lin": lin}), rng)
  chex.assert_shape(lin.weight[...], (5, 3))
  x = _rand(rng, 4, 5)
  np.testing.assert_allclose(lin(jnp.asarray(x)), x @ _p(lin.weight) + _p(lin.bias), rtol=RTOL,
                             atol=1e-6)


# ---- initialisation ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode,bound,std", [
    ("xavier_uniform", np.sqrt(6 / (300 + 200)), np.sqrt(6 / 500) / np.sqrt(3)),
    ("kaiming_uniform", np.sqrt(3 / 300), np.sqrt(3 / 300) / np.sqrt(3)),
    ("xavier_normal", None, np.sqrt(2 / 500)),
    ("kaiming_normal", None, np.sqrt(1 / 300)),
])
def test_weight_init_schemes(mode, bound, std):
  w = np.asarray(L.weight_init(jax.random.PRNGKey(0), (300, 200), mode, 300, 200))
  if bound is not None:
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
  np.testing.assert_allclose(w.std(), std, rtol=0.02)
  np.testing.assert_allclose(w.mean(), 0.0, atol=0.02 * std)


def test_init_scaling_fans_and_zero_init():
  conv = L.Conv2d(16, 32, 3, init_mode="kaiming_uniform", init_weight=0.5, init_bias=0.25,
                  rngs=nnx.Rngs(0))
  w, b = _p(conv.weight), _p(conv.bias)
  assert np.abs(w).max() <= 0.5 * np.sqrt(3 / (16 * 9)) + 1e-7  # fan_in = in * k * k
  assert 0 < np.abs(b).max() <= 0.25 * np.sqrt(3 / (16 * 9)) + 1e-7  # biases use the same fans
  zero = L.Conv2d(16, 32, 3, init_weight=0, init_bias=0, rngs=nnx.Rngs(0))
  assert not np.any(_p(zero.weight)) and not np.any(_p(zero.bias))
  lin = L.Linear(8, 4, init_mode="xavier_uniform", rngs=nnx.Rngs(0))
  assert not np.any(_p(lin.bias))  # init_bias defaults to 0
  assert L.Linear(8, 4, bias=False, rngs=nnx.Rngs(0)).bias is None


# ---- dropout and the U-Net block ---------------------------------------------------------------

def test_dropout_identity_in_eval_and_inverted_in_train():
  x = jnp.ones((64, 64))
  assert L.dropout(x, 0.3, train=False, rngs=None) is x
  y = np.asarray(L.dropout(x, 0.3, train=True, rngs=nnx.Rngs(dropout=0)))
  kept = y != 0
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  assert abs(kept.mean() - 0.7) < 0.03
  with pytest.raises(ValueError):
    L.dropout(x, 0.3, train=True, rngs=None)


def _np_threefry2x32(key, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123), uint32 NumPy arrays."""
  m = np.uint64(0xFFFFFFFF)
  rot = lambda v, r: ((v << np.uint64(r)) | (v >> np.uint64(32 - r))) & m  # noqa: E731
  ks = [np.uint64(key[0]), np.uint64(key[1])]
  ks.append(ks[0] ^ ks[1] ^ np.uint64(0x1BD11BDA))
  x = [(x0.astype(np.uint64) + ks[0]) & m, (x1.astype(np.uint64) + ks[1]) & m]
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  for i in range(5):
    for r in rotations[i % 2]:
      x[0] = (x[0] + x[1]) & m
      x[1] = rot(x[1], r) ^ x[0]
    x[0] = (x[0] + ks[(i + 1) % 3]) & m
    x[1] = (x[1] + ks[(i + 2) % 3] + np.uint64(i + 1)) & m
  return x[0].astype(np.uint32), x[1].astype(np.uint32)


def test_keep_mask_is_threefry_words_against_the_threshold():
  key = jax.random.key(11)
  shape, p = (3, 2, 5, 8), 0.87
  mask = np.asarray(jax.jit(lambda k: L.keep_mask(k, p, shape))(key))
  chex.assert_shape(mask, shape)
  assert mask.dtype == np.bool_
  # Counter (image b, index i within the image's [2, 5, 4] half) -> two words: one for channel
  # c, one for channel c + 4.
  b, i = np.meshgrid(np.arange(3), np.arange(2 * 5 * 4), indexing="ij")
  w0, w1 = _np_threefry2x32(np.asarray(jax.random.key_data(key)), b.astype(np.uint32),
                            i.astype(np.uint32))
  bits = np.concatenate([w0.reshape(3, 2, 5, 4), w1.reshape(3, 2, 5, 4)], axis=-1)
  np.testing.assert_array_equal(mask, bits < np.uint32(round(p * 2**32)))


def test_keep_mask_rate_and_fallbacks():
  key = jax.random.key(5)
  m = np.asarray(L.keep_mask(key, 0.7, (64, 16, 16, 32)))
  n = m.size
  # 6 binomial standard deviations; the two halves of the channels draw from different words.
  assert abs(m.mean() - 0.7) < 6 * np.sqrt(0.7 * 0.3 / n)
  a, b = m[..., :16].ravel().astype(float), m[..., 16:].ravel().astype(float)
  assert abs(np.corrcoef(a, b)[0, 1]) < 6 / np.sqrt(n / 2)
  assert not np.array_equal(m, np.asarray(L.keep_mask(jax.random.key(6), 0.7, m.shape)))
  assert np.asarray(L.keep_mask(key, 1.0, (2, 4))).all()
  assert not np.asarray(L.keep_mask(key, 0.0, (2, 4))).any()
  for k, shape in ((key, (256, 7)), (jax.random.key(0, impl="rbg"), (64, 8)),
                   (jax.random.PRNGKey(0), (64, 8))):  # odd last axis, rbg key, raw uint32 key
    m = np.asarray(L.keep_mask(k, 0.5, shape))
    chex.assert_shape(m, shape)
    assert 0.4 < m.mean() < 0.6


def _np_block(blk, x, emb):
  """The reference UNetBlock's order of operations in NumPy, from the block's own parameters."""
  gn = lambda n, v: np_group_norm(v, n.num_groups, _p(n.weight), _p(n.bias), n.eps)  # noqa: E731

  def conv(c, v):
    f = L.resample_kernel(c.resample_filter).astype(np.float64)
    f_pad = (f.shape[0] - 1) // 2
    if c.up:
      v = np_transposed(v, 4 * f, 2, f_pad)
    if c.down:
      v = np_depthwise(v, f, 2, f_pad)
    if c.weight is not None:
      v = np_conv(v, _p(c.weight), c.kernel // 2) + _p(c.bias)
    return v

  h = conv(blk.conv0, np_silu(gn(blk.norm0, x)))
  params = (emb @ _p(blk.affine.weight) + _p(blk.affine.bias))[:, None, None, :]
  if blk.adaptive_scale:
    scale, shift = np.split(params, 2, axis=-1)
    h = np_silu(shift + gn(blk.norm1, h) * (scale + 1))
  else:
    h = np_silu(gn(blk.norm1, h + params))
  h = conv(blk.conv1, h)
  h = (h + (conv(blk.skip, x) if blk.skip is not None else x)) * blk.skip_scale
  if blk.num_heads:
    n2 = blk.norm2
    h = np_attention_block(h, _p(blk.qkv.weight), _p(blk.qkv.bias), _p(blk.proj.weight),
                           _p(blk.proj.bias), (n2.num_groups, _p(n2.weight), _p(n2.bias), n2.eps),
                           blk.num_heads, blk.skip_scale)
  return h


@pytest.mark.parametrize("kind", ["ddpmpp_down_attn", "ddpmpp_proj", "adm_up_attn", "adm_down"])
def test_unet_block_matches_numpy(kind):
  rng = np.random.default_rng(11)
  song = dict(num_heads=1, skip_scale=np.sqrt(0.5), eps=1e-6, resample_proj=True,
              adaptive_scale=False)
  adm = dict(channels_per_head=8, eps=1e-5, adaptive_scale=True)
  cfg = {
      "ddpmpp_down_attn": (16, 16, dict(song, down=True, attention=True, resample_filter=(1, 3, 3, 1))),
      "ddpmpp_proj": (16, 24, dict(song)),
      "adm_up_attn": (16, 16, dict(adm, up=True, attention=True)),  # 2 heads
      "adm_down": (16, 16, dict(adm, down=True)),  # kernel-0 skip: resampling only
  }[kind]
  blk = L.UNetBlock(cfg[0], cfg[1], 12, rngs=nnx.Rngs(0), **cfg[2])
  _randomize(blk, rng)
  x = _rand(rng, 2, 8, 8, cfg[0])
  emb = _rand(rng, 2, 12)
  out = blk(jnp.asarray(x), jnp.asarray(emb))
  ref = _np_block(blk, x.astype(np.float64), emb.astype(np.float64))
  chex.assert_shape(out, ref.shape)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
  if kind == "adm_up_attn":
    assert blk.num_heads == 2
  if kind == "adm_down":
    assert blk.skip.weight is None


def test_skip_scale_applies_to_residual_sum():
  # A zero conv1 makes the residual branch vanish, so the output is exactly skip_scale * x, and
  # with a zero attention projection the attention step scales it once more: x * sqrt(.5)^2.
  blk = L.UNetBlock(8, 8, 4, skip_scale=np.sqrt(0.5), attention=True, num_heads=1,
                    adaptive_scale=False, init_zero=dict(init_weight=0), rngs=nnx.Rngs(0))
  x = jnp.asarray(_rand(np.random.default_rng(12), 1, 4, 4, 8))
  out = blk(x, jnp.zeros((1, 4)))
  np.testing.assert_allclose(out, np.asarray(x) * 0.5, rtol=1e-5, atol=1e-6)


# ---- optional: torch's own ops as a second, independent reference for the NCHW/OIHW semantics --

def test_against_torch_functional_ops():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(13)
  x = _rand(rng, 2, 3, 8, 8)  # NCHW
  w = _rand(rng, 4, 3, 3, 3)  # OIHW
  for f in ((1, 1), (1, 3, 3, 1)):
    k = torch.as_tensor(L.resample_kernel(f))
    p = (k.shape[0] - 1) // 2
    up_t = F.conv_transpose2d(torch.as_tensor(x), (4 * k).tile([3, 1, 1, 1]), groups=3,
                              stride=2, padding=p)
    down_t = F.conv2d(torch.as_tensor(x), k.tile([3, 1, 1, 1]), groups=3, stride=2,
                      padding=p)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(L.upsample2d(xj, f)).transpose(0, 3, 1, 2), up_t.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(L.downsample2d(xj, f)).transpose(0, 3, 1, 2),
                               down_t.numpy(), rtol=1e-5, atol=1e-6)
  conv = L.Conv2d(3, 4, 3, rngs=nnx.Rngs(0))
  conv.weight[...] = jnp.asarray(w.transpose(2, 3, 1, 0))
  ref = F.conv2d(torch.as_tensor(x), torch.as_tensor(w), padding=1).numpy()
  out = np.asarray(conv(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  gn = L.GroupNorm(12, eps=1e-6)
  xg = _rand(rng, 2, 12, 4, 4)
  ref = F.group_norm(torch.as_tensor(xg), 3, eps=1e-6).numpy()
  out = np.asarray(gn(jnp.asarray(xg.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
