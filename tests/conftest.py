import os
import sys

import pytest

from jaxdiff import xla_cpu  # imports no JAX, so the XLA_FLAGS set below still take effect

# One persistent XLA compilation cache for the whole test session, shared with the CLI
# subprocesses the tests start: the same programs are compiled once, not once per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxdiff-test-xla-cache"))
# Programs that compile in under a second are not written: writing every tiny eager op's program
# costs more than recompiling it (tests/test_train.py alone, cold cache: 99 / 87 s writing all,
# 87 / 80 s with this threshold, two alternated runs each).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Tests check values, not speed, and the suite is bound by XLA compiles of many small programs:
# at backend optimisation level 0 they compile several times faster (test_remat[unet]: 123 → 46
# CPU seconds; one truncated-normal init 3.2 → 0.6 s). The few tests that run real training at
# length (the README's main job, the notebook) get the optimised backend back through
# `optimized_env()`. JAXDIFF_TEST_OPTIMIZED=1 keeps the optimised backend everywhere.
# XLA:CPU's MLIR fusion emitters build an MLIR pipeline per fusion; the older elemental emitter
# compiles the same programs faster (test_remat.py + test_adversarial_family.py, cold cache, one
# worker: 112.6 / 118.4 s -> 85.3 / 88.9 s). Only on the jaxlib the commands' own flags were
# measured on (jaxdiff/xla_cpu.py): XLA aborts on a flag it does not know.
ORIGINAL_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
FAST_COMPILE_FLAGS = ["--xla_backend_optimization_level=0"]
if xla_cpu.jaxlib_minor() == xla_cpu.MEASURED_ON:
  FAST_COMPILE_FLAGS.append("--xla_cpu_use_fusion_emitters=false")
if (os.environ.get("JAXDIFF_TEST_OPTIMIZED") != "1"
    and "--xla_backend_optimization_level" not in ORIGINAL_XLA_FLAGS):
  os.environ["XLA_FLAGS"] = " ".join([ORIGINAL_XLA_FLAGS, *FAST_COMPILE_FLAGS]).strip()


# The same choice for one program inside this process: jax.jit's compiler_options override the
# session's XLA_FLAGS for that program only. For test programs that run long loops at tiny sizes
# (test_losses: 1,200 Adam steps of an MLP), where execution at level 0, not compiling, is the cost.
OPTIMIZED_COMPILE = {"xla_backend_optimization_level": 3}  # optimised; the session sets 0
if xla_cpu.jaxlib_minor() == xla_cpu.MEASURED_ON:
  OPTIMIZED_COMPILE["xla_cpu_use_fusion_emitters"] = True


def optimized_jit(fun, **kwargs):
  """jax.jit(fun) compiled with the optimised XLA backend, whatever the session's flags."""
  import jax
  return jax.jit(fun, compiler_options=OPTIMIZED_COMPILE, **kwargs)


def optimized_env(environ=None) -> dict:
  """A copy of the environment with the XLA flags the test session started with."""
  env = dict(os.environ if environ is None else environ)
  if ORIGINAL_XLA_FLAGS:
    env["XLA_FLAGS"] = ORIGINAL_XLA_FLAGS
  else:
    env.pop("XLA_FLAGS", None)
  return env

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


def fake_devices_env(devices: int) -> dict:
  """The environment of a subprocess with `devices` fake CPU devices (and this session's flags)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")


def run_cli(*argv, optimized: bool = False):
  """Runs `python -m jaxdiff ARGV` in a subprocess; returns (code, stdout, stderr). optimized:
  with the optimised XLA backend (for runs whose compute, not compiles, is the cost)."""
  import subprocess
  proc = subprocess.run([sys.executable, "-m", "jaxdiff", *argv], capture_output=True, text=True,
                        cwd=ROOT, timeout=900, env=optimized_env() if optimized else None)
  return proc.returncode, proc.stdout, proc.stderr


def run_main(capsys, *argv):
  """`jaxdiff ARGV` in this process: (code, stdout, stderr) as run_cli gives them, without an
  interpreter start and with the programs this process already compiled (a tiny digits training,
  warm compilation cache: `python -m jaxdiff train` 6.7 s, `run_training` repeated in a warm
  process 2.8 s). The tests of
  what a separate process shows (exactly one JSON object on stdout, signals, the device count)
  keep run_cli."""
  from jaxdiff.cli import main
  capsys.readouterr()
  try:
    code = main(list(argv))
  except SystemExit as e:  # argparse's usage errors exit 2
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


# The longest tests start first, so that with several xdist workers the suite's wall time is not
# one long test begun at the end (longest-first scheduling). Files are in order of their measured
# length (--durations of a whole run, 2026-12-02, after the in-process CLI tests); the other
# slow-marked tests follow, then everything else in collection order.
LONGEST_FIRST = ("test_main_job.py", "test_multistage_step.py", "test_portability.py",
                 "test_resume.py", "test_remat.py", "test_adversarial_family.py", "test_train.py",
                 "test_notebook.py", "test_consistency_family.py",
                 "test_bench_quant.py", "test_bench_adversarial.py", "test_compare_cli.py",
                 "test_multistage_net.py", "test_losses.py", "test_edm2_workflow.py",
                 "test_dg_sampling.py", "test_eval_cli.py", "test_quant.py", "test_student.py")


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    if name in LONGEST_FIRST:
      return LONGEST_FIRST.index(name)
    return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)
  items.sort(key=rank)  # stable: collection order within a rank
