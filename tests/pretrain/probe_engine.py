"""Test helper (run as one rank): train with pretrain.main's command line, then record what the engine computes.

After training, every rank runs the engine on a fixed batch (a collective under ZeRO-3) and rank 0 saves
``{"input_ids", "logits"}`` to ``<run dir>/probe.pt``. With ``NAN_CALLS`` in the environment (``"3,7+"``:
the 3rd loss call and every call from the 7th on), rank 0's loss becomes NaN at those micro-batches, to
exercise the non-finite-step handling end to end.
"""

import os
import sys

import torch

import pretrain.trainer as trainer_module
from pretrain.args import parse_args
from pretrain.trainer import Trainer


def poison_losses(spec: str) -> None:
    exact = {int(x) for x in spec.split(",") if x and not x.endswith("+")}
    start = min([int(x[:-1]) for x in spec.split(",") if x.endswith("+")], default=None)
    original, calls = trainer_module.lm_loss, [0]

    def lm_loss(*args):
        calls[0] += 1
        loss = original(*args)
        hit = calls[0] in exact or (start is not None and calls[0] >= start)
        return loss * float("nan") if hit and os.environ["RANK"] == "0" else loss

    trainer_module.lm_loss = lm_loss


def main() -> int:
    if os.environ.get("NAN_CALLS"):
        poison_losses(os.environ["NAN_CALLS"])
    cfg, _ = parse_args(sys.argv[1:])
    trainer = Trainer(cfg)
    code = trainer.train()
    input_ids = torch.randint(7, 11, (2, cfg.train.seq_len), generator=torch.Generator().manual_seed(0))
    trainer.engine.eval()
    with torch.no_grad():
        logits = trainer.engine(input_ids)
    if trainer.rank == 0:
        torch.save({"input_ids": input_ids, "logits": logits.float()}, trainer.run_dir / "probe.pt")
    trainer.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
