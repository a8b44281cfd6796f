"""Processes: the Accelerator every launch gets, and cross-rank gathers for in-batch contrastive
losses (the open_clip `gather_with_grad` pattern). Shared by the library and the program.

`accelerator.gather` carries no gradient, so the negatives other ranks contribute would be
constants. `torch.distributed.nn.all_gather` does carry it, but is deprecated and emulates
reduce-scatter with all-to-all on gloo; this is the few lines that work on every backend:
forward all_gather, backward all_reduce(SUM) of the incoming gradient and keep this rank's slice.
Summing is right because every rank's loss depends on every rank's embeddings; the optimizer's
data-parallel averaging then gives exactly the gradient of the global-batch mean loss.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0 (rank order), differentiably. Equal sizes needed."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_varlen(x: torch.Tensor, device=None) -> torch.Tensor:
    """Concatenate per-rank row blocks of different lengths, in rank order (no gradient)."""
    if not is_distributed():
        return x
    device = device or x.device
    n = torch.tensor([x.shape[0]], device=device)
    sizes = gather_nograd(n).tolist()
    pad = max(sizes) - x.shape[0]
    xp = x.to(device)
    if pad:
        xp = torch.cat([xp, xp.new_zeros((pad,) + tuple(x.shape[1:]))])
    full = gather_nograd(xp)
    step = max(sizes)
    return torch.cat([full[r * step:r * step + s] for r, s in enumerate(sizes)]).to(x.device)


def block_of_units(n_units: int) -> tuple[int, int, int]:
    """This rank's contiguous block [start, stop) of `n_units` work units, and the per-rank
    count every rank pads to (so all ranks make the same number of collective calls)."""
    rank, world = rank_and_world()
    per = -(-n_units // world)
    start = min(rank * per, n_units)
    return start, min(start + per, n_units), per


def run_on_main(fn):
    """`fn()` on rank 0 only; every rank returns its result. When it raises, rank 0 re-raises it
    and the other ranks raise the same exception (so a user error exits 2 on every rank instead
    of leaving them waiting on a barrier). For one-off work whose output rank 0 writes alone."""
    if not is_distributed():
        return fn()
    box = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except Exception as e:   # noqa: BLE001  (handed to the other ranks, then re-raised)
            error = e
            box = [("error", e.with_traceback(None))]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise error if error is not None else value
    return value


def shutdown(clean: bool = True) -> None:
    """Tear the process group down on this rank before the interpreter exits. Every command that
    may run under `accelerate launch` ends here (`mmrec.cli.main`).

    Without it, gloo's worker threads and the work objects they hold outlive Python's
    finalisation, and a rank whose work is done can still die with SIGABRT ("terminate called
    without an active exception"; pytorch/pytorch#190489). After a clean run the ranks first meet
    at a barrier, so none tears down (or, rank 0, takes the rendezvous store with it) while another
    still talks to it. After an error the others may never reach a barrier: no barrier then.
    """
    if "torch.distributed" not in sys.modules:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    import gc
    gc.collect()   # work objects still held by garbage go while the interpreter is whole
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def make_accelerator(find_unused_parameters: bool = False):
    """The Accelerator for any launch: plain `python -m mmrec`, `accelerate launch` (DDP) on GPUs
    or CPU processes, or DeepSpeed. Mixed precision and gradient accumulation come from the
    launch config (or ACCELERATE_* variables), never from mmrec's config.
    find_unused_parameters: DDP tolerates parameters without a gradient in a step (a head whose
    training stages use different modules, e.g. cmclrec's pre-training)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or deepspeed
    handlers = []
    if launched and not torch.cuda.is_available():
        # CPU processes talk over gloo; DeepSpeed under Accelerate on CPU also needs it.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if find_unused_parameters:
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    # Without CUDA, a multi-GPU launch config still gives CPU ranks; `cpu=True` must not be set
    # under DeepSpeed, where it would silently replace DeepSpeed by plain data parallelism.
    cpu = not torch.cuda.is_available() and not deepspeed
    return Accelerator(cpu=cpu, kwargs_handlers=handlers)


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] on one process. For
    the few small objects ranks exchange outside training (the frame store's build)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# A rank that has decoded its share of the trailers waits at the next meeting for the slowest
# rank, for as long as that takes (hours, for a large catalogue on few processes); a rank that
# dies instead is noticed at once (gloo sees its connection close), not after this timeout.
CPU_GROUP_TIMEOUT_S = 48 * 3600


def join_cpu_processes(timeout_s: float = CPU_GROUP_TIMEOUT_S) -> tuple[int, int]:
    """Join the launcher's processes (`accelerate launch`, any number of nodes) in a gloo process
    group on the CPU, whatever accelerator the machine has, and return (rank, world size): for
    commands that only pass small objects between ranks (`mmrec preprocess`), which should
    neither claim a GPU nor time out while a rank is still decoding. (1 process: (0, 1).)"""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        from datetime import timedelta

        from accelerate import PartialState
        PartialState(cpu=True, backend="gloo", timeout=timedelta(seconds=timeout_s))
    return rank_and_world()
