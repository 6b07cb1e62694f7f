#!/usr/bin/env python3
"""Cloud TPU VM launcher: create a TPU VM (slice), copy this repository to every worker, run
`jaxdiff train` on all workers at once, and resume after preemption.

  python launch/tpu_vm.py create --name NAME --zone ZONE --accelerator-type v4-32 [--spot]
  python launch/tpu_vm.py copy   --name NAME --zone ZONE
  python launch/tpu_vm.py train  --name NAME --zone ZONE --config configs/X.py --workdir gs://B/run
  python launch/tpu_vm.py resume --name NAME --zone ZONE ... (recreate if preempted, copy, train)
  python launch/tpu_vm.py delete --name NAME --zone ZONE

Add --dry-run to print the gcloud commands instead of running them. The workdir must be shared by
all workers (a gs:// bucket); JAX finds the other workers itself on Cloud TPU, so every worker
runs the same command, and `jaxdiff train` resumes from the workdir's newest intact checkpoint.
Spot / preemptible VMs get SIGTERM before they stop: the trainer saves a checkpoint then.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Runner, fail, quote, train_command  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "~/jaxdiff"


def _base(a):
  return ["gcloud", "compute", "tpus", "tpu-vm"]


def _where(a):
  out = [a.name, f"--zone={a.zone}"]
  return out + ([f"--project={a.project}"] if a.project else [])


def create(run, a):
  cmd = _base(a) + ["create"] + _where(a) + [f"--accelerator-type={a.accelerator_type}",
                                             f"--version={a.version}"]
  if a.spot:
    cmd.append("--spot")
  run(cmd)


def copy(run, a):
  # A source tarball (tracked files only), then unpack and install on every worker.
  tarball = "/tmp/jaxdiff-src.tar.gz"
  run(["git", "-C", ROOT, "archive", "--format=tar.gz", "-o", tarball, "HEAD"])
  run(_base(a) + ["scp", tarball, f"{a.name}:/tmp/"] + _where(a)[1:] + ["--worker=all"])
  setup = (f"mkdir -p {REMOTE_DIR} && tar -xzf {tarball} -C {REMOTE_DIR} && "
           f"pip install -q -e {REMOTE_DIR} 'jax[tpu]' "
           "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html")
  run(_base(a) + ["ssh"] + _where(a) + ["--worker=all", f"--command={setup}"])


def train(run, a):
  cmd = f"cd {REMOTE_DIR} && " + quote(train_command(a.config, a.workdir, a.overrides))
  run(_base(a) + ["ssh"] + _where(a) + ["--worker=all", f"--command={cmd}"])


def state(run, a) -> str:
  out = run(_base(a) + ["describe"] + _where(a) + ["--format=value(state)"], check=False,
            capture=True)
  return (out or "").strip()


def resume(run, a):
  """A preempted spot VM is PREEMPTED (or gone): delete it, create it again, copy, train."""
  s = "READY" if run.dry_run else state(run, a)
  if run.dry_run:
    state(run, a)
    print("# if that state is PREEMPTED / TERMINATED / missing:", flush=True)
  if run.dry_run or s != "READY":
    if run.dry_run or s:
      run(_base(a) + ["delete"] + _where(a) + ["--quiet"], check=False)
    create(run, a)
    copy(run, a)
  train(run, a)


def delete(run, a):
  run(_base(a) + ["delete"] + _where(a) + ["--quiet"])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("action", choices=["create", "copy", "train", "resume", "delete"])
  p.add_argument("--name", required=True)
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--accelerator-type", default="v4-8")
  p.add_argument("--version", default="tpu-ubuntu2204-base")
  p.add_argument("--spot", action="store_true", help="spot VM (cheaper, preemptible)")
  p.add_argument("--config", default=None)
  p.add_argument("--workdir", default=None)
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  a, a.overrides = p.parse_known_args(argv)
  bad = [o for o in a.overrides if not o.startswith("--config.")]
  if bad:
    return fail(f"unknown arguments {bad}; config overrides look like --config.KEY=VALUE")
  if a.action in ("train", "resume") and not (a.config and a.workdir):
    return fail(f"{a.action} needs --config and --workdir")
  run = Runner(a.dry_run)
  {"create": create, "copy": copy, "train": train, "resume": resume, "delete": delete}[a.action](
      run, a)
  return 0


if __name__ == "__main__":
  sys.exit(main())
