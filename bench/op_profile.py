"""Where a jaxdiff program's time goes on the CPU, by op kind (issue 16's profile).

  python bench/op_profile.py [--program forward|train] [--runs 3] [--config configs/cifar10_ddpmpp.py]
                          [--config.key=value ...] [--top 12] [--json]

Defaults: DDPM++ at model_channels 32, batch 32, 32x32 (`jaxdiff bench`'s row in docs/bench.md).
`forward` is the denoiser D(x; sigma) as the sampler calls it; `train` is one whole train step
(loss, gradient, Adam, EMA). The program is compiled, run once, then run --runs times under
jax.profiler. XLA:CPU records one event when each thunk (a fusion, a convolution, a dot) starts
and an "end:" marker when it finishes; a thunk's time is start to end, so two thunks running at
once both count (the "thunk-seconds" exceed the wall time). Each thunk is attributed to the
innermost jax.named_scope of its HLO instruction (jaxdiff.nets.layers scopes its linear, conv,
resample, group_norm and attention code); anything else is "other". Needs an idle machine: the
load average is printed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxdiff import xla_cpu  # noqa: E402

xla_cpu.apply()  # the XLA CPU flags the jaxdiff commands run with (before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

KINDS = ("attention", "resample", "group_norm", "conv", "linear")  # innermost first
DEFAULT_OVERRIDES = ["--config.model.model_channels=32", "--config.training.batch_size=32"]


def op_kinds(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: op kind} from each instruction's op_name metadata."""
  kinds = {}
  for m in re.finditer(r"%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"", hlo_text):
    scopes = m.group(2).split("/")
    # Under autodiff a scope reads "jvp(conv)" or "transpose(jvp(conv))".
    inner = [re.sub(r"^(?:\w+\()+|\)+$", "", s) for s in reversed(scopes)]
    kinds[m.group(1)] = next((s for s in inner if s in KINDS), "other")
  return kinds


def thunk_times(xplane_path: str) -> tuple[dict[str, int], int, int]:
  """({thunk name: summed start-to-end ns}, busy ns (union of thunks), span ns)."""
  from jax.profiler import ProfileData
  data = ProfileData.from_file(xplane_path)
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for plane in data.planes:
    for line in plane.lines:
      if "Eigen" not in line.name:  # XLA:CPU's intra-op pool runs the thunks
        continue
      for e in line.events:
        if e.name.startswith("end: "):
          ends[e.name[5:]].append(e.start_ns + e.duration_ns)
        elif not e.name.startswith(("ThunkExecutor", "Threadpool", "SlinkyThreadPool")):
          starts[e.name].append((e.start_ns, e.start_ns + e.duration_ns))
  per, spans = collections.Counter(), []
  for name, ss in starts.items():
    ss.sort()
    ee = sorted(ends.get(name, []))
    for i, (s, e) in enumerate(ss):
      end = ee[i] if i < len(ee) and ee[i] >= s else e  # a synchronous thunk has no marker
      per[name] += end - s
      spans.append((s, end))
  spans.sort()
  busy, cur = 0, None
  for s, e in spans:
    if cur is None or s > cur[1]:
      busy += 0 if cur is None else cur[1] - cur[0]
      cur = [s, e]
    else:
      cur[1] = max(cur[1], e)
  busy += cur[1] - cur[0]
  return dict(per), busy, spans[-1][1] - spans[0][0]


def build_program(args, overrides):
  """(compiled fn, its arguments) of the chosen program."""
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  from jaxdiff.denoiser import make_denoiser
  exp = build.experiment(load_config(args.config, overrides))
  graphdef, params = families.make_network(exp, seed=0)
  batch = exp.training.batch_size
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, *exp.data.shape)), jnp.float32)
  if args.program == "forward":
    sigma = jnp.full((batch,), 1.0, jnp.float32)
    labels = (jax.nn.one_hot(jnp.arange(batch) % exp.label_dim, exp.label_dim)
              if exp.label_dim else None)
    fn = jax.jit(lambda p, x, s: make_denoiser(graphdef, p, exp.precond)(x, s, class_labels=labels))
    return fn.lower(params, x, sigma).compile(), (params, x, sigma)
  optimizer = families.make_optimizer(exp)
  step_cfg = families.step_config(exp, graphdef, optimizer)
  state = families.train_state(exp, params, optimizer, seed=0)
  step = families.compile_step(exp, step_cfg)
  data = {"image": jnp.clip(x, -1, 1),
          "label": jnp.asarray(rng.integers(0, max(exp.data.num_classes, 1), batch), jnp.int32)}
  return step.lower(state, data).compile(), (state, data)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--program", choices=("forward", "train"), default="forward")
  p.add_argument("--config", default=os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", "cifar10_ddpmpp.py"))
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--top", type=int, default=12, help="the slowest thunks to list")
  p.add_argument("--kind", help="list the slowest thunks of this kind only")
  p.add_argument("--json", action="store_true")
  args, overrides = p.parse_known_args(argv)
  overrides = DEFAULT_OVERRIDES + overrides
  load0 = os.getloadavg()[0]
  compiled, fn_args = build_program(args, overrides)
  jax.block_until_ready(compiled(*fn_args))  # warm-up (and a train step's donation-free run)
  t0 = time.perf_counter()
  for _ in range(args.runs):
    jax.block_until_ready(compiled(*fn_args))
  wall = (time.perf_counter() - t0) / args.runs
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(args.runs):
        jax.block_until_ready(compiled(*fn_args))
    per, busy, span = thunk_times(glob.glob(os.path.join(d, "**", "*.xplane.pb"),
                                            recursive=True)[0])
  kinds = op_kinds(compiled.as_text())
  by_kind = collections.Counter()
  for name, ns in per.items():
    by_kind[kinds.get(name, "other")] += ns
  total = sum(by_kind.values())
  ms = lambda ns: round(ns / args.runs / 1e6, 1)
  result = dict(program=args.program, config=os.path.basename(args.config), overrides=overrides,
                wall_ms=round(1000 * wall, 1), profiled_span_ms=ms(span), busy_ms=ms(busy),
                thunk_ms=ms(total), kinds={k: ms(v) for k, v in by_kind.most_common()},
                top=[(n, kinds.get(n, "other"), ms(v)) for n, v in
                     collections.Counter(per).most_common()
                     if args.kind in (None, kinds.get(n, "other"))][:args.top],
                load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
  if args.json:
    print(json.dumps(result, indent=1))
    return 0
  print(f"{args.program}: {result['wall_ms']} ms per run (unprofiled, mean of {args.runs}); "
        f"profiled span {result['profiled_span_ms']} ms, a thunk running "
        f"{result['busy_ms']} ms of it; {result['thunk_ms']} thunk-ms in all")
  print(f"{'kind':12s} {'thunk-ms':>9s} {'share':>6s}")
  for k, v in by_kind.most_common():
    print(f"{k:12s} {ms(v):9.1f} {100 * v / total:5.1f}%")
  print("slowest thunks:")
  for n, k, v in result["top"]:
    print(f"  {v:8.1f} ms  {k:11s} {n}")
  print(f"load average {result['load_before']} before, {result['load_after']} after")
  return 0


if __name__ == "__main__":
  sys.exit(main())
