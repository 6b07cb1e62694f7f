"""Where jaxdiff keeps files it makes for the user (digits classifier, converted Inception weights)."""

from __future__ import annotations

import os


def cache_dir() -> str:
  """$JAXDIFF_CACHE, else $XDG_CACHE_HOME/jaxdiff, else ~/.cache/jaxdiff (not created here)."""
  explicit = os.environ.get("JAXDIFF_CACHE")
  if explicit:
    return os.path.expanduser(explicit)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxdiff")
