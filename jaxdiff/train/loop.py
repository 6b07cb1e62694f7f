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

from jaxdiff import families
from jaxdiff.errors import JaxdiffError
from jaxdiff.fileio import atomic_write_text
from jaxdiff.images import save_grid
from jaxdiff.model import Model
from jaxdiff.train import checkpoint as ckpt_lib
from jaxdiff.train import sharding as sharding_lib
from jaxdiff.train.summaries import add_sample_grid


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


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


def _resume_or_start(exp, workdir, mngr, abstract, state_sh, optimizer):
  """(state, checkpoint meta) of the newest readable checkpoint laid out as `state_sh`, or a fresh
  state (seed training.seed) and None."""
  state, meta = ckpt_lib.restore(mngr, sharding_lib.with_sharding(abstract, state_sh),
                                 quarantine=jax.process_index() == 0)
  if state is not None:
    log(f"jaxdiff train: resuming {workdir} from step {int(state.step)}")
    return state, meta
  _, params = families.initial_params(exp, seed=exp.training.seed)  # the family may start from a model
  log(f"jaxdiff train: starting {workdir} from step 0")
  return jax.device_put(families.train_state(exp, params, optimizer), state_sh), None


def train(exp, workdir: str) -> dict:
  """Trains the Experiment `exp` in `workdir` (whose config.json the caller has recorded: see
  build.run_training), resuming from its latest checkpoint. Returns a summary dict."""
  from jaxdiff import build
  t = exp.training
  sharding_lib.maybe_initialize_distributed(t.distributed)
  ckpt_lib.ensure_writable(workdir)
  source = build.open_source(exp.data)
  mesh = sharding_lib.make_mesh()
  sharding_lib.check_batch(t.batch_size, t.grad_accum, mesh)

  optimizer = families.make_optimizer(exp)
  graphdef, abstract = families.abstract_state(exp, optimizer)
  mngr = ckpt_lib.manager(workdir, keep=t.keep_checkpoints)
  state_sh = sharding_lib.state_sharding(abstract, mesh, fsdp=t.fsdp)
  state, meta = _resume_or_start(exp, workdir, mngr, abstract, state_sh, optimizer)
  start = int(state.step)
  on_step = families.of(exp).on_step  # a family's host-side work after each step, or None

  batch_sh = sharding_lib.batch_sharding(mesh)
  # The family compiles its step (one program, or one per multi-stage stage) for the mesh's layout.
  step_fn = families.training_step(exp, optimizer, graphdef, donate_argnums=0,
                                   in_shardings=(state_sh, batch_sh),
                                   out_shardings=(state_sh, sharding_lib.replicated(mesh)))

  from tensorboardX import SummaryWriter
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
  from tqdm import tqdm
  # Always on; when stderr is a log file rather than a terminal, update it less often.
  bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
             mininterval=0.5 if sys.stderr.isatty() else 30.0)

  def save_samples(step):
    model = Model(exp, graphdef, state.ema)
    images = model.sample(t.sample_grid, seed=0)
    if jax.process_index() == 0:
      save_grid(images, os.path.join(workdir, f"samples_{step:07d}.png"))
      save_grid(images, os.path.join(workdir, "samples_latest.png"))
      add_sample_grid(writer, images, step)  # the same grid in TensorBoard, beside the scalars

  from jaxdiff.data.pipeline import Batches, pipeline_config
  # The grain pipeline continues from the checkpoint's saved iterator state (or from `start`).
  batches = Batches(source, pipeline_config(exp.data, t.batch_size, t.seed), start, t.steps,
                    jax.process_index(), jax.process_count(), resume=(meta or {}).get("data"))
  save_meta = lambda step: {"step": step, "data": batches.state()}  # noqa: E731
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
        if on_step is not None:
          on_step(exp, workdir, step, state)
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
          ckpt_lib.save(mngr, step, state, save_meta(step))
          saved = step
        if t.sample_every and (step % t.sample_every == 0 or step == t.steps):
          save_samples(step)
        if preemption.requested:
          if saved != step:
            ckpt_lib.save(mngr, step, state, save_meta(step))
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
    atomic_write_text(os.path.join(workdir, "train_summary.json"), json.dumps(summary))
  return summary
