"""Power-function EMA and its post-hoc reconstruction (Karras et al., CVPR 2024, Sec. 3 and App. C;
the reference is NVlabs/edm2 training/phema.py).

A power-function EMA at training time t (in images) averages the weights θ(τ) with the profile
p(τ) = (γ+1)·τ^γ / t^(γ+1) on [0, t]; its relative width is σ_rel = √((γ+1)/((γ+2)²(γ+3))) (Eq. 123).
Tracked during training with β_t = (1 − Δt/t)^(γ+1) (Eq. 127), t the images seen after the step
and Δt the batch: the product of the β's makes the discrete average exactly the profile's mass
over each step's interval. Snapshots of a few tracked widths, kept every N images, are combined
post hoc into the EMA of any other width (Algorithm 3): least squares over the profiles'
inner products, solved in float64 with the columns normalised to sum to one.

Host-side (NumPy float64) except `phema_update`, which is traceable and runs inside the step.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import JaxdiffError

# σ_rel ranges the reference accepts (reconstruct_phema.parse_std_list): 0 < σ_rel < 0.289;
# σ_rel(γ = 0), the flat average, is 0.2887.
STD_MAX = 0.289


# ----------------------------------------------------------------------------------------------
# Width <-> exponent.

def exp_to_std(gamma):
  """σ_rel of the exponent γ (Eq. 123), float64, shaped like γ."""
  g = np.float64(gamma)
  return np.sqrt((g + 1) / (g + 2) ** 2 / (g + 3))


def _check_std(std, what="std"):
  s = np.asarray(std, np.float64)
  bad = s[~((s > 0) & (s < STD_MAX))] if s.size else s
  if bad.size:
    raise JaxdiffError(f"{what} {float(bad.ravel()[0]):g} is outside (0, {STD_MAX}); a "
                       "power-function EMA has a relative width σ_rel in that range")
  return s


def std_to_exp(std):
  """The exponent γ of the relative width σ_rel (Eq. 126, Algorithm 2): the largest real root of
  γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²) = 0. Float64, shaped like std."""
  s = _check_std(std)
  tmp = s.ravel() ** -2
  g = [np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max() for t in tmp]
  return np.float64(g).reshape(s.shape)


def power_function_beta(std, t_next, t_delta):
  """β = (1 − Δt/t_next)^(γ+1) for the width `std` (Eq. 127); NumPy or jax t_next."""
  gamma = std_to_exp(std)
  if isinstance(t_next, jax.Array):
    return (1 - jnp.asarray(t_delta, jnp.float32) / t_next) ** jnp.float32(gamma + 1)
  return (1 - np.float64(t_delta) / np.float64(t_next)) ** (gamma + 1)


def phema_update(emas: Sequence, params, stds: Sequence[float], images_after, batch_size: int):
  """One power-function EMA step of every tracked width (traceable): ema ← lerp(ema, params, 1−β),
  β = (1 − batch/images_after)^(γ+1), `images_after` the images seen after this step (so the first
  step, images_after = batch, sets β = 0: the EMA starts at the weights). Returns a tuple."""
  t = jnp.asarray(images_after, jnp.float32)
  out = []
  for std, ema in zip(stds, emas):
    beta = power_function_beta(float(std), t, batch_size)
    out.append(jax.tree.map(lambda e, p: p + (e - p) * beta.astype(e.dtype), ema, params))
  return tuple(out)


# ----------------------------------------------------------------------------------------------
# Snapshot bookkeeping.

def snapshot_due(images_after, every_images: int) -> bool:
  """Whether the step ending at `images_after` images writes snapshots (every N images)."""
  return every_images > 0 and images_after > 0 and images_after % every_images == 0


def snapshot_times(total_images: int, every_images: int, batch_size: int) -> list[int]:
  """Images-seen values at which a run of `total_images` writes snapshots; refuses an `every` that
  no step ends on (the reference asserts snapshot_nimg % batch_size == 0)."""
  if every_images <= 0:
    return []
  if every_images % batch_size:
    raise JaxdiffError(f"edm2.snapshot_every_images={every_images} is not a multiple of the "
                       f"batch {batch_size}; choose a multiple so that a step ends on every snapshot")
  return list(range(every_images, total_images + 1, every_images))


def snapshot_name(images: int, std: float) -> str:
  """'phema-{images:012d}-{std:.3f}': images exact (the reference writes kimg and rounds back)."""
  return f"phema-{int(images):012d}-{float(std):.3f}"


_NAME = re.compile(r"phema-(\d{12})-(\d+\.\d{3})")


def parse_snapshot_name(name: str) -> tuple[int, float] | None:
  """(images, std) of a `snapshot_name`, or None for another name."""
  m = _NAME.fullmatch(name)
  return None if m is None else (int(m.group(1)), float(m.group(2)))


def select_snapshots(snaps: Sequence[tuple[int, float]], out_images: int | None = None):
  """The (images, std) snapshots usable for a reconstruction at `out_images` (default the latest):
  those with 0 < images ≤ out_images, sorted. Raises when there are none, or when out_images is
  not a snapshot time (as the reference)."""
  snaps = sorted((int(i), float(s)) for i, s in snaps)
  if not snaps:
    raise JaxdiffError("no power-function EMA snapshots; train an EDM2 config (model.arch='edm2') "
                       "with edm2.snapshot_every_images > 0")
  if out_images is None:
    out_images = max(i for i, _ in snaps)
  elif not any(i == out_images for i, _ in snaps):
    raise JaxdiffError(f"no snapshot at {out_images} images; reconstruct at one of "
                       f"{sorted({i for i, _ in snaps})[-4:]} (the latest shown)")
  use = [(i, s) for i, s in snaps if 0 < i <= out_images]
  return use, int(out_images)


# ----------------------------------------------------------------------------------------------
# Post-hoc reconstruction (Algorithm 3).

def power_function_correlation(a_ofs, a_std, b_ofs, b_std):
  """⟨p_a, p_b⟩ = ∫ p_a p_b dτ of two power-function profiles ending at a_ofs, b_ofs (Eq. 151)."""
  a_exp, b_exp = std_to_exp(a_std), std_to_exp(b_std)
  a_ofs, b_ofs = np.float64(a_ofs), np.float64(b_ofs)
  t_ratio = a_ofs / b_ofs
  t_exp = np.where(a_ofs < b_ofs, b_exp, -a_exp)
  t_max = np.maximum(a_ofs, b_ofs)
  num = (a_exp + 1) * (b_exp + 1) * t_ratio ** t_exp
  den = (a_exp + b_exp + 1) * t_max
  return num / den


def _grams(in_ofs, in_std, out_ofs, out_std):
  in_ofs, in_std = np.broadcast_arrays(np.float64(in_ofs), np.float64(in_std))
  out_ofs, out_std = np.broadcast_arrays(np.float64(out_ofs), np.float64(out_std))
  _check_std(in_std, "snapshot std")
  _check_std(out_std, "std")
  if np.any(in_ofs <= 0) or np.any(out_ofs <= 0):
    raise JaxdiffError("snapshot and output times must be > 0 images")
  rv = lambda x: x.reshape(-1, 1)  # noqa: E731
  cv = lambda x: x.reshape(1, -1)  # noqa: E731
  A = power_function_correlation(rv(in_ofs), rv(in_std), cv(in_ofs), cv(in_std))
  B = power_function_correlation(rv(in_ofs), rv(in_std), cv(out_ofs), cv(out_std))
  C = power_function_correlation(out_ofs.ravel(), out_std.ravel(), out_ofs.ravel(), out_std.ravel())
  return A, B, C


def reconstruction_error(in_ofs, in_std, out_ofs, out_std, coefficients) -> np.ndarray:
  """Relative L2 distance ‖Σ_i x_ij p_i − q_j‖ / ‖q_j‖ between the combined snapshot profiles and
  each target profile q_j, from the closed-form inner products: how well the snapshots can
  represent the target at all (0 = exactly). [out] float64."""
  A, B, C = _grams(in_ofs, in_std, out_ofs, out_std)
  X = np.asarray(coefficients, np.float64)
  sq = np.einsum("io,ij,jo->o", X, A, X) - 2 * np.einsum("io,io->o", X, B) + C
  return np.sqrt(np.maximum(sq, 0) / C)


def solve_coefficients(in_ofs, in_std, out_ofs, out_std, max_error: float | None = None):
  """[len(in), len(out)] float64 coefficients X with EMA(out_j) ≈ Σ_i X_ij · snapshot_i: the
  reference's solve_posthoc_coefficients (solve A X = B over the profiles' inner products, then
  columns normalised to sum to 1). Offsets in images (any unit, the same for both).

  With `max_error`, refuses a target whose profile the snapshots reproduce worse than that
  (`reconstruction_error`), e.g. a width far narrower than any snapshot's.
  """
  A, B, _ = _grams(in_ofs, in_std, out_ofs, out_std)
  try:
    X = np.linalg.solve(A, B)
  except np.linalg.LinAlgError:
    raise JaxdiffError("the snapshots' profiles are linearly dependent (a snapshot listed twice?); "
                       "pass each (time, std) once") from None
  X = X / np.sum(X, axis=0, keepdims=True)
  if max_error is not None:
    err = reconstruction_error(in_ofs, in_std, out_ofs, out_std, X)
    worst = int(np.argmax(err))
    if err[worst] > max_error:
      s = float(np.broadcast_arrays(np.float64(out_ofs), np.float64(out_std))[1].ravel()[worst])
      raise JaxdiffError(f"std {s:g} cannot be reconstructed from the snapshots (profile error "
                         f"{err[worst]:.3g} > {max_error:g}); choose a std nearer the tracked ones "
                         f"({', '.join(f'{v:g}' for v in sorted(set(np.ravel(in_std))))})")
  return X


def reconstruct(snapshots: Sequence, coefficients) -> list:
  """Weighted sums of snapshot pytrees: output j = Σ_i coefficients[i, j] · snapshots[i],
  accumulated in float64 on the host, returned in each leaf's dtype. [len(out)] pytrees."""
  X = np.asarray(coefficients, np.float64)
  if X.ndim != 2 or X.shape[0] != len(snapshots):
    raise ValueError(f"coefficients {X.shape} do not fit {len(snapshots)} snapshots")
  leaves0, treedef = jax.tree.flatten(snapshots[0])
  flat = [jax.tree.leaves(s) for s in snapshots]
  outs = []
  for j in range(X.shape[1]):
    acc = [np.zeros(np.shape(l), np.float64) for l in leaves0]
    for i, leaves in enumerate(flat):
      for a, l in zip(acc, leaves):
        a += X[i, j] * np.asarray(l, np.float64)
    outs.append(jax.tree.unflatten(treedef, [a.astype(np.asarray(l).dtype)
                                             for a, l in zip(acc, leaves0)]))
  return outs
