#!/usr/bin/env python3
"""Multi-node GPU launcher: one `jaxdiff train` process per node over ssh, joined by
jax.distributed (the first host is the coordinator).

  python launch/gpu_multinode.py --hosts node1,node2 --config configs/X.py --workdir /shared/run \
      [--port 1234] [--repo /path/to/jaxdiff/on/nodes] [--dry-run] [--config.KEY=VALUE ...]

Every node must see the repository (same path) and the workdir (a shared filesystem). Each process
uses all GPUs of its node; JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID tell
`jaxdiff train` to call jax.distributed.initialize(). Re-running the same command after a failure
resumes from the newest intact checkpoint. Under Slurm, `srun python -m jaxdiff train ...` needs no
launcher: JAX reads Slurm's variables itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fail, quote, train_command  # noqa: E402


def node_commands(hosts, port, repo, config, workdir, overrides):
  coordinator = f"{hosts[0]}:{port}"
  cmds = []
  for i, host in enumerate(hosts):
    env = (f"JAX_COORDINATOR_ADDRESS={coordinator} JAX_NUM_PROCESSES={len(hosts)} "
           f"JAX_PROCESS_ID={i}")
    remote = f"cd {quote([repo])} && {env} " + quote(train_command(config, workdir, overrides))
    cmds.append(["ssh", host, remote])
  return cmds


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--hosts", required=True, help="comma-separated host names; the first coordinates")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--port", type=int, default=1234)
  p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  a, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    return fail(f"unknown arguments {bad}; config overrides look like --config.KEY=VALUE")
  hosts = [h for h in a.hosts.split(",") if h]
  if not hosts:
    return fail("--hosts is empty; give at least one host")
  cmds = node_commands(hosts, a.port, a.repo, a.config, a.workdir, overrides)
  for c in cmds:
    print(("[dry-run] " if a.dry_run else "+ ") + quote(c), flush=True)
  if a.dry_run:
    return 0
  procs = [subprocess.Popen(c) for c in cmds]
  codes = [proc.wait() for proc in procs]
  return max(codes, key=abs)


if __name__ == "__main__":
  sys.exit(main())
