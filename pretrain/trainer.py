"""The training loop in named steps: ``Trainer(cfg)`` sets up, ``train()`` runs, ``train_step`` / ``evaluate`` /
``save`` / ``resume`` are the parts. ``pretrain/main.py`` is the command line around it.

Every rank runs the same sequence of collectives: one all-reduce per optimizer step carries the loss, a
non-finite-loss count and the stop request, so all ranks agree on skipping and on stopping.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from data_prep.format import load_manifest
from parallel import (ParallelDims, SequenceDataParallelMPU, apply_sequence_parallel, apply_tensor_parallel,
                      tensor_parallel_specs)
from pretrain import args as cfg_io
from pretrain.build import build_engine, set_stage_geometry
from pretrain.checkpoint import CheckpointManager, rng_state, set_rng_state
from pretrain.config import Config, check_data
from pretrain.distributed import init_distributed
from pretrain.loss import eval_sums, lm_loss
from pretrain.metrics import MetricsLogger, max_memory_gb, mfu, peak_flops_per_device, perplexity
from pretrain.plan import build_plan, make_stream
from pretrain.schedule import stage_at
from pretrain.signals import EXIT_INTERRUPTED, StopRequest
from pretrain.warm_start import check_resume_config, load_init_weights

EXIT_OK, EXIT_NONFINITE = 0, 3


class Trainer:
    """One rank of a pretraining run described by ``cfg``."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stop = StopRequest()  # first: a signal during set-up still ends in a clean save
        self.rank, self.world_size, self.device = init_distributed(cfg.parallel.backend)
        self.dims = ParallelDims.from_world(self.world_size, cfg.parallel.sequence, cfg.parallel.tensor).build()
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.config_yaml = cfg_io.dump_yaml(cfg)
        check_resume_config(self.run_dir, self.config_yaml)  # before this config replaces the run's config.yaml
        self._seed_everything()
        _set_kernel_defaults(cfg)
        check_data(cfg, load_manifest(Path(cfg.data.path)).chunk_len)
        self.train_stream = make_stream(cfg, self.dims, split=cfg.data.train_split, train=True)
        self.stages = build_plan(cfg, self.dims)
        model = _build_model(cfg)
        # Before TP splits the layers, SP wraps the mixers and the engine (with ZeRO-3 partitions) the parameters; a
        # resume overwrites them.
        init_from = load_init_weights(model, cfg.train.init_from) if cfg.train.init_from else None
        model = apply_tensor_parallel(model, self.dims)  # a no-op without TP; before SP, which splits what it leaves
        self.model = apply_sequence_parallel(model, self.dims)  # a no-op without SP
        # ZeRO over the dp x sp ranks holding the same TP shard; the TP group as DeepSpeed's model-parallel group
        mpu = SequenceDataParallelMPU(self.dims) if self.dims.sp_enabled or self.dims.tp_enabled else None
        self.engine = build_engine(self.model, cfg, self.stages[0], self.dims.dp, mpu=mpu)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                      rank=self.rank, world_size=self.world_size, barrier=dist.barrier)
        self.step, self.tokens, self.nonfinite_run = 0, 0, 0
        self.stage = None
        resumed = self.resume()
        if init_from is not None and not resumed and self.rank == 0:
            print(f"initialised the model weights from {init_from} (train.init_from; step 0, new optimizer)",
                  flush=True)
        self._enter_stage(stage_at(self.stages, self.step))  # as the uninterrupted run would at this step
        self.metrics = MetricsLogger(self.run_dir, enabled=self.rank == 0,
                                     resume_step=self.step if resumed else None)
        self.peak_flops = peak_flops_per_device(cfg.train.precision, cfg.train.peak_flops)

    # --- set-up helpers ---
    def _seed_everything(self) -> None:
        import random

        import numpy as np

        seed = self.cfg.run.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg_io.save_config(self.cfg, self.run_dir / "config.yaml")
        dist.barrier()

    def _enter_stage(self, stage) -> None:
        """Point the stream and the engine at ``stage``'s window length and batch geometry."""
        if self.stage is not None and stage.index == self.stage.index:
            return
        self.stage = stage
        self.train_stream.set_seq_len(stage.seq_len, stage.micro_batch)
        set_stage_geometry(self.engine, stage, self.dims.dp)
        self.train_iter = iter(self.train_stream)

    # --- the loop ---
    def train(self) -> int:
        """Run to ``train.max_steps`` (or a stop signal); return the process exit code."""
        t = self.cfg.train
        if self.step >= t.max_steps:
            self.metrics.message(f"already at step {self.step} >= train.max_steps={t.max_steps}; nothing to do")
        window = _Window(self.step, self.tokens)
        saved_at, evaluated_at = self.step, None
        while self.step < t.max_steps:
            self._enter_stage(stage_at(self.stages, self.step))
            result = self.train_step()
            window.add(result)
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                self.metrics.log(self._train_record(window.flush(self.step, self.tokens)))
            if t.eval_every and self.step % t.eval_every == 0:
                self.evaluate()
                evaluated_at = self.step
            if result["nonfinite"] and self.nonfinite_run > t.max_nonfinite_steps:
                return self._stop_nonfinite()
            if result["stop"]:
                return self._stop_on_signal(result["interrupted"])
            if t.ckpt_every and self.step % t.ckpt_every == 0:
                self.save()
                saved_at = self.step
        if evaluated_at != self.step:
            self.evaluate()
        if saved_at != self.step:
            self.save()
        self.metrics.close()
        return EXIT_OK

    def train_step(self) -> dict:
        """One optimizer step: ``grad_accum`` micro-batches through the engine, then agree across ranks."""
        self.engine.train()
        lr = self.engine.get_lr()[0]  # the rate this step's update uses (the schedule moves on in step())
        losses = []
        for _ in range(self.stage.grad_accum):
            batch = next(self.train_iter)
            logits = self.engine(batch["input_ids"].to(self.device))
            loss = lm_loss(logits, batch["labels"].to(self.device), batch["loss_mask"].to(self.device),
                           self.dims.sp_group if self.dims.sp_enabled else None)  # SP: this slice's share
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        local = torch.stack(losses)
        finite = torch.isfinite(local)
        # [loss sum over finite micro-batches, non-finite count, stop request, Ctrl-C] summed over all ranks
        agreed = torch.tensor([float(local[finite].sum()), float((~finite).sum()), float(self.stop.requested),
                               float(self.stop.interrupted)], dtype=torch.float64)
        dist.all_reduce(agreed)
        nonfinite = agreed[1].item() > 0
        self.nonfinite_run = self.nonfinite_run + 1 if nonfinite else 0
        if nonfinite and self.engine.was_step_applied():
            raise RuntimeError("a non-finite loss reached an applied optimizer step; the weights are not trustworthy")
        self.step += 1
        self.tokens += self.cfg.train.tokens_per_step
        # the slices of one SP group add up to one micro-batch's loss; the TP ranks of a group each hold all of it
        count = len(losses) * self.dims.dp * self.dims.tp
        grad_norm = self.engine.get_global_grad_norm()
        return {"loss": agreed[0].item() / count if not nonfinite else math.nan, "nonfinite": nonfinite, "lr": lr,
                "stop": agreed[2].item() > 0, "interrupted": agreed[3].item() > 0,
                "grad_norm": None if grad_norm is None else float(grad_norm)}

    def evaluate(self) -> dict:
        """Validation loss and perplexity at the current window length over ``train.eval_batches`` batches."""
        cfg = self.cfg
        stream = make_stream(cfg, self.dims, split=cfg.data.valid_split, train=False,
                             seq_len=self.stage.seq_len, micro_batch=self.stage.micro_batch)
        self.engine.eval()
        loss_sum, weight_sum, _ = eval_sums(self.engine, stream, self.device, cfg.train.eval_batches)
        self.engine.train()
        sums = torch.tensor([loss_sum, weight_sum], dtype=torch.float64)
        dist.all_reduce(sums, group=self.dims.dp_sp_group)  # the TP ranks of a group see the same tokens: once
        loss = sums[0].item() / max(sums[1].item(), 1e-12)
        record = {"step": self.step, "tokens": self.tokens, "seq_len": self.stage.seq_len, "loss": loss,
                  "ppl": perplexity(loss), "eval_tokens": int(sums[1].item())}
        self.metrics.log(record, split="valid")
        return record

    def _train_record(self, w: dict) -> dict:
        flops = self.model.flops_per_token(self.stage.seq_len)
        mem = torch.tensor([max_memory_gb()], dtype=torch.float64)
        dist.all_reduce(mem, op=dist.ReduceOp.MAX)
        return {"step": self.step, "tokens": self.tokens, "seq_len": self.stage.seq_len, "loss": w["loss"],
                "ppl": perplexity(w["loss"]) if math.isfinite(w["loss"]) else math.nan,
                "lr": w["lr"], "grad_norm": w["grad_norm"], "tokens_per_s": w["tokens_per_s"],
                "mfu": mfu(flops, w["tokens_per_s"], self.peak_flops, self.world_size),
                "max_mem_gb": mem.item(), "skipped_steps": w["skipped"]}

    def _stop_on_signal(self, interrupted: bool) -> int:
        """Save after a stop signal on any rank; exit 130 if it was Ctrl-C (on any rank), else 0 (requeue)."""
        self.save()
        if interrupted:
            self.metrics.message(f"interrupted: saved step {self.step} to {self.ckpt.root}; run the same command "
                                 f"again to resume from there")
            return EXIT_INTERRUPTED
        self.metrics.message(f"received {self.stop.signal_name or 'a stop signal on another rank'}: saved "
                             f"step {self.step} to {self.ckpt.root}; exiting so the job can be requeued")
        return EXIT_OK

    def _stop_nonfinite(self) -> int:
        self.save()
        self.metrics.message(
            f"stopping: {self.nonfinite_run} consecutive optimizer steps had a non-finite loss (last at step "
            f"{self.step}); their updates were skipped and step {self.step} was saved to {self.ckpt.root}. Lower "
            f"train.lr, check the data, or raise train.max_nonfinite_steps={self.cfg.train.max_nonfinite_steps}")
        self.metrics.close()
        return EXIT_NONFINITE

    def close(self) -> None:
        """Leave the process group together: a rank that exits while a peer still holds gloo connections to it
        can make that peer abort at exit instead of returning its exit code."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # --- state ---
    def state_dict(self) -> tuple[dict, dict]:
        """``(trainer_state, rank_state)``: what a checkpoint holds beside DeepSpeed's model/optimizer/schedule."""
        trainer = {"step": self.step, "tokens": self.tokens, "stage": self.stage.index,
                   "nonfinite_run": self.nonfinite_run, "world_size": self.world_size,
                   "dp": self.dims.dp, "sp": self.dims.sp, "tp": self.dims.tp}
        if self.dims.tp_enabled:  # how the per-TP-rank model files join (pretrain.export)
            trainer["tensor_parallel_specs"] = tensor_parallel_specs(self.model)
        return trainer, {"loader": self.train_stream.state_dict(), "rng": rng_state()}

    def save(self) -> Path:
        trainer, rank = self.state_dict()
        return self.ckpt.save(self.engine, self.step, trainer_state=trainer, rank_state=rank,
                              config_yaml=self.config_yaml)

    def resume(self) -> bool:
        """Load the newest intact checkpoint of this run, if any (rank 0 picks it, all ranks load it)."""
        choice = [self.ckpt.find_resumable() if self.rank == 0 else None]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return False
        layout = {"dp": self.dims.dp, "sp": self.dims.sp, "tp": self.dims.tp}
        trainer, rank = self.ckpt.load(self.engine, Path(choice[0]), layout=layout)
        self.step, self.tokens = trainer["step"], trainer["tokens"]
        self.nonfinite_run = trainer["nonfinite_run"]
        # Restore the stream exactly as saved (its stage included); the caller then moves to the stage of
        # `step` through the same set_seq_len call the uninterrupted run made there.
        self.stage = self.stages[trainer["stage"]]
        set_stage_geometry(self.engine, self.stage, self.dims.dp)
        self.train_stream.load_state_dict(rank["loader"])
        self.train_iter = iter(self.train_stream)
        set_rng_state(rank["rng"])
        if self.rank == 0:
            print(f"resumed from {choice[0]} at step {self.step}", flush=True)
        return True


class _Window:
    """Aggregates step results between two log lines."""

    def __init__(self, step: int, tokens: int):
        self.step, self.tokens, self.time = step, tokens, time.perf_counter()
        self.losses, self.grad_norm, self.skipped, self.lr = [], None, 0, None

    def add(self, result: dict) -> None:
        if result["nonfinite"]:
            self.skipped += 1
        else:
            self.losses.append(result["loss"])
            self.grad_norm = result["grad_norm"]
        self.lr = result["lr"]

    def flush(self, step: int, tokens: int) -> dict:
        now = time.perf_counter()
        out = {"loss": sum(self.losses) / len(self.losses) if self.losses else math.nan,
               "grad_norm": self.grad_norm, "skipped": self.skipped, "lr": self.lr,
               "tokens_per_s": (tokens - self.tokens) / max(now - self.time, 1e-9)}
        self.__init__(step, tokens)
        return out


def _set_kernel_defaults(cfg: Config) -> None:
    import kernels

    kernels.set_default_impl("fftconv", cfg.kernels.fftconv)
    kernels.set_default_impl("scan", cfg.kernels.scan)


def _build_model(cfg: Config):
    from models import build_model

    return build_model(cfg.model)
