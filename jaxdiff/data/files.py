"""The reference's dataset format: a folder or an uncompressed ZIP of PNG images, with optional
labels in `dataset.json` = {"labels": [["00000/img00000000.png", 6], ...]} (paths relative to the
root, '/' separators). Images are sorted by path, as the reference does; read on demand."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from jaxdiff.errors import JaxdiffError

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class FileSource:
  def __init__(self, path: str):
    self.name = path
    if not os.path.exists(path):
      raise JaxdiffError(f"dataset {path!r} does not exist; point data.name at a folder or ZIP "
                         "of images (zip:PATH or folder:PATH)")
    self._zip = None
    if os.path.isdir(path):
      names = [os.path.relpath(os.path.join(d, f), path).replace(os.sep, "/")
               for d, _, fs in os.walk(path) for f in fs]
    elif zipfile.is_zipfile(path):
      self._zip = zipfile.ZipFile(path)
      names = self._zip.namelist()
    else:
      raise JaxdiffError(f"dataset {path!r} is neither a folder nor a ZIP file; see the reference's "
                         "dataset_tool.py for the format")
    self._path = path
    self._files = sorted(n for n in names if n.lower().endswith(_IMAGE_EXT))
    self.labels = None
    self.num_classes = 0
    if "dataset.json" in names:
      meta = json.loads(self._read("dataset.json"))
      if meta.get("labels") is not None:
        by_name = dict(meta["labels"])
        missing = [f for f in self._files if f not in by_name]
        if missing:
          raise JaxdiffError(f"dataset {path!r}: dataset.json has no label for {missing[0]!r} "
                             f"({len(missing)} images unlabelled); label every image or drop labels")
        self.labels = np.asarray([by_name[f] for f in self._files], np.int64)
        if self.labels.ndim != 1:
          raise JaxdiffError(f"dataset {path!r}: labels must be class indices (one int per image)")
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
    if self._files:
      first = self._image(0)
      self.resolution, self.channels = first.shape[0], first.shape[2]
    else:
      self.resolution = self.channels = 0

  def __getstate__(self):
    # An open ZipFile cannot cross into grain's worker processes: each reopens the archive.
    state = dict(self.__dict__)
    state["_zip"] = state["_zip"] is not None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._zip = zipfile.ZipFile(self._path) if state["_zip"] else None

  def _read(self, name: str) -> bytes:
    if self._zip is not None:
      return self._zip.read(name)
    with open(os.path.join(self._path, name), "rb") as f:
      return f.read()

  def _image(self, i: int) -> np.ndarray:
    from PIL import Image
    try:
      img = np.asarray(Image.open(io.BytesIO(self._read(self._files[i]))))
    except Exception as e:
      raise JaxdiffError(f"dataset {self._path!r}: cannot decode {self._files[i]!r} ({e})") from None
    return img[..., None] if img.ndim == 2 else img

  def __len__(self) -> int:
    return len(self._files)

  def get(self, indices):
    images = []
    for i in indices:
      img = self._image(int(i))
      if img.shape != (self.resolution, self.resolution, self.channels):
        raise JaxdiffError(f"dataset {self._path!r}: {self._files[int(i)]!r} has shape {img.shape}, "
                           f"others {(self.resolution, self.resolution, self.channels)}; all images "
                           "must be square and of one size and channel count")
      images.append(img)
    images = np.stack(images).astype(np.float32) / 127.5 - 1.0
    labels = (self.labels[np.asarray(indices)].astype(np.int32) if self.labels is not None
              else np.zeros(len(indices), np.int32))
    return images, labels
