"""The training program: one Accelerate loop for every head, on one or many processes.

A run directory holds the resolved config.yaml, split.npz, data_report.json, metrics.json,
history.jsonl, train.log, logs/ (TensorBoard), checkpoints/ (resumable state) and model/ (the
best epoch's weights, chosen on cold-validation `eval.select_metric`).

Determinism: the data order and per-sample randomness come from (seed, epoch) (see
`mmrec.data.batches`), and the global RNG is re-seeded from (seed, epoch, batch, rank) before
every step, so dropout does not depend on history. A resumed run therefore repeats exactly
what the uninterrupted run would have done.
"""
from __future__ import annotations

import json
import logging
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from mmrec.config import ConfigError, dump_config, flatten, load_config
from mmrec.config_checks import check_config
from mmrec.distributed import make_accelerator
from mmrec.data.batches import EpochSampler, PairDataset
from mmrec.models import Head, head_class
from mmrec.training.checkpoint import (fail_together, latest_checkpoint, load_checkpoint, replace_dir,
                                       save_checkpoint)
from mmrec.training.ema import WeightAverage
from mmrec.training.schedule import make_scheduler
from mmrec.training.warm_start import init_info, init_source, load_all_weights, same_split_as
from mmrec.transfer import apply_transfer, frozen_eval
from preprocessing.files import write_text_atomic
from preprocessing.progress import progress

log = logging.getLogger("mmrec")


def _broadcast(accelerator, obj):
    from accelerate.utils import broadcast_object_list
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def resolve_run_dir(cfg: dict) -> Path:
    """runs/<name> (or `run_dir`); an existing finished or started run is never overwritten."""
    base = Path(cfg["run_dir"] or Path("runs") / cfg["name"])
    if not (base / "config.yaml").exists():
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}" / "config.yaml").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def setup_logging(run_dir: Path, main: bool) -> None:
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if main:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    log.propagate = False


def param_groups(model: torch.nn.Module, train_cfg: dict) -> list[dict]:
    """Parameter groups with per-module LR multipliers (`train.lr_scale`, longest prefix wins)."""
    scales = {str(k): float(v) for k, v in (train_cfg["lr_scale"] or {}).items()}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for prefix in scales:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise ConfigError(f"train.lr_scale: '{prefix}' matches no trainable parameter "
                              f"(e.g. {', '.join(sorted({n.rsplit('.', 2)[0] for n in names})[:6])})")
    groups: dict[float, list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        best = max((k for k in scales if n == k or n.startswith(k + ".")), key=len, default=None)
        groups.setdefault(scales[best] if best else 1.0, []).append(p)
    lr = float(train_cfg["lr"])
    return [{"params": ps, "lr": lr * s} for s, ps in groups.items()]


def make_sampler(dataset, train_cfg: dict, seed: int, head: str) -> EpochSampler:
    """The epoch order; `train.pairs_per_item` k > 1 groups k pairs of one item together."""
    k = int(train_cfg["pairs_per_item"])
    groups = dataset.group_keys if isinstance(dataset, PairDataset) else None
    if k > 1 and groups is None:
        raise ConfigError(f"train.pairs_per_item={k}: head '{head}' trains on {type(dataset).__name__}, "
                          f"which has no per-pair item to group by; use 1")
    if k < 1 or int(train_cfg["batch_size"]) % k:
        raise ConfigError(f"train.pairs_per_item={k} must be >= 1 and divide train.batch_size="
                          f"{train_cfg['batch_size']}")
    return EpochSampler(len(dataset), seed, groups=groups, group_size=k)


def step_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, np.uint64)[0] >> 1)


def _fmt(metrics: dict, keys=("ndcg@10", "recall@10", "precision@10")) -> str:
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


class Trainer:
    """Trains a head on its data (RecBole's `Trainer(config, model)`): `train(cfg)` builds both
    from the config; a caller may hand in its own `model` (a built Head) and `prepared` data
    instead, e.g. a head made outside the registry or data already in memory."""

    def __init__(self, cfg: dict, resume_dir: str | Path | None = None, *, model: Head | None = None,
                 prepared=None):
        check_config(cfg, complete=True)   # what training needs of the config, before any data is read
        head = type(model) if model is not None else head_class(cfg["head"])
        self.accelerator = acc = make_accelerator(head.ddp_find_unused_parameters)
        self.resume = resume_dir is not None
        if self.resume:
            run_dir = Path(resume_dir)
            if not (run_dir / "config.yaml").exists():
                raise ConfigError(f"--resume {run_dir}: no config.yaml there; not a run directory")
        else:
            run_dir = Path(_broadcast(acc, str(resolve_run_dir(cfg)) if acc.is_main_process else None))
        self.run_dir = run_dir
        self.cfg = cfg
        changed, now = [], flatten(cfg)
        if acc.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                # `--resume RUN key=value`: the run is now a run of the changed config (e.g. more
                # epochs), so its config.yaml says so and the log names what changed
                saved = flatten(load_config(run_dir / "config.yaml"))
                changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
            if not self.resume or changed:
                dump_config(cfg, run_dir / "config.yaml")
        acc.wait_for_everyone()
        setup_logging(run_dir, acc.is_main_process)
        if changed:
            log.info("resumed with a changed config (config.yaml rewritten): %s",
                     ", ".join(f"{k}={now.get(k)!r}" for k in changed))
        # The run directory is only known now (decided on the main process), so TensorBoard is
        # attached here rather than in the Accelerator's constructor.
        from accelerate.tracking import filter_trackers
        acc.project_configuration.set_directories(str(run_dir))
        acc.project_configuration.logging_dir = str(run_dir / "logs")
        acc.log_with = filter_trackers(["tensorboard"], acc.logging_dir)

        from accelerate.utils import set_seed
        set_seed(int(cfg["seed"]))
        # a new run, or a resume that finds no checkpoint (it starts over): the weights it starts
        # from are not a checkpoint's
        fresh = not self.resume or latest_checkpoint(run_dir) is None
        # `train.init_from`: another run's weights and split (not needed to resume from a checkpoint)
        init_from = init_source(cfg, needed=fresh)
        if prepared is None:
            self.prepared = head.prepare_data(cfg, run_dir, self.resume, acc, split_from=init_from)
        else:   # handed in: saved like a prepared one
            if init_from is not None:
                same_split_as(prepared.split, init_from)
            self.prepared = prepared
            if acc.is_main_process and not self.resume:
                head.save_data(prepared, run_dir)
            for line in head.describe(prepared):
                log.info(line)
        tc = cfg["train"]
        self.model = model if model is not None else head.build(cfg, self.prepared)
        # `transfer`: another run's item tower, loaded (not on resume: the checkpoint has it) and
        # maybe frozen before the optimizer sees the parameters.
        self.transfer = apply_transfer(self.model, cfg, load=not self.resume)
        # `init_from`: every weight from the source run (also when a resume finds no checkpoint:
        # it then starts over, from the source); a checkpoint, if any, overwrites them below.
        self.init_from = None
        if init_from is not None:
            self.init_from = init_info(init_from, load_all_weights(self.model, init_from) if fresh else None)
        dataset, collate = self.model.train_data(self.prepared)
        if len(dataset) < tc["batch_size"] * acc.num_processes:
            raise ConfigError(f"train.batch_size={tc['batch_size']} x {acc.num_processes} processes "
                              f"exceeds the {len(dataset)} training pairs")
        self.sampler = make_sampler(dataset, tc, int(cfg["seed"]), cfg["head"])
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=int(tc["batch_size"]), sampler=self.sampler, collate_fn=collate,
            drop_last=True, num_workers=int(tc["num_workers"]),
            persistent_workers=int(tc["num_workers"]) > 0,
            generator=torch.Generator().manual_seed(int(cfg["seed"])))
        raw_optimizer = torch.optim.Adam(param_groups(self.model, tc), lr=float(tc["lr"]),
                                         betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=float(tc["weight_decay"]))
        self.model, self.optimizer, self.loader = acc.prepare(self.model, raw_optimizer, loader)
        batches = len(self.loader)
        if tc["max_steps_per_epoch"]:
            batches = min(batches, int(tc["max_steps_per_epoch"]))
        self.batches_per_epoch = batches
        self.steps_per_epoch = max(1, batches // acc.gradient_accumulation_steps)
        self.scheduler = make_scheduler(raw_optimizer, self.steps_per_epoch, tc)
        acc.register_for_checkpointing(self.scheduler)
        self.ema = None
        if float(tc["ema_decay"]) > 0:   # before a resume loads the checkpoints, which hold it
            ds = getattr(acc.state, "deepspeed_plugin", None)
            if ds is not None and int(ds.zero_stage) == 3:
                raise ConfigError("train.ema_decay: not under DeepSpeed ZeRO-3 (each process holds "
                                  "only a shard of the weights to average); use ZeRO-2 or DDP")
            self.ema = WeightAverage(acc.unwrap_model(self.model), float(tc["ema_decay"]))
            acc.register_for_checkpointing(self.ema)
        self.state = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": None,
                      "val": None, "test": None, "history": [], "epoch_sums": {}}
        if self.resume:
            # the newest intact checkpoint; a corrupt or truncated one is skipped with a warning
            # (CorruptFileError if none is intact; mmrec.training.checkpoint)
            ckpt, state = load_checkpoint(acc, run_dir)
            if ckpt is None:
                log.warning("no checkpoint in %s; starting from the beginning", run_dir)
            else:
                self.state = state
                log.info("resumed from %s (epoch %d, batch %d, step %d)", ckpt.name,
                         self.state["epoch"], self.state["batch"], self.state["step"])
        acc.init_trackers("tensorboard", config=flatten(cfg))

    # -------------------------------------------------------------------------------------
    def evaluate(self, part: str) -> dict:
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        out = model.evaluate_part(self.prepared, part, self.cfg["eval"], acc.device, acc.autocast)
        model.train(was_training)
        return out

    def save_best_model(self) -> None:
        """model/ is written as .tmp-model and swapped in. A failed write (a full disk) removes the
        temporary, keeps the previous best model, and raises StorageError naming the file on
        every process; the last checkpoint is intact, so `mmrec train --resume` redoes the epoch."""
        acc = self.accelerator
        tmp = self.run_dir / ".tmp-model"
        target, error = self.run_dir / "model" / "model.safetensors", None
        state_dict = acc.get_state_dict(self.model)   # every process: gathers ZeRO-3 shards
        if acc.is_main_process:
            try:
                from safetensors.torch import save_file
                if tmp.exists():   # left by a killed save
                    import shutil
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
                save_file({k: v.contiguous().cpu() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
                target = self.run_dir / "model" / "info.json"
                (tmp / "info.json").write_text(json.dumps({"epoch": self.state["best_epoch"],
                                                           "step": self.state["step"],
                                                           "val": self.state["val"]}, indent=1))
                target = self.run_dir / "model"
                replace_dir(tmp, self.run_dir / "model")
            except Exception as e:   # noqa: BLE001 - reported on every process by fail_together
                error = e
        fail_together(acc, error, target, tmp,
                      f"the last checkpoint is intact: free some space, then `mmrec train --resume "
                      f"{self.run_dir}` continues from it")
        acc.wait_for_everyone()

    def checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.run_dir, self.state["step"], self.state,
                        int(self.cfg["train"]["keep_checkpoints"]))

    def fit(self) -> dict:
        acc, cfg, tc, st = self.accelerator, self.cfg, self.cfg["train"], self.state
        epochs = int(tc["epochs"])
        select = cfg["eval"]["select_metric"]
        rank, seed = acc.process_index, int(cfg["seed"])
        ckpt_every = int(tc["checkpoint_every_steps"] or 0)
        t0 = time.time()
        self.train_seconds, self.train_steps = 0.0, 0
        if self.init_from is not None and st["best"] is None and st["step"] == 0:
            self._score_start(select)
        while st["epoch"] < epochs and not self._out_of_patience():
            epoch = st["epoch"]
            self.sampler.set_epoch(epoch)
            acc.unwrap_model(self.model).set_epoch(epoch)   # e.g. cmclrec's two stages
            skip = st["batch"]
            loader = acc.skip_first_batches(self.loader, skip) if skip else self.loader
            self.model.train()
            frozen_eval(acc.unwrap_model(self.model), cfg)
            # A bar on a terminal; in a log file one line per `train.log_every_steps` steps (each
            # set_postfix below) and one at the end of the epoch (close).
            bar = progress(self.batches_per_epoch, f"epoch {epoch + 1}/{epochs}",
                           enabled=acc.is_main_process and tc["progress"], unit="batch", initial=skip,
                           every=0, emit=log.info, dynamic_ncols=True)
            running, n_running = {}, 0
            t_loop = time.perf_counter()
            for batch in loader:
                if st["batch"] >= self.batches_per_epoch:
                    break
                torch.manual_seed(step_seed(seed, epoch, st["batch"], rank))
                with acc.accumulate(self.model):
                    losses = self.model(batch)
                    acc.backward(losses["loss"])
                    if acc.sync_gradients and tc["grad_clip"]:
                        acc.clip_grad_norm_(self.model.parameters(), float(tc["grad_clip"]))
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                st["batch"] += 1
                bar.update(1)
                sums = st.setdefault("epoch_sums", {})   # epoch means of the training losses -> history
                for k, v in losses.items():
                    running[k] = running.get(k, 0.0) + float(v.detach())
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                sums["_n"] = sums.get("_n", 0) + 1
                n_running += 1
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update()
                st["step"] += 1
                self.train_steps += 1
                if st["step"] % int(tc["log_every_steps"]) == 0:
                    logs = {f"train/{k}": v / n_running for k, v in running.items()}
                    logs["train/lr"] = self.scheduler.get_last_lr()[0]
                    acc.log(logs, step=st["step"])
                    bar.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/lr']:.2e}")
                    running, n_running = {}, 0
                if ckpt_every and st["step"] % ckpt_every == 0:
                    self.checkpoint()
            bar.close()
            self.train_seconds += time.perf_counter() - t_loop
            st["epoch"], st["batch"] = epoch + 1, 0
            record = {"epoch": epoch + 1, "step": st["step"], "time_s": round(time.time() - t0, 1)}
            sums = st.pop("epoch_sums", {}) or {}
            st["epoch_sums"] = {}
            if sums.get("_n"):   # this process's batches (the loss is already the global batch's)
                record["train"] = {k: v / sums["_n"] for k, v in sums.items() if k != "_n"}
            if (epoch + 1) % int(cfg["eval"]["every_epochs"]) == 0 or epoch + 1 == epochs:
                # with train.ema_decay the averaged weights are the ones evaluated and saved
                with self.ema.swapped_in() if self.ema is not None else nullcontext():
                    val = self.evaluate("val")
                    record["val"] = val
                    acc.log({f"val/{k}": v for k, v in val.items() if "@" in k}, step=st["step"])
                    improved = st["best"] is None or val[select] > st["best"]
                    log.info("epoch %d: val %s%s", epoch + 1, _fmt(val), "  (best)" if improved else "")
                    if improved:
                        st["best"], st["best_epoch"], st["val"] = val[select], epoch + 1, val
                        st["test"] = self.evaluate("test")   # test at the best validation epoch
                        self.save_best_model()
            st["history"].append(record)
            if acc.is_main_process:   # rewritten whole, so a resumed run never repeats a line
                write_text_atomic(self.run_dir / "history.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in st["history"]))
            self.checkpoint()
        return self.finish()

    def _out_of_patience(self) -> bool:
        """`train.patience` N: the last N evaluations found no better validation. Read from the
        history and the best epoch, which checkpoints hold, so a resumed run stops where the
        uninterrupted one did."""
        n, st = int(self.cfg["train"].get("patience") or 0), self.state
        if n <= 0 or st["best_epoch"] is None:
            return False
        return sum(1 for r in st["history"] if "val" in r and r["epoch"] > st["best_epoch"]) >= n

    def _score_start(self, select: str) -> None:
        """`init_from`: the loaded weights as epoch 0, so a second stage that does not improve on
        validation keeps them (best_epoch 0)."""
        st = self.state
        with self.ema.swapped_in() if self.ema is not None else nullcontext():
            val = self.evaluate("val")
            log.info("epoch 0 (the weights of %s): val %s  (best)", self.init_from["from_run"], _fmt(val))
            st["best"], st["best_epoch"], st["val"] = val[select], 0, val
            st["test"] = self.evaluate("test")
            self.save_best_model()
        st["history"].append({"epoch": 0, "step": 0, "time_s": 0.0, "val": val})

    def resources(self) -> dict:
        """Throughput and peak memory of this session's training loop, per process."""
        from mmrec.distributed import gather_nograd
        acc = self.accelerator
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB
        cuda_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else 0.0
        local = torch.tensor([[rss_mb, cuda_mb]], dtype=torch.float64, device=acc.device)
        per_proc = gather_nograd(local).cpu().tolist()
        steps, secs = self.train_steps, self.train_seconds
        return {"processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
                "mixed_precision": acc.mixed_precision,
                "batch_per_process": int(self.cfg["train"]["batch_size"]),
                "gradient_accumulation_steps": acc.gradient_accumulation_steps,
                "train_steps": steps, "train_seconds": round(secs, 3),
                "steps_per_s": round(steps / secs, 4) if secs else None,
                "samples_per_s": round(steps * acc.gradient_accumulation_steps * acc.num_processes *
                                       int(self.cfg["train"]["batch_size"]) / secs, 2) if secs else None,
                "peak_rss_mb_per_process": [round(r[0], 1) for r in per_proc],
                "peak_cuda_mb_per_process": [round(r[1], 1) for r in per_proc]}

    def finish(self) -> dict:
        acc, st = self.accelerator, self.state
        model = acc.unwrap_model(self.model)
        baselines = model.baselines(self.cfg, self.prepared, device=acc.device)
        metrics = {"val": st["val"], "test": st["test"], "baselines": baselines,
                   "best_epoch": st["best_epoch"], "select_metric": self.cfg["eval"]["select_metric"],
                   "split": self.prepared.split.stats, "history": st["history"],
                   "resources": self.resources()}
        if self.transfer:
            metrics["transfer"] = self.transfer
        if self.init_from:
            metrics["init_from"] = self.init_from
        if st["epoch"] < int(self.cfg["train"]["epochs"]) and self._out_of_patience():
            metrics["stopped_early"] = st["epoch"]   # the last epoch trained (train.patience)
            log.info("stopped after epoch %d: no better validation in %s evaluations (train.patience)",
                     st["epoch"], self.cfg["train"]["patience"])
        if acc.is_main_process:
            write_text_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=1))
            log.info("best epoch %s; test %s", st["best_epoch"], _fmt(st["test"] or {}))
            for name, b in baselines.items():
                if "test" in b:
                    log.info("baseline %s: test %s", name, _fmt(b["test"]))
            log.info("run directory: %s", self.run_dir)
        self.close()
        return metrics

    def close(self) -> None:
        """Release the wrapped model, optimizer, scheduler and loader, then close the trackers
        and tear the process group down on every rank together. DDP's reducer (and DeepSpeed's
        engine) hold the group and their last gloo work objects; left to be freed during
        interpreter shutdown, they can abort a finished rank with SIGABRT ("terminate called
        without an active exception"). See mmrec.distributed.shutdown."""
        acc = self.accelerator
        self.model, self.optimizer, self.scheduler, self.loader = acc.free_memory(
            self.model, self.optimizer, self.scheduler, self.loader)
        acc.wait_for_everyone()
        acc.end_training()


def train(cfg: dict, resume_dir: str | Path | None = None) -> tuple[Path, dict]:
    trainer = Trainer(cfg, resume_dir)
    metrics = trainer.fit()
    return trainer.run_dir, metrics


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    return load_config(Path(run_dir) / "config.yaml", overrides)
