"""Issue 12 on the digits: the EDM recipe against the EDM2 recipe at equal training images, a sweep
of post-hoc EMA widths, and autoguidance against classifier-free guidance against none.

  python bench/edm2_digits.py --root /work/runs/rp --train --seeds 0 1 2 \\
      --json bench/results/edm2_digits.json --table docs/edm2_digits_table.md \\
      --phema-png docs/img/edm2_phema.png --guidance-png docs/img/edm2_guidance.png
  python bench/edm2_digits.py --root /tmp/x --dry-run      # the trainings it would run

Workdirs under --root (the names bench/reproducibility.py uses for the same runs):
  base-s<k>    configs/digits.py (EDM: U-Net, EDM loss, Adam, EMA half-life), seed k
  edm2-s<k>    configs/digits_edm2.py (magnitude-preserving U-Net, learned-u loss, inverse-sqrt lr,
               power EMA snapshots), seed k; same steps and batch, so equal training images
  edm2xs-s0    the autoguidance guide: EDM2 at model_channels 16 trained 400 steps (1/4)
  edm2unc-s0   the CFG guide the EDM2 way: an unconditional EDM2 model at model_channels 16, full
               length (NVlabs/edm2 guides with a separate unconditional network, no label dropout)

Every cell: 1,000 class-conditional samples (labels cycling 0..9, sampling seed 0, so the same
latents everywhere), scored by the SVC of bench/digits_quality.py (accuracy) and the FDD of
jaxdiff.eval.digits_metric. Sampler: iPNDM with 10 steps (10 NFE; configs/digits.py's default,
as good as Heun-35 there, docs/samplers.md) for every model; guided cells call two networks per
step, so the unguided rows are also given at 20 steps (20 evaluations of one network), the
"equal NFE" comparison.

Post-hoc widths are reconstructed in memory (jaxdiff.cli.phema.reconstruct_run, what `jaxdiff
phema` writes) at the end of training; a width the snapshots cannot represent (profile error above
0.1) is recorded as refused. The best width and the best guidance weights are chosen by the mean
FDD over the seeds (on the evaluation samples themselves: an optimistic choice, as in the paper's
sweeps). CPU-heavy: the lead runs it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

DIGITS = os.path.join(ROOT, "configs", "digits.py")
EDM2 = os.path.join(ROOT, "configs", "digits_edm2.py")
STDS = (0.02, 0.03, 0.05, 0.07, 0.10, 0.15, 0.20)
WEIGHTS = (1.0, 1.3, 1.6, 2.0, 2.5)
# configs/digits.py's sampler (docs/samplers.md: iPNDM-10 matches Heun-35 there), for every model.
SOLVER, STEPS = "ipndm", 10
GUIDES = {"autoguidance": "edm2xs-s0", "cfg": "edm2unc-s0"}


def trainings(seeds) -> dict[str, list[str]]:
  """workdir name -> `jaxdiff train` arguments (less --workdir)."""
  runs = {}
  for s in seeds:
    # 1,600 steps, digits_edm2.py's length (configs/digits.py's default is now 1,200)
    runs[f"base-s{s}"] = ["--config", DIGITS, f"--config.training.seed={s}",
                          "--config.training.steps=1600"]
    runs[f"edm2-s{s}"] = ["--config", EDM2, f"--config.training.seed={s}"]
  runs["edm2xs-s0"] = ["--config", EDM2, "--config.training.seed=0",
                       "--config.model.model_channels=16", "--config.training.steps=400"]
  runs["edm2unc-s0"] = ["--config", EDM2, "--config.training.seed=0",
                        "--config.model.model_channels=16", "--config.data.num_classes=0"]
  return runs


def train_missing(root, seeds, dry_run):
  for name, argv in trainings(seeds).items():
    workdir = os.path.join(root, name)
    if os.path.isfile(os.path.join(workdir, "train_summary.json")):
      continue
    cmd = [sys.executable, "-m", "jaxdiff", "train", "--workdir", workdir, *argv]
    print(" ".join(cmd), flush=True)
    if not dry_run:
      subprocess.run(cmd, check=True, cwd=ROOT)


class Scorer:
  """accuracy (independent SVC) and FDD of a model's 1,000 samples at a fixed seed."""

  def __init__(self, num, seed, solver=SOLVER):
    from digits_quality import real_digits_classifier
    self.num, self.seed, self.solver = num, seed, solver
    self.clf, self.real_accuracy = real_digits_classifier()

  def __call__(self, model, steps=STEPS, guidance=None) -> dict:
    from digits_quality import sample_accuracy

    from jaxdiff.eval import digits_metric
    images, labels = model.sample_with_labels(self.num, seed=self.seed, solver=self.solver,
                                              steps=steps, guidance=guidance)
    return dict(accuracy=sample_accuracy(images, labels, self.clf),
                fdd=float(digits_metric.fdd(images)), steps=steps)


def phema_model(workdir, std):
  import jax
  import jax.numpy as jnp

  from jaxdiff.cli.phema import reconstruct_run
  from jaxdiff.model import Model
  exp, graphdef, weights, summary = reconstruct_run(workdir, std, max_error=0.1)
  return Model(exp, graphdef, jax.tree.map(jnp.asarray, weights)), summary


def _best(rows, key):
  """The key value whose rows have the lowest mean FDD."""
  import numpy as np
  values = sorted({r[key] for r in rows})
  return min(values, key=lambda v: np.mean([r["fdd"] for r in rows if r[key] == v]))


def run(args) -> dict:
  import jaxdiff
  from jaxdiff.errors import JaxdiffError
  score = Scorer(args.num, args.sample_seed)
  wd = lambda name: os.path.join(args.root, name)  # noqa: E731
  out = dict(num=args.num, sample_seed=args.sample_seed, real_accuracy=score.real_accuracy,
             recipe=[], phema=[], guidance=[])
  # 1. Recipes at equal training images; EDM2 at its first tracked width, 0.05 (no search).
  for s in args.seeds:
    for recipe, name in (("edm", f"base-s{s}"), ("edm2", f"edm2-s{s}")):
      model = jaxdiff.load(wd(name))
      for steps in (STEPS, 2 * STEPS):
        out["recipe"].append(dict(recipe=recipe, seed=s, workdir=name, ema="as trained",
                                  **score(model, steps)))
        print(out["recipe"][-1], flush=True)
  # 2. Post-hoc EMA widths.
  for s in args.seeds:
    for std in args.stds:
      try:
        model, summary = phema_model(wd(f"edm2-s{s}"), std)
      except JaxdiffError as e:
        out["phema"].append(dict(seed=s, std=std, refused=str(e)))
        continue
      out["phema"].append(dict(seed=s, std=std, profile_error=summary["profile_error"],
                               **score(model)))
      print(out["phema"][-1], flush=True)
  ok = [r for r in out["phema"] if "fdd" in r]
  best_std = _best(ok, "std")
  out["best_std"] = best_std
  # 3. Guidance of the main model at its best width, every seed.
  for s in args.seeds:
    main, _ = phema_model(wd(f"edm2-s{s}"), best_std)
    for kind, guide_name in GUIDES.items():
      guided = main.with_guide(jaxdiff.load(wd(guide_name)))
      for w in args.weights:
        out["guidance"].append(dict(kind=kind, seed=s, guide=guide_name, weight=w,
                                    **score(guided, guidance=w)))
        print(out["guidance"][-1], flush=True)
  out["best_weight"] = {k: _best([r for r in out["guidance"] if r["kind"] == k], "weight")
                        for k in GUIDES}
  return out


def _mean_std(rows, key):
  import numpy as np
  v = np.array([r[key] for r in rows])
  return f"{v.mean():.3f} ± {v.std():.3f}"


def table(res) -> str:
  lines = [f"{res['num']:,} samples per cell (sampling seed {res['sample_seed']}), mean ± std over "
           f"{len({r['seed'] for r in res['recipe']})} training seeds; SVC accuracy of real "
           f"held-out digits {res['real_accuracy']:.3f}.", "",
           "| row | sampler (network evaluations) | SVC accuracy | FDD |", "|---|---|---|---|"]

  def row(label, rows, evals):
    lines.append(f"| {label} | {evals} | {_mean_std(rows, 'accuracy')} | {_mean_std(rows, 'fdd')} |")
  for recipe, label in (("edm", "EDM recipe (configs/digits.py)"),
                        ("edm2", "EDM2 recipe, tracked EMA σ_rel 0.05")):
    for steps in (STEPS, 2 * STEPS):
      row(label, [r for r in res["recipe"] if r["recipe"] == recipe and r["steps"] == steps],
          f"{SOLVER} {steps} steps ({steps})")
  best = res["best_std"]
  row(f"EDM2, post-hoc EMA σ_rel {best:g} (best)",
      [r for r in res["phema"] if r.get("std") == best and "fdd" in r], f"{SOLVER} {STEPS} steps")
  for kind, w in res["best_weight"].items():
    rows = [r for r in res["guidance"] if r["kind"] == kind and r["weight"] == w]
    row(f"EDM2 σ_rel {best:g} + {kind} w = {w:g} ({GUIDES[kind]})", rows,
        f"{SOLVER} {STEPS} steps ({STEPS} × 2 networks)")
  lines += ["", f"Post-hoc EMA sweep (EDM2, {SOLVER} {STEPS}):", "",
            "| σ_rel | profile error | SVC accuracy | FDD |", "|---|---|---|---|"]
  for std in sorted({r["std"] for r in res["phema"]}):
    rows = [r for r in res["phema"] if r["std"] == std and "fdd" in r]
    if not rows:
      lines.append(f"| {std:g} | refused | | |")
      continue
    err = max(r["profile_error"] for r in rows)
    lines.append(f"| {std:g} | {err:.1e} | {_mean_std(rows, 'accuracy')} | "
                 f"{_mean_std(rows, 'fdd')} |")
  lines += ["", f"Guidance sweep (EDM2 at the best width, {SOLVER} {STEPS}):", "",
            "| guidance | w | SVC accuracy | FDD |", "|---|---|---|---|"]
  for kind in GUIDES:
    for w in sorted({r["weight"] for r in res["guidance"] if r["kind"] == kind}):
      rows = [r for r in res["guidance"] if r["kind"] == kind and r["weight"] == w]
      lines.append(f"| {kind} | {w:g} | {_mean_std(rows, 'accuracy')} | "
                   f"{_mean_std(rows, 'fdd')} |")
  return "\n".join(lines) + "\n"


def _plot_sweep(rows, key, series, path, xlabel, title):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  for label, rs in series(rows):
    xs = sorted({r[key] for r in rs})
    for ax, metric in zip(axes, ("fdd", "accuracy")):
      m = [np.mean([r[metric] for r in rs if r[key] == x]) for x in xs]
      e = [np.std([r[metric] for r in rs if r[key] == x]) for x in xs]
      ax.errorbar(xs, m, yerr=e, marker="o", ms=4, capsize=2, label=label)
  axes[0].set_ylabel("FDD (lower is better)")
  axes[1].set_ylabel("SVC accuracy")
  for ax in axes:
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def plots(res, phema_png, guidance_png):
  n = len({r["seed"] for r in res["recipe"]})
  if phema_png:
    _plot_sweep([r for r in res["phema"] if "fdd" in r], "std",
                lambda rows: [("EDM2 digits", rows)], phema_png, "post-hoc EMA σ_rel",
                f"post-hoc EMA width, mean ± std over {n} seeds, {res['num']:,} samples, "
                f"{SOLVER} {STEPS}")
  if guidance_png:
    _plot_sweep(res["guidance"], "weight",
                lambda rows: [(k, [r for r in rows if r["kind"] == k]) for k in GUIDES],
                guidance_png, "guidance weight w",
                f"EDM2 σ_rel {res['best_std']:g}: autoguidance (guide {GUIDES['autoguidance']}) vs "
                f"CFG (guide {GUIDES['cfg']}), {n} seeds")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--train", action="store_true", help="train the missing workdirs first")
  p.add_argument("--dry-run", action="store_true", help="print the trainings; run nothing")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--stds", type=float, nargs="+", default=list(STDS))
  p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--sample-seed", type=int, default=0)
  p.add_argument("--json", default=None)
  p.add_argument("--table", default=None)
  p.add_argument("--phema-png", default=None)
  p.add_argument("--guidance-png", default=None)
  args = p.parse_args(argv)
  if args.train or args.dry_run:
    train_missing(args.root, args.seeds, args.dry_run)
  if args.dry_run:
    return 0
  res = run(args)
  text = table(res)
  print(text)
  for path, content in ((args.json, json.dumps(res, indent=1)), (args.table, text)):
    if path:
      with open(path, "w") as f:
        f.write(content)
  plots(res, args.phema_png, args.guidance_png)
  return 0


if __name__ == "__main__":
  sys.exit(main())
