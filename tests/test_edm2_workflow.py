"""EDM2 end to end on tiny digits runs (shared by the module): `jaxdiff train` and exact resume,
power-function EMA snapshots and `jaxdiff phema`, autoguidance from Python and the CLI, and the
one-line refusals (exit 2, nothing written)."""

import os
import shutil

import chex
import jax
import numpy as np
import pytest

import jaxdiff
from conftest import run_main
from jaxdiff import build, families, phema
from jaxdiff.cli import main as cli_main
from jaxdiff.config import load_config
from jaxdiff.errors import JaxdiffError
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train import phema_snapshots

pytestmark = pytest.mark.slow

EDM2 = "configs/digits_edm2.py"
STEPS, BATCH = 12, 16
STDS = (0.05, 0.075, 0.1)
OVERRIDES = ["--config.model.model_channels=8", "--config.model.channel_mult=(1,)",
             "--config.model.num_blocks=1", "--config.model.attn_resolutions=()",
             "--config.model.channels_per_head=8", "--config.model.logvar_channels=8",
             f"--config.training.batch_size={BATCH}", "--config.training.checkpoint_every=6",
             "--config.training.log_every=6", "--config.training.sample_every=0",
             "--config.sampler.num_steps=3",
             # constant lr from the first step: the weights move, so the EMA widths differ
             "--config.training.lr_rampup_images=0",
             f"--config.edm2.ema_stds={STDS}".replace(" ", ""),
             f"--config.edm2.snapshot_every_images={BATCH}"]


def _cfg(steps, *extra):
  return load_config(EDM2, OVERRIDES + [f"--config.training.steps={steps}", *extra])


def _full_state(workdir, steps=STEPS):
  exp = build.experiment(_cfg(steps))
  _, abstract = families.abstract_state(exp)
  mngr = ckpt_lib.manager(workdir, async_save=False)
  try:
    state, _ = ckpt_lib.restore(mngr, abstract)
  finally:
    mngr.close()
  return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("edm2")
  straight, guide, resumed = (str(root / n) for n in ("straight", "guide", "resumed"))
  build.run_training(_cfg(STEPS), straight)
  # The guide: the same model, half as trained; through `jaxdiff train` itself.
  assert cli_main(["train", "--config", EDM2, "--workdir", guide, *OVERRIDES,
                   f"--config.training.steps={STEPS // 2}"]) == 0
  shutil.copytree(guide, resumed)
  build.run_training(_cfg(STEPS), resumed)      # resumes from step 6
  return dict(root=root, straight=straight, guide=guide, resumed=resumed)


def test_train_writes_snapshots_and_resumes_exactly(runs):
  a, b = _full_state(runs["straight"]), _full_state(runs["resumed"])
  assert int(a.step) == int(b.step) == STEPS and len(a.extra_emas) == len(STDS) - 1
  chex.assert_trees_all_equal(a.params, b.params)
  chex.assert_trees_all_equal(a.ema, b.ema)
  chex.assert_trees_all_equal(a.extra_emas, b.extra_emas)
  sa, sb = (phema_snapshots.list_snapshots(runs[k]) for k in ("straight", "resumed"))
  want = [(BATCH * k, s) for k in range(1, STEPS + 1) for s in STDS]
  assert [(i, s) for i, s, _ in sa] == sorted(want) == [(i, s) for i, s, _ in sb]
  _, abstract = families.abstract_network(build.experiment(_cfg(STEPS)))
  for (_, _, pa), (_, _, pb) in zip(sa, sb):
    chex.assert_trees_all_equal(phema_snapshots.read(pa, abstract),
                                phema_snapshots.read(pb, abstract))
  # The last snapshots are the final EMAs.
  last = {s: p for i, s, p in sa if i == STEPS * BATCH}
  chex.assert_trees_all_equal(phema_snapshots.read(last[0.05], abstract), a.ema)
  chex.assert_trees_all_equal(phema_snapshots.read(last[0.1], abstract), a.extra_emas[1])


def _rel(a, b):
  la, lb = (np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
            for t in (a, b))
  return float(np.linalg.norm(la - lb) / np.linalg.norm(lb))


def test_tracked_profile_reconstructed_from_the_other_snapshots(runs):
  """σ_rel 0.075 was tracked in training; rebuild it from the 0.050 and 0.100 snapshots alone."""
  state = _full_state(runs["straight"])
  tracked = state.extra_emas[0]
  snaps = [(i, s, p) for i, s, p in phema_snapshots.list_snapshots(runs["straight"]) if s != 0.075]
  X = phema.solve_coefficients([i for i, _, _ in snaps], [s for _, s, _ in snaps],
                               STEPS * BATCH, 0.075)
  _, abstract = families.abstract_network(build.experiment(_cfg(STEPS)))
  recon = phema_snapshots.reconstruct_files([p for _, _, p in snaps], X[:, 0], abstract)
  # The streamed sum equals phema.reconstruct's in-memory one.
  in_memory = phema.reconstruct([phema_snapshots.read(p, abstract) for _, _, p in snaps], X)[0]
  chex.assert_trees_all_close(recon, in_memory, rtol=1e-6, atol=1e-7)
  rel = _rel(recon, tracked)
  spread = _rel(state.ema, tracked)  # how far apart the tracked widths are (0.050 vs 0.075)
  print(f"phema reconstruction of sigma_rel 0.075: relative error {rel:.2e} "
        f"(the 0.050 EMA is {spread:.2e} away)")
  assert rel < 1e-3 and rel < 0.2 * spread


def test_phema_cli_writes_a_workdir_that_load_uses(runs, capsys):
  out = str(runs["root"] / "phema075")
  assert cli_main(["phema", "--workdir", runs["straight"], "--std", "0.075", "--out", out]) == 0
  model = jaxdiff.load(out)
  # The 0.075 snapshot is among the inputs, so the reconstruction is that snapshot.
  chex.assert_trees_all_close(model.params, _full_state(runs["straight"]).extra_emas[0],
                              rtol=1e-5, atol=1e-6)
  assert model.sample(2, steps=2).shape == (2, 8, 8, 1)


def _refused(capsys, argv):
  code, _, err = run_main(capsys, *argv)  # only this command's stderr
  err = err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and "error:" in err, err
  return err


def test_phema_cli_refusals(runs, capsys):
  root = runs["root"]
  # --out exists and is not empty: untouched.
  used = root / "used"
  used.mkdir()
  (used / "keep.txt").write_text("mine")
  assert "not empty" in _refused(capsys, ["phema", "--workdir", runs["straight"], "--std", "0.07",
                                          "--out", str(used)])
  assert os.listdir(used) == ["keep.txt"] and (used / "keep.txt").read_text() == "mine"
  # A width the snapshots cannot represent, and one outside (0, 0.289): nothing written.
  for std, msg in (("0.005", "cannot be reconstructed"), ("0.3", "outside")):
    assert msg in _refused(capsys, ["phema", "--workdir", runs["straight"], "--std", std,
                                    "--out", str(root / "never")])
    assert not os.path.exists(root / "never")
  # A run without snapshots.
  bare = root / "bare"
  bare.mkdir()
  shutil.copy(os.path.join(runs["straight"], "config.json"), bare / "config.json")
  assert "no power-function EMA snapshots" in _refused(
      capsys, ["phema", "--workdir", str(bare), "--std", "0.07", "--out", str(root / "never")])
  assert not os.path.exists(root / "never")


def test_autoguidance_python(runs):
  main, guide = jaxdiff.load(runs["straight"]), jaxdiff.load(runs["guide"])
  guided = main.with_guide(guide)
  x = np.asarray(jax.random.normal(jax.random.key(0), (4, 8, 8, 1)))
  sigma, labels, w = np.array([0.1, 1.0, 5.0, 40.0]), np.array([0, 3, 5, 9]), 2.5
  d_main, d_guide = np.asarray(main.denoise(x, sigma, labels)), np.asarray(guide.denoise(x, sigma, labels))
  np.testing.assert_allclose(np.asarray(guided.denoise(x, sigma, labels, guidance=w)),
                             d_guide + w * (d_main - d_guide), rtol=1e-5, atol=1e-5)
  assert np.abs(d_main - d_guide).max() > 1e-3  # the two models differ: the check can fail
  # w = 1 samples the main model (same latents and noise); w = 2 does not.
  same = guided.sample(4, seed=3, steps=3, guidance=1.0)
  assert np.abs(same.astype(int) - main.sample(4, seed=3, steps=3).astype(int)).max() <= 1
  assert np.abs(guided.sample(4, seed=3, steps=3, guidance=2.0).astype(int)
                - same.astype(int)).max() > 1
  with pytest.raises(JaxdiffError, match="already guided"):
    guided.with_guide(guide)


def test_autoguidance_cli_and_refusal(runs, capsys, tmp_path):
  out = str(tmp_path / "s.npz")
  assert cli_main(["sample", "--workdir", runs["straight"], "--guide", runs["guide"],
                   "--guidance", "2", "--num", "4", "--steps", "3", "--out", out]) == 0
  want = jaxdiff.load(runs["straight"]).with_guide(jaxdiff.load(runs["guide"])).sample(
      4, steps=3, guidance=2.0)
  with np.load(out) as f:
    np.testing.assert_array_equal(f["images"], want)
  # An unconditional guide (an untrained network suffices): CFG the EDM2 way, guide without labels.
  uncond = _untrained_workdir(tmp_path / "uncond", "--config.data.num_classes=0")
  guided = jaxdiff.load(runs["straight"]).with_guide(jaxdiff.load(uncond))
  x = np.asarray(jax.random.normal(jax.random.key(1), (3, 8, 8, 1)))
  sigma, labels = np.array([0.2, 2.0, 20.0]), np.array([1, 4, 7])
  d_main = np.asarray(jaxdiff.load(runs["straight"]).denoise(x, sigma, labels))
  d_unc = np.asarray(jaxdiff.load(uncond).denoise(x, sigma))
  np.testing.assert_allclose(np.asarray(guided.denoise(x, sigma, labels, guidance=1.5)),
                             d_unc + 1.5 * (d_main - d_unc), rtol=1e-5, atol=1e-5)
  assert cli_main(["sample", "--workdir", runs["straight"], "--guide", uncond, "--guidance", "1.5",
                   "--num", "2", "--steps", "3", "--out", str(tmp_path / "cfg.npz")]) == 0
  # A guide of another label count: refused, nothing written.
  other = _untrained_workdir(tmp_path / "five", "--config.data.num_classes=5")
  out2 = str(tmp_path / "never.npz")
  assert "label count" in _refused(capsys, ["sample", "--workdir", runs["straight"], "--guide",
                                            other, "--guidance", "2", "--num", "4", "--out", out2])
  assert not os.path.exists(out2)


def _untrained_workdir(path, override):
  """A workdir holding the initial weights of the digits EDM2 config with `override`."""
  from jaxdiff.config import to_json
  other = str(path)
  cfg = _cfg(STEPS, override)
  _, params = families.make_network(build.experiment(cfg))
  ckpt_lib.ensure_writable(other)
  ckpt_lib.check_or_write_config(other, to_json(cfg))
  mngr = ckpt_lib.manager(other, async_save=False)
  ckpt_lib.save(mngr, 0, families.train_state(build.experiment(cfg), params), {"step": 0})
  mngr.wait_until_finished()
  mngr.close()
  return other


@pytest.mark.parametrize("override,what", [("--config.data.resolution=16", "resolution"),
                                           ("--config.data.channels=3", "channel count"),
                                           ("--config.data.num_classes=5", "label count")])
def test_check_guide_refuses_other_data(override, what):
  from jaxdiff.autoguide import check_guide
  main = build.experiment(_cfg(STEPS))
  with pytest.raises(JaxdiffError, match=what):
    check_guide(main, build.experiment(_cfg(STEPS, override)))
  check_guide(main, build.experiment(_cfg(STEPS, "--config.model.model_channels=16")))
