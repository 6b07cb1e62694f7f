"""Unified vs separate vs multi-stage networks on the digits, at equal training FLOPs.

  unified     one DDPM++-style U-Net (width W) for every σ
  separate    K such U-Nets, net k trained only on stage k's σ (nothing shared)
  multistage  shared embedding + encoder (width W), K decoders (widths --decoders)

Every variant trains with one stage per step drawn with its probability under the EDM log-normal
(unified: one stage). Each step's cost is 3 × forward FLOPs (XLA cost analysis) × batch, counted
for the stage actually drawn; a variant trains until it has spent the unified run's budget. Quality
is the digits classifier's accuracy (share of class-conditional samples classified as their class)
and FDD, from Heun with 18 steps, measured at fractions of the budget.

  python bench/multistage_experiment.py --variant unified --seeds 0 1 2 --out /tmp/ms/unified.json
  python bench/multistage_experiment.py --report /tmp/ms/*.json     # markdown table
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import build, losses, precond as precond_lib, sampling
from jaxdiff.images import to_uint8
from jaxdiff.multistage import stages
from jaxdiff.multistage.step import (MultiStageConfig, make_multistage_optimizer,
                                     multistage_train_step)
from jaxdiff.nets.multistage import MultiStageUNet, c_noise_boundaries, stage_of
from jaxdiff.train.state import init_state
from jaxdiff.train.step import StepConfig


class SeparateUNets(nnx.Module):
  """K independent full U-Nets named decoder_k, so the multi-stage step trains them unchanged."""

  def __init__(self, nets, c_noise_bounds):
    self.num_stages = len(nets)
    self.c_noise_boundaries = tuple(c_noise_bounds)
    for k, net in enumerate(nets):
      setattr(self, f"decoder_{k}", net)

  def __call__(self, x, c_noise, class_labels=None, augment_labels=None, *, train=False,
               rngs=None, stage=None):
    if stage is None:
      stage = stage_of(c_noise[:1], self.c_noise_boundaries)[0]
    nets = [getattr(self, f"decoder_{k}") for k in range(self.num_stages)]
    if isinstance(stage, int):
      return nets[stage](x, c_noise, class_labels, augment_labels, train=train, rngs=rngs)
    pieces = [nnx.split(n) for n in nets]
    key = rngs.dropout() if (train and rngs is not None) else None

    def branch(k):
      def run(states, x, c_noise, class_labels, key):
        r = nnx.Rngs(dropout=key) if key is not None else None
        return nnx.merge(pieces[k][0], states[k])(x, c_noise, class_labels, None, train=train,
                                                  rngs=r)
      return run
    return jax.lax.switch(stage, [branch(k) for k in range(self.num_stages)],
                          tuple(s for _, s in pieces), x, c_noise, class_labels, key)


def base_config(args):
  from jaxdiff.config import load_config
  cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py"))
  cfg.unlock()
  cfg.training.batch_size = args.batch
  cfg.training.lr = args.lr
  cfg.training.lr_rampup_images = args.batch * 50
  cfg.training.ema_halflife_images = int(args.batch * args.steps // 10)
  return cfg


def make_net(args, variant, boundaries, seed):
  common = dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=10,
                model_channels=args.width, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(4,), dropout=0.1, num_groups=4)
  cb = c_noise_boundaries(boundaries)
  rngs = nnx.Rngs(params=seed)
  if variant == "unified":
    return MultiStageUNet(decoder_channels=(args.width,), c_noise_boundaries=(), rngs=rngs,
                          **common)
  if variant == "multistage":
    return MultiStageUNet(decoder_channels=tuple(args.decoders), c_noise_boundaries=cb,
                          rngs=rngs, **common)
  nets = [MultiStageUNet(decoder_channels=(args.width,), c_noise_boundaries=(), rngs=rngs,
                         **common) for _ in range(len(boundaries) + 1)]
  return SeparateUNets(nets, cb)


def forward_flops(graphdef, params, stage) -> float:
  """FLOPs of one network call on one image through `stage` (static), per XLA."""
  def fn(params, x, c, labels):
    return nnx.merge(graphdef, params)(x, c, labels, stage=stage)
  args = (params, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32),
          jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1, 10), jnp.float32))
  cost = jax.jit(fn).lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def evaluate(graphdef, params, precond, boundaries, num, seed):
  from jaxdiff.eval import digits_metric
  labels = np.arange(num) % 10
  keys = jax.random.split(jax.random.PRNGKey(10_000 + seed), num)
  images = _sample(graphdef, precond, params, keys, jnp.asarray(labels))
  u8 = to_uint8(np.asarray(images))
  return dict(accuracy=digits_metric.accuracy(u8, labels), fdd=digits_metric.fdd(u8))


_SAMPLERS = {}


def _sample(graphdef, precond, params, keys, labels):
  key = (graphdef, precond)
  if key not in _SAMPLERS:
    def fn(params, keys, labels):
      latents = jax.vmap(lambda k: jax.random.normal(k, (8, 8, 1)))(keys)
      cl = jax.nn.one_hot(labels, 10)

      def denoise(x, sigma):  # the network picks the stage of σ (lax.switch inside)
        def net_fn(x_in, c_noise, class_labels=None):
          return nnx.merge(graphdef, params)(x_in, c_noise, class_labels)
        return precond_lib.denoise(precond, net_fn, x, sigma, class_labels=cl)
      return sampling.sample(denoise, latents, solver="heun", num_steps=18)
    _SAMPLERS[key] = jax.jit(fn)
  return _SAMPLERS[key](params, keys, labels)


def run_variant(args):
  cfg = base_config(args)
  variant = args.variant
  boundaries = () if variant == "unified" else tuple(args.boundaries)
  loss = losses.EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
  precond = build.make_precond(cfg)
  probs = stages.stage_probabilities(loss, boundaries) if boundaries else np.ones(1)
  ms = MultiStageConfig(boundaries, tuple(float(p) for p in probs), "stochastic", ())
  optimizer = make_multistage_optimizer(build.optimizer_spec(cfg))

  # Budget: the unified network's cost for args.steps steps.
  uni_g, uni_p = nnx.split(make_net(args, "unified", (), 0), nnx.Param)
  budget = 3 * args.batch * args.steps * forward_flops(uni_g, jax.eval_shape(lambda: uni_p), 0)
  graphdef, params0 = nnx.split(make_net(args, variant, boundaries, 0), nnx.Param)
  flops = [forward_flops(graphdef, jax.eval_shape(lambda: params0), k) for k in range(len(probs))]
  step_cfg = StepConfig(graphdef=graphdef, precond=precond, loss=loss, optimizer=optimizer,
                        label_dim=10, batch_size=args.batch,
                        ema_halflife_images=cfg.training.ema_halflife_images,
                        ema_rampup_ratio=0.05)
  step_fn = jax.jit(lambda s, b: multistage_train_step(step_cfg, ms, s, b), donate_argnums=0)
  source = build.make_source(cfg)
  n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params0)))
  out = dict(variant=variant, boundaries=list(boundaries), stage_probabilities=list(probs),
             forward_gflops_per_stage=[f / 1e9 for f in flops], params=n_params,
             budget_gflops=budget / 1e9, runs=[], args=vars(args))
  checkpoints = [budget * f for f in args.eval_at]
  for seed in args.seeds:
    _, params = nnx.split(make_net(args, variant, boundaries, seed), nnx.Param)
    state = init_state(params, optimizer, seed)
    rng = np.random.default_rng(seed)
    spent, step, evals, t0 = 0.0, 0, [], time.time()
    stage_counts = np.zeros(len(probs), np.int64)
    next_eval = 0
    while next_eval < len(checkpoints):
      idx = rng.integers(0, len(source), args.batch)
      images, labels = source.get(idx)
      state, m = step_fn(state, {"image": images, "label": labels})
      k = int(m["stage"])
      stage_counts[k] += 1
      spent += 3 * args.batch * flops[k]
      step += 1
      if spent >= checkpoints[next_eval]:
        q = evaluate(graphdef, state.ema, precond, boundaries, args.num_samples, seed)
        evals.append(dict(train_gflops=spent / 1e9, steps=step, **q))
        print(json.dumps(dict(variant=variant, seed=seed, **evals[-1],
                              seconds=round(time.time() - t0))), file=sys.stderr, flush=True)
        next_eval += 1
    out["runs"].append(dict(seed=seed, evals=evals, stage_counts=stage_counts.tolist(),
                            seconds=time.time() - t0))
    with open(args.out, "w") as f:
      json.dump(out, f)
  return out


def _merge(paths):
  """One result per (row name, boundaries, budget): the runs of several files (e.g. one process
  per seed) are pooled, a seed measured twice counted once."""
  merged = {}
  for p in sorted(paths):
    with open(p) as f:
      r = json.load(f)
    name = r["args"].get("name") or r["variant"]
    key = (name, tuple(r["boundaries"]), r["args"]["steps"], tuple(r["args"]["eval_at"]))
    if key not in merged:
      merged[key] = dict(r, runs=[])
    seen = {run["seed"] for run in merged[key]["runs"]}
    merged[key]["runs"] += [run for run in r["runs"] if run["seed"] not in seen]
  return merged


def report(paths):
  rows = []
  for (name, *_), r in _merge(paths).items():
    for i, frac in enumerate(r["args"]["eval_at"]):
      acc = [run["evals"][i]["accuracy"] for run in r["runs"] if len(run["evals"]) > i]
      fdd = [run["evals"][i]["fdd"] for run in r["runs"] if len(run["evals"]) > i]
      steps = [run["evals"][i]["steps"] for run in r["runs"] if len(run["evals"]) > i]
      if not acc:
        continue
      rows.append(f"| {name} | {', '.join(f'{b:.3g}' for b in r['boundaries']) or '—'} | "
                  f"{r['params'] / 1e3:.1f} k | {r['budget_gflops'] * frac:.0f} | "
                  f"{np.mean(steps):.0f} | {len(acc)} | {np.mean(acc):.3f} ± {np.std(acc):.3f} | "
                  f"{np.mean(fdd):.2f} ± {np.std(fdd):.2f} |")
  print("| variant | boundaries σ | params | train GFLOPs | steps | seeds | accuracy | FDD |")
  print("|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))
  print()
  print("| variant | seed | stage counts (steps per stage) |")
  print("|---|---|---|")
  for (name, *_), r in _merge(paths).items():
    for run in sorted(r["runs"], key=lambda run: run["seed"]):
      print(f"| {name} | {run['seed']} | {' / '.join(str(c) for c in run['stage_counts'])} |")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--variant", choices=("unified", "separate", "multistage"))
  ap.add_argument("--name", default=None, help="row name in the report")
  ap.add_argument("--boundaries", type=float, nargs="*", default=(1.536, 37.53))
  ap.add_argument("--width", type=int, default=16)
  ap.add_argument("--decoders", type=int, nargs="*", default=(24, 16, 4))
  ap.add_argument("--steps", type=int, default=600, help="unified steps = the FLOP budget")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=2e-3)
  ap.add_argument("--seeds", type=int, nargs="*", default=(0, 1, 2))
  ap.add_argument("--eval-at", type=float, nargs="*", default=(0.5, 1.0), dest="eval_at")
  ap.add_argument("--num-samples", type=int, default=500, dest="num_samples")
  ap.add_argument("--out", default=None)
  ap.add_argument("--report", nargs="*", default=None)
  args = ap.parse_args()
  if args.report is not None:
    report([p for pat in args.report for p in glob.glob(pat)])
    return 0
  if not args.variant or not args.out:
    ap.error("--variant and --out are required (or --report FILES)")
  run_variant(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
