"""The training loop: resume, step, log, checkpoint, draw sample grids. Thin around the pure step."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

from jaxdiff import build
from jaxdiff.config import to_json
from jaxdiff.data import batch_indices
from jaxdiff.errors import JaxdiffError
from jaxdiff.images import save_grid
from jaxdiff.model import Model
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train.state import init_state
from jaxdiff.train.step import StepConfig


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def train(cfg, workdir: str) -> dict:
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns a summary dict."""
  t = cfg.training
  ckpt_lib.ensure_writable(workdir)
  ckpt_lib.check_or_write_config(workdir, to_json(cfg))
  source = build.make_source(cfg)

  graphdef, params = build.make_network(cfg, seed=t.seed)
  optimizer = build.make_optimizer(cfg)
  step_cfg = StepConfig(graphdef=graphdef, precond=build.make_precond(cfg),
                        loss=build.make_loss(cfg), optimizer=optimizer,
                        label_dim=build.label_dim(cfg), batch_size=t.batch_size,
                        ema_halflife_images=t.ema_halflife_images,
                        ema_rampup_ratio=t.ema_rampup_ratio)
  mngr = ckpt_lib.manager(workdir, keep=t.keep_checkpoints)
  abstract = jax.eval_shape(lambda: init_state(params, optimizer, t.seed))
  state, _ = ckpt_lib.restore(mngr, abstract)
  if state is None:
    state = init_state(params, optimizer, t.seed)
    log(f"jaxdiff train: starting {workdir} from step 0")
  else:
    log(f"jaxdiff train: resuming {workdir} from step {int(state.step)}")
  del params
  start = int(state.step)

  step_fn = build.make_step_fn(cfg, step_cfg)
  from tensorboardX import SummaryWriter
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
  from tqdm import tqdm
  # Always on; when stderr is a log file rather than a terminal, update it less often.
  bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
             mininterval=0.5 if sys.stderr.isatty() else 30.0)

  def save_samples(step):
    model = Model(cfg, graphdef, state.ema)
    images = model.sample(t.sample_grid, seed=0)
    save_grid(images, os.path.join(workdir, f"samples_{step:07d}.png"))
    save_grid(images, os.path.join(workdir, "samples_latest.png"))

  t0 = time.time()
  last_log, last_time, loss = start, t0, float("nan")
  step = start
  try:
    while step < t.steps:
      idx = batch_indices(step, t.batch_size, len(source), t.seed, jax.process_index(),
                          jax.process_count())
      images, labels = source.get(idx)
      state, metrics = step_fn(state, {"image": images, "label": labels})
      step += 1
      bar.update(1)
      if step % t.log_every == 0 or step == t.steps:
        metrics = jax.device_get(metrics)
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
          raise JaxdiffError(f"loss is {loss} at step {step}; lower training.lr or check the data "
                             f"(the last checkpoint in {workdir} is intact)")
        now = time.time()
        rate = (step - last_log) * t.batch_size / max(now - last_time, 1e-9)
        last_log, last_time = step, now
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/grad_norm", float(metrics["grad_norm"]), step)
        writer.add_scalar("train/images_per_s", rate, step)
        bar.set_postfix(loss=f"{loss:.4f}")
      if step % t.checkpoint_every == 0 or step == t.steps:
        ckpt_lib.save(mngr, step, state, {"step": step})
      if t.sample_every and (step % t.sample_every == 0 or step == t.steps):
        save_samples(step)
  finally:
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  elapsed = time.time() - t0
  summary = dict(steps=int(step), start_step=start, seconds=round(elapsed, 1),
                 images_per_s=round((step - start) * t.batch_size / max(elapsed, 1e-9), 1),
                 final_loss=loss)
  log(f"jaxdiff train: {step - start} steps in {elapsed:.1f} s "
      f"({summary['images_per_s']} img/s); workdir {workdir}")
  with open(os.path.join(workdir, "train_summary.json"), "w") as f:
    json.dump(summary, f)
  return summary
