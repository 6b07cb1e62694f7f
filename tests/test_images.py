"""Sample grids: exact pixels on tiny hand-made images; labels; atomic writes; TensorBoard images."""

import numpy as np
import pytest

from jaxdiff import images as im


def _tiles(n, h=2, w=2, c=1):
  """Image i is filled with 10·(i+1) mod 250, except pixel (0, 0) which is 1 (marks orientation)."""
  x = np.zeros((n, h, w, c), np.uint8)
  for i in range(n):
    x[i] = (10 * (i + 1)) % 250
    x[i, 0, 0] = 1
  return x


def test_to_uint8_matches_reference_rounding():
  x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0], np.float64)
  want = np.clip(np.floor(x * 127.5 + 128), 0, 255)
  np.testing.assert_array_equal(im.to_uint8(x), want.astype(np.uint8))
  assert im.to_uint8(x).dtype == np.uint8


def test_grid_exact_pixels_with_gutter_and_upscaling():
  # 3 images 2x2, 2 columns, x2 nearest-neighbour (min_size=4), gutter 1 of value 255.
  g = im.grid(_tiles(3), cols=2, min_size=4, gutter=1, pad_value=255)
  assert g.dtype == np.uint8 and g.shape == (2 * 4 + 1, 2 * 4 + 1, 1)
  want = np.full((9, 9), 255, np.uint8)
  for i, (y, x) in enumerate([(0, 0), (0, 5), (5, 0)]):
    want[y:y + 4, x:x + 4] = 10 * (i + 1)
    want[y:y + 2, x:x + 2] = 1  # the marked source pixel became a 2x2 block
  # cell (1, 1) is unused: pad value; gutter row 4 and column 4: pad value
  np.testing.assert_array_equal(g[..., 0], want)


def test_grid_no_gutter_no_scale_is_plain_tiling():
  x = _tiles(4, h=3, w=2, c=3)
  g = im.grid(x, cols=2, min_size=1, gutter=0)
  assert g.shape == (6, 4, 3)
  np.testing.assert_array_equal(g[:3, :2], x[0])
  np.testing.assert_array_equal(g[:3, 2:], x[1])
  np.testing.assert_array_equal(g[3:, :2], x[2])
  np.testing.assert_array_equal(g[3:, 2:], x[3])


def test_upscale_factor():
  assert im.upscale_factor(8, 8, 32) == 4
  assert im.upscale_factor(8, 8, 30) == 4  # rounds up: never smaller than min_size
  assert im.upscale_factor(32, 32, 32) == 1
  assert im.upscale_factor(64, 16, 32) == 1


def test_grid_default_cols_and_digits_shape():
  g = im.grid(_tiles(100, 8, 8), gutter=2)  # 10x10 of 8x8 digits -> 32 px cells, 2 px gutters
  assert g.shape == (10 * 32 + 9 * 2, 10 * 32 + 9 * 2, 1)
  assert (g[32:34, :] == 255).all() and (g[:, 32:34] == 255).all()


def test_row_labels_drawn_left_of_rows_and_images_untouched():
  x = _tiles(4, 4, 4)
  plain = im.grid(x, cols=2, min_size=16, gutter=2)
  lab = im.grid(x, cols=2, min_size=16, gutter=2, row_labels=["sigma 80", ""])
  strip_w = lab.shape[1] - plain.shape[1]
  assert strip_w > 0 and lab.shape[0] == plain.shape[0]
  np.testing.assert_array_equal(lab[:, strip_w:], plain)  # the images are exactly where they were
  strip = lab[:, :strip_w, 0]
  row0, row1 = strip[:16], strip[18:]
  assert (row0 < 128).sum() > 5  # dark text on the white pad, in row 0's band
  assert (row1 == 255).all() and (strip[16:18] == 255).all()  # '' draws nothing


def test_grid_rejects_non_uint8():
  with pytest.raises(ValueError):
    im.grid(np.zeros((2, 4, 4, 1), np.float32))


def test_save_grid_roundtrip_and_no_temp_left(tmp_path):
  from PIL import Image
  x = _tiles(3, 2, 2, 3)
  path = tmp_path / "sub" / "g.png"
  g = im.save_grid(x, str(path), cols=2, min_size=4, gutter=1)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), g)
  assert sorted(p.name for p in path.parent.iterdir()) == ["g.png"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
  from jaxdiff.fileio import atomic_write
  path = tmp_path / "f.bin"
  path.write_bytes(b"old")

  def bad(f):
    f.write(b"half")
    raise RuntimeError("disk full")
  with pytest.raises(RuntimeError):
    atomic_write(str(path), bad)
  assert path.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_check_writable(tmp_path):
  import os

  from jaxdiff.errors import JaxdiffError
  from jaxdiff.fileio import check_writable
  check_writable(str(tmp_path / "new" / "deeper" / "a.npz"), "--out")  # folders made later: fine
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(JaxdiffError, match="regular file"):
    check_writable(str(blocker / "a.npz"), "--out")
  with pytest.raises(JaxdiffError, match="directory"):
    check_writable(str(tmp_path), "--grid")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe file is gone
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    if os.access(str(ro), os.W_OK):
      pytest.skip("running as root: permission bits do not stop writes (the regular-file case "
                  "above still covers an unwritable path)")
    with pytest.raises(JaxdiffError, match="not writable"):
      check_writable(str(ro / "a.npz"), "--out")
  finally:
    ro.chmod(0o755)


def _read_events(logdir):
  """(tag, step, value) for every summary value in the tensorboardX event files under logdir."""
  import glob
  import struct

  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(glob.glob(f"{logdir}/**/events.out.tfevents.*", recursive=True)):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in ev.summary.value:
        out.append((v.tag, ev.step, v))
  return out


def test_add_sample_grid_event_roundtrip(tmp_path):
  import io

  from PIL import Image
  from tensorboardX import SummaryWriter

  from jaxdiff.train.summaries import add_sample_grid
  x = _tiles(4, 2, 2)
  w = SummaryWriter(str(tmp_path))
  g = add_sample_grid(w, x, 7, cols=2, min_size=4, gutter=1)
  w.close()
  (tag, step, v), = [e for e in _read_events(tmp_path) if e[0] == "samples"]
  assert step == 7 and v.image.height == g.shape[0] and v.image.width == g.shape[1]
  decoded = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
  assert decoded.shape == g.shape[:2] + (3,)
  for ch in range(3):
    np.testing.assert_array_equal(decoded[..., ch], g[..., 0])
