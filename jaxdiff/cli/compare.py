"""`jaxdiff compare --workdir A --workdir B [--num N] [--seed S] [--solver NAME --steps K] [--json]`:
do two models map the same noise to the same image? (Zhang et al., ICML 2024; issue 18.)

Both models sample from the same latents and labels (`Model.sample_with_labels` with one seed gives
every model of one data shape the same per-sample latents, and the same labels for one label count)
and the pairs are scored by `jaxdiff.eval.reproducibility`: the reproducibility score is the share of
pairs whose centred pixel cosine (Pearson correlation of the pixels) exceeds --threshold (0.9 by
default, chosen from the digits data; the paper's 0.6 is for SSCD descriptors), with the mean
similarity and a histogram.

Deterministic samplers only, by default: the property is defined for an ODE solver, so a model whose
configured sampler is stochastic (S_churn > 0, or euler_ancestral) is refused unless
--allow-stochastic. --s-churn X runs B with S_churn = X (against A's ODE: the expected low point);
asking for it counts as allowing it. --solver-b / --steps-b give B its own solver / steps (the same
model at 18 vs 35 steps). --shuffle pairs A's sample i with B's sample π(i), π a random permutation
within each label, i.e. different noise: the chance floor of the score on this data.
"""

_STOCHASTIC_SOLVERS = ("euler_ancestral",)


def add_arguments(parser):
  parser.add_argument("--workdir", action="append", required=True,
                      help="give it twice: the two models A and B")
  parser.add_argument("--num", type=int, default=256, help="pairs of images")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--solver", default=None, help="default: each model's sampler.solver")
  parser.add_argument("--steps", type=int, default=None, help="default: each sampler.num_steps")
  parser.add_argument("--solver-b", default=None, help="B's solver (default: --solver)")
  parser.add_argument("--steps-b", type=int, default=None, help="B's steps (default: --steps)")
  parser.add_argument("--s-churn", type=float, default=None,
                      help="run B with this S_churn (stochastic; euler/heun only)")
  parser.add_argument("--allow-stochastic", action="store_true",
                      help="accept a stochastic configured sampler")
  parser.add_argument("--threshold", type=float, default=None,
                      help="similarity a pair must exceed (default 0.9, centred pixel cosine)")
  parser.add_argument("--bins", type=int, default=20, help="histogram bins over [-1, 1]")
  parser.add_argument("--shuffle", action="store_true",
                      help="pair different latents (same label): the chance floor")
  parser.add_argument("--out", default=None,
                      help="also write an npz: images_a, images_b, labels, similarity")
  parser.add_argument("--batch", type=int, default=256, help="images per compiled call")
  parser.add_argument("--json", action="store_true", help="print exactly one JSON object")


def _settings(model, solver, steps, s_churn):
  """The resolved (solver, steps, s_churn) a model will sample with."""
  kw = model.exp.sampling.kwargs(solver, steps)
  return kw["solver"], kw["num_steps"], float(kw["s_churn"] if s_churn is None else s_churn)


def _check_pair(a, b, paths):
  from jaxdiff.errors import JaxdiffError
  if tuple(a.shape) != tuple(b.shape):
    raise JaxdiffError(f"{paths[0]!r} makes images {tuple(a.shape)}, {paths[1]!r} makes "
                       f"{tuple(b.shape)}; compare models of one data shape")
  if a.label_dim != b.label_dim:
    raise JaxdiffError(f"{paths[0]!r} has {a.label_dim} classes, {paths[1]!r} has "
                       f"{b.label_dim}; compare models with one label count")


def shuffle_pairs(labels, num: int, seed: int):
  """A permutation of range(num) that keeps labels (None: any), seeded: the different-noise floor."""
  import numpy as np
  rng = np.random.default_rng(seed)
  perm = np.arange(num)
  groups = [np.arange(num)] if labels is None else [np.flatnonzero(labels == c)
                                                    for c in np.unique(labels)]
  for idx in groups:
    perm[idx] = idx[rng.permutation(idx.size)]
  return perm


def run(args, extra):
  import json
  import os
  import sys

  import numpy as np

  from jaxdiff.errors import JaxdiffError
  from jaxdiff.eval.reproducibility import PIXEL_THRESHOLD, reproducibility
  from jaxdiff.model import load
  if len(args.workdir) != 2:
    raise JaxdiffError(f"give --workdir exactly twice (models A and B), got {len(args.workdir)}")
  if args.num < 1:
    raise JaxdiffError(f"--num must be at least 1 (got {args.num})")
  if args.bins < 1:
    raise JaxdiffError(f"--bins must be at least 1 (got {args.bins})")
  if args.s_churn is not None and args.s_churn < 0:
    raise JaxdiffError(f"--s-churn must be >= 0 (got {args.s_churn})")
  threshold = PIXEL_THRESHOLD if args.threshold is None else args.threshold
  if not -1.0 <= threshold <= 1.0:
    raise JaxdiffError(f"--threshold must be in [-1, 1] (got {threshold})")
  if args.out is not None:
    if not args.out.endswith(".npz"):
      raise JaxdiffError(f"--out {args.out!r} must end in .npz")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.access(out_dir, os.W_OK):
      raise JaxdiffError(f"cannot write {args.out!r}: directory {out_dir!r} is not writable")
  for w in args.workdir:
    if not os.path.isdir(w):
      raise JaxdiffError(f"workdir {w!r} does not exist; train it first with `jaxdiff train`")
  model_a, model_b = load(args.workdir[0]), load(args.workdir[1])
  _check_pair(model_a, model_b, args.workdir)

  solver_b = args.solver_b or args.solver
  steps_b = args.steps_b or args.steps
  set_a = _settings(model_a, args.solver, args.steps, None)
  set_b = _settings(model_b, solver_b, steps_b, args.s_churn)
  for name, (solver, _, s_churn), asked in (("A", set_a, False),
                                            ("B", set_b, args.s_churn is not None)):
    stochastic = s_churn > 0 or solver in _STOCHASTIC_SOLVERS
    if stochastic and not (asked or args.allow_stochastic):
      raise JaxdiffError(f"model {name} samples stochastically ({solver}, S_churn={s_churn:g}); "
                         "reproducibility is defined for a deterministic sampler: pass "
                         "--allow-stochastic to measure it anyway")
  if args.s_churn is not None:
    # B's configured S_churn, replaced on the loaded copy only (nothing is written to its workdir).
    import dataclasses
    exp = model_b.exp
    model_b.exp = dataclasses.replace(
        exp, sampling=dataclasses.replace(exp.sampling, s_churn=float(args.s_churn)))

  images_a, labels = model_a.sample_with_labels(args.num, seed=args.seed, solver=set_a[0],
                                                steps=set_a[1], batch_size=args.batch)
  images_b, labels_b = model_b.sample_with_labels(args.num, seed=args.seed, solver=set_b[0],
                                                  steps=set_b[1], batch_size=args.batch)
  assert (labels is None and labels_b is None) or np.array_equal(labels, labels_b)
  if args.shuffle:
    images_b = images_b[shuffle_pairs(labels, args.num, args.seed)]
  result = reproducibility(images_a, images_b, threshold=threshold, bins=args.bins)

  if args.out is not None:
    arrays = dict(images_a=images_a, images_b=images_b, similarity=result.similarity)
    if labels is not None:
      arrays["labels"] = labels.astype(np.int32)
    from jaxdiff.fileio import atomic_savez
    atomic_savez(args.out, **arrays)

  report = {"workdirs": list(args.workdir), "num": args.num, "seed": args.seed,
            "solver": [set_a[0], set_b[0]], "steps": [set_a[1], set_b[1]],
            "s_churn": [set_a[2], set_b[2]], "shuffle": bool(args.shuffle),
            "similarity": "centred_pixel_cosine", **result.to_dict()}
  if args.json:
    print(json.dumps(report))
    return 0
  print(f"reproducibility score {result.score:.4f}: {int(round(result.score * result.num))} of "
        f"{result.num} pairs with centred pixel cosine > {threshold:g}"
        + (" (shuffled latents: the chance floor)" if args.shuffle else ""))
  print(f"mean similarity {result.mean:.4f}; A {set_a[0]} {set_a[1]} steps, B {set_b[0]} "
        f"{set_b[1]} steps" + (f" S_churn {set_b[2]:g}" if set_b[2] else ""))
  width = max(1, int(result.hist.max()))
  for lo, hi, count in zip(result.edges[:-1], result.edges[1:], result.hist):
    print(f"  [{lo:+.2f}, {hi:+.2f}) {int(count):6d} {'#' * int(round(40 * count / width))}")
  print(f"jaxdiff compare: {args.workdir[0]} vs {args.workdir[1]}", file=sys.stderr)
  return 0
