"""One interface for every model family ("head"), as RecBole's `AbstractRecommender` is for its
models. The trainer, evaluation, export, transfer and feature extraction talk to a head only
through `Head`; nothing probes a head for optional methods.

A head is an `nn.Module` subclass of one of the two families:

- `ItemColdStartHead`: the cold-item split of `mmrec.data.split` (new items, known users). Items
  are scored from their content (`item_vectors`), users from a table (`user_vectors`); the
  evaluation ranks each part's cold items for the users who rated them.
- `UserColdStartHead`: the user split of `mmrec.data.sequences` (new users, known items). Users
  are sequence states (`user_states`), items rows of a table (`item_table`).

What a head declares (the rest has working defaults here):

    load_data(cfg, split, accelerator) -> prepared   the data of a split (a fresh one if None)
    build(cfg, prepared) -> head                     a new model, for training
    for_weights(cfg, split, state) -> head           the model `state` loads into (export, evaluate)
    train_data(prepared) -> (Dataset, collate)       what one training step consumes
    forward(batch) -> {"loss": ..., parts}           one step's losses (parts are logged)
    evaluate_part(prepared, part, eval_cfg, ...)     metric dict of 'val' or 'test'

Shared here: saving and logging the split (`save_data`, `describe`), loading a finished run
(`load_run`), re-evaluating it (`evaluate_run`), the baselines of each family.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar

from torch import nn

from mmrec.registry import Registry

log = logging.getLogger("mmrec")

HEADS = Registry("head")


def register_head(name: str):
    """`@register_head("name")` on a Head subclass: the `head` config key selects it."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"register_head('{name}'): {cls!r} is not a Head subclass")
        cls.name = name
        return HEADS.register(name, cls)
    return deco


class Head(nn.Module):
    name: ClassVar[str] = ""
    # DDP must tolerate parameters without a gradient in a step (a head whose training stages use
    # different modules, e.g. cmclrec's pre-training).
    ddp_find_unused_parameters: ClassVar[bool] = False

    # --------------------------------------------------------------------------- data
    @classmethod
    def split_type(cls) -> type:
        raise NotImplementedError

    @classmethod
    def load_data(cls, cfg: dict, split=None, accelerator=None):
        raise NotImplementedError

    @classmethod
    def describe(cls, prepared) -> list[str]:
        """The log lines that say what the data and split are."""
        return list(prepared.report["dataset"])

    @classmethod
    def save_data(cls, prepared, run_dir: Path) -> None:
        """split.npz and data_report.json of a new run (the main process only)."""
        prepared.split.save(Path(run_dir) / "split.npz")
        (Path(run_dir) / "data_report.json").write_text(json.dumps(prepared.report, indent=1))

    @classmethod
    def prepare_data(cls, cfg: dict, run_dir: str | Path, resume: bool, accelerator=None,
                     split_from: str | Path | None = None):
        """The trainer's data: the saved split on resume, else `split_from`'s (a run whose weights
        this one starts from: its cold items stay cold) or a new one, saved with the report."""
        run_dir = Path(run_dir)
        split_dir = run_dir if resume else (Path(split_from) if split_from is not None else None)
        split = cls.split_type().load(split_dir / "split.npz") if split_dir is not None else None
        prepared = cls.load_data(cfg, split, accelerator)
        if (accelerator is None or accelerator.is_main_process) and not resume:
            cls.save_data(prepared, run_dir)
        for line in cls.describe(prepared):
            log.info(line)
        return prepared

    # ------------------------------------------------------------------------- model
    @classmethod
    def build(cls, cfg: dict, prepared) -> "Head":
        raise NotImplementedError

    @classmethod
    def for_weights(cls, cfg: dict, split, state: dict) -> "Head":
        raise NotImplementedError

    def train_data(self, prepared):
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (e.g. cmclrec's two stages)."""

    def use_data(self, cfg: dict, prepared) -> None:
        """A loaded model meets the prepared data it will encode (`load_run_data`): what its
        weights allow to be computed once per dataset is attached here (mmrec's frozen-text
        cache), so evaluation, plots and the transfer table read what training read."""

    def item_tower(self) -> nn.Module | None:
        """The content item encoder (`encoders.item_encoder.ItemEncoder`) trained end to end, if
        the head has one: what transfer loads and freezes and feature extraction reads."""
        return None

    # -------------------------------------------------------------------- evaluation
    def evaluate_part(self, prepared, part: str, eval_cfg: dict, device="cpu", autocast=None,
                      progress: bool = False) -> dict:
        raise NotImplementedError

    def baselines(self, cfg: dict, prepared, device="cpu") -> dict:
        return {}

    # -------------------------------------------------------------- a finished run
    @classmethod
    def load_run(cls, run_dir: str | Path, overrides: list[str] | None = None):
        """(config, split, model in eval mode with the best epoch's weights) of a finished run,
        from its directory alone (config.yaml, split.npz, model/)."""
        from mmrec.config import load_config
        from mmrec.runs import best_weights
        run_dir = Path(run_dir)
        state = best_weights(run_dir)
        cfg = load_config(run_dir / "config.yaml", overrides)
        split = cls.split_type().load(run_dir / "split.npz")
        model = cls.for_weights(cfg, split, state)
        model.load_state_dict(state)
        model.eval()
        return cfg, split, model

    @classmethod
    def load_run_data(cls, run_dir: str | Path, overrides: list[str] | None = None, accelerator=None):
        """(config, prepared data, model) of a finished run: `load_run`, the data on the run's
        saved split, and the model attached to it (`use_data`)."""
        cfg, split, model = cls.load_run(run_dir, overrides)
        prepared = cls.load_data(cfg, split, accelerator)
        model.use_data(cfg, prepared)
        return cfg, prepared, model

    @classmethod
    def evaluate_run(cls, run_dir: str | Path, parts=("val", "test"), overrides: list[str] | None = None) -> dict:
        """`mmrec evaluate RUN`: the best model on the run's saved split (checked against the
        data), with the evaluation the trainer used, on one or many processes; the main process
        writes evaluation.json."""
        from mmrec.distributed import make_accelerator
        acc = make_accelerator()
        cfg, prepared, model = cls.load_run_data(run_dir, overrides, acc)
        model.to(acc.device)
        out = {part: model.evaluate_part(prepared, part, cfg["eval"], acc.device, acc.autocast)
               for part in parts}
        if acc.is_main_process:
            (Path(run_dir) / "evaluation.json").write_text(json.dumps(out, indent=1))
        return out


class ItemColdStartHead(Head):
    """New items, known users: items are scored from their content alone."""

    @classmethod
    def split_type(cls) -> type:
        from mmrec.data.split import Split
        return Split

    @classmethod
    def load_data(cls, cfg: dict, split=None, accelerator=None):
        from mmrec.data.pipeline import prepare
        return prepare(cfg, split, accelerator)

    @classmethod
    def describe(cls, prepared) -> list[str]:
        st = prepared.split.stats
        return super().describe(prepared) + [
            "split: %d users; items train/val/test %d/%d/%d; evaluated users val %d, test %d" % (
                st["users"], st["train_items"], st["val_items"], st["test_items"],
                st["val_eval_users"], st["test_eval_users"])]

    @classmethod
    def for_weights(cls, cfg: dict, split, state: dict) -> "Head":
        return cls(cfg, split.n_users, split.n_items, None)

    def evaluate_part(self, prepared, part: str, eval_cfg: dict, device="cpu", autocast=None,
                      progress: bool = False) -> dict:
        """Cold-item ranking of the part's items for its users (`mmrec.evaluation.ranking`)."""
        from mmrec.evaluation.ranking import evaluate_model_part
        res = evaluate_model_part(self, prepared, part, eval_cfg, device, autocast, progress=progress)
        out = res.means()
        out["users"] = int(len(res.users))
        return out

    def baselines(self, cfg: dict, prepared, device="cpu") -> dict:
        """`eval.baselines` on the same split: random, frozen-text kNN, and registered ones."""
        from mmrec.evaluation.baselines import evaluate_baselines
        return evaluate_baselines(cfg, prepared, device=device)

    def user_vectors(self, users):
        raise NotImplementedError

    def item_vectors(self, content: dict):
        raise NotImplementedError

    def item_vectors_and_weights(self, content: dict):
        """Item vectors and, where the head has them, per-field weights [N(, S), C] (else None)."""
        return self.item_vectors(content), None


class UserColdStartHead(Head):
    """New users, known items: users are states computed from what is known of them."""

    @classmethod
    def split_type(cls) -> type:
        from mmrec.data.sequences import UserSplit
        return UserSplit

    @classmethod
    def load_data(cls, cfg: dict, split=None, accelerator=None):
        from mmrec.data.sequences import prepare_sequences
        return prepare_sequences(cfg, split, accelerator)

    @classmethod
    def describe(cls, prepared) -> list[str]:
        st = prepared.split.stats
        return super().describe(prepared) + [
            "user split: %d users (train %d, val warm/cold %d/%d, test warm/cold %d/%d), %d items" % (
                st["users"], st["train_users"], st["val_warm_users"], st["val_cold_users"],
                st["test_warm_users"], st["test_cold_users"], st["items"])]

    def item_table(self):
        raise NotImplementedError

    def user_states(self, users, device="cpu"):
        raise NotImplementedError


def head_class(name: str) -> type[Head]:
    """The registered Head class of a `head` name (KeyError listing the known ones)."""
    return HEADS[name]


def build_model(cfg: dict, prepared) -> Head:
    return head_class(cfg["head"]).build(cfg, prepared)


def load_run(run_dir: str | Path, overrides: list[str] | None = None):
    """(config, split, model) of any finished run, by the head its config names."""
    from mmrec.config import load_config
    return head_class(load_config(Path(run_dir) / "config.yaml", overrides)["head"]).load_run(run_dir, overrides)


def load_run_data(run_dir: str | Path, overrides: list[str] | None = None, accelerator=None):
    """(config, prepared data, model) of any finished run (`Head.load_run_data`)."""
    from mmrec.config import load_config
    head = head_class(load_config(Path(run_dir) / "config.yaml", overrides)["head"])
    return head.load_run_data(run_dir, overrides, accelerator)
