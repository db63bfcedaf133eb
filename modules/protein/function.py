"""ProteinFunction: EC / GO multi-label fine-tuning on the fused ESM-2 + GNN embedding.

Encoder as in ProteinMMCL (same arguments, EncoderSettings), optionally initialised from a ProteinMMCL
checkpoint (`pretrained_ckpt`: a Lightning .ckpt or a bare state dict, loaded with
`torch.load(weights_only=True)`; the `encoder.*` weights must match this configuration). Head: an MLP with
`head_layers` linear layers (hidden width `head_hidden`, ReLU, dropout) on the fused embedding, one logit per
label, trained with BCE (torchdrug's ESM-GearNet setup uses a 3-layer MLP).
Metrics (on the whole validation/test set, per epoch):
- protein-centric Fmax (CAFA): for each threshold t in 0.00, 0.01, ..., 1.00, precision is averaged over the
  proteins with at least one score >= t, recall over all proteins that have a label; Fmax = max_t 2PR/(P+R);
- micro AUPR: average precision over all (protein, label) pairs pooled, with tied scores taken together.
Primary metric: val/fmax (max).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from plexlab.datamodules.errors import DataError, first_line
from plexlab.datamodules.protein.datamodule import ProteinBatch
from plexlab.modules.layers import mlp
from plexlab.modules.protein.encoders import EncoderSettings, ProteinEncoder, encoder_param_groups
from torch import nn


def fmax(scores: torch.Tensor, targets: torch.Tensor, steps: int = 101) -> torch.Tensor:
    """Protein-centric Fmax over thresholds linspace(0, 1, steps); proteins without labels are ignored."""
    scores, targets = scores.float(), targets.bool()
    has = targets.any(1)
    scores, targets = scores[has], targets[has]
    if len(scores) == 0:
        return scores.new_tensor(0.0)
    best = scores.new_tensor(0.0)
    n_true = targets.sum(1).float()
    for t in torch.linspace(0, 1, steps, device=scores.device):
        pred = scores >= t
        n_pred = pred.sum(1).float()
        tp = (pred & targets).sum(1).float()
        covered = n_pred > 0
        if not covered.any():
            continue
        precision = (tp[covered] / n_pred[covered]).mean()
        recall = (tp / n_true).mean()
        if precision + recall > 0:
            best = torch.maximum(best, 2 * precision * recall / (precision + recall))
    return best


def micro_aupr(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision over all (protein, label) pairs: sum_k (R_k - R_{k-1}) P_k at each distinct score."""
    s, y = scores.flatten().float(), targets.flatten().float()
    n_pos = y.sum()
    if n_pos == 0:
        return s.new_tensor(0.0)
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    last = torch.ones_like(s, dtype=torch.bool)  # last element of each run of equal scores
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev = torch.cat([recall.new_zeros(1), recall[:-1]])
    return ((recall - prev) * precision).sum()


def load_encoder_state(encoder: nn.Module, path: str | Path) -> None:
    """Copy `encoder.*` weights of a ProteinMMCL checkpoint (Lightning .ckpt or state dict) into `encoder`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # missing, truncated, or would run code
        raise DataError(path, f"not a loadable checkpoint: {first_line(exc, 200)}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise DataError(path, "not a checkpoint or state dict")
    enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not enc:
        raise DataError(path, "no 'encoder.*' weights (is it a ProteinMMCL checkpoint?)")
    own = encoder.state_dict()
    bad = [k for k, v in enc.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise DataError(path, f"encoder shapes differ from this configuration, e.g. {bad[0]}")
    missing, unexpected = encoder.load_state_dict(enc, strict=False)
    if missing or unexpected:
        raise DataError(path, f"encoder keys differ: missing {missing[:3]}, unexpected {unexpected[:3]}")


class ProteinFunction(pl.LightningModule):
    """EC/GO multi-label prediction: BCE + MLP head on the fused ESM + GNN embedding; Fmax and micro AUPR.

    Args:
        num_labels: labels (EC numbers or GO terms); given by the data module.
        pretrained_ckpt: a ProteinMMCL checkpoint whose `encoder.*` weights start the encoder.
        num_residue_types ... fusion: the encoder's arguments, one line each in EncoderSettings.
        head_hidden: hidden width of the MLP head.
        head_layers: linear layers of the MLP head.
        dropout: dropout in the MLP head.
        lr: learning rate of the GNN and the head.
        esm_lr_ratio: ESM's learning rate as a fraction of `lr`.
        weight_decay: AdamW weight decay.
    """

    primary_metric = "val/fmax"
    primary_mode = "max"

    def __init__(
        self,
        num_labels: int,
        num_residue_types: int = 21,
        num_relations: int = 7,
        pretrained_ckpt: Path | str | None = None,
        esm_model: str | None = None,
        esm_path: Path | str | None = None,
        esm_layers: int | None = None,
        esm_dim: int | None = None,
        esm_heads: int | None = None,
        esm_freeze: Literal["none", "all", "partial"] = "none",
        esm_trainable_layers: int = 0,
        use_sdpa: bool = True,
        gnn_dims: list[int] | None = None,
        gnn_batch_norm: bool = True,
        gnn_short_cut: bool = True,
        gnn_concat_hidden: bool = True,
        readout: Literal["sum", "mean"] = "sum",
        fusion: Literal["parallel", "series"] = "parallel",
        head_hidden: int = 512,
        head_layers: int = 3,
        dropout: float = 0.0,
        lr: float = 1.0e-4,
        esm_lr_ratio: float = 0.1,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = ProteinEncoder(EncoderSettings.from_hparams(self.hparams))
        if pretrained_ckpt:
            load_encoder_state(self.encoder, pretrained_ckpt)
        self.head = mlp([self.encoder.fused_dim] + [head_hidden] * (head_layers - 1) + [num_labels], dropout)
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def embed(self, batch: ProteinBatch) -> torch.Tensor:
        """One row per protein: the fused embedding the head reads."""
        out = self.encoder(batch)
        if out["fused"] is None:
            raise ValueError(
                "ProteinFunction needs structures (residue graphs); the batch has sequences only"
            )
        return out["fused"]

    def forward(self, batch: ProteinBatch) -> torch.Tensor:
        return self.head(self.embed(batch))

    def training_step(self, batch: ProteinBatch, batch_idx: int) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(self(batch), batch.labels)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(batch))
        return loss

    def _eval_step(self, batch: ProteinBatch, stage: str) -> None:
        logits = self(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(batch))
        self._outputs[stage].append((torch.sigmoid(logits).detach().cpu(), batch.labels.detach().cpu()))

    def _eval_end(self, stage: str) -> None:
        outs = self._outputs[stage]
        if not outs:
            return
        scores = torch.cat([s for s, _ in outs])
        targets = torch.cat([t for _, t in outs])
        outs.clear()
        self.log(f"{stage}/fmax", fmax(scores, targets))
        self.log(f"{stage}/aupr", micro_aupr(scores, targets))

    def validation_step(self, batch: ProteinBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: ProteinBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def predict_step(self, batch: ProteinBatch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.embed(batch)

    def configure_optimizers(self):
        hp = self.hparams
        groups = encoder_param_groups(self, self.encoder, hp.lr, hp.esm_lr_ratio)
        return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
