"""The fine-tuning loop in named steps, on the training app's machinery: process groups
(:mod:`pretrain.distributed`), the optimizer / LR schedule / DeepSpeed engine builders (:mod:`pretrain.build`),
atomic checkpoints with exact resume (:mod:`pretrain.checkpoint`), ``metrics.jsonl`` + TensorBoard
(:mod:`pretrain.metrics`) and graceful stop on SIGUSR1 / SIGTERM / SIGINT (:mod:`pretrain.signals`).

Everything the data, the backbone or the config can refute (unreadable files, missing or non-integer labels, an
empty split, sequences longer than the backbone's ``l_max``, a backbone of another vocabulary) is checked before
the run directory is created, so a refused run writes nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from finetune.config import FinetuneConfig
from finetune.data import ClassificationStream, check_tuning_length, describe, eval_batches, load_task
from finetune.metrics import classification_metrics, majority_accuracy
from finetune.model import SequenceClassifier, load_backbone
from pretrain import args as cfg_io
from pretrain.build import build_engine
from pretrain.checkpoint import CheckpointManager, rng_state, set_rng_state
from pretrain.distributed import init_distributed
from pretrain.metrics import MetricsLogger
from pretrain.schedule import Stage
from pretrain.signals import EXIT_INTERRUPTED, StopRequest

EXIT_OK = 0


class FinetuneTrainer:
    """One rank of a fine-tuning run described by ``cfg``."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self.config_yaml = cfg_io.dump_yaml(cfg)  # as given (epochs, not the derived step count)
        torch.manual_seed(cfg.run.seed)  # a random backbone and the head are drawn from the run's seed
        backbone = load_backbone(cfg)
        self.task = load_task(cfg) if cfg.data.format != "species" else None
        self.seq_len = check_tuning_length(cfg, self.task, backbone.config.l_max)
        self.stop = StopRequest()  # after the checks: a refused run leaves the caller's signal handlers alone
        self.rank, self.world_size, self.device = init_distributed(cfg.parallel.backend)
        self.train_stream, self.class_names = self._train_stream()
        cfg.train.resolve_steps(len(self.task.splits["train"][0]) if self.task else 0, self.world_size)
        self.model = SequenceClassifier(backbone, len(self.class_names), pooling=cfg.head.pooling,
                                        mode=cfg.tuning.mode, num_prompts=cfg.tuning.num_prompts,
                                        dropout=cfg.head.dropout, seed=cfg.run.seed)
        self.model.head.bias._no_weight_decay = True
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg_io.save_config(cfg, self.run_dir / "config.yaml")
        dist.barrier()
        stage = Stage(0, self.seq_len, 0, None, cfg.train.micro_batch, cfg.train.grad_accum)
        self.engine = build_engine(self.model, cfg, stage, self.world_size)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                      rank=self.rank, world_size=self.world_size, barrier=dist.barrier)
        self.step, self._last_valid = 0, None
        resumed = self.resume()
        self.train_iter = iter(self.train_stream)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.rank == 0, resume_step=self.step if resumed else None,
                                     formatter=format_line)
        if self.task is not None:
            self.metrics.message(f"{describe(self.task)}; tuning length {self.seq_len}; "
                                 f"{cfg.train.max_steps} optimizer steps")

    def _train_stream(self):
        cfg, d = self.cfg, self.cfg.data
        if self.task is None:
            from finetune.species_data import SpeciesStream

            stream = SpeciesStream(d.task_dir, "train", self.seq_len, cfg.train.micro_batch, seed=cfg.run.seed,
                                   dp_rank=self.rank, dp_size=self.world_size, rc_prob=d.rc_prob)
            for split in ("valid", "test"):  # refuse a length the held-out splits cannot hold before training
                self._eval_batches(split)
            return stream, list(stream.class_names)
        ids, labels = self.task.splits["train"]
        stream = ClassificationStream(ids, labels, seq_len=self.seq_len, micro_batch=cfg.train.micro_batch,
                                      padding_side=d.padding_side, seed=cfg.run.seed, dp_rank=self.rank,
                                      dp_size=self.world_size, rc_prob=d.rc_prob)
        return stream, self.task.class_names

    # --- the loop ---
    def train(self) -> int:
        """Run to ``train.max_steps`` (or a stop signal), then score valid and test; return the exit code."""
        t = self.cfg.train
        saved_at, evaluated_at, window = self.step, None, _Window()
        while self.step < t.max_steps:
            result = self.train_step()
            window.add(result, self.cfg.train.micro_batch * t.grad_accum * self.world_size)
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                self.metrics.log({"step": self.step, **window.flush()})
            if t.eval_every and self.step % t.eval_every == 0:
                self.evaluate("valid")
                evaluated_at = self.step
            if result["stop"]:
                return self._stop_on_signal(result["interrupted"])
            if t.ckpt_every and self.step % t.ckpt_every == 0:
                self.save()
                saved_at = self.step
        results = {"valid": self.evaluate("valid") if evaluated_at != self.step else self._last_valid,
                   "test": self.evaluate("test")}
        if saved_at != self.step:
            self.save()
        self._write_results(results)
        self.metrics.close()
        return EXIT_OK

    def train_step(self) -> dict:
        """One optimizer step of ``grad_accum`` micro-batches; ranks agree on the loss and on stopping."""
        self.engine.train()
        lr = self.engine.get_lr()[0]
        losses = []
        for _ in range(self.cfg.train.grad_accum):
            batch = next(self.train_iter)
            logits = self.engine(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            loss = F.cross_entropy(logits.float(), batch["labels"].to(self.device))
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        agreed = torch.tensor([float(torch.stack(losses).sum()), float(self.stop.requested),
                               float(self.stop.interrupted)], dtype=torch.float64)
        dist.all_reduce(agreed)
        self.step += 1
        grad_norm = self.engine.get_global_grad_norm()
        return {"loss": agreed[0].item() / (len(losses) * self.world_size), "lr": lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "stop": agreed[1].item() > 0, "interrupted": agreed[2].item() > 0}

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """Loss, accuracy, MCC and per-class F1 on a whole split (all ranks' shares gathered)."""
        self.engine.eval()
        labels, preds, loss_sum = [], [], 0.0
        for batch in self._eval_batches(split):
            logits = self.engine(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).float()
            keep = batch.get("keep", batch["labels"] >= 0)  # filler rows: keep=False, or label -100 (species)
            y = batch["labels"].to(self.device)
            loss_sum += float(F.cross_entropy(logits, y, reduction="none")[keep.to(self.device)].sum())
            labels.append(batch["labels"][keep].numpy())
            preds.append(logits.argmax(-1).cpu()[keep].numpy())
        self.engine.train()
        shares = [None] * self.world_size
        dist.all_gather_object(shares, (np.concatenate(labels) if labels else np.zeros(0, np.int64),
                                        np.concatenate(preds) if preds else np.zeros(0, np.int64), loss_sum))
        y = np.concatenate([s[0] for s in shares])
        p = np.concatenate([s[1] for s in shares])
        record = {"step": self.step, "loss": sum(s[2] for s in shares) / max(len(y), 1), "examples": int(len(y)),
                  **classification_metrics(y, p, self.class_names),
                  "majority_accuracy": majority_accuracy(y, len(self.class_names))}
        self.metrics.log(record, split=split)
        if split == "valid":
            self._last_valid = record
        return record

    def _eval_batches(self, split: str):
        cfg = self.cfg
        if self.task is None:
            from finetune.species_data import SpeciesStream

            return SpeciesStream(cfg.data.task_dir, split, self.seq_len, cfg.train.micro_batch, seed=cfg.run.seed,
                                 dp_rank=self.rank, dp_size=self.world_size, epochs=1,
                                 batches_per_epoch=cfg.train.eval_batches)
        ids, labels = self.task.splits[split]
        return eval_batches(ids, labels, seq_len=self.seq_len, micro_batch=cfg.train.micro_batch,
                            padding_side=cfg.data.padding_side, dp_rank=self.rank, dp_size=self.world_size,
                            limit=cfg.train.eval_batches if split == "valid" else None)

    def _write_results(self, results: dict) -> None:
        if self.rank != 0:
            return
        out = {"step": self.step, "class_names": self.class_names, "tuning_length": self.seq_len, **results}
        tmp = self.run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(self.run_dir / "results.json")

    def _stop_on_signal(self, interrupted: bool) -> int:
        self.save()
        why = "interrupted" if interrupted else f"received {self.stop.signal_name or 'a stop signal on another rank'}"
        self.metrics.message(f"{why}: saved step {self.step} to {self.ckpt.root}; the same command resumes from there")
        self.metrics.close()
        return EXIT_INTERRUPTED if interrupted else EXIT_OK

    def close(self) -> None:
        """Leave the process group together (see :meth:`pretrain.trainer.Trainer.close`)."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # --- state ---
    def save(self) -> Path:
        trainer = {"step": self.step, "world_size": self.world_size, "class_names": self.class_names,
                   "tuning_length": self.seq_len}
        rank = {"loader": self.train_stream.state_dict(), "rng": rng_state()}
        return self.ckpt.save(self.engine, self.step, trainer_state=trainer, rank_state=rank,
                              config_yaml=self.config_yaml)

    def resume(self) -> bool:
        """Load the newest intact checkpoint of this run, if any (rank 0 picks it, all ranks load it)."""
        choice = [self.ckpt.find_resumable() if self.rank == 0 else None]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return False
        path = Path(choice[0])
        saved = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
        if saved.get("class_names") != self.class_names or saved.get("tuning_length") != self.seq_len:
            raise ValueError(f"{path} was written for classes {saved.get('class_names')} at tuning length "
                             f"{saved.get('tuning_length')}, this run has {self.class_names} at {self.seq_len}: "
                             f"use another run.name for another task")
        trainer, rank = self.ckpt.load(self.engine, path)
        self.step = trainer["step"]
        self.train_stream.load_state_dict(rank["loader"])
        set_rng_state(rank["rng"])
        if self.rank == 0:
            print(f"resumed from {path} at step {self.step}", flush=True)
        return True


class _Window:
    """Aggregates step results between two log lines."""

    def __init__(self):
        self.losses, self.lr, self.grad_norm, self.examples, self.time = [], None, None, 0, time.perf_counter()

    def add(self, result: dict, examples: int) -> None:
        self.losses.append(result["loss"])
        self.lr, self.grad_norm = result["lr"], result["grad_norm"]
        self.examples += examples

    def flush(self) -> dict:
        now = time.perf_counter()
        out = {"loss": sum(self.losses) / len(self.losses) if self.losses else math.nan, "lr": self.lr,
               "grad_norm": self.grad_norm, "examples_per_s": self.examples / max(now - self.time, 1e-9)}
        self.__init__()
        return out


def format_line(record: dict, split: str = "train") -> str:
    """The console line of one metrics record."""
    def num(key, fmt):
        value = record.get(key)
        return "-" if value is None else format(value, fmt)

    if split == "train":
        return (f"step {record['step']} | loss {num('loss', '.4f')} | lr {num('lr', '.2e')} | "
                f"gnorm {num('grad_norm', '.3f')} | {num('examples_per_s', ',.1f')} seq/s")
    return (f"[{split}] step {record['step']} | loss {num('loss', '.4f')} | acc {num('accuracy', '.4f')} | "
            f"mcc {num('mcc', '.4f')} | f1 {num('f1_macro', '.4f')} | majority {num('majority_accuracy', '.4f')} | "
            f"n {record.get('examples')}")
