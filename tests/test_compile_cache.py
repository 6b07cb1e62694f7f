import os
import subprocess
import sys

from conftest import ROOT
from jaxdiff import compile_cache


def test_cache_dir_default_off_and_explicit(tmp_path):
  env = {"HOME": str(tmp_path)}
  assert compile_cache.cache_dir(env) == os.path.join(str(tmp_path), ".cache", "jaxdiff", "xla")
  assert compile_cache.cache_dir({**env, "XDG_CACHE_HOME": "/x"}) == "/x/jaxdiff/xla"
  for off in ("0", "off", "False"):
    assert compile_cache.cache_dir({**env, compile_cache.ENV: off}) is None
  assert compile_cache.cache_dir({**env, compile_cache.ENV: "/somewhere"}) == "/somewhere"
  # A directory the user already gave jax wins over the default.
  assert compile_cache.cache_dir({**env, "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"


def _info(env):
  cmd = [sys.executable, "-m", "jaxdiff", "info", "--config", "configs/digits.py", "--json",
         "--config.model.model_channels=8", "--config.model.channel_mult=(1,)"]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_commands_write_the_cache_and_can_turn_it_off(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  cache = tmp_path / "cache"
  proc = _info({**env, compile_cache.ENV: str(cache)})
  assert proc.returncode == 0, proc.stderr
  assert cache.is_dir() and any(cache.iterdir()), "no compiled program was cached"
  off_home = tmp_path / "home"
  proc = _info({**env, compile_cache.ENV: "0", "HOME": str(off_home), "XDG_CACHE_HOME": ""})
  assert proc.returncode == 0, proc.stderr
  assert not (off_home / ".cache" / "jaxdiff").exists()
