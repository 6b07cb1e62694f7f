"""Adversarial refinement on digits (issue 15): discriminator guidance (DG) and adversarial
fine-tuning of a trained base model, each against its control.

The full experiment (the lead runs it on an idle machine; BASE trained with configs/digits.py):

  python bench/adversarial_digits.py --root /work/runs/adv --base /work/runs/rp/base-s0 \
      --out bench/results/adversarial_digits.json --table bench/results/adversarial_digits.md \
      --plot docs/img/adversarial_digits.png

(a) DG: `jaxdiff sample` draws --gen-num samples of BASE (seed 1000, not the evaluation's 0) as the
    label-0 data; `jaxdiff train --config configs/digits_discriminator.py` trains one discriminator
    per seed (--seeds, default 0 1 2) against them; then --num samples (seed 0, labels cycling 0..9)
    of BASE with its own default sampler settings, without DG (W = 0) and with each discriminator
    at every W of --dg-weights: the same solver and steps, so equal NFE (DG adds one discriminator
    forward and backward pass per evaluation).
(b) fine-tuning: per seed, `jaxdiff train --config configs/digits_adversarial.py` from BASE's EMA
    with λ = --adv-weight, and the control: the same run with adversarial.weight=0, which is the
    plain loss continued (the denoiser's update is the plain family's bit for bit), for the same
    --adv-steps × batch extra training images; --num samples of each.
Every sample file is scored by the SVC of bench/digits_quality.py (`svc`) and by
`jaxdiff eval --metric fdd,accuracy` (`fdd`, `accuracy`). Writes the JSON (every cell, every
command's wall seconds), a markdown table (mean ± std over seeds) and the PNG.

The model and sampler sections of BASE's config.json that differ from the configs' defaults are
passed on as overrides, so the fine-tuned models are BASE's network and every model samples with
BASE's settings. Commands run in this process through `jaxdiff.cli.main` (exactly the printed
commands; one process, so compiled programs are shared); finished trainings resume as no-ops and
existing sample files are reused, so an interrupted run continues.

--dry-run prints the commands (each training's config built, so its errors show) and runs
nothing. --tiny shrinks everything (one seed, one W, tiny networks, 2-step trainings, 20
samples): the end-to-end test (tests/test_bench_adversarial.py).

Runtime: the run in docs/adversarial.md (--disc-steps 2000 --adv-steps 400 --dg-weights 0.25 0.5
1 2 4) took about 50 min on the 2-core CPU, some of it shared with unit tests. It ran in two
passes: discriminators to 1,000 steps, then resumed to 2,000 with the DG sample files redone. The
default 800 fine-tuning steps add about 10 min. The --tiny run (tests/test_bench_adversarial.py)
takes about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

DISC_CONFIG = os.path.join(ROOT, "configs", "digits_discriminator.py")
ADV_CONFIG = os.path.join(ROOT, "configs", "digits_adversarial.py")
DIGITS_CONFIG = os.path.join(ROOT, "configs", "digits.py")

TINY_COMMON = ["--config.training.batch_size=16", "--config.training.steps=2",
               "--config.training.checkpoint_every=2", "--config.training.log_every=1"]
TINY_DISC = TINY_COMMON + ["--config.model.model_channels=8", "--config.model.channel_mult=(1,)"]
TINY_ADV = TINY_COMMON + ["--config.adversarial.disc.model_channels=8",
                          "--config.adversarial.disc.channel_mult=(1,)"]


def _fmt(value) -> str:
  """A config value as a --config override."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  if isinstance(value, float) and math.isinf(value):
    return "inf" if value > 0 else "-inf"
  return str(value)


def base_overrides(base: str) -> list[str]:
  """--config.model.* / --config.sampler.* overrides for BASE's values that configs/digits.py
  (the defaults the fine-tuning config shares) sets otherwise."""
  from jaxdiff.config import load_config
  with open(os.path.join(base, "config.json")) as f:
    recorded = json.load(f)
  default = load_config(DIGITS_CONFIG, []).to_dict()
  out = []
  for section in ("model", "sampler"):
    mine, theirs = default.get(section, {}), recorded.get(section) or {}
    for key in sorted(theirs):
      a, b = theirs[key], mine.get(key)
      same = (list(a) == list(b)) if isinstance(a, (list, tuple)) and isinstance(
          b, (list, tuple)) else a == b
      if not same and key in mine:
        out.append(f"--config.{section}.{key}={_fmt(a)}")
  return out


def plan(args) -> list[dict]:
  """The commands in order: {kind: train|sample, argv, ...labels of the cell it makes}."""
  r, base = args.root, args.base
  disc_extra = TINY_DISC if args.tiny else []
  adv_extra = (TINY_ADV if args.tiny else []) + base_overrides(base)
  gen = os.path.join(r, "base_samples.npz")
  out = [dict(kind="sample", name="gen", argv=["sample", "--workdir", base, "--num",
                                               str(args.gen_num), "--seed", "1000", "--out", gen])]
  evals = os.path.join(r, "eval")

  def sample(workdir, name, *extra, **labels):
    path = os.path.join(evals, f"{name}.npz")
    return dict(kind="sample", name=name, out=path, **labels,
                argv=["sample", "--workdir", workdir, "--num", str(args.num), "--seed", "0",
                      "--out", path, *extra])

  out.append(sample(base, "base", group="dg", model="base", seed=None, weight=0.0))
  for s in args.seeds:
    disc = os.path.join(r, f"disc-s{s}")
    steps = [] if args.disc_steps is None else [f"--config.training.steps={args.disc_steps}"]
    out.append(dict(kind="train", name=f"disc-s{s}", workdir=disc, argv=[
        "train", "--config", DISC_CONFIG, "--workdir", disc,
        f"--config.discriminator.model={base}", f"--config.discriminator.samples={gen}",
        f"--config.training.seed={s}", *disc_extra, *steps]))
    for w in args.dg_weights:
      out.append(sample(base, f"dg-s{s}-w{w:g}", "--discriminator", disc, "--dg-weight", f"{w:g}",
                        group="dg", model="base+dg", seed=s, weight=float(w)))
  for s in args.seeds:
    for kind, lam in (("adversarial", args.adv_weight), ("plain", 0.0)):
      wd = os.path.join(r, f"{kind}-s{s}")
      steps = [] if args.adv_steps is None else [f"--config.training.steps={args.adv_steps}"]
      out.append(dict(kind="train", name=f"{kind}-s{s}", workdir=wd, argv=[
          "train", "--config", ADV_CONFIG, "--workdir", wd, f"--config.adversarial.init={base}",
          f"--config.adversarial.weight={lam:g}", f"--config.training.seed={s}", *adv_extra,
          *steps]))
      out.append(sample(wd, f"{kind}-s{s}", group="finetune", model=kind, seed=s,
                        weight=float(lam)))
  return out


def validate(argv) -> None:
  """Builds a `jaxdiff train` command's config (its one-line errors) without touching any file."""
  from jaxdiff import build
  from jaxdiff.config import load_config
  config = argv[argv.index("--config") + 1]
  build.experiment(load_config(config, [a for a in argv if a.startswith("--config.")]))


def _cli(argv) -> tuple[int, str]:
  from jaxdiff.cli import main
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    code = main(argv)
  return code, buf.getvalue()


def _score(path: str, clf) -> dict:
  import numpy as np

  from digits_quality import sample_accuracy
  code, stdout = _cli(["eval", "--samples", path, "--metric", "fdd,accuracy", "--json"])
  if code:
    raise RuntimeError(f"jaxdiff eval --samples {path} exited {code}")
  metrics = json.loads(stdout.strip().splitlines()[-1])
  with np.load(path) as f:
    svc = sample_accuracy(f["images"], f["labels"], clf)
  return dict(svc=svc, fdd=float(metrics["fdd"]), accuracy=float(metrics["accuracy"]))


def _extra_images(workdir: str) -> int | None:
  """Training images of a fine-tuning run beyond its base: steps × batch from its config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    t = json.load(f)["training"]
  return int(t["steps"]) * int(t["batch_size"])


def run(args) -> dict:
  from digits_quality import real_digits_classifier
  from jaxdiff import sampling
  from jaxdiff.model import load
  os.makedirs(os.path.join(args.root, "eval"), exist_ok=True)
  clf, _ = real_digits_classifier()
  s = load(args.base).exp.sampling
  nfe = sampling.nfe(s.solver, s.num_steps)
  cells, seconds = [], {}
  for cmd in plan(args):
    target = cmd.get("out") or (cmd["argv"][cmd["argv"].index("--out") + 1]
                                if "--out" in cmd["argv"] else None)
    t0 = time.time()
    if not (cmd["kind"] == "sample" and target and os.path.exists(target)):
      print("jaxdiff " + " ".join(cmd["argv"]), file=sys.stderr, flush=True)
      code, _ = _cli(cmd["argv"])
      if code:
        raise RuntimeError(f"`jaxdiff {' '.join(cmd['argv'])}` exited {code}")
    seconds[cmd["name"]] = round(time.time() - t0, 1)
    if cmd["kind"] == "sample" and "group" in cmd:
      cell = {k: cmd[k] for k in ("group", "model", "seed", "weight", "name")}
      cell.update(_score(cmd["out"], clf), nfe=nfe, num=args.num)
      if cell["group"] == "finetune":
        cell["extra_images"] = _extra_images(os.path.join(args.root, cmd["name"]))
      cells.append(cell)
  return dict(base=args.base, solver=s.solver, steps=s.num_steps, nfe=nfe, num=args.num,
              seeds=list(args.seeds), dg_weights=[float(w) for w in args.dg_weights],
              adv_weight=args.adv_weight, tiny=args.tiny, cells=cells, seconds=seconds,
              rows=summarize(cells))


def summarize(cells: list[dict]) -> list[dict]:
  """Mean ± std (over seeds) of each metric per (group, model, weight)."""
  import numpy as np
  groups: dict = {}
  for c in cells:
    groups.setdefault((c["group"], c["model"], c["weight"]), []).append(c)
  rows = []
  for (group, model, weight), cs in groups.items():
    row = dict(group=group, model=model, weight=weight, n_seeds=len(cs))
    for m in ("svc", "fdd", "accuracy"):
      v = np.array([c[m] for c in cs], np.float64)
      row[m] = float(v.mean())
      row[m + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    row["extra_images"] = cs[0].get("extra_images")
    rows.append(row)
  return rows


def table(summary: dict) -> str:
  lines = [f"Digits, {summary['num']} samples per cell, {summary['solver']} {summary['steps']} "
           f"steps ({summary['nfe']} NFE) for every row; mean ± std over seeds "
           f"{summary['seeds']}.", "",
           "| group | model | weight | seeds | SVC accuracy | FDD | accuracy (jaxdiff eval) "
           "| extra images |", "|---|---|---|---|---|---|---|---|"]
  for r in summary["rows"]:
    lines.append(f"| {r['group']} | {r['model']} | {r['weight']:g} | {r['n_seeds']} | "
                 f"{r['svc']:.3f} ± {r['svc_std']:.3f} | {r['fdd']:.3f} ± {r['fdd_std']:.3f} | "
                 f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | "
                 f"{r['extra_images'] if r['extra_images'] is not None else ''} |")
  return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> str:
  from plots import _plt, _save
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  rows = summary["rows"]
  base = next(r for r in rows if r["model"] == "base")
  dg = sorted([r for r in rows if r["model"] == "base+dg"], key=lambda r: r["weight"])
  ws = [0.0] + [r["weight"] for r in dg]
  for ax, m, label in ((axes[0], "fdd", "FDD (lower is better)"),
                       (axes[1], "svc", "SVC accuracy (higher is better)")):
    ax.errorbar(ws, [base[m]] + [r[m] for r in dg], yerr=[0.0] + [r[m + "_std"] for r in dg],
                fmt="o-", capsize=3, label="base + DG (W)")
    for r, style in ((next((r for r in rows if r["model"] == "adversarial"), None), "C3"),
                     (next((r for r in rows if r["model"] == "plain"), None), "C2")):
      if r is not None:
        ax.axhline(r[m], color=style, ls="--",
                   label=f"fine-tuned {r['model']} (λ={r['weight']:g})")
        ax.axhspan(r[m] - r[m + "_std"], r[m] + r[m + "_std"], color=style, alpha=0.12)
    ax.set(xlabel="DG weight W (0 = no guidance)", ylabel=label)
    ax.legend(fontsize=7)
  fig.suptitle(f"Adversarial refinement on digits ({summary['nfe']} NFE, {summary['num']} "
               "samples, mean ± std over seeds)")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return _save(fig, path)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", required=True, help="directory of the workdirs and sample files")
  p.add_argument("--base", required=True, help="a trained configs/digits.py workdir")
  p.add_argument("--seeds", type=int, nargs="*", default=(0, 1, 2))
  p.add_argument("--dg-weights", type=float, nargs="*", default=(0.5, 1.0, 2.0, 4.0),
                 dest="dg_weights")
  p.add_argument("--num", type=int, default=1000, help="samples per evaluated cell")
  p.add_argument("--gen-num", type=int, default=10000, dest="gen_num",
                 help="samples of BASE the discriminators train against")
  p.add_argument("--disc-steps", type=int, default=None, dest="disc_steps",
                 help="default: configs/digits_discriminator.py's")
  p.add_argument("--adv-steps", type=int, default=None, dest="adv_steps",
                 help="default: configs/digits_adversarial.py's (800)")
  p.add_argument("--adv-weight", type=float, default=0.01, dest="adv_weight", help="λ")
  p.add_argument("--out", default=None, help="JSON (default ROOT/adversarial_digits.json)")
  p.add_argument("--table", default=None, help="markdown (default ROOT/adversarial_digits.md)")
  p.add_argument("--plot", default=None, help="PNG (default ROOT/adversarial_digits.png)")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--tiny", action="store_true", help="tiny settings for the end-to-end test")
  args = p.parse_args(argv)
  if args.tiny:
    args.seeds, args.dg_weights = args.seeds[:1], args.dg_weights[:1]
    # one sample count for the base's two sampling runs: one compiled sampler
    args.num = args.gen_num = min(args.num, 20)
  if args.dry_run:
    for cmd in plan(args):
      if cmd["kind"] == "train":
        validate(cmd["argv"])
      print("jaxdiff " + " ".join(cmd["argv"]))
    return 0
  summary = run(args)
  out = args.out or os.path.join(args.root, "adversarial_digits.json")
  md = args.table or os.path.join(args.root, "adversarial_digits.md")
  png = args.plot or os.path.join(args.root, "adversarial_digits.png")
  from jaxdiff.fileio import atomic_write_text
  for path, text in ((out, json.dumps(summary, indent=1)), (md, table(summary))):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)
  plot(summary, png)
  print(table(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
