"""Batched, sharded feature extraction: order, padding of the last batch, multi-device mesh."""

import os
import subprocess
import sys
import textwrap

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fake_devices_env

from jaxdiff.eval.features import data_mesh, extract_features, inception_features


def _fn(w, x):
  # A per-image feature whose NumPy value is easy to write down: [mean, max] · w.
  x = x.astype(jnp.float32)
  return jnp.stack([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], axis=-1) * w


@pytest.mark.parametrize("n,batch", [(10, 4), (3, 8), (8, 8)])
def test_extract_features_order_and_padding(n, batch):
  images = np.random.default_rng(n).integers(0, 256, (n, 5, 5, 1), dtype=np.uint8)
  w = jnp.asarray(0.5)
  got = extract_features(_fn, w, images, batch_size=batch, progress=False)
  x = images.astype(np.float64)
  expected = np.stack([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], -1) * 0.5
  chex.assert_shape(got, (n, 2))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_mesh_is_1d_data():
  mesh = data_mesh()
  assert mesh.axis_names == ("data",) and mesh.devices.ndim == 1


def test_inception_features_rejects_bad_images():
  with pytest.raises(ValueError, match="uint8"):
    inception_features(np.zeros((2, 8, 8, 3), np.float32), model=object())


def test_sharded_over_two_host_devices():
  # A fresh process with two fake CPU devices: batches split across them, results unchanged.
  code = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jaxdiff.eval.features import extract_features, data_mesh
    assert jax.device_count() == 2
    images = np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2, 1)
    seen = []
    def fn(w, x):
      seen.append((x.shape[0], str(jax.typeof(x))))
      return x.astype(jnp.float32).sum(axis=(1, 2)) * w
    got = extract_features(fn, jnp.asarray(2.0), images, batch_size=3, progress=False)
    np.testing.assert_allclose(got, images.astype(np.float64).sum(axis=(1, 2)) * 2)
    # traced once; batch 3 rounded up to 4 (a multiple of the devices), split along 'data'
    assert len(seen) == 1 and seen[0][0] == 4 and "@data" in seen[0][1], seen
    print("ok")
  """)
  env = fake_devices_env(2)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
