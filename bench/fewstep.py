"""Quality against NFE on digits: one EDM teacher with its solvers (EDM grid and GITS grids) against
consistency training, tuning and distillation (issue 13).

  python bench/fewstep.py --root /tmp/fewstep [--out bench/results/fewstep.json]
                          [--plot docs/img/fewstep_frontier.png] [--num 1000] [--dry-run]

1. trains (or resumes) in ROOT: the teacher (configs/digits.py), then ct (configs/digits_consistency.py
   from scratch), tune (its init_from = the teacher) and distill (its teacher = the teacher);
2. samples --num class-conditional images (labels cycling 0..9, seed 0) for every cell:
   the teacher at NFE 1, 2, 4, 8, 16, 35 with every ODE solver on the EDM (Karras) grid and on the
   GITS grid searched for that solver and NFE (`jaxdiff schedule`'s search, 256 latents of seed 1,
   not the evaluation's), and each consistency model at NFE 1, 2, 4 (multistep consistency sampling);
3. scores each cell with the independent RBF SVC of bench/digits_quality.py (accuracy) and the
   offline FDD of jaxdiff.eval.digits_metric, and records the training images each model used
   (tune / distill: the teacher's included).

CPU-heavy (minutes per training, one sampling run per cell): the lead runs it on an idle machine.
--dry-run prints the plan (the trainings with their overrides, validated by building each config,
and the cells) without training or sampling anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

TEACHER_NFE = (1, 2, 4, 8, 16, 35)
CM_NFE = (1, 2, 4)
ODE_SOLVERS = ("heun", "dpmpp_2m", "ipndm", "unipc", "dpmpp_3m")
GRIDS = ("edm", "gits")
MODES = ("ct", "tune", "distill")


def trainings(root: str, teacher_steps: int, cm_steps: int, extra=()) -> list[dict]:
  """The four runs: name, config file, overrides, workdir."""
  digits = os.path.join(ROOT, "configs", "digits.py")
  cm = os.path.join(ROOT, "configs", "digits_consistency.py")
  teacher = os.path.join(root, "teacher")
  runs = [dict(name="teacher", config=digits, workdir=teacher,
               overrides=[f"--config.training.steps={teacher_steps}", *extra])]
  for mode in MODES:
    o = [f"--config.consistency.mode={mode}", f"--config.training.steps={cm_steps}", *extra]
    if mode == "tune":
      o.append(f"--config.consistency.init_from={teacher}")
    if mode == "distill":
      o.append(f"--config.consistency.teacher={teacher}")
    runs.append(dict(name=mode, config=cm, workdir=os.path.join(root, mode), overrides=o))
  return runs


def cells() -> list[dict]:
  """Every (model, solver, grid, NFE) to sample; steps from the solver's NFE budget."""
  from jaxdiff import sampling, timesteps
  out, seen = [], set()
  for nfe in TEACHER_NFE:
    for solver in ODE_SOLVERS:
      steps = timesteps.steps_for_nfe(solver, nfe)
      if (solver, steps) in seen:  # Heun at NFE 2 is Heun at NFE 1 (2K − 1 evaluations)
        continue
      seen.add((solver, steps))
      # GITS with Heun's own cost needs a network evaluation per pair of fine-grid points (~5,000
      # per search); the GITS rows are for the multistep solvers, whose cost is the Euler step.
      for grid in (("edm",) if solver == "heun" else GRIDS):
        out.append(dict(model="teacher", solver=solver, grid=grid, steps=steps,
                        nfe=sampling.nfe(solver, steps)))
  for mode in MODES:
    for nfe in CM_NFE:
      out.append(dict(model=mode, solver="consistency", grid="config", steps=nfe, nfe=nfe))
  return out


def training_images(run_summaries: dict) -> dict:
  """Images each model saw: its own steps × batch, plus the teacher's for tune and distill."""
  own = {k: v["steps"] * v["batch_size"] for k, v in run_summaries.items()}
  return {k: own[k] + (own["teacher"] if k in ("tune", "distill") else 0) for k in own}


def plan(args) -> dict:
  from jaxdiff import build
  from jaxdiff.config import load_config
  runs = trainings(args.root, args.teacher_steps, args.cm_steps)
  for r in runs:
    # Validates every config (tune's and distill's sources are only read when training starts).
    exp = build.experiment(load_config(r["config"], r["overrides"]))
    r["family"] = exp.family
    r["batch_size"] = exp.training.batch_size
  return dict(trainings=runs, cells=cells(), num=args.num)


def _train(run) -> dict:
  from jaxdiff import build
  from jaxdiff.config import load_config
  cfg = load_config(run["config"], run["overrides"])
  build.run_training(cfg, run["workdir"])
  return dict(steps=int(cfg.training.steps), batch_size=int(cfg.training.batch_size))


def evaluate(model, cell, num: int, clf, sigmas=None) -> dict:
  from digits_quality import sample_accuracy
  from jaxdiff.eval import digits_metric
  images, labels = model.sample_with_labels(num, seed=0, solver=cell["solver"],
                                            steps=cell["steps"], sigmas=sigmas)
  return dict(svc_accuracy=sample_accuracy(images, labels, clf),
              mlp_accuracy=digits_metric.accuracy(images, labels),
              fdd=digits_metric.fdd(images))


def run(args) -> dict:
  import jaxdiff
  from digits_quality import real_digits_classifier
  from jaxdiff.cli.schedule import search
  p = plan(args)
  summaries = {r["name"]: _train(r) for r in p["trainings"]}
  clf, real_acc = real_digits_classifier()
  models = {r["name"]: jaxdiff.load(r["workdir"]) for r in p["trainings"]}
  results, searched, gits_cache = [], {}, {}
  for cell in p["cells"]:
    sigmas = None
    if cell["grid"] == "gits":
      # GITS depends on the solver only through its cost (Heun's, or the Euler step every other
      # solver uses) and its step count: one search serves every solver with the same pair.
      key = (cell["solver"] == "heun", cell["steps"])
      if key not in searched:
        searched[key], _ = search(models["teacher"], cell["solver"], cell["nfe"], num=256, seed=1,
                                  cache=gits_cache)
      sigmas = searched[key]
      cell = dict(cell, sigmas=[float(v) for v in sigmas])
    res = evaluate(models[cell["model"]], cell, args.num, clf, sigmas)
    results.append(dict(cell, **res))
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  from jaxdiff.eval import digits_metric
  return dict(results=results, training_images=training_images(summaries),
              real_heldout_svc_accuracy=real_acc, fdd_floor=digits_metric.fdd_floor(),
              num=args.num, trainings=p["trainings"])


def best_per_nfe(results: list[dict], by: str = "fdd") -> dict:
  """{(model, grid): {nfe: best cell}}: the teacher's best solver per NFE, by the lowest FDD (the
  SVC saturates: blurry class means at 1-4 NFE score as high as sharp digits) or, with
  by="svc_accuracy", the highest accuracy. Only the NFE budgets of the plan (Heun's odd 2K - 1
  evaluations other than 35 are not budgets)."""
  better = (lambda a, b: a < b) if by == "fdd" else (lambda a, b: a > b)
  best = {}
  for r in results:
    if r["model"] == "teacher" and r["nfe"] not in TEACHER_NFE:
      continue
    key = (r["model"], r["grid"])
    cur = best.setdefault(key, {}).get(r["nfe"])
    if cur is None or better(r[by], cur[by]):
      best[key][r["nfe"]] = r
  return best


def plot(summary: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  best = best_per_nfe(summary["results"])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for (model, grid), by_nfe in sorted(best.items()):
    nfe = sorted(by_nfe)
    label = (f"teacher, best solver (by FDD), {grid} grid" if model == "teacher"
             else f"consistency {model}")
    for ax, metric in zip(axes, ("svc_accuracy", "fdd")):
      ax.plot(nfe, [by_nfe[n][metric] for n in nfe], marker="o", label=label)
  for ax, metric in zip(axes, ("SVC accuracy", "FDD")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
  axes[1].set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"digits, {summary['num']} samples per point")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", default="/tmp/jaxdiff-fewstep", help="workdirs of the four trainings")
  p.add_argument("--out", default=os.path.join(HERE, "results", "fewstep.json"))
  p.add_argument("--plot", default=os.path.join(ROOT, "docs", "img", "fewstep_frontier.png"))
  p.add_argument("--num", type=int, default=1000, help="samples per cell")
  p.add_argument("--teacher-steps", type=int, default=1600)
  p.add_argument("--cm-steps", type=int, default=3000)
  p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
  args = p.parse_args(argv)
  if args.dry_run:
    print(json.dumps(plan(args), indent=1))
    return 0
  summary = run(args)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(summary, f, indent=1)
  plot(summary, args.plot)
  print(f"fewstep: {len(summary['results'])} cells -> {args.out}, {args.plot}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
