"""The one exception type users see: a one-line message saying what was wrong and what to do."""


class JaxdiffError(Exception):
  """A user-facing error. The CLI prints `jaxdiff CMD: error: MESSAGE` and exits with status 2."""
