"""Importing reference (NVlabs/edm) state dicts: names, layouts, errors, round trip, CLI."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdiff.convert import edm
from jaxdiff.errors import JaxdiffError
from jaxdiff.nets import build_network


def _tiny(arch, **kw):
  base = dict(arch=arch, model_channels=16, channel_mult=(1, 2), num_blocks=1,
              attn_resolutions=(4,), dropout=0.0, augment_dim=9)
  if arch == "adm":
    base["channels_per_head"] = 8
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _build(cfg, seed=0, label_dim=10):
  return build_network(cfg, img_resolution=8, img_channels=3, label_dim=label_dim,
                       rngs=nnx.Rngs(seed))


def _random_state_dict(net, seed=0):
  """The net's own names and shapes in the reference's scheme, filled with random values."""
  rng = np.random.default_rng(seed)
  sd = edm.export_state_dict(net)
  return {k: v if k.endswith(("resample_filter", "freqs")) else
          rng.standard_normal(v.shape).astype(np.float32) for k, v in sd.items()}


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, x, c, y, a):
  return nnx.merge(graphdef, params)(x, c, y, a)


def test_names_and_layouts_follow_the_reference():
  net = _build(_tiny("ncsnpp"))
  sd = edm.export_state_dict(net)
  # Hand-written reference names and PyTorch shapes (OIHW convolutions, [out, in] linears).
  expected = {
      "model.map_noise.freqs": (16,),
      "model.map_label.weight": (32, 10), "model.map_label.bias": (32,),
      "model.map_augment.weight": (32, 9),
      "model.map_layer0.weight": (64, 32), "model.map_layer1.weight": (64, 64),
      "model.enc.8x8_conv.weight": (16, 3, 3, 3), "model.enc.8x8_conv.bias": (16,),
      "model.enc.8x8_block0.norm0.weight": (16,),
      "model.enc.8x8_block0.affine.weight": (16, 64),
      "model.enc.4x4_down.conv0.resample_filter": (1, 1, 4, 4),
      "model.enc.4x4_down.skip.weight": (16, 16, 1, 1),
      "model.enc.4x4_aux_residual.weight": (16, 3, 3, 3),  # from the image: caux = 3
      "model.enc.4x4_block0.qkv.weight": (96, 32, 1, 1),
      "model.enc.4x4_block0.skip.weight": (32, 16, 1, 1),
      "model.dec.4x4_block0.conv0.weight": (32, 64, 3, 3),
      "model.dec.8x8_up.conv0.resample_filter": (1, 1, 4, 4),
      "model.dec.8x8_aux_conv.weight": (3, 16, 3, 3),
  }
  for name, shape in expected.items():
    assert sd[name].shape == shape, name
  assert "model.map_augment.bias" not in sd  # map_augment is bias-free
  assert all(k.startswith("model.") for k in sd)
  np.testing.assert_array_equal(sd["model.dec.8x8_up.conv0.resample_filter"][0, 0],
                                np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)
  # layouts: HWIO -> OIHW and [in, out] -> [out, in]
  w = np.asarray(net.enc["8x8_conv"].weight[...])
  np.testing.assert_array_equal(sd["model.enc.8x8_conv.weight"][5, 2, 0, 1], w[0, 1, 2, 5])
  lw = np.asarray(net.map_layer0.weight[...])
  np.testing.assert_array_equal(sd["model.map_layer0.weight"][7, 3], lw[3, 7])


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp", "adm"])
def test_round_trip_reproduces_params_and_outputs(arch):
  src = _build(_tiny(arch), seed=0)
  sd = _random_state_dict(src, seed=1)
  cfg = _tiny(arch, **edm.config_updates(sd))
  dst = _build(cfg, seed=7)  # different init: everything must come from the state dict
  params = edm.import_state_dict(dst, sd)
  back = edm.export_state_dict(dst, params)
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  # the same weights give the same function
  nnx.update(src, edm.import_state_dict(src, sd))
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  c, y, a = jnp.array([0.3, -1.0]), jax.nn.one_hot(jnp.array([1, 4]), 10), jnp.ones((2, 9))
  g_src, p_src = nnx.split(src, nnx.Param)
  g_dst, _ = nnx.split(dst, nnx.Param)
  np.testing.assert_allclose(_apply(g_dst, params, x, c, y, a), _apply(g_src, p_src, x, c, y, a),
                             rtol=1e-5, atol=1e-6)


def test_import_leaves_the_network_untouched_and_accepts_bare_and_iddpm_keys():
  net = _build(_tiny("ddpmpp"))
  before = np.asarray(net.map_layer0.weight[...]).copy()
  sd = _random_state_dict(net)
  bare = {k[len("model."):]: v for k, v in sd.items()}  # the network's own state dict
  bare["u"] = np.zeros(1001, np.float32)  # iDDPMPrecond's sigma table is recomputed, not read
  params = edm.import_state_dict(net, bare)
  np.testing.assert_array_equal(np.asarray(net.map_layer0.weight[...]), before)
  np.testing.assert_array_equal(np.asarray(params["map_layer0"]["weight"][...]),
                                sd["model.map_layer0.weight"].T)


def test_errors_name_missing_unexpected_misshaped_and_wrong_buffers():
  net = _build(_tiny("ddpmpp"))
  sd = _random_state_dict(net)
  bad = dict(sd)
  del bad["model.enc.8x8_conv.bias"]
  bad["model.enc.8x8_extra.weight"] = np.zeros(3, np.float32)
  bad["model.map_layer1.weight"] = np.zeros((64, 65), np.float32)
  with pytest.raises(JaxdiffError) as e:
    edm.import_state_dict(net, bad)
  msg = str(e.value)
  assert "\n" not in msg
  assert "missing: model.enc.8x8_conv.bias" in msg
  assert "unexpected: model.enc.8x8_extra.weight" in msg
  assert "model.map_layer1.weight [64, 65] (config wants [64, 64])" in msg
  wrong = dict(sd)
  wrong["model.enc.4x4_down.conv0.resample_filter"] = np.full((1, 1, 2, 2), 0.3, np.float32)
  with pytest.raises(JaxdiffError, match="differing from the config: .*4x4_down.conv0"):
    edm.import_state_dict(net, wrong)
  # an NCSN++ state dict into a DDPM++ network: its extra modules are named
  ncsn = _random_state_dict(_build(_tiny("ncsnpp")))
  with pytest.raises(JaxdiffError, match="aux_residual"):
    edm.import_state_dict(net, ncsn)


def test_fourier_frequencies_must_match_the_config():
  net = _build(_tiny("ncsnpp", fourier_seed=1))
  sd = _random_state_dict(_build(_tiny("ncsnpp", fourier_seed=2)))
  with pytest.raises(JaxdiffError, match="map_noise.freqs"):
    edm.import_state_dict(net, sd)
  updates = edm.config_updates(sd)
  np.testing.assert_array_equal(np.float32(updates["fourier_freqs"]), sd["model.map_noise.freqs"])
  assert edm.config_updates({"model.map_layer0.weight": np.zeros((2, 2))}) == {}


def test_load_state_dict_npz_pt_and_errors(tmp_path):
  sd = {"model.a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "model.b": np.ones(2)}
  np.savez(tmp_path / "sd.npz", **sd)
  got = edm.load_state_dict(str(tmp_path / "sd.npz"))
  assert set(got) == set(sd)
  np.testing.assert_array_equal(got["model.a.weight"], sd["model.a.weight"])
  with pytest.raises(JaxdiffError, match="does not exist"):
    edm.load_state_dict(str(tmp_path / "nope.npz"))
  (tmp_path / "x.txt").write_text("x")
  with pytest.raises(JaxdiffError, match="npz"):
    edm.load_state_dict(str(tmp_path / "x.txt"))


def test_load_state_dict_from_torch_pt(tmp_path):
  torch = pytest.importorskip("torch")
  sd = {"model.a.weight": torch.randn(4, 3, 3, 3), "model.b.bias": torch.zeros(4)}
  torch.save(sd, tmp_path / "sd.pt")
  got = edm.load_state_dict(str(tmp_path / "sd.pt"))
  np.testing.assert_array_equal(got["model.a.weight"], sd["model.a.weight"].numpy())


@pytest.mark.slow  # end to end: builds, converts, checkpoints and reloads a network
def test_convert_cli_writes_a_checkpoint_that_load_uses(tmp_path):
  from jaxdiff import load
  from jaxdiff.cli import main
  overrides = ["--config.model.model_channels=16", "--config.model.channel_mult=(1,2)",
               "--config.model.num_blocks=1", "--config.model.attn_resolutions=(4,)",
               "--config.data.resolution=8", "--config.data.num_classes=10"]
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  cfg = load_config("configs/cifar10_ncsnpp.py", overrides)
  with cfg.unlocked():
    cfg.model.fourier_seed = 3  # the file's frequencies differ from the config's seed
  graphdef, params = families.make_network(build.experiment(cfg), seed=1)
  sd = _random_state_dict(nnx.merge(graphdef, params), seed=4)
  np.savez(tmp_path / "edm.npz", **sd)
  workdir = str(tmp_path / "run")
  args = ["convert-edm", "--src", str(tmp_path / "edm.npz"), "--config",
          "configs/cifar10_ncsnpp.py", "--workdir", workdir]
  assert main(args + overrides) == 0
  model = load(workdir)
  back = edm.export_state_dict(nnx.merge(model.graphdef, model.params), model.params)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  with open(os.path.join(workdir, "config.json")) as f:
    assert len(json.load(f)["model"]["fourier_freqs"]) == 16  # 2 * 16 noise channels / 2
  assert main(args + overrides) == 2  # refuses to overwrite a workdir with checkpoints
  # Fine-tuning with the plain config file: the frequencies come from the workdir's record.
  from jaxdiff.config import to_json
  from jaxdiff.errors import JaxdiffError
  from jaxdiff.train import checkpoint as ckpt_lib
  plain = load_config("configs/cifar10_ncsnpp.py", overrides)
  with pytest.raises(JaxdiffError, match="fourier_freqs"):
    ckpt_lib.check_or_write_config(workdir, to_json(plain))
  from jaxdiff import build
  assert build.adopt_recorded(workdir, plain) == ["fourier_freqs"]
  np.testing.assert_array_equal(np.float32(plain.model.fourier_freqs), sd["model.map_noise.freqs"])
  ckpt_lib.check_or_write_config(workdir, to_json(plain))  # accepted now
  wrong = ["convert-edm", "--src", str(tmp_path / "edm.npz"), "--config",
           "configs/cifar10_ddpmpp.py", "--workdir", str(tmp_path / "run2")]
  assert main(wrong + overrides) == 2  # another architecture: one-line error, exit 2
