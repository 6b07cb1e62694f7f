"""FID Inception-v3: shapes, pooling quirks, preprocessing and the weights loader/converter."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.eval import inception as inc


# ---- independent NumPy versions of the pieces ----------------------------------------------------

def _np_pool(x, stride, pad, op, count_pad):
  """[B, H, W, C] 3×3 pooling written as explicit windows."""
  b, h, w, c = x.shape
  fill = -np.inf if op == "max" else 0.0
  xp = np.full((b, h + 2 * pad, w + 2 * pad, c), fill)
  xp[:, pad:pad + h, pad:pad + w] = x
  valid = np.zeros((h + 2 * pad, w + 2 * pad))
  valid[pad:pad + h, pad:pad + w] = 1
  oh, ow = (h + 2 * pad - 3) // stride + 1, (w + 2 * pad - 3) // stride + 1
  out = np.empty((b, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      win = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3]
      if op == "max":
        out[:, i, j] = win.max(axis=(1, 2))
      else:
        n = 9 if count_pad else valid[i * stride:i * stride + 3, j * stride:j * stride + 3].sum()
        out[:, i, j] = win.sum(axis=(1, 2)) / n
  return out


def _np_resize_bilinear(x, size):
  """PyTorch F.interpolate(mode='bilinear', align_corners=False) on [B, H, W, C]."""
  def axis_weights(n_in):
    scale = n_in / size
    src = np.maximum((np.arange(size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0
  h0, h1, hl = axis_weights(x.shape[1])
  w0, w1, wl = axis_weights(x.shape[2])
  rows = x[:, h0] * (1 - hl)[None, :, None, None] + x[:, h1] * hl[None, :, None, None]
  return rows[:, :, w0] * (1 - wl)[None, None, :, None] + rows[:, :, w1] * wl[None, None, :, None]


# ---- tests ---------------------------------------------------------------------------------------

def test_pooling_quirks_match_numpy():
  x = np.random.default_rng(0).standard_normal((2, 6, 5, 3)).astype(np.float32)
  np.testing.assert_allclose(inc.avg_pool_3x3_same(jnp.asarray(x)),
                             _np_pool(x, 1, 1, "avg", count_pad=False), rtol=1e-5, atol=1e-6)
  # Counting the padding would be the torchvision (non-FID) behaviour: make sure we differ from it.
  assert not np.allclose(inc.avg_pool_3x3_same(jnp.asarray(x)), _np_pool(x, 1, 1, "avg", True))
  np.testing.assert_allclose(inc.max_pool_3x3_same(jnp.asarray(x)), _np_pool(x, 1, 1, "max", False))
  np.testing.assert_allclose(inc.max_pool_3x3_s2(jnp.asarray(x)), _np_pool(x, 2, 0, "max", False))


def test_fid_graph_pool_choice_per_block():
  net = inc.abstract_inception()
  assert net.Mixed_7b.pool == "avg" and net.Mixed_7c.pool == "max"


def test_basic_conv_is_conv_bn_eps_1e3_relu():
  rng = np.random.default_rng(1)
  block = inc.BasicConv2d(2, 3, (1, 3), padding=(0, 1), rngs=nnx.Rngs(0))
  kernel = rng.standard_normal((1, 3, 2, 3)).astype(np.float32)
  scale, bias, mean, var = (rng.uniform(0.5, 2, 3).astype(np.float32) for _ in range(4))
  block.conv.kernel[...] = kernel
  block.bn.scale[...], block.bn.bias[...] = scale, bias - 1.0
  block.bn.mean[...], block.bn.var[...] = mean, var
  x = rng.standard_normal((2, 4, 5, 2)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
  conv = sum(np.einsum("bhwi,io->bhwo", xp[:, :, j:j + 5], kernel[0, j]) for j in range(3))
  expected = np.maximum((conv - mean) / np.sqrt(var + 1e-3) * scale + (bias - 1.0), 0.0)
  got = block(jnp.asarray(x))
  chex.assert_shape(got, (2, 4, 5, 3))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,channels", [(8, 1), (40, 3), (400, 3)])
def test_preprocess_matches_pytorch_bilinear(size, channels):
  rng = np.random.default_rng(size)
  images = rng.integers(0, 256, (2, size, size, channels), dtype=np.uint8)
  got = inc.preprocess(jnp.asarray(images))
  chex.assert_shape(got, (2, 299, 299, 3))
  chex.assert_type(got, jnp.float32)
  x = images.astype(np.float64) / 255.0
  x = np.repeat(x, 3, axis=-1) if channels == 1 else x
  expected = 2.0 * _np_resize_bilinear(x, 299) - 1.0
  # float32 sample positions (≈1e-5 px at 299) bound the agreement; a grey level is 8e-3.
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert float(got.min()) >= -1.0 and float(got.max()) <= 1.0


def test_forward_shapes_and_parameter_count():
  net = inc.abstract_inception()
  graphdef, state = nnx.split(net)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(inc.preprocess(x)), state,
                       jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.uint8))
  assert out.shape == (3, inc.FEATURE_DIM) and out.dtype == jnp.float32
  # torchvision's inception_v3 has 27,161,264 parameters; the FID feature network drops the
  # 1000-way fc (2048·1000 + 1000) and the aux classifier (1×1 conv 768→128 + BN, 5×5 conv
  # 128→768 + BN, fc 768→1000). The FID graph's fc is 1008-way, but it is dropped too.
  aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
  expected = 27_161_264 - (2048 * 1000 + 1000) - aux
  shapes = inc.weight_shapes()
  trainable = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("/mean", "/var")))
  assert trainable == expected
  assert sum(k.endswith("/conv/kernel") for k in shapes) == 94


def test_forward_on_random_weights_small_input():
  net = inc.random_inception(0)
  graphdef, state = nnx.split(net)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 75, 75, 3), minval=-1.0, maxval=1.0)
  y = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
  chex.assert_shape(y, (2, inc.FEATURE_DIM))
  chex.assert_tree_all_finite(y)
  assert float(jnp.abs(y).max()) > 0  # pool features after ReLU: non-negative, not all dead
  assert float(y.min()) >= 0.0


def _torch_layout_state(rng, marked):
  """A state dict with the PyTorch port's names and layouts (zeros except `marked` entries)."""
  to_pt = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
  state = {}
  for key, shape in inc.weight_shapes().items():
    parts = key.split("/")
    name = ".".join(parts[:-1] + [to_pt[parts[-1]]])
    pt_shape = (shape[3], shape[2], shape[0], shape[1]) if parts[-1] == "kernel" else shape
    state[name] = (rng.standard_normal(pt_shape).astype(np.float32) if name in marked
                   else np.zeros(pt_shape, np.float32))
    if parts[-1] == "var":
      state[".".join(parts[:-1] + ["num_batches_tracked"])] = np.array(0)
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)
  state["fc.bias"] = np.zeros((1008,), np.float32)
  return state


def test_converter_and_loader_round_trip(tmp_path):
  marked = {"Mixed_5b.branch5x5_2.conv.weight", "Mixed_7c.branch_pool.bn.running_var",
            "Conv2d_1a_3x3.bn.weight"}
  pt = _torch_layout_state(np.random.default_rng(2), marked)
  weights = inc.convert_state_dict(pt)
  assert not any(k.startswith("fc") or "num_batches" in k for k in weights)
  path = tmp_path / "w.npz"
  np.savez_compressed(path, **weights)
  net = inc.load_inception(str(path))
  # [O, I, kh, kw] → [kh, kw, I, O]
  np.testing.assert_array_equal(net.Mixed_5b.branch5x5_2.conv.kernel[...],
                                pt["Mixed_5b.branch5x5_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(net.Mixed_7c.branch_pool.bn.var[...],
                                pt["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(net.Conv2d_1a_3x3.bn.scale[...], pt["Conv2d_1a_3x3.bn.weight"])
  assert float(jnp.abs(net.Mixed_6a.branch3x3.conv.kernel[...]).max()) == 0.0


def test_loader_rejects_wrong_files(tmp_path):
  shapes = inc.weight_shapes()
  partial = {k: np.zeros(s, np.float32) for k, s in list(shapes.items())[:10]}
  p = tmp_path / "partial.npz"
  np.savez(p, **partial)
  with pytest.raises(JaxdiffError, match="do not match the network"):
    inc.load_inception(str(p))
  with pytest.raises(JaxdiffError, match="unexpected entry"):
    inc.convert_state_dict({"Mixed_5b.branch1x1.conv.bias": np.zeros(3)})


def test_missing_weights_error_names_file_and_source(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path))
  monkeypatch.delenv("JAXDIFF_INCEPTION", raising=False)
  with pytest.raises(JaxdiffError) as e:
    inc.load_inception(None)
  msg = str(e.value)
  assert "pt_inception-2015-12-05-6726825d.pth" in msg and "pytorch-fid" in msg
  assert str(tmp_path / inc.NPZ_NAME) in msg and "\n" not in msg
  with pytest.raises(JaxdiffError, match="nope.npz"):
    inc.load_inception(str(tmp_path / "nope.npz"))
