"""Inception-v3 as in the TF 2015-12-05 graph used for FID, in Flax NNX (NHWC), 2048-d pool features.

The layer structure follows the standard PyTorch port of that graph (pytorch-fid): torchvision's
Inception-v3 with conv → BatchNorm(eps 1e-3, running stats) → ReLU units, and the FID graph's pooling
quirks: the 3×3/1 average pools of Mixed_5*/6*/7b do not count padded zeros, and Mixed_7c pools its
last branch with a 3×3/1 *max* pool. Attribute names mirror the PyTorch module names so that weights
map one to one.

Weights: convert the PyTorch port's file once (needs torch):
  python -m jaxdiff.eval.inception --convert pt_inception-2015-12-05-6726825d.pth --out W.npz
The .npz keys are NNX state paths joined by '/', e.g. `Mixed_5b/branch1x1/conv/kernel` (HWIO).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.eval.cache import cache_dir
from jaxdiff.pytree import flatten, unflatten

PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
PTH_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
           "pt_inception-2015-12-05-6726825d.pth")
NPZ_NAME = "inception-2015-12-05.npz"
FEATURE_DIM = 2048
INPUT_SIZE = 299


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
  """conv (no bias) → BatchNorm with running statistics, eps 1e-3 → ReLU."""

  def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, rngs):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(in_channels, out_channels, _pair(kernel_size), strides=_pair(stride),
                         padding=((ph, ph), (pw, pw)), use_bias=False,
                         precision=jax.lax.Precision.HIGHEST, rngs=rngs)  # no TF32 on GPUs
    self.bn = nnx.BatchNorm(out_channels, use_running_average=True, epsilon=1e-3, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def avg_pool_3x3_same(x):
  # TF's average pool divides by the number of real (unpadded) inputs in the window.
  return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x):
  return nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def max_pool_3x3_s2(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nnx.Module):
  def __init__(self, cin, pool_features, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  def __init__(self, cin, *, rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nnx.Module):
  def __init__(self, cin, c7, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  def __init__(self, cin, *, rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nnx.Module):
  """`pool='avg'` for Mixed_7b; the FID graph's Mixed_7c uses `pool='max'`."""

  def __init__(self, cin, pool, *, rngs):
    if pool not in ("avg", "max"):
      raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = max_pool_3x3_same(x) if self.pool == "max" else avg_pool_3x3_same(x)
    return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
  """x [B, H, W, 3] in [-1, 1] (H, W ≥ 75; 299 for FID) → pool3 features [B, 2048]."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)

  def __call__(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool_3x3_s2(x)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = max_pool_3x3_s2(x)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return x.mean(axis=(1, 2))


def preprocess(images):
  """uint8 [B, H, W, C] (C = 1 or 3) → float32 [B, 299, 299, 3] in [-1, 1], as pytorch-fid:
  bilinear resize with half-pixel centres and no antialiasing (F.interpolate, align_corners=False),
  then 2·x − 1 on x = images / 255. Grey images are repeated to 3 channels."""
  x = images.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
  return 2.0 * x - 1.0


# ---- weights -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _abstract_split():
  # Tracing the constructor takes seconds; do it once per process.
  return nnx.split(nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0))))


def abstract_inception() -> InceptionV3:
  """The network with shape-only variables (no memory, no compute)."""
  graphdef, state = _abstract_split()
  return nnx.merge(graphdef, copy.deepcopy(state))


def weight_shapes() -> dict[str, tuple[int, ...]]:
  """npz key → shape for every variable of the network."""
  _, state = _abstract_split()
  return {k: tuple(v.shape) for k, v in flatten(nnx.to_pure_dict(state)).items()}


_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def convert_state_dict(torch_state: dict) -> dict[str, np.ndarray]:
  """PyTorch-port names/layouts (NumPy arrays) → jaxdiff npz keys/layouts.

  `X.conv.weight` [O, I, kh, kw] → `X/conv/kernel` [kh, kw, I, O]; `X.bn.{weight, bias,
  running_mean, running_var}` → `X/bn/{scale, bias, mean, var}`. The 1008-way `fc` classifier and
  `num_batches_tracked` counters are not part of the feature network and are dropped.
  """
  out = {}
  for name, value in torch_state.items():
    parts = name.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
      continue
    value = np.asarray(value, np.float32)
    if parts[-2] == "conv" and parts[-1] == "weight":
      out["/".join(parts[:-1] + ["kernel"])] = value.transpose(2, 3, 1, 0)
    elif parts[-2] == "bn" and parts[-1] in _BN_NAMES:
      out["/".join(parts[:-1] + [_BN_NAMES[parts[-1]]])] = value
    else:
      raise JaxdiffError(f"unexpected entry {name!r} in the Inception state dict: is this "
                         f"{PTH_NAME} (the pytorch-fid port of the FID graph)?")
  return out


def _read_pth(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # optional: only for the one-time conversion
  except ImportError as e:
    raise JaxdiffError(f"reading {path!r} needs torch (pip install 'jaxdiff[torch]'); or convert it "
                       "once elsewhere with `python -m jaxdiff.eval.inception --convert`") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert_pth(src: str, out: str) -> None:
  """One-time conversion of the PyTorch port's .pth into jaxdiff's .npz."""
  from jaxdiff.fileio import atomic_savez
  weights = convert_state_dict(_read_pth(src))
  _check_weights(weights, src)
  atomic_savez(out, **weights)


def default_weights_path() -> str:
  return os.environ.get("JAXDIFF_INCEPTION") or os.path.join(cache_dir(), NPZ_NAME)


def missing_weights_message(path: str) -> str:
  return (f"Inception weights {path!r} not found: download {PTH_NAME} from {PTH_URL} (the "
          f"pytorch-fid port of the TF FID graph), convert once with `python -m "
          f"jaxdiff.eval.inception --convert {PTH_NAME} --out {NPZ_NAME}` (needs torch), then pass "
          f"--inception {NPZ_NAME} or place it at {os.path.join(cache_dir(), NPZ_NAME)}")


def _check_weights(weights: dict, source: str) -> None:
  expected = weight_shapes()
  missing = sorted(set(expected) - set(weights))
  extra = sorted(set(weights) - set(expected))
  if missing or extra:
    raise JaxdiffError(f"Inception weights {source!r} do not match the network: {len(missing)} "
                       f"missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}); "
                       f"convert {PTH_NAME} with `python -m jaxdiff.eval.inception --convert`")
  for k, shape in expected.items():
    if tuple(weights[k].shape) != shape:
      raise JaxdiffError(f"Inception weights {source!r}: {k} has shape {tuple(weights[k].shape)}, "
                         f"expected {shape}; the file is not the FID Inception graph")


def load_inception(path: str | None = None) -> InceptionV3:
  """The FID Inception network with weights from `path` (.npz, or .pth when torch is installed).

  Default path: $JAXDIFF_INCEPTION, else <cache dir>/inception-2015-12-05.npz. Missing file → a
  JaxdiffError saying where to get it; nothing is downloaded.
  """
  path = os.fspath(path) if path else default_weights_path()
  if not os.path.isfile(path):
    raise JaxdiffError(missing_weights_message(path))
  if path.endswith(".pth"):
    weights = convert_state_dict(_read_pth(path))
  else:
    try:
      with np.load(path) as z:
        weights = {k: z[k] for k in z.files}
    except Exception as e:
      raise JaxdiffError(f"cannot read Inception weights {path!r} as .npz ({e})") from e
  _check_weights(weights, path)
  return inception_from_weights(weights)


def inception_from_weights(weights: dict) -> InceptionV3:
  """The network with variables from a flat {npz key: array} dict (keys as `weight_shapes()`)."""
  graphdef, state = _abstract_split()
  state = copy.deepcopy(state)
  pure = unflatten({k: jnp.asarray(v, jnp.float32) for k, v in weights.items()})
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def random_inception(seed: int = 0) -> InceptionV3:
  """Random weights, for shapes and timing only (features are meaningless).

  Filled from NumPy on the abstract network (He-normal kernels, identity BatchNorm): eager NNX init
  of 22 M parameters takes most of a minute on a small CPU, this takes a fraction of a second.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in weight_shapes().items():
    leaf = key.rsplit("/", 1)[1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      flat[key] = (rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    else:
      flat[key] = (np.ones if leaf in ("scale", "var") else np.zeros)(shape, np.float32)
  return inception_from_weights(flat)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxdiff.eval.inception",
                              description="Convert the pytorch-fid Inception weights to .npz.")
  p.add_argument("--convert", required=True, metavar="SRC.pth", help=f"{PTH_NAME} ({PTH_URL})")
  p.add_argument("--out", default=None, help=f"output .npz (default: {default_weights_path()})")
  args = p.parse_args(argv)
  out = args.out or default_weights_path()
  try:
    convert_pth(args.convert, out)
  except JaxdiffError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
