"""The launchers' --dry-run prints the commands a real launch would run, and runs none."""

import os
import subprocess
import sys

from conftest import ROOT

TPU = os.path.join(ROOT, "launch", "tpu_vm.py")
GPU = os.path.join(ROOT, "launch", "gpu_multinode.py")


def _dry(script, *argv):
  proc = subprocess.run([sys.executable, script, *argv, "--dry-run"], capture_output=True,
                        text=True, cwd=ROOT, timeout=60, env=dict(os.environ, PATH="/nonexistent"))
  return proc.returncode, proc.stdout, proc.stderr


def _lines(out):
  return [line for line in out.splitlines() if line.startswith("[dry-run] ")]


def test_tpu_create_copy_train():
  where = ["--name", "edm", "--zone", "us-central2-b"]
  code, out, _ = _dry(TPU, "create", *where, "--accelerator-type", "v4-32", "--spot")
  assert code == 0
  (line,) = _lines(out)
  assert line.startswith("[dry-run] gcloud compute tpus tpu-vm create edm --zone=us-central2-b")
  assert "--accelerator-type=v4-32" in line and "--spot" in line
  code, out, _ = _dry(TPU, "copy", *where)
  assert code == 0 and len(_lines(out)) == 3 and all("--worker=all" in l for l in _lines(out)[1:])
  code, out, _ = _dry(TPU, "train", *where, "--config", "configs/cifar10_ddpmpp.py",
                      "--workdir", "gs://b/run", "--config.training.batch_size=256")
  (line,) = _lines(out)
  assert "--worker=all" in line and "jaxdiff train --config configs/cifar10_ddpmpp.py" in line
  assert "--workdir gs://b/run --config.training.batch_size=256" in line


def test_tpu_resume_shows_recreate_and_train():
  code, out, _ = _dry(TPU, "resume", "--name", "edm", "--zone", "z", "--config", "c.py",
                      "--workdir", "gs://b/r")
  assert code == 0
  verbs = [l.split()[5] if "tpu-vm" in l else l.split()[1] for l in _lines(out)]
  assert verbs == ["describe", "delete", "create", "git", "scp", "ssh", "ssh"]


def test_tpu_bad_arguments():
  code, _, err = _dry(TPU, "train", "--name", "x", "--zone", "z")
  assert code == 2 and "needs --config and --workdir" in err
  code, _, err = _dry(TPU, "train", "--name", "x", "--zone", "z", "--config", "c", "--workdir",
                      "w", "--bogus")
  assert code == 2 and "unknown arguments" in err


def test_gpu_multinode_one_process_per_node():
  code, out, _ = _dry(GPU, "--hosts", "n0,n1,n2", "--config", "configs/digits.py", "--workdir",
                      "/shared/run", "--port", "4321", "--config.training.fsdp=True")
  assert code == 0
  lines = _lines(out)
  assert len(lines) == 3
  for i, (line, host) in enumerate(zip(lines, ["n0", "n1", "n2"])):
    assert line.startswith(f"[dry-run] ssh {host} ")
    assert "JAX_COORDINATOR_ADDRESS=n0:4321" in line and "JAX_NUM_PROCESSES=3" in line
    assert f"JAX_PROCESS_ID={i}" in line and "--config.training.fsdp=True" in line
  code, _, err = _dry(GPU, "--hosts", ",", "--config", "c", "--workdir", "w")
  assert code == 2 and "--hosts is empty" in err
