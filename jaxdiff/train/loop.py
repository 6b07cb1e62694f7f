"""The training loop: resume, step, log, checkpoint, draw sample grids. Thin around the pure step.

The step is compiled over a device mesh (train.sharding): the same code runs on 1 device, N devices
and N hosts. SIGTERM (preemption) saves a checkpoint at the current step and returns cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import jax
import numpy as np

from jaxdiff import build
from jaxdiff.config import to_json
from jaxdiff.errors import JaxdiffError
from jaxdiff.images import save_grid
from jaxdiff.model import Model
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train import sharding as sharding_lib
from jaxdiff.train.state import halflives, init_state
from jaxdiff.train.step import StepConfig
from jaxdiff.train.summaries import add_sample_grid


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def make_step_config(cfg, graphdef, optimizer) -> StepConfig:
  from jaxdiff.data.augment import make_augment
  t = cfg.training
  return StepConfig(graphdef=graphdef, precond=build.make_precond(cfg),
                    loss=build.make_loss(cfg), optimizer=optimizer,
                    label_dim=build.label_dim(cfg), batch_size=t.batch_size,
                    ema_halflife_images=t.ema_halflife_images,
                    ema_rampup_ratio=t.ema_rampup_ratio,
                    grad_accum=int(t.get("grad_accum", 1)), augment=make_augment(cfg))


class _Preemption:
  """SIGTERM sets a flag the loop checks after each step (never interrupts a step or a save)."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading_main():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def threading_main() -> bool:
  import threading
  return threading.current_thread() is threading.main_thread()


def train(cfg, workdir: str) -> dict:
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns a summary dict."""
  t = cfg.training
  sharding_lib.maybe_initialize_distributed(t.get("distributed", "auto"))
  ckpt_lib.ensure_writable(workdir)
  ckpt_lib.adopt_recorded(workdir, cfg)  # e.g. a converted NCSN++'s Fourier frequencies
  ckpt_lib.check_or_write_config(workdir, to_json(cfg))
  source = build.make_source(cfg)
  mesh = sharding_lib.make_mesh()
  grad_accum = int(t.get("grad_accum", 1))
  sharding_lib.check_batch(t.batch_size, grad_accum, mesh)

  graphdef, params = build.make_network(cfg, seed=t.seed)
  optimizer = build.make_optimizer(cfg)
  step_cfg = make_step_config(cfg, graphdef, optimizer)
  num_emas = len(halflives(t.ema_halflife_images))
  mngr = ckpt_lib.manager(workdir, keep=t.keep_checkpoints)
  abstract = jax.eval_shape(lambda: init_state(params, optimizer, t.seed, num_emas))
  state_sh = sharding_lib.state_sharding(abstract, mesh, fsdp=bool(t.get("fsdp", False)))
  state, _ = ckpt_lib.restore(mngr, sharding_lib.with_sharding(abstract, state_sh),
                              quarantine=jax.process_index() == 0)
  if state is None:
    state = jax.device_put(init_state(params, optimizer, t.seed, num_emas), state_sh)
    log(f"jaxdiff train: starting {workdir} from step 0")
  else:
    log(f"jaxdiff train: resuming {workdir} from step {int(state.step)}")
  del params
  start = int(state.step)

  batch_sh = sharding_lib.batch_sharding(mesh)
  # build.compile_step picks the step (plain or multi-stage) and compiles it for the mesh's layout.
  step_fn = build.compile_step(cfg, step_cfg, donate_argnums=0, in_shardings=(state_sh, batch_sh),
                               out_shardings=(state_sh, sharding_lib.replicated(mesh)))

  from tensorboardX import SummaryWriter
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
  from tqdm import tqdm
  # Always on; when stderr is a log file rather than a terminal, update it less often.
  bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
             mininterval=0.5 if sys.stderr.isatty() else 30.0)

  def save_samples(step):
    model = Model(cfg, graphdef, state.ema)
    images = model.sample(t.sample_grid, seed=0)
    if jax.process_index() == 0:
      save_grid(images, os.path.join(workdir, f"samples_{step:07d}.png"))
      save_grid(images, os.path.join(workdir, "samples_latest.png"))
      add_sample_grid(writer, images, step)  # the same grid in TensorBoard, beside the scalars

  from jaxdiff.data.prefetch import Prefetcher
  batches = Prefetcher(source, start, t.steps, t.batch_size, t.seed, jax.process_index(),
                       jax.process_count(), depth=int(cfg.data.get("prefetch", 2)))
  t0 = time.time()
  last_log, last_time, loss = start, t0, float("nan")
  step, saved, preempted, history = start, start, False, []
  try:
    with _Preemption() as preemption:
      while step < t.steps:
        _, images, labels = next(batches)
        batch = sharding_lib.global_batch({"image": images, "label": labels}, mesh)
        state, metrics = step_fn(state, batch)
        step += 1
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
          metrics = jax.device_get(metrics)
          loss = float(metrics["loss"])
          if not np.isfinite(loss):
            raise JaxdiffError(f"loss is {loss} at step {step}; lower training.lr or check the "
                               f"data (the last checkpoint in {workdir} is intact)")
          now = time.time()
          rate = (step - last_log) * t.batch_size / max(now - last_time, 1e-9)
          last_log, last_time = step, now
          writer.add_scalar("train/loss", loss, step)
          writer.add_scalar("train/grad_norm", float(metrics["grad_norm"]), step)
          writer.add_scalar("train/images_per_s", rate, step)
          bar.set_postfix(loss=f"{loss:.4f}")
          history.append((step, loss))
        if step % t.checkpoint_every == 0 or step == t.steps:
          ckpt_lib.save(mngr, step, state, {"step": step})
          saved = step
        if t.sample_every and (step % t.sample_every == 0 or step == t.steps):
          save_samples(step)
        if preemption.requested:
          if saved != step:
            ckpt_lib.save(mngr, step, state, {"step": step})
          log(f"jaxdiff train: SIGTERM at step {step}; checkpoint saved, resume with the same "
              "command")
          preempted = True
          break
  finally:
    batches.close()
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  elapsed = time.time() - t0
  summary = dict(steps=int(step), start_step=start, seconds=round(elapsed, 1),
                 images_per_s=round((step - start) * t.batch_size / max(elapsed, 1e-9), 1),
                 final_loss=loss, devices=jax.device_count(), preempted=preempted,
                 loss_history=history)
  log(f"jaxdiff train: {step - start} steps in {elapsed:.1f} s "
      f"({summary['images_per_s']} img/s); workdir {workdir}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_summary.json"), "w") as f:
      json.dump(summary, f)
  return summary
