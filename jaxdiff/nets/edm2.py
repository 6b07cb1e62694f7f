"""EDM2's magnitude-preserving U-Net (Karras et al., CVPR 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models"; the reference is NVlabs/edm2 training/networks_edm2.py).

Everything is magnitude preserving: MPConv weights are normalised per output channel in every
forward (and, during training, the stored weight is replaced by its normalised copy first: see
`force_normalize`); no biases, no normalisation layers but pixel norm; mp_silu / mp_sum / mp_cat
keep unit variance; the input gets an extra constant-ones channel; the noise embedding is
MPFourier features. The network also holds the reference Precond's uncertainty head
(logvar_fourier -> logvar_linear) of c_noise, returned with `return_logvar=True`.

Layouts (NHWC here, NCHW there): convolution weights HWIO [kh, kw, in, out] (OIHW there),
linear weights [in, out] ([out, in] there); normalisation is over every axis but the output axis.
Parameter paths equal the reference Precond's state-dict names (`unet.enc.64x64_conv.weight`,
`unet.dec.8x8_in0.emb_gain`, `logvar_linear.weight`), so conversion is a renaming plus layouts.

The MPFourier frequencies and phases (buffers in the reference, never trained) are constants of the
network here, tuples in the graphdef, not parameters: drawn from `model.fourier_seed`, or given
explicitly through `model.{emb,logvar}_fourier_{freqs,phases}` (what convert-edm records from a
reference state dict). So the optimizer and the EMA never see them.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import JaxdiffError
from jaxdiff.nets.layers import attention, downsample2d, dropout, upsample2d

_F32 = jnp.float32
_DN = ("NHWC", "HWIO", "NHWC")
EPS = 1e-4  # the reference's normalize() epsilon


# ----------------------------------------------------------------------------------------------
# Magnitude-preserving operations (the reference's equation numbers).

def normalize(x, axis=None, eps: float = EPS):
  """x / (eps + ‖x‖ / √(N)) with ‖·‖ and N over `axis` (default: every axis but the last, i.e.
  per output channel of an HWIO / [in, out] weight). Norm in float32, result in x's dtype."""
  if axis is None:
    axis = tuple(range(x.ndim - 1))
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  n = int(np.prod([x.shape[a] for a in axis]))
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(_F32)), axis=axis, keepdims=True))
  norm = eps + norm * np.float32(np.sqrt(1.0 / n))
  return x / norm.astype(x.dtype)


def mp_silu(x):
  """Eq. 81: silu(x) / 0.596."""
  return jax.nn.silu(x) / jnp.asarray(0.596, x.dtype)


def mp_sum(a, b, t: float = 0.5):
  """Eq. 88: lerp(a, b, t) / √((1−t)² + t²)."""
  return (a + (b - a) * jnp.asarray(t, a.dtype)) / jnp.asarray(np.sqrt((1 - t) ** 2 + t ** 2),
                                                               a.dtype)


def mp_cat(a, b, t: float = 0.5, axis: int = -1):
  """Eq. 103: [a·C(1−t)/√Na, b·C·t/√Nb], C = √((Na + Nb)/((1−t)² + t²))."""
  Na, Nb = a.shape[axis], b.shape[axis]
  C = np.sqrt((Na + Nb) / ((1 - t) ** 2 + t ** 2))
  wa = C / np.sqrt(Na) * (1 - t)
  wb = C / np.sqrt(Nb) * t
  return jnp.concatenate([a * jnp.asarray(wa, a.dtype), b * jnp.asarray(wb, b.dtype)], axis=axis)


def fourier_constants(num_channels: int, seed: int, bandwidth: float = 1.0):
  """(freqs, phases) of MPFourier as the reference draws them: 2π·N(0, 1)·bandwidth and 2π·U(0, 1),
  float32 values as Python float tuples, fixed by `seed` (NumPy's generator, not torch's)."""
  rng = np.random.default_rng(seed)
  freqs = (2 * np.pi * rng.standard_normal(num_channels) * bandwidth).astype(np.float32)
  phases = (2 * np.pi * rng.uniform(size=num_channels)).astype(np.float32)
  return tuple(float(v) for v in freqs), tuple(float(v) for v in phases)


class MPFourier(nnx.Module):
  """Eq. 75: √2·cos(x·f + φ), [B] -> [B, N], in float32. f, φ: constants (see module doc)."""

  def __init__(self, freqs: Sequence[float], phases: Sequence[float]):
    if len(freqs) != len(phases):
      raise JaxdiffError(f"MPFourier: {len(freqs)} frequencies but {len(phases)} phases")
    self.freqs = tuple(float(v) for v in freqs)
    self.phases = tuple(float(v) for v in phases)

  def __call__(self, x):
    f = jnp.asarray(np.asarray(self.freqs, np.float32))
    p = jnp.asarray(np.asarray(self.phases, np.float32))
    y = x.astype(_F32)[:, None] * f[None, :] + p[None, :]
    return jnp.cos(y) * np.float32(np.sqrt(2))


class MPConv(nnx.Module):
  """Eq. 47: convolution (kernel k > 0, HWIO weight) or linear layer (kernel 0, [in, out] weight)
  with weight normalisation and the magnitude-preserving gain: w = normalize(W)·gain/√fan_in.

  The weight is drawn N(0, 1) as in the reference. Forced weight normalisation (Eq. 66) is not done
  here (a module call cannot write its parameters in a pure step): the train step applies
  `force_normalize` to the parameter tree before the forward, which is what the reference's
  training-mode forward does to its stored weight.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *, rngs: nnx.Rngs):
    self.in_channels = in_channels
    self.out_channels = out_channels
    self.kernel = int(kernel)
    shape = ((kernel, kernel, in_channels, out_channels) if kernel else (in_channels, out_channels))
    self.weight = nnx.Param(jax.random.normal(rngs.params(), shape, _F32))

  def __call__(self, x, gain=1.0):
    w = self.weight[...].astype(_F32)
    fan_in = int(np.prod(w.shape[:-1]))
    w = normalize(w) * (jnp.asarray(gain, _F32) / np.float32(np.sqrt(fan_in)))
    w = w.astype(x.dtype)
    if not self.kernel:
      return x @ w
    p = self.kernel // 2
    return jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=[(p, p), (p, p)],
                                        dimension_numbers=_DN)


def _leaf_name(path) -> str:
  """The parameter's own name (last dict key / attribute) in a jax tree path of params."""
  for entry in reversed(path):
    name = getattr(entry, "key", None)
    if name is None:
      name = getattr(entry, "name", None)
    if name is not None and name != "value":
      return str(name)
  return ""


def force_normalize(params):
  """Forced weight normalisation (Eq. 66) as a pure function: every MPConv weight (the leaves named
  `weight`: an EDM2 network has no other) replaced by normalize(weight), the gains untouched.

  The reference does this to its stored weights in every training-mode forward, before using them;
  the EDM2 train step applies it to `state.params` before the loss, so the gradient is taken at the
  normalised weights and the optimizer updates those. Works on an nnx.State or a pure dict."""
  def one(path, leaf):
    if _leaf_name(path) == "weight":
      return normalize(jnp.asarray(leaf, _F32)).astype(leaf.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(one, params)


# ----------------------------------------------------------------------------------------------
# The U-Net.

def _resample(x, mode: str, resample_filter):
  if mode == "keep":
    return x
  if mode == "down":
    return downsample2d(x, resample_filter)
  return upsample2d(x, resample_filter)


class Block(nnx.Module):
  """Encoder / decoder block with optional self-attention (the reference's Figure 21)."""

  def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, flavor="enc",
               resample_mode="keep", resample_filter=(1, 1), attention=False,
               channels_per_head=64, dropout=0.0, res_balance=0.3, attn_balance=0.3,
               clip_act=256.0, rngs: nnx.Rngs):
    if flavor not in ("enc", "dec"):
      raise ValueError(f"flavor {flavor!r}")
    self.in_channels = in_channels
    self.out_channels = out_channels
    self.flavor = flavor
    self.resample_mode = resample_mode
    self.resample_filter = tuple(resample_filter)
    self.num_heads = out_channels // channels_per_head if attention else 0
    self.dropout = float(dropout)
    self.res_balance = float(res_balance)
    self.attn_balance = float(attn_balance)
    self.clip_act = None if clip_act is None else float(clip_act)
    self.emb_gain = nnx.Param(jnp.zeros((), _F32))
    self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, 3,
                            rngs=rngs)
    self.emb_linear = MPConv(emb_channels, out_channels, 0, rngs=rngs)
    self.conv_res1 = MPConv(out_channels, out_channels, 3, rngs=rngs)
    self.conv_skip = nnx.data(MPConv(in_channels, out_channels, 1, rngs=rngs)
                              if in_channels != out_channels else None)
    qkv = proj = None
    if self.num_heads:
      qkv = MPConv(out_channels, out_channels * 3, 1, rngs=rngs)
      proj = MPConv(out_channels, out_channels, 1, rngs=rngs)
    self.attn_qkv, self.attn_proj = nnx.data(qkv), nnx.data(proj)

  def __call__(self, x, emb, *, train: bool = False, rngs=None):
    # Main branch.
    x = _resample(x, self.resample_mode, self.resample_filter)
    if self.flavor == "enc":
      if self.conv_skip is not None:
        x = self.conv_skip(x)
      x = normalize(x, axis=-1)  # pixel norm

    # Residual branch.
    y = self.conv_res0(mp_silu(x))
    c = self.emb_linear(emb, gain=self.emb_gain[...]) + 1
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    y = dropout(y, self.dropout, train=train, rngs=rngs)
    y = self.conv_res1(y)

    # Connect the branches.
    if self.flavor == "dec" and self.conv_skip is not None:
      x = self.conv_skip(x)
    x = mp_sum(x, y, t=self.res_balance)

    # Self-attention: the reference splits its 3C qkv channels as [head, channel, (q, k, v)] and
    # pixel-normalises q, k, v over each head's channels.
    if self.num_heads:
      b, h, w, ch = x.shape
      heads = self.num_heads
      y = self.attn_qkv(x).reshape(b, h * w, heads, ch // heads, 3)
      y = normalize(y, axis=3)
      y = attention(y[..., 0], y[..., 1], y[..., 2]).reshape(b, h, w, ch)
      x = mp_sum(x, self.attn_proj(y), t=self.attn_balance)

    if self.clip_act is not None:
      x = jnp.clip(x, -self.clip_act, self.clip_act)
    return x


class UNet(nnx.Module):
  """The reference's UNet: embedding, encoder, decoder, out_conv with a learned zero-init gain."""

  def __init__(self, *, img_resolution: int, img_channels: int, label_dim: int,
               model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
               channel_mult_noise: int | None = None, channel_mult_emb: int | None = None,
               num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
               label_balance: float = 0.5, concat_balance: float = 0.5,
               emb_fourier: tuple, block_kwargs: dict, rngs: nnx.Rngs):
    cblock = [model_channels * m for m in channel_mult]
    cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
    cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
    if len(emb_fourier[0]) != cnoise:
      raise JaxdiffError(f"model.emb_fourier_freqs has {len(emb_fourier[0])} values, the network "
                         f"needs {cnoise}; remove it to draw them from model.fourier_seed")
    self.label_dim = int(label_dim)
    self.label_balance = float(label_balance)
    self.concat_balance = float(concat_balance)
    self.out_gain = nnx.Param(jnp.zeros((), _F32))

    self.emb_fourier = MPFourier(*emb_fourier)
    self.emb_noise = MPConv(cnoise, cemb, 0, rngs=rngs)
    self.emb_label = nnx.data(MPConv(label_dim, cemb, 0, rngs=rngs) if label_dim else None)

    enc = {}
    cout = img_channels + 1
    for level, channels in enumerate(cblock):
      res = img_resolution >> level
      if level == 0:
        cin = cout
        cout = channels
        enc[f"{res}x{res}_conv"] = MPConv(cin, cout, 3, rngs=rngs)
      else:
        enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                         rngs=rngs, **block_kwargs)
      for idx in range(num_blocks):
        cin = cout
        cout = channels
        enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                               attention=res in attn_resolutions, rngs=rngs,
                                               **block_kwargs)

    dec = {}
    skips = [m.out_channels for m in enc.values()]
    for level, channels in reversed(list(enumerate(cblock))):
      res = img_resolution >> level
      if level == len(cblock) - 1:
        dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, rngs=rngs,
                                        **block_kwargs)
        dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", rngs=rngs, **block_kwargs)
      else:
        dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up",
                                       rngs=rngs, **block_kwargs)
      for idx in range(num_blocks + 1):
        cin = cout + skips.pop()
        cout = channels
        dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                               attention=res in attn_resolutions, rngs=rngs,
                                               **block_kwargs)
    self.out_conv = MPConv(cout, img_channels, 3, rngs=rngs)
    # Forward order = construction order, kept explicitly.
    self.enc_order = tuple(enc)
    self.dec_order = tuple(dec)
    self.enc = nnx.Dict(enc)
    self.dec = nnx.Dict(dec)

  def __call__(self, x, c_noise, class_labels=None, *, train=False, rngs=None):
    dtype = x.dtype
    emb = self.emb_noise(self.emb_fourier(c_noise))
    if self.emb_label is not None:
      labels = (jnp.zeros((x.shape[0], self.label_dim), _F32) if class_labels is None
                else class_labels.astype(_F32))
      emb = mp_sum(emb, self.emb_label(labels * np.float32(np.sqrt(self.label_dim))),
                   t=self.label_balance)
    emb = mp_silu(emb).astype(dtype)

    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
    skips = []
    for name in self.enc_order:
      block = self.enc[name]
      x = block(x) if name.endswith("_conv") else block(x, emb, train=train, rngs=rngs)
      skips.append(x)
    for name in self.dec_order:
      if "block" in name:
        x = mp_cat(x, skips.pop(), t=self.concat_balance)
      x = self.dec[name](x, emb, train=train, rngs=rngs)
    return self.out_conv(x, gain=self.out_gain[...])


class EDM2Net(nnx.Module):
  """The reference Precond's trainable part: `unet` and the uncertainty head `logvar_linear`.

  net(x, c_noise, class_labels, augment_labels, *, train, rngs) -> F [B, H, W, C] float32; with
  `return_logvar=True`, (F, logvar [B] float32), logvar = u(σ) of the EDM2 loss (Eq. 21), a
  function of c_noise only. The preconditioning is EDM's (precond.EDMPrecond, c_noise = ¼ ln σ)."""

  def __init__(self, *, img_resolution: int, img_channels: int, label_dim: int = 0,
               logvar_channels: int = 128, fourier_seed: int = 0,
               emb_fourier: tuple | None = None, logvar_fourier: tuple | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs, **unet_kwargs):
    self.img_channels = img_channels
    self.dtype = jnp.dtype(dtype)
    channel_mult = unet_kwargs.get("channel_mult", (1, 2, 3, 4))
    mc = unet_kwargs.get("model_channels", 192)
    cnm = unet_kwargs.get("channel_mult_noise")
    cnoise = mc * cnm if cnm is not None else mc * channel_mult[0]
    # Two independent streams of the seed: the noise embedding's and the uncertainty head's.
    if emb_fourier is None:
      emb_fourier = fourier_constants(cnoise, seed=2 * int(fourier_seed))
    if logvar_fourier is None:
      logvar_fourier = fourier_constants(logvar_channels, seed=2 * int(fourier_seed) + 1)
    if len(logvar_fourier[0]) != logvar_channels:
      raise JaxdiffError(f"model.logvar_fourier_freqs has {len(logvar_fourier[0])} values, the "
                         f"network needs {logvar_channels}; remove it to draw them from the seed")
    self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels,
                     label_dim=label_dim, emb_fourier=emb_fourier, rngs=rngs, **unet_kwargs)
    self.logvar_fourier = MPFourier(*logvar_fourier)
    self.logvar_linear = MPConv(logvar_channels, 1, 0, rngs=rngs)

  def logvar(self, c_noise):
    """u(σ) [B] float32 from c_noise [B]."""
    return self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1)

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None, return_logvar=False):
    if augment_labels is not None:
      raise JaxdiffError("model.arch 'edm2' takes no augmentation labels; set data.augment_p=0")
    F = self.unet(x.astype(self.dtype), c_noise, class_labels, train=train, rngs=rngs)
    F = F.astype(_F32)
    if return_logvar:
      return F, self.logvar(c_noise)
    return F


# ----------------------------------------------------------------------------------------------
# Builder (registry entry in jaxdiff/nets/__init__.py).

def _pair(g, name):
  f, p = g(f"{name}_fourier_freqs", None), g(f"{name}_fourier_phases", None)
  if (f is None) != (p is None):
    raise JaxdiffError(f"model.{name}_fourier_freqs and model.{name}_fourier_phases go together; "
                       "give both or neither")
  return None if f is None else (tuple(float(v) for v in f), tuple(float(v) for v in p))


def build_edm2(options, *, img_resolution, img_channels, label_dim, rngs):
  """EDM2 from the network options (NetworkSpec.as_dict(), a plain dict); keys left out take the reference's UNet / Precond defaults."""
  g = options.get
  if int(g("out_channels_factor", 1)) != 1:
    raise JaxdiffError("model.arch 'edm2' predicts the image channels only; use precond.name=edm")
  if float(g("label_dropout", 0.0) or 0.0) != 0.0:
    raise JaxdiffError("model.arch 'edm2' has no label dropout (EDM2 guides with a second model); "
                       "set model.label_dropout=0")
  opt = lambda key, default: default if g(key, None) is None else g(key)  # noqa: E731
  block_kwargs = dict(dropout=float(g("dropout", 0.0)),
                      res_balance=float(opt("res_balance", 0.3)),
                      attn_balance=float(opt("attn_balance", 0.3)),
                      channels_per_head=int(opt("channels_per_head", 64)),
                      clip_act=opt("clip_act", 256.0),
                      resample_filter=tuple(opt("resample_filter", (1, 1))))
  cmn, cme = g("channel_mult_noise", None), g("channel_mult_emb", None)
  return EDM2Net(
      img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
      logvar_channels=int(opt("logvar_channels", 128)), fourier_seed=int(opt("fourier_seed", 0)),
      emb_fourier=_pair(g, "emb"), logvar_fourier=_pair(g, "logvar"),
      dtype=jnp.dtype(opt("dtype", "float32")), rngs=rngs,
      model_channels=int(opt("model_channels", 192)),
      channel_mult=tuple(opt("channel_mult", (1, 2, 3, 4))),
      channel_mult_noise=None if cmn is None else int(cmn),
      channel_mult_emb=None if cme is None else int(cme),
      num_blocks=int(opt("num_blocks", 3)),
      attn_resolutions=tuple(opt("attn_resolutions", (16, 8))),
      label_balance=float(opt("label_balance", 0.5)),
      concat_balance=float(opt("concat_balance", 0.5)), block_kwargs=block_kwargs)
