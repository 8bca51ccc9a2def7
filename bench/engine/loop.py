"""One run's training, as the algorithm reads: setup, then per epoch train → evaluate →
checkpoint, then the final record. Resumes from the run directory's checkpoint."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from bench.config import RunConfig
from bench.engine import distributed as dist
from bench.engine.checkpoint import restore_checkpoint, save_checkpoint
from bench.engine.evaluate import evaluate
from bench.engine.interrupt import Preempted, StopRequest, signal_name
from bench.engine.tracker import Tracker
from bench.engine.training import EpochStats, Training, setup
from bench.runs import RunDir
from bench.runs.environment import env_info, machine_name

NO_STEP = -(2**62)   # "no NaN yet" in the ranks' agreement, which takes a maximum of −step


def check_in(t: Training, stats: EpochStats, save: Callable[[EpochStats], None]) -> None:
    """Every `runtime.nan_check_steps` batches and at the epoch's end: one device sync (one
    all-reduce under DDP, so that every rank acts at the same step) for the NaN guard, a stop
    request (any rank's signal) and a checkpoint falling due (rank 0's clock). A NaN/inf loss
    raises `NonFiniteLoss`; a stop request saves the epoch so far and raises `Preempted`."""
    every_s = 60 * (t.cfg.runtime.checkpoint_every_min or 0)
    due = dist.is_main() and every_s > 0 and time.monotonic() - t.state.saved_time >= every_s
    bad = t.state.guard.first_step
    agreed = torch.cat([torch.where(bad < 0, NO_STEP, -bad).view(1),
                        torch.tensor([t.state.stop.requested, due], dtype=torch.long, device=t.device)])
    neg_step, stop, due = dist.all_reduce_max(agreed).tolist()
    t.state.guard.check(-1 if neg_step == NO_STEP else -neg_step, t.steps_per_epoch, t.state.checkpoint, t.state.saved_at)
    if stop or (due and stats.batch < t.steps_per_epoch):   # at the epoch's end its own checkpoint follows
        save(stats)
    if stop:
        raise Preempted(f"stopped on {signal_name(t.state.stop.signum)} in epoch {stats.epoch} after {stats.batch} of "
                        f"{t.steps_per_epoch} batches; checkpoint written: {t.state.checkpoint}", t.state.stop.signum or 0)


def train_epoch(t: Training, epoch: int, on_step: Callable[[], object] = lambda: None,
                resume: Optional[EpochStats] = None, save: Callable[[EpochStats], None] = lambda stats: None) -> EpochStats:
    """One pass over the training batches of `epoch` (from `resume`'s data position and sums when
    given): lr from the schedule, the batch's mixing (when a mixing trick is on for this epoch),
    one optimizer step, the NaN guard, the tracker, and `check_in` every few batches (`save`
    writes a mid-epoch checkpoint)."""
    t.net.train()
    step_on = t.step   # the network, optimizer, scaler and teacher, once an epoch
    mixer = t.cfg.mixing()
    mixer = mixer if mixer is not None and mixer.active(epoch, t.cfg.schedule.epochs) else None
    stats = resume or EpochStats(torch.zeros((), device=t.device), epoch=epoch)
    terms, every, t0, c0 = ({} if t.cfg.distill is not None else None), t.cfg.runtime.nan_check_steps, time.perf_counter(), time.process_time()
    for i, (images, labels) in enumerate(t.data.train.epoch(epoch, stats.batch), start=stats.batch):
        step = epoch * t.steps_per_epoch + i
        lr = t.lr_at(step)
        mixing = mixer.sample(len(labels), tuple(images.shape[-2:]), t.state.mix_rng) if mixer else None
        loss = step_on(images, labels, lr, mixing, terms)
        t.state.guard.update(loss, step)
        t.state.tracker.log_step(step, lr, loss)
        stats.add(loss, len(labels), lr, terms)
        on_step()
        if stats.batch % every == 0 and stats.batch < t.steps_per_epoch:
            stats.time_s, t0 = stats.time_s + time.perf_counter() - t0, time.perf_counter()
            stats.cpu_s, c0 = stats.cpu_s + time.process_time() - c0, time.process_time()
            check_in(t, stats, save)
    stats.time_s += time.perf_counter() - t0
    stats.cpu_s += time.process_time() - c0
    check_in(t, stats, save)   # a NaN/inf epoch is never evaluated or saved
    if t.cfg.efficient.bn_batch_size:   # ghost batch norm: ranks kept their own running statistics
        dist.average_buffers(t.model)
    return stats


def progress_postfix(epoch: int, row: dict, stats: EpochStats) -> dict[str, str]:
    """What the progress bar shows after `epoch`: the epoch's mean training loss and top-1.

    With distillation the loss is shown as its two parts instead, `hard` (the cross-entropy with
    the targets) and `kd_kl` (the soft term as T²·KL, 0 where the student agrees with the
    teacher): the soft term being a cross-entropy, the total includes T² × the teacher's entropy,
    a constant near T²·log K (≈ 920 at T = 20, K = 10) that would hide what changes. The
    metrics.jsonl `train_loss` stays the loss that is optimized.
    """
    shown = {"epoch": str(epoch + 1)}
    if stats.terms_sum:   # this rank's images only: for display
        shown.update({key: f"{float(value) / stats.images:.3f}" for key, value in stats.terms_sum.items()})
    else:
        shown["loss"] = f"{row['train_loss']:.3f}"
    return {**shown, "top1": f"{row['val_top1']:.1f}"}


def epoch_row(epoch: int, stats: EpochStats, val: dict, device: torch.device) -> dict:
    """The metrics.jsonl row of an epoch, its training loss averaged over every rank's images."""
    loss_sum, seen, cpu_s = dist.all_reduce_sum([float(stats.loss_sum), stats.images, stats.cpu_s], device)
    return {"epoch": epoch, "train_loss": float(loss_sum) / seen, "lr": stats.lr, "epoch_time_s": stats.time_s,
            "epoch_cpu_s": cpu_s, "images_per_s": seen / stats.time_s,
            **{k: v for k, v in val.items() if k not in ("val_images", "logit_gaps", "correct")}}


def final_record(t: Training, val: dict, machine: Optional[str] = None) -> dict:
    """What final.json holds beyond the run's identity."""
    cfg, epochs, world = t.cfg, t.cfg.schedule.epochs, t.runtime.get("world_size", 1)
    train_images = epochs * t.steps_per_epoch * cfg.data.global_batch_size
    # what the devices did: on a CPU the processes' own CPU time (a shared machine's other jobs
    # lengthen the wall clock, not it), on an accelerator its wall time × devices
    on_cpu = t.device.type == "cpu"
    device_s = t.state.train_cpu_s if on_cpu else t.state.train_time_s * world
    return {"top1": val["val_top1"], "top5": val["val_top5"], "val_images": val["val_images"], "val_loss": val["val_loss"], "epochs": epochs,
            "train_time_s": t.state.train_time_s, "images_per_s": train_images / t.state.train_time_s if t.state.train_time_s else None,
            "device_time_s": device_s if device_s == device_s else None, "device_time_from": "cpu time" if on_cpu else "wall × devices",
            "machine": machine,
            "config_hash": cfg.config_hash(), "num_classes": t.data.num_classes, "steps_per_epoch": t.steps_per_epoch,
            "world_size": world}


def train(cfg: RunConfig, run_dir: RunDir | Path, teacher_run: Optional[tuple[RunConfig, Optional[Path]]] = None,
          label: str = "", progress: bool = True, tracker: Optional[Tracker] = None,
          stop: Optional[StopRequest] = None) -> dict:
    """Train one run in `run_dir`, resuming from its checkpoint; returns what final.json holds.

    Args:
        teacher_run: the teacher's config and final weights, when `cfg.distill` is set.
        tracker: receives each batch's lr and loss and each epoch's metrics row (W&B).
        stop: set by a signal handler: the run checkpoints at its next check and raises `Preempted`.
    """
    run_dir, main = RunDir(run_dir) if not isinstance(run_dir, RunDir) else run_dir, dist.is_main()
    t = setup(cfg, teacher_run, tracker)
    t.state.checkpoint, t.state.stop = run_dir / RunDir.CHECKPOINT, stop or t.state.stop
    resume, epochs, n = restore_checkpoint(t, run_dir), cfg.schedule.epochs, t.steps_per_epoch
    env = start_message(t, run_dir, resume, main)
    bar = tqdm(total=epochs * n, initial=resume.epoch * n + resume.batch, desc=label, unit="step",
               disable=not (progress and main), leave=False, dynamic_ncols=True)
    val = {}
    for epoch in range(resume.epoch, epochs):
        stats = train_epoch(t, epoch, bar.update, resume if epoch == resume.epoch else None,
                            lambda partial: save_checkpoint(t, run_dir, partial.epoch - 1, partial))
        val = evaluate(t.model, t.data.val, cfg, t.device, per_image=epoch == epochs - 1)
        row = epoch_row(epoch, stats, val, t.device)
        t.state.train_time_s += stats.time_s
        t.state.train_cpu_s += row["epoch_cpu_s"]
        if main:
            run_dir.append_metrics(row)
            t.state.tracker.log_epoch(row)
        save_checkpoint(t, run_dir, epoch)
        bar.set_postfix(progress_postfix(epoch, row, stats))
    bar.close()
    if not val:   # resumed after the last epoch's checkpoint: evaluate the restored weights
        val = evaluate(t.model, t.data.val, cfg, t.device, per_image=True)
    if main:
        run_dir.save_outputs(t.model.state_dict(), val["logit_gaps"], val["correct"])
    return final_record(t, val, machine_name(env))


def start_message(t: Training, run_dir: RunDir, resume: EpochStats, main: bool) -> dict:
    """Rank 0 records the environment (and returns it), keeps the metrics rows of the epochs before
    `resume`'s and says where the run resumes."""
    if not main:
        return {}
    env = env_info(t.device, **t.runtime)
    run_dir.write_env(env)
    run_dir.truncate_metrics(resume.epoch)
    if resume.batch:
        print(f"    resumed in epoch {resume.epoch + 1} of {t.cfg.schedule.epochs}, after batch {resume.batch} "
              f"of {t.steps_per_epoch}", flush=True)
    elif resume.epoch:
        print(f"    resumed from the checkpoint of epoch {resume.epoch} of {t.cfg.schedule.epochs}", flush=True)
    return env
