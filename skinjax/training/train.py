"""Fine-tunes a classifier on a dermoscopy dataset: one function, read top to bottom.

setup -> data -> model + optimiser -> mesh/sharding -> restore -> loop -> final report
"""

import copy
import functools
import json
import pathlib
import sys
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tensorboardX import SummaryWriter

from skinjax.data import handle
from skinjax.data import patient_metadata
from skinjax.data import pipeline
from skinjax.data import sources
from skinjax.evaluation import evaluate
from skinjax.evaluation import report
from skinjax.models import run_model as run_model_lib
from skinjax.runtime import checkpoint as ckpt
from skinjax.runtime import preemption
from skinjax.runtime import sharding
from skinjax.runtime import steps
from skinjax.training import config_checks
from skinjax.training import optim
from skinjax.training import workdir as workdir_lib
from skinjax.training.progress import ProgressBar
from skinjax.weights import pretrained


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`, then reports the best checkpoint on test."""
  # ------------------------------------------------------------------ setup
  workdir = pathlib.Path(workdir).expanduser()
  config_checks.validate(config)
  is_lead = jax.process_index() == 0
  warning_lines = config_checks.config_warnings(config)
  if is_lead:
    for line in warning_lines:  # on stderr, which the default log verbosity does not hide
      print(line, file=sys.stderr, flush=True)
  resuming = ckpt.has_checkpoint(workdir)
  if not resuming:  # A resume needs no initial weights.
    config_checks.check_init(config)
  dataset = handle.PreparedDataset.open(config)  # opened once, read as each part is needed
  config = _with_training_short_side(config, dataset)
  workdir_lib.check_resume(workdir, config, dataset.fingerprint, resuming)
  dataset.splits  # noqa: B018 (made now: splits that cannot be made stop before any write)
  fields = tuple(config.model.metadata)
  patient_metadata.check_dataset(fields, dataset.description.name,
                                 dataset.description.metadata_columns)
  if is_lead:
    for line in dataset.sources_summary():
      print(line, flush=True)
    if fields:
      _print_metadata_summary(config, dataset)
  lock = None
  if is_lead:
    workdir_lib.check_writable(workdir)
    lock = workdir_lib.Lock(workdir)
    lock.acquire()
  try:
    if is_lead:
      workdir_lib.write_config(workdir, config, dataset.fingerprint,
                               dataset.description.to_json(), warning_lines)
    return _train(config, dataset, workdir, is_lead)
  finally:
    if lock is not None:
      lock.release()  # a killed trainer leaves it behind; the next run takes it over


def _train(config: ml_collections.ConfigDict, dataset, workdir: pathlib.Path, is_lead: bool) -> dict:
  checkpoints = ckpt.RunCheckpoints(workdir)

  # ------------------------------------------------------------------- data
  source, metadata, description = dataset.source, dataset.metadata, dataset.description
  splits = dataset.splits
  num_classes = description.num_classes
  labels = metadata['label']
  mesh = sharding.data_mesh()
  batch_size = config.train.batch_size
  sharding.check_batch_size(batch_size, mesh)
  sharding.check_batch_size(config.train.eval_batch_size, mesh, 'config.train.eval_batch_size')
  steps_per_epoch = len(splits['train']) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"The training split has {len(splits['train'])} examples, fewer than "
                     f'config.train.batch_size={batch_size}.')
  total_steps = config.train.num_epochs * steps_per_epoch
  if _finished(checkpoints, total_steps) and (workdir / 'report' / 'metrics.json').exists():
    print(f'The run in {workdir} has finished; its test report:\n'
          + (workdir / 'report' / 'classification_report.txt').read_text())
    checkpoints.wait_and_close()
    return json.loads((workdir / 'report' / 'metrics.json').read_text())
  process_index, process_count = jax.process_index(), jax.process_count()
  # One value for the sampler and for the class prior a logit-adjusted loss offsets.
  train_source_weights = dataset.source_weights_of(splits['train'])
  train_data = pipeline.train_dataset(
      source, splits['train'], labels[splits['train']], config=config,
      process_batch_size=batch_size // process_count, num_epochs=config.train.num_epochs,
      process_index=process_index, process_count=process_count,
      source_weights=train_source_weights)
  train_iter = iter(train_data)

  eval_view = pipeline.EvalView.from_config(config.data)
  metadata_encoder = patient_metadata.MetadataEncoder.from_config(config)

  def eval_batches(split):
    return pipeline.eval_dataset(
        source, splits[split], eval_view, global_batch_size=config.train.eval_batch_size,
        process_index=process_index, process_count=process_count,
        metadata_encoder=metadata_encoder)

  class_weights = jnp.asarray(sources.class_weights(
      labels[splits['train']], num_classes, config.train.class_weighting))
  logging.info('Split sizes %s; %d steps per epoch; class weights %s',
               {k: len(v) for k, v in splits.items()}, steps_per_epoch, np.round(class_weights, 3))
  logit_offsets = None
  if config.train.logit_adjustment:
    prior = pipeline.stream_class_prior(
        labels[splits['train']], num_classes, config.train.balanced_sampling,
        train_source_weights)
    # A class that is never drawn gets a large negative offset rather than log(0).
    logit_offsets = jnp.asarray(config.train.logit_adjustment * np.log(np.maximum(prior, 1e-12)),
                                jnp.float32)
    logging.info('Logit-adjusted loss: training class prior %s', np.round(prior, 4))

  # ------------------------------------------------------- model + optimiser
  run_model = run_model_lib.RunModel(config, num_classes)
  abstract_params, abstract_rest = run_model.abstract_state
  plan = optim.PhasePlan.create(run_model.abstract, config.train.unfreeze,
                                phase_two_start=config.train.freeze_backbone_epochs * steps_per_epoch)
  graphdefs = {phase: run_model.graphdef(functools.partial(plan.set_mode, phase=phase))
               for phase in (1, 2, 'eval')}
  # One optimiser state layout for the whole run; phase 1's step holds the backbone's part.
  txs = {phase: optim.make_optimizer(config, plan, steps_per_epoch=steps_per_epoch, phase=phase)
         for phase in (1, 2)}
  normalise = run_model.normalise

  # ----------------------------------------------------------- mesh/sharding
  replicated, data_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)

  def init_model():
    _, params, rest = nnx.split(run_model.build(), nnx.Param, ...)
    return params, rest

  ema_decay = config.train.ema_decay

  def init_state(params, rest):
    return steps.TrainState(jnp.zeros((), jnp.int32), params, rest, txs[2].init(params))

  dropout_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  train_steps = {
      phase: jax.jit(steps.make_train_step(
          graphdefs[phase], txs[phase], normalise=normalise, trainable_mask=plan.trainable(phase),
          class_weights=class_weights, label_smoothing=config.train.label_smoothing,
          dropout_key=dropout_key, skip_nonfinite=config.train.skip_nonfinite,
          ema_decay=ema_decay, logit_offsets=logit_offsets),
          donate_argnums=0, out_shardings=(replicated, replicated))
      for phase in (1, 2)}
  predict_step = jax.jit(steps.make_predict_step(graphdefs['eval'], normalise=normalise),
                         out_shardings=data_sharding)

  # ----------------------------------------------------------------- restore
  start_step = checkpoints.latest_step()
  if start_step is None:
    # Two programs rather than one: the model's random initialisers take seconds to compile, and
    # its program depends on the model alone, so runs that differ only in their optimiser or
    # schedule read it back from the persistent compilation cache. The values are the same.
    params, rest = jax.jit(init_model, out_shardings=replicated)()
    state = jax.jit(init_state, out_shardings=replicated, donate_argnums=(0, 1))(params, rest)
    if config.model.init != 'scratch':
      state = _with_pretrained_backbone(state, config, replicated)
    if ema_decay:  # from the initial weights, pretrained ones included
      state = _start_average(state, replicated)
    progress = {'epoch': 0, 'early_stopping': _fresh_early_stopping(), 'nonfinite_skips': 0}
  else:
    abstract_state = jax.eval_shape(init_state, abstract_params, abstract_rest)
    if ema_decay:
      abstract_state = abstract_state.replace(
          ema=jax.eval_shape(steps.start_ema, abstract_params, abstract_rest))
    abstract_state = ckpt.abstract(abstract_state, replicated)
    state, progress = _restore_latest(checkpoints, abstract_state, train_iter, txs[2], replicated)
    logging.info('Resumed from step %d (epoch %d) in %s', start_step, progress['epoch'], workdir)
    print(f'Resuming from step {start_step} (epoch {progress["epoch"]}).')
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  # -------------------------------------------------------------------- loop
  writer = SummaryWriter(str(workdir / 'tensorboard')) if is_lead else None
  metrics_log = open(workdir / 'metrics.jsonl', 'a') if is_lead else None
  early = progress['early_stopping']
  skips = progress.get('nonfinite_skips', 0)  # steps skipped for a non-finite loss (skip_nonfinite)
  epoch_losses = progress.get('epoch_losses', [])  # the epoch's so far, if it stopped midway
  step = int(state.step)
  bar = ProgressBar(total_steps, batch_size, start_step=step)
  pending = []  # device metrics not yet fetched, so the host never waits on every step
  every = config.train.checkpoint_every_steps  # 0: only at the end of each epoch
  trained_before, loop_start = progress.get('train_time_s', 0.0), time.monotonic()

  def save_latest(completed_epochs: int):
    nonlocal progress
    progress = {'epoch': completed_epochs, 'early_stopping': early, 'nonfinite_skips': skips,
                'epoch_losses': epoch_losses,
                'train_time_s': trained_before + time.monotonic() - loop_start}
    checkpoints.save_latest(step, state, train_iter, progress)

  try:
    with preemption.StopSignals() as stop:
      while step < total_steps and not early['stopped']:
        epoch_start, epoch = time.monotonic(), step // steps_per_epoch + 1
        epoch_end = epoch * steps_per_epoch
        bar.resume()
        while step < epoch_end:
          phase = plan.phase(step)
          if step == plan.phase_two_start > 0:
            logging.info('Step %d: unfreezing the backbone (%s).', step, config.train.unfreeze)
          batch = sharding.global_batch(next(train_iter), data_sharding)
          state, step_metrics = train_steps[phase](state, batch)
          step += 1
          pending.append(step_metrics)
          stopping = stop.at_step(step)
          mid_epoch_save = step < epoch_end and (stopping or (every and step % every == 0))
          if step % config.train.log_every_steps == 0 or step == epoch_end or mid_epoch_save:
            fetched = jax.device_get(pending)
            pending = []
            for offset, m in enumerate(fetched):
              if not config.train.skip_nonfinite:
                _check_finite(m['loss'], step - len(fetched) + offset + 1)
            skips += sum(int(m['skipped']) for m in fetched)
            record = _train_record(step, epoch, fetched, skips)
            epoch_losses += record['step_losses']
            record['images_per_sec'] = bar.update(step, epoch, record['train_loss'])
            _log(metrics_log, writer, record, step)
          if mid_epoch_save:
            save_latest(completed_epochs=epoch - 1)
          if stopping and step < epoch_end:
            bar.newline()
            raise preemption.RunStopped(step, workdir)
        bar.newline()
        # The epoch's last update came after fetching its metrics, so every train step has
        # finished: from here to the next epoch, validation and checkpoints are kept out of
        # images_per_sec.
        bar.pause()

        val_probs = evaluate.predict(predict_step, *state.evaluated(), eval_batches('val'),
                                     mesh, len(splits['val']), num_classes)
        val = report.compute_metrics(labels[splits['val']], val_probs, description)
        summary = {'step': step, 'epoch': epoch, 'train_loss': float(np.mean(epoch_losses)),
                   'epoch_time_s': time.monotonic() - epoch_start,
                   **{f'val_{k}': v for k, v in val.items() if k != 'per_class'}}
        improved = _update_early_stopping(early, summary, config.train.early_stopping)
        _log(metrics_log, writer, summary, step)
        print(f"epoch {epoch} step {step}: train_loss {summary['train_loss']:.4f} "
              f"val_loss {summary['val_loss']:.4f} val_bal_acc {summary['val_balanced_accuracy']:.4f} "
              f"val_macro_f1 {summary['val_macro_f1']:.4f} ({summary['epoch_time_s']:.1f}s)"
              + (' *best*' if improved else ''))
        if improved:
          checkpoints.save_best(step, *state.evaluated(), summary)
        epoch_losses = []
        save_latest(completed_epochs=epoch)
        if (stopping or stop.between_steps()) and step < total_steps and not early['stopped']:
          raise preemption.RunStopped(step, workdir)
    epochs_run = progress['epoch']  # as the latest checkpoint records it
    if early['stopped']:
      print(f"Early stopping after epoch {epochs_run}: best {config.train.early_stopping.monitor} "
            f"{early['best_value']:.4f} at epoch {early['best_epoch']}.")

    # ---------------------------------------------------------- final report
    best_step, params, rest = checkpoints.restore_model(
        'best', ckpt.abstract(abstract_params, replicated), ckpt.abstract(abstract_rest, replicated))
    test_probs = evaluate.predict(predict_step, params, rest, eval_batches('test'), mesh,
                                  len(splits['test']), num_classes)
    extra = {'arch': config.model.arch, 'init': config.model.init, 'num_params': int(num_params),
             'image_size': config.data.image_size, 'split': config.data.split,
             'best_step': best_step, 'best_epoch': early['best_epoch'], 'epochs_run': epochs_run,
             'nonfinite_skips': skips}
    metrics = {}
    if is_lead:
      metrics = report.write_report(workdir / 'report', labels[splits['test']], test_probs,
                                    metadata['image_id'][splits['test']], description, extra=extra,
                                    groups=metadata['group'][splits['test']],
                                    figures=config.eval.figures)
      # Wall time apart: metrics.json of a resumed run equals that of an uninterrupted one.
      (workdir / 'report' / 'timing.json').write_text(json.dumps(
          {'train_time_s': progress.get('train_time_s')}) + '\n')
      if skips:
        print(f'{skips} steps were skipped for a non-finite loss (config.train.skip_nonfinite).')
      print(f'Test report (best checkpoint, step {best_step}), written to {workdir / "report"}:\n'
            + (workdir / 'report' / 'classification_report.txt').read_text()
            + report.format_summary(metrics))
    return metrics
  finally:
    # Every exit path: a finished run, a requested stop, an error or a second Ctrl-C.
    if is_lead:
      metrics_log.close()
      writer.close()
    train_iter.close()  # stops grain's worker processes
    checkpoints.wait_and_close()


def _with_pretrained_backbone(state: steps.TrainState, config, replicated) -> steps.TrainState:
  """The fresh state with the backbone's weights and statistics from `config.model.init`."""
  values, source = pretrained.load_backbone(config.model.arch, config.model.init)
  used = (pretrained.put_backbone(state.params, values, replicated)
          | pretrained.put_backbone(state.rest, values, replicated))
  if used != values.keys():  # mapping.keras_to_flax checked the same model; this guards the split
    raise ValueError(f'{source}: {len(values.keys() - used)} weights found no place in the model.')
  logging.info('Initialised the %s backbone from %s.', config.model.arch, source)
  print(f'Backbone weights: {source}')
  return state


def _restore_latest(checkpoints: ckpt.RunCheckpoints, abstract_state, train_iter, tx, replicated):
  """(train state, progress) of the latest checkpoint, in today's optimiser layout.

  Checkpoints that the trainer wrote before the layout was one, in phase 1, hold no backbone
  optimiser state; it is the fresh one, which phase 1 holds untouched anyway. A moving average
  that allow_config_change turned on starts from the restored weights; one turned off is dropped.
  """
  saved_ema, wanted_ema = checkpoints.latest_has_ema(), abstract_state.ema is not None
  if saved_ema != wanted_ema:
    saved = abstract_state.replace(ema=None)
    if saved_ema:
      saved = saved.replace(ema={'params': abstract_state.params, 'rest': abstract_state.rest})
    state, progress = _restore_latest(checkpoints, saved, train_iter, tx, replicated)
    state = state.replace(ema=None)
    return (_start_average(state, replicated) if wanted_ema else state), progress
  if checkpoints.latest_state_size() == len(jax.tree.leaves(abstract_state)):
    return checkpoints.restore_latest(abstract_state, train_iter)
  older = abstract_state.replace(opt_state=optim.without_backbone_state(abstract_state.opt_state))
  state, progress = checkpoints.restore_latest(older, train_iter)
  fresh = jax.jit(tx.init, out_shardings=replicated)(state.params)
  return state.replace(opt_state=optim.with_backbone_state(state.opt_state, fresh)), progress


def _start_average(state: steps.TrainState, replicated) -> steps.TrainState:
  """The state with its moving average (config.train.ema_decay) started at its own weights."""
  return state.replace(ema=jax.jit(steps.start_ema, out_shardings=replicated)(state.params,
                                                                                state.rest))


def _finished(checkpoints: ckpt.RunCheckpoints, total_steps: int) -> bool:
  """Training is over when the last epoch was checkpointed or early stopping fired."""
  progress = checkpoints.latest_progress()
  return progress is not None and (checkpoints.latest_step() >= total_steps
                                   or progress['early_stopping']['stopped'])


def _fresh_early_stopping() -> dict:
  return {'best_value': None, 'best_epoch': None, 'best_step': None, 'bad_epochs': 0,
          'stopped': False}


def _with_training_short_side(config: ml_collections.ConfigDict, dataset):
  """`config`, with data.training_short_side measured when evaluation views are to match it and
  it is not given; a copy, so that the caller's config stays as written."""
  if not config.data.match_training_resolution or config.data.training_short_side:
    return config
  config = copy.deepcopy(config)
  config.data.training_short_side = handle.median_training_short_side(dataset)
  if jax.process_index() == 0:
    print(f'Evaluation views: images with a shorter side above {config.data.training_short_side} '
          "px (the training images' median) are shrunk to it first.", flush=True)
  return config


def _print_metadata_summary(config, dataset):
  """Where each metadata field comes from, and how often it is known in the training images."""
  sample = handle.spread_sample(dataset.splits['train'])
  encoder = patient_metadata.MetadataEncoder.from_config(config)
  shares = patient_metadata.known_shares(encoder, [dataset.source[int(i)] for i in sample])
  for line in patient_metadata.summary(encoder.fields, dataset.descriptions, shares, len(sample)):
    print(line, file=sys.stderr if line.startswith('warning:') else sys.stdout, flush=True)


def _update_early_stopping(state: dict, summary: dict, cfg) -> bool:
  """Updates `state` in place; returns whether this epoch is the new best."""
  value = summary[cfg.monitor]
  sign = 1.0 if cfg.mode == 'max' else -1.0
  if value is None:  # n/a (melanoma recall of a split without melanoma): no evidence either way
    improved = state['best_value'] is None  # so that a best checkpoint exists
    if improved:
      state.update(best_epoch=summary['epoch'], best_step=summary['step'])
    return improved
  improved = state['best_value'] is None or sign * (value - state['best_value']) > cfg.min_delta
  if improved:
    state.update(best_value=value, best_epoch=summary['epoch'], best_step=summary['step'],
                 bad_epochs=0)
  else:
    state['bad_epochs'] += 1
    state['stopped'] = cfg.patience > 0 and state['bad_epochs'] >= cfg.patience
  return improved


def _train_record(step: int, epoch: int, fetched: list[dict], skips: int) -> dict:
  """The metrics.jsonl record of the steps in `fetched` (their fetched metrics, in order).

  Steps skipped for a non-finite loss (config.train.skip_nonfinite) changed nothing, so they are
  left out of the loss and the accuracy alike: both describe the same steps (NaN if none).
  """
  kept = [m for m in fetched if not m['skipped']]
  losses = [float(m['loss']) for m in kept] or [float('nan')]
  accuracies = [float(m['accuracy']) for m in kept] or [float('nan')]
  return {'step': step, 'epoch': epoch, 'train_loss': float(np.mean(losses)),
          'train_accuracy': float(np.mean(accuracies)), 'step_losses': losses,
          'nonfinite_skips': skips}


def _check_finite(loss, step: int):
  if not np.isfinite(loss):
    raise FloatingPointError(
        f'The training loss became {loss} at step {step}. Lower config.train.learning_rate, keep '
        f'config.train.grad_clip_norm > 0, or use config.model.dtype=float32.')


def _log(metrics_log, writer, record: dict, step: int):
  if metrics_log is None:
    return
  metrics_log.write(json.dumps(record) + '\n')
  metrics_log.flush()
  for key, value in record.items():
    if isinstance(value, (int, float)) and key not in ('step', 'epoch'):
      writer.add_scalar(key, value, step)
