"""Quantization and a lightweight student on digits and on DDPM++ CIFAR-10 (issue 14): one table.

  python bench/quant_digits.py --workdir /work/runs/rp/base-s0 --student /work/runs/student \\
      --root /tmp/quant_bench --out bench/results/quant_digits.json \\
      --table bench/results/quant_digits.md --plot docs/img/quant_digits.png [--num 1000]

(the student: `jaxdiff train --config configs/digits_student.py --workdir /work/runs/student
--config.student.teacher=/work/runs/rp/base-s0`). For the trained digits workdir and for
configs/cifar10_ddpmpp.py (random weights: the fresh initialisation plus N(0, 1/fan_in) on every
weight, so no layer is the zero-initialised identity), each variant

  f32, W8 (per channel), W4 (per channel), W4g64 (group 64; the largest divisor of every layer's
  input channels at most 64 where 64 does not divide them: 32 on digits, whose decoder has 96),
  W8A8 (static int8 activations, calibrated along the workdir's own sampler from --calib-num
  latents: jaxdiff quantize --activations)

gets: the relative denoiser error ‖D_q − D_f32‖ / ‖D_f32‖ at each σ of SIGMAS on x = y + σn
(digits: real digits; CIFAR: y ~ U(−1, 1) images, no data needed); the sample drift, mean |Δ| in
uint8 pixel units between the f32 and the quantized samples from the same latents; on digits only,
the SVC accuracy (bench/digits_quality.py) and FDD (jaxdiff.eval.digits_metric.fdd, what
`jaxdiff eval --metric fdd` computes) of --num samples (labels cycling 0..9, seed 0); the bytes of
the integer store (orbax, on disk) and of the parameters at their dtypes' widths; and CPU sampling
images/s (after one compile run). The student row: its parameters over the teacher's, accuracy /
FDD at the teacher's solver and steps (same NFE), and its images/s over the teacher's.

CPU-heavy (CIFAR sampling, 1,000-sample evaluations): the lead runs it on an idle machine.
--dry-run prints the plan (variants, group sizes, σ grid, counts) after checking the inputs,
without quantizing or sampling. --tiny runs every step on tiny random networks (no --workdir
needed; a test runs it in well under a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

SIGMAS = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)
VARIANTS = ("W8", "W4", "W4g64", "W8A8")
CIFAR = os.path.join(ROOT, "configs", "cifar10_ddpmpp.py")
DIGITS = os.path.join(ROOT, "configs", "digits.py")
# --tiny: every network a few thousand parameters, every count a handful.
TINY_DIGITS = ["--config.model.model_channels=20", "--config.model.channel_mult=(1,)",
               "--config.model.num_blocks=1", "--config.model.attn_resolutions=()",
               "--config.sampler.num_steps=3"]
TINY_STUDENT = TINY_DIGITS[1:] + ["--config.model.model_channels=8"]
TINY_CIFAR = ["--config.model.model_channels=16", "--config.model.channel_mult=(1,)",
              "--config.model.num_blocks=1", "--config.model.attn_resolutions=()",
              "--config.data.resolution=8", "--config.sampler.num_steps=2"]


# ---------------------------------------------------------------- models
def random_weights(params, seed: int = 1):
  """The fresh initialisation plus N(0, 1/fan_in) on every ≥ 2-D weight (per-leaf keys)."""
  import jax
  import numpy as np

  from jaxdiff.nets.layers import standard_normal

  def perturb(path, leaf):
    if leaf.ndim < 2:
      return leaf
    k = jax.random.fold_in(jax.random.PRNGKey(seed),
                           zlib.crc32(jax.tree_util.keystr(path).encode()))
    fan_in = int(np.prod(leaf.shape[:-1]))
    # Host-side arithmetic on a shared-program draw: no compilation per leaf shape (tiny run 20 s).
    noise = standard_normal(k, leaf.shape) / np.float32(np.sqrt(fan_in))
    return jax.device_put(np.asarray(leaf) + noise.astype(leaf.dtype))
  return jax.tree_util.tree_map_with_path(perturb, params)


def random_model(config: str, overrides=(), seed: int = 1):
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  from jaxdiff.model import Model
  exp = build.experiment(load_config(config, list(overrides)))
  graphdef, params = families.make_network(exp, 0)
  return Model(exp, graphdef, random_weights(params, seed))


def group_size_for(params, want: int = 64) -> int:
  """The largest G <= want that divides the input channels of every layer wider than G."""
  from jaxdiff import quant
  from jaxdiff.errors import JaxdiffError
  for g in range(want, 0, -1):
    try:
      quant.check_group_size(params, g)
      return g
    except JaxdiffError:
      continue
  return 1


def variant_spec(name: str, group: int):
  from jaxdiff.quant import QuantSpec
  return {"W8": QuantSpec(8), "W4": QuantSpec(4), "W4g64": QuantSpec(4, group),
          "W8A8": QuantSpec(8, activations=True)}[name]


def quantized_model(model, name: str, group: int, calib_num: int):
  from jaxdiff import quant
  from jaxdiff.cli.quantize import calibration_set
  from jaxdiff.model import Model
  spec = variant_spec(name, group)
  calib_fn = calibration_set(model, calib_num, 0)[1] if spec.activations else None
  qg, qp = quant.quantize(model.graphdef, model.params, spec, calib_fn, shape=model.shape,
                          label_dim=model.label_dim)
  return Model(model.exp, qg, qp)


# ---------------------------------------------------------------- measurements
def clean_batch(model, n: int, digits: bool):
  import numpy as np
  if digits:
    from jaxdiff.data.digits import load_digits_source
    src = load_digits_source()
    idx = np.random.default_rng(0).permutation(len(src.images))[:n]
    return src.images[idx], src.labels[idx]
  y = np.random.default_rng(0).uniform(-1, 1, (n, *model.shape)).astype(np.float32)
  return y, (np.arange(n) % model.label_dim if model.label_dim else None)


def denoiser_error(ref, model, y, labels, sigmas=SIGMAS) -> list[float]:
  """‖D_q − D_ref‖ / ‖D_ref‖ over the batch at each σ (the same x = y + σn for both)."""
  import numpy as np
  out = []
  noise = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
  for s in sigmas:
    x = y + s * noise
    a = np.asarray(ref.denoise(x, s, labels=labels), np.float64)
    b = np.asarray(model.denoise(x, s, labels=labels), np.float64)
    out.append(float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30)))
  return out


def images_per_second(model, n: int, **kw) -> float:
  model.sample(n, seed=0, batch_size=n, **kw)  # compile
  t = time.perf_counter()
  model.sample(n, seed=1, batch_size=n, **kw)
  return n / (time.perf_counter() - t)


def store_bytes(path: str, params) -> int:
  """On-disk bytes of `params` as one orbax item (integer leaves stay integers)."""
  import orbax.checkpoint as ocp
  from flax import nnx
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.abspath(path), nnx.to_pure_dict(params))
  ckpt.wait_until_finished()
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def quality(model, num: int, clf, **kw) -> dict:
  import numpy as np
  from digits_quality import sample_accuracy
  from jaxdiff.eval import digits_metric
  images, labels = model.sample_with_labels(num, seed=0, **kw)
  return dict(svc_accuracy=sample_accuracy(np.asarray(images), labels, clf),
              fdd=float(digits_metric.fdd(np.asarray(images))))


def measure_network(name: str, model, root: str, args, digits: bool, clf=None) -> dict:
  """Every row of one network (f32 first)."""
  import numpy as np
  from jaxdiff import quant
  group = group_size_for(model.params, 64)
  y, labels = clean_batch(model, args.err_batch, digits)
  ref_samples = model.sample(args.drift_num, seed=0, batch_size=args.drift_num)
  rows = []
  for variant in ("f32",) + VARIANTS:
    m = model if variant == "f32" else quantized_model(model, variant, group, args.calib_num)
    row = dict(network=name, variant=variant, group_size=group if variant == "W4g64" else None,
               param_bytes=quant.param_bytes(m.params),
               store_bytes=store_bytes(os.path.join(root, name, variant), m.params))
    if variant != "f32":
      row["rel_error"] = dict(zip(map(str, SIGMAS), denoiser_error(model, m, y, labels)))
      drift = m.sample(args.drift_num, seed=0, batch_size=args.drift_num)
      row["drift_pixels"] = float(np.mean(np.abs(drift.astype(np.float64) - ref_samples)))
    if digits:
      row.update(quality(m, args.num, clf))
    row["images_per_s"] = images_per_second(m, args.speed_num)
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  return dict(rows=rows, group_size=group, sigmas=list(SIGMAS))


def measure_student(student, teacher, args, clf) -> dict:
  from jaxdiff.families.student import count_params
  kw = dict(solver=teacher.exp.sampling.solver, steps=teacher.exp.sampling.num_steps)
  row = dict(network="digits", variant="student", param_bytes=None,
             param_ratio=count_params(student.params) / count_params(teacher.params),
             student_params=count_params(student.params),
             teacher_params=count_params(teacher.params), solver=kw["solver"], steps=kw["steps"])
  from jaxdiff import quant
  row["param_bytes"] = quant.param_bytes(student.params)
  row.update(quality(student, args.num, clf, **kw))
  s_speed = images_per_second(student, args.speed_num, **kw)
  t_speed = images_per_second(teacher, args.speed_num, **kw)
  row.update(images_per_s=s_speed, speed_ratio=s_speed / t_speed)
  return row


# ---------------------------------------------------------------- outputs
def table(result: dict) -> str:
  lines = []
  for net in ("digits", "cifar10_ddpmpp"):
    if net not in result:
      continue
    r = result[net]
    sig = r["sigmas"]
    head = ["variant", "param bytes", "store bytes", "drift (px)", "SVC acc", "FDD", "img/s"]
    head += [f"err σ={s:g}" for s in sig]
    how = result.get("plan", {}).get("networks", {}).get(net, {})
    where = f"sampling {how['solver']}, {how['steps']} steps" if how else ""
    lines += [f"### {net}" + (" (random weights)" if net != "digits" else "")
              + (f" — {where}" if where else ""), "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
      name = row["variant"] + (f" (G={row['group_size']})" if row.get("group_size") else "")
      cells = [name, f"{row['param_bytes']:,}", f"{row['store_bytes']:,}",
               _fmt(row.get("drift_pixels")), _fmt(row.get("svc_accuracy")), _fmt(row.get("fdd")),
               _fmt_speed(row.get("images_per_s"))]
      cells += [_fmt(row.get("rel_error", {}).get(str(s)), ".2e") for s in sig]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  s = result.get("student")
  if s:
    lines += ["### student (digits)", "",
              "| params | ratio to teacher | solver, steps | SVC acc | FDD | img/s | speed ratio |",
              "|---|---|---|---|---|---|---|",
              f"| {s['student_params']:,} | {s['param_ratio']:.3f} | {s['solver']}, {s['steps']} | "
              f"{_fmt(s['svc_accuracy'])} | {_fmt(s['fdd'])} | {_fmt_speed(s['images_per_s'])} | "
              f"{s['speed_ratio']:.2f} |", ""]
  return "\n".join(lines)


def _fmt(v, f=".4f"):
  return "" if v is None else format(v, f)


def _fmt_speed(v):
  """Images/s: one decimal from 10 up, three below (CIFAR's full-size network is under 1)."""
  return _fmt(v, ".1f" if v is not None and v >= 10 else ".3f")


def plot(result: dict, path: str) -> None:
  """Digits quality (SVC accuracy, FDD) against parameter bytes, one point per variant."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = list(result["digits"]["rows"]) + ([result["student"]] if result.get("student") else [])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((axes[0], "svc_accuracy", "SVC accuracy"), (axes[1], "fdd", "FDD")):
    for row in rows:
      ax.scatter(row["param_bytes"], row[key], marker="s" if row["variant"] == "student" else "o")
      ax.annotate(row["variant"], (row["param_bytes"], row[key]), textcoords="offset points",
                  xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameter bytes")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  fig.suptitle(f"digits: quality against bytes ({result['num']} samples)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------- main
def load_models(args):
  """(digits float Model, cifar float Model, student Model or None)."""
  import jaxdiff
  if args.tiny:
    teacher = random_model(DIGITS, TINY_DIGITS)
    student = random_model(DIGITS, TINY_STUDENT, seed=2)
    return teacher, random_model(CIFAR, TINY_CIFAR), student
  teacher = jaxdiff.load(args.workdir)
  student = jaxdiff.load(args.student) if args.student else None
  return teacher, random_model(CIFAR, cifar_overrides(args)), student


def cifar_overrides(args) -> list[str]:
  """--cifar-steps as a sampler override: drift, images/s and the W8A8 calibration all follow it."""
  return [f"--config.sampler.num_steps={args.cifar_steps}"] if args.cifar_steps else []


def plan(args) -> dict:
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  from jaxdiff.errors import JaxdiffError
  if not args.tiny:
    from jaxdiff.train import checkpoint as ckpt_lib
    for d in [args.workdir] + ([args.student] if args.student else []):
      ckpt_lib.read_config_dict(d)  # a workdir (one-line error otherwise)
      if ckpt_lib.manager(d, async_save=False).latest_step() is None:
        raise JaxdiffError(f"{d!r} has no checkpoint yet; train first with `jaxdiff train`")
  groups = {}
  for net, cfg, ov in (("digits", DIGITS, TINY_DIGITS if args.tiny else []),
                       ("cifar10_ddpmpp", CIFAR, TINY_CIFAR if args.tiny else cifar_overrides(args))):
    exp = build.workdir_experiment(args.workdir) if (net == "digits" and not args.tiny) else \
        build.experiment(load_config(cfg, ov))
    groups[net] = dict(group_size=group_size_for(families.abstract_network(exp)[1], 64),
                       solver=exp.sampling.solver, steps=exp.sampling.num_steps)
  return dict(variants=["f32", *VARIANTS], networks=groups, sigmas=list(SIGMAS), num=args.num,
              calib_num=args.calib_num, drift_num=args.drift_num, speed_num=args.speed_num,
              student=args.student or ("tiny random" if args.tiny else None),
              out=args.out, table=args.table, plot=args.plot)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", help="a trained digits workdir (not needed with --tiny)")
  p.add_argument("--student", help="a trained student workdir (configs/digits_student.py)")
  p.add_argument("--root", default="/tmp/quant_bench", help="scratch folder for the stores")
  p.add_argument("--out", required=True, help="JSON of every row")
  p.add_argument("--table", required=True, help="markdown table")
  p.add_argument("--plot", required=True, help="PNG: digits quality against bytes")
  p.add_argument("--num", type=int, default=1000, help="digits samples for SVC / FDD")
  p.add_argument("--calib-num", type=int, default=64, help="W8A8 calibration latents")
  p.add_argument("--err-batch", type=int, default=64, help="images per σ for the error")
  p.add_argument("--drift-num", type=int, default=64, help="samples for the drift")
  p.add_argument("--speed-num", type=int, default=64, help="images per timed sampling run")
  p.add_argument("--cifar-err-batch", type=int, default=8)
  p.add_argument("--cifar-drift-num", type=int, default=4)
  p.add_argument("--cifar-speed-num", type=int, default=4)
  p.add_argument("--cifar-calib-num", type=int, default=8,
                 help="W8A8 calibration latents for CIFAR (each runs 35 NFE of a 56 M network)")
  p.add_argument("--cifar-steps", type=int, default=None,
                 help="CIFAR sampler steps (default the config's Heun 18, 35 NFE: on a 2-core CPU "
                      "each 56 M-parameter sampling run of 4 images takes minutes)")
  p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
  p.add_argument("--tiny", action="store_true", help="tiny random networks, tiny counts (tests)")
  args = p.parse_args(argv)
  if not args.tiny and not args.workdir:
    p.error("--workdir is required (or --tiny)")
  if args.tiny:
    # One batch shape everywhere: one sampler compile per variant.
    args.num = args.err_batch = args.drift_num = args.speed_num = 10
    args.calib_num = 2
    args.cifar_err_batch = args.cifar_drift_num = args.cifar_speed_num = args.cifar_calib_num = 2
  the_plan = plan(args)
  if args.dry_run:
    print(json.dumps(the_plan, indent=1))
    return 0
  from digits_quality import real_digits_classifier
  clf, real_acc = real_digits_classifier()
  teacher, cifar, student = load_models(args)
  result = dict(num=args.num, real_heldout_accuracy=real_acc, plan=the_plan)
  result["digits"] = measure_network("digits", teacher, args.root, args, True, clf)
  cargs = argparse.Namespace(**{**vars(args), "err_batch": args.cifar_err_batch,
                                "drift_num": args.cifar_drift_num,
                                "speed_num": args.cifar_speed_num,
                                "calib_num": args.cifar_calib_num})
  result["cifar10_ddpmpp"] = measure_network("cifar10_ddpmpp", cifar, args.root, cargs, False)
  if student is not None:
    result["student"] = measure_student(student, teacher, args, clf)
  for path in (args.out, args.table):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  with open(args.table, "w") as f:
    f.write(table(result))
  plot(result, args.plot)
  print(table(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
