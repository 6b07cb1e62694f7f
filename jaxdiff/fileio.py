"""Output files: check a path can be written before the work that fills it, write it atomically."""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from jaxdiff.errors import JaxdiffError


def check_writable(path: str, flag: str) -> None:
  """Raises JaxdiffError (naming `flag` and `path`) unless a file can be created at `path`.

  Checked by creating (and removing) a temporary file in the nearest existing folder above `path`:
  that catches read-only folders and mounts, and paths below a regular file, also as root, where
  permission bits alone say nothing. Folders that do not exist yet are fine (they are made later).
  """
  full = os.path.abspath(path)
  if os.path.isdir(full):
    raise JaxdiffError(f"{flag} {path!r} is a directory; give a file name")
  folder = os.path.dirname(full)
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    raise JaxdiffError(f"cannot write {flag} {path!r}: {folder!r} is a regular file, not a folder")
  try:
    fd, probe = tempfile.mkstemp(prefix=".jaxdiff-probe-", dir=folder)
  except OSError as e:
    raise JaxdiffError(f"cannot write {flag} {path!r}: folder {folder!r} is not writable "
                       f"({e.strerror})") from None
  os.close(fd)
  os.remove(probe)


def atomic_write(path: str, write: Callable) -> None:
  """write(binary file) fills a temporary file beside `path`, which then replaces `path`.

  A crash or an error mid-write leaves `path` as it was (absent or the previous file), and the
  temporary file is removed. Missing folders above `path` are made. The one atomic write: every
  output file (samples, grids, statistics, config.json, summaries) goes through it.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_savez(path: str, **arrays) -> None:
  """np.savez(path, **arrays) through `atomic_write`: readers never see half a file."""
  import numpy as np
  atomic_write(os.fspath(path), lambda f: np.savez(f, **arrays))


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
