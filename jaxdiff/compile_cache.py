"""The persistent XLA compilation cache the `jaxdiff` commands use.

A train step or a sampler loop takes tens of seconds to compile on a CPU; jax can keep compiled
programs on disk keyed by the program, the backend and the flags, so `jaxdiff sample` after
`jaxdiff train`, a resumed run and every rerun load what an earlier command compiled. On by default
in the user's cache directory; `JAXDIFF_COMPILATION_CACHE=0` turns it off, any other value is taken
as the directory. A directory already given to jax (JAX_COMPILATION_CACHE_DIR) is left as set.
"""

from __future__ import annotations

import os

ENV = "JAXDIFF_COMPILATION_CACHE"


def default_dir(environ=None) -> str:
  environ = os.environ if environ is None else environ
  home = environ.get("HOME") or os.path.expanduser("~")
  base = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
  return os.path.join(base, "jaxdiff", "xla")


def cache_dir(environ=None) -> str | None:
  """The directory the commands cache compiled programs in, or None when the cache is off."""
  environ = os.environ if environ is None else environ
  value = environ.get(ENV, "")
  if value.lower() in ("0", "off", "false", "no"):
    return None
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return environ["JAX_COMPILATION_CACHE_DIR"]
  return value or default_dir(environ)


def apply(environ=None) -> str | None:
  """Points jax at the cache (before the first compile); returns the directory or None.

  Every program is cached, however fast it compiled: a command compiles a few dozen small programs
  (data placement, metrics) whose sum is seconds on a CPU.
  """
  environ = os.environ if environ is None else environ
  path = cache_dir(environ)
  if path is None:
    return None
  import jax
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # an unwritable cache must never stop a command: it only costs compile time
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))
  return path
