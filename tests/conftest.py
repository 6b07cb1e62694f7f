import os
import sys

import pytest

# One persistent XLA compilation cache for the whole test session, shared with the CLI
# subprocesses the tests start: the same tiny programs are compiled once, not once per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxdiff-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits.py")

# A digits model small enough that a test trains it in seconds.
TINY = ["--config.model.model_channels=8", "--config.model.channel_mult=(1,)",
        "--config.model.num_blocks=1", "--config.model.attn_resolutions=()",
        "--config.training.batch_size=16", "--config.training.steps=4",
        "--config.training.checkpoint_every=2", "--config.training.log_every=1",
        "--config.training.sample_every=0", "--config.sampler.num_steps=3"]


@pytest.fixture
def tiny_cfg():
  from jaxdiff.config import load_config
  return load_config(DIGITS, TINY)


def run_cli(*argv):
  """Runs `python -m jaxdiff ARGV` in a subprocess; returns (code, stdout, stderr)."""
  import subprocess
  proc = subprocess.run([sys.executable, "-m", "jaxdiff", *argv], capture_output=True, text=True,
                        cwd=ROOT, timeout=900)
  return proc.returncode, proc.stdout, proc.stderr


# The longest tests start first, so that with several xdist workers the suite's wall time is not
# one long test begun at the end (longest-first scheduling). Files are in order of their measured
# length; the other slow-marked tests follow, then everything else in collection order.
LONGEST_FIRST = ("test_main_job.py", "test_notebook.py", "test_edm2_workflow.py",
                 "test_portability.py", "test_fewstep_cli.py", "test_consistency_family.py",
                 "test_dg_sampling.py", "test_compare_cli.py", "test_discriminator_family.py",
                 "test_resume.py", "test_remat.py", "test_edm2_net.py")


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    if name in LONGEST_FIRST:
      return LONGEST_FIRST.index(name)
    return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)
  items.sort(key=rank)  # stable: collection order within a rank
