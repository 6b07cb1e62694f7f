"""Importing reference (NVlabs/edm2) Precond state dicts: names, layouts, buffers, errors, round trip."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdiff.convert import edm2 as C
from jaxdiff.errors import JaxdiffError
from jaxdiff.nets import build_network


def _cfg(**kw):
  base = dict(arch="edm2", model_channels=8, channel_mult=(1, 2), num_blocks=1,
              attn_resolutions=(4,), channels_per_head=8, logvar_channels=4)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _abstract(cfg):
  return nnx.eval_shape(lambda: build_network(cfg, img_resolution=8, img_channels=3,
                                              label_dim=10, rngs=nnx.Rngs(0)))


def _random_state_dict(net, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {k: v.shape for k, v in C.export_state_dict(
      net, jax.tree.map(lambda s: np.zeros(s.shape, np.float32), nnx.state(net, nnx.Param))).items()}
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  return sd  # buffers random too: a reference network's own draw


def test_names_layouts_and_round_trip():
  net = _abstract(_cfg())
  sd = _random_state_dict(net)
  # Hand-written reference names and PyTorch shapes (OIHW, [out, in], scalar gains, buffers).
  expected = {"unet.enc.8x8_conv.weight": (8, 4, 3, 3), "unet.emb_noise.weight": (16, 8),
              "unet.emb_label.weight": (16, 10), "unet.out_gain": (),
              "unet.enc.4x4_block0.conv_skip.weight": (16, 8, 1, 1),
              "unet.enc.4x4_block0.attn_qkv.weight": (48, 16, 1, 1),
              "unet.dec.8x8_up.emb_gain": (), "unet.out_conv.weight": (3, 8, 3, 3),
              "logvar_linear.weight": (1, 4), "unet.emb_fourier.freqs": (8,),
              "unet.emb_fourier.phases": (8,), "logvar_fourier.freqs": (4,)}
  for k, shape in expected.items():
    assert sd[k].shape == shape, k
  assert not any("bias" in k for k in sd)
  updates = C.config_updates(sd)
  assert sorted(updates) == sorted(k for k, _ in C.BUFFERS.values())
  cfg = _cfg(**updates)
  net2 = _abstract(cfg)
  assert net2.unet.emb_fourier.freqs == tuple(float(v) for v in sd["unet.emb_fourier.freqs"])
  params = C.import_state_dict(net2, sd)
  # layouts: OIHW -> HWIO, [out, in] -> [in, out]
  w = np.asarray(params["unet"]["enc"]["8x8_conv"]["weight"][...])
  assert w.shape == (3, 3, 4, 8) and w[0, 1, 2, 5] == sd["unet.enc.8x8_conv.weight"][5, 2, 0, 1]
  lw = np.asarray(params["logvar_linear"]["weight"][...])
  assert lw.shape == (4, 1) and lw[3, 0] == sd["logvar_linear.weight"][0, 3]
  back = C.export_state_dict(net2, params)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_errors_name_the_problem():
  net = _abstract(_cfg())
  sd = _random_state_dict(net)
  # buffers not put into the config first
  with pytest.raises(JaxdiffError, match="differing from the config"):
    C.import_state_dict(net, sd)
  net = _abstract(_cfg(**C.config_updates(sd)))
  bad = dict(sd)
  del bad["unet.out_gain"]
  bad["unet.extra.weight"] = np.zeros(3, np.float32)
  bad["unet.emb_label.weight"] = np.zeros((16, 9), np.float32)
  with pytest.raises(JaxdiffError, match="missing: unet.out_gain.*unexpected: unet.extra.weight.*"
                                         "mis-shaped: unet.emb_label.weight"):
    C.import_state_dict(net, bad)
  assert C.is_edm2_state_dict(sd) and not C.is_edm2_state_dict({"model.map_noise.freqs": 0})


@pytest.mark.slow  # end to end: builds, converts, checkpoints and reloads a network
def test_convert_cli_round_trip_for_an_edm2_config(tmp_path, capsys):
  """convert-edm dispatches on the config's arch: an EDM2 state dict (random weights and MPFourier
  buffers) goes into a checkpoint that jaxdiff.load returns unchanged; the buffers are recorded
  in config.json and adopted by a later run with the plain config file."""
  import json
  import os

  from jaxdiff import build, families, load
  from jaxdiff.cli import main
  from jaxdiff.config import load_config, to_json
  from jaxdiff.train import checkpoint as ckpt_lib
  config = "configs/digits_edm2.py"
  overrides = ["--config.model.model_channels=8", "--config.model.channel_mult=(1,2)",
               "--config.model.num_blocks=1", "--config.model.attn_resolutions=(4,)",
               "--config.model.channels_per_head=8", "--config.model.logvar_channels=4"]
  graphdef, params = families.make_network(build.experiment(load_config(config, overrides)),
                                           seed=1)
  sd = _random_state_dict(nnx.merge(graphdef, params), seed=5)
  np.savez(tmp_path / "edm2.npz", **sd)
  workdir = str(tmp_path / "run")
  args = ["convert-edm", "--src", str(tmp_path / "edm2.npz"), "--config", config,
          "--workdir", workdir]
  assert main(args + overrides) == 0
  model = load(workdir)
  back = C.export_state_dict(nnx.merge(model.graphdef, model.params), model.params)
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert np.shape(back[k]) == np.shape(sd[k]), k  # scalar gains stay scalars
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  with open(os.path.join(workdir, "config.json")) as f:
    assert len(json.load(f)["model"]["logvar_fourier_phases"]) == 4
  plain = load_config(config, overrides)
  assert build.adopt_recorded(workdir, plain) == sorted(
      ["emb_fourier_freqs", "emb_fourier_phases", "logvar_fourier_freqs", "logvar_fourier_phases"])
  ckpt_lib.check_or_write_config(workdir, to_json(plain))  # the same weights' meaning: accepted
  capsys.readouterr()
  # An EDM2 state dict with an EDM config (and an EDM one with the EDM2 config): one line, exit 2.
  wrong = ["convert-edm", "--src", str(tmp_path / "edm2.npz"), "--config", "configs/digits.py",
           "--workdir", str(tmp_path / "run2")]
  assert main(wrong) == 2
  err = capsys.readouterr().err.strip()
  assert "EDM2" in err and len(err.splitlines()) == 1
  np.savez(tmp_path / "edm.npz", **{"model.enc.8x8_conv.weight": np.zeros((8, 1, 3, 3), np.float32)})
  assert main(["convert-edm", "--src", str(tmp_path / "edm.npz"), "--config", config,
               "--workdir", str(tmp_path / "run3")] + overrides) == 2
  assert "EDM (NVlabs/edm)" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "run3" / "checkpoints")
