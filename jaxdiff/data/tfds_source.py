"""TFDS image datasets through `tfds.data_source` (random access over array_record, no TensorFlow)."""

from __future__ import annotations

import numpy as np

from jaxdiff.errors import JaxdiffError


class TFDSSource:
  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               image_key: str = "image", label_key: str = "label"):
    import tensorflow_datasets as tfds
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise JaxdiffError(f"TFDS has no dataset named {name!r}; see the TFDS catalog for names "
                         "(e.g. cifar10, mnist, celeb_a)") from None
    try:
      # download=False: jaxdiff never downloads at run time; preparing is an explicit user step.
      self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception:  # TFDS raises assorted types for "not prepared" / "wrong file format"
      raise JaxdiffError(
          f"TFDS dataset {name!r} is not prepared as array_record in {builder.data_dir}; prepare "
          f"it once with `tfds build {name} --file_format=array_record --data_dir DIR` (needs "
          "tensorflow and network) and set data.tfds_data_dir=DIR") from None
    features = builder.info.features
    self._image_key, self._label_key = image_key, label_key
    self.name = f"tfds:{name}"
    shape = features[image_key].shape
    self.resolution, self.channels = shape[0], shape[2]
    self.num_classes = features[label_key].num_classes if label_key in features else 0

  def __len__(self) -> int:
    return len(self._ds)

  def get(self, indices):
    records = [self._ds[int(i)] for i in indices]
    images = np.stack([r[self._image_key] for r in records]).astype(np.float32) / 127.5 - 1.0
    if self.num_classes:
      labels = np.asarray([r[self._label_key] for r in records], np.int32)
    else:
      labels = np.zeros(len(records), np.int32)
    return images, labels
