"""One training step's loss and gradients, for the N-process equivalence test.

Run as one process with the global batch, or as N processes (accelerate launch) each taking its
slice of the same global batch; writes {"loss", "grads", ...} from the main process to OUT.
Usage: one_step.py OUT GLOBAL_BATCH [key=value ...]
"""
import sys

import torch

from mmrec.config import load_config
from mmrec.data.batches import EpochSampler
from mmrec.data.pipeline import prepare
from mmrec.distributed import gather_nograd
from mmrec.models import build_model
from mmrec.distributed import make_accelerator

out_path, global_batch, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
acc = make_accelerator()
cfg = load_config("configs/tiny.yaml", overrides)
prepared = prepare(cfg, accelerator=acc)
torch.manual_seed(0)
model = build_model(cfg, prepared)
dataset, collate = model.train_data(prepared)
perm, seeds = EpochSampler(len(dataset), cfg["seed"]).order()
B = global_batch // acc.num_processes
rows = range(acc.process_index * B, (acc.process_index + 1) * B)
batch = collate([dataset[(int(perm[i]), int(seeds[i]))] for i in rows])
wrapped = acc.prepare(model)
losses = wrapped(batch)
acc.backward(losses["loss"])
parts = {k: gather_nograd(v.detach().reshape(1)).mean() for k, v in losses.items()}   # every rank
inner = acc.unwrap_model(wrapped)
ddp = [type(m).__name__ for m in wrapped.modules() if isinstance(m, torch.nn.parallel.DistributedDataParallel)]
if acc.is_main_process:
    torch.save({"world": acc.num_processes, "parts": parts,
                "grads": {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None},
                "params": [n for n, _ in inner.named_parameters()],
                "ddp_wrappers": len(ddp), "duplicate_users": len(set(batch["user_idx"].tolist())) < B},
               out_path)
