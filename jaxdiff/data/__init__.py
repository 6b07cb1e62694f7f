"""Datasets: one random-access interface (`DataSource`) for digits, TFDS and files."""

from jaxdiff.data.pipeline import batch_indices
from jaxdiff.data.source import ArraySource, DataSource, XFlipSource, check_source
from jaxdiff.errors import JaxdiffError


def open_source(name: str, *, tfds_data_dir: str | None = None, split: str = "train"):
  """Opens a dataset by its config name: `digits`, `tfds:<name>`, `zip:<path>`, `folder:<path>`."""
  if name == "digits":
    from jaxdiff.data.digits import load_digits_source
    return load_digits_source()
  if name.startswith("tfds:"):
    from jaxdiff.data.tfds_source import TFDSSource
    return TFDSSource(name[len("tfds:"):], split=split, data_dir=tfds_data_dir)
  if name.startswith(("zip:", "folder:")):
    from jaxdiff.data.files import FileSource
    return FileSource(name.split(":", 1)[1])
  raise JaxdiffError(f"unknown data.name {name!r}; use 'digits', 'tfds:<name>' (e.g. tfds:cifar10), "
                     "'zip:<path>' or 'folder:<path>'")


__all__ = ["ArraySource", "DataSource", "batch_indices", "XFlipSource", "check_source",
           "open_source"]
