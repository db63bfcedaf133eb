"""ProteinMMCL: multi-modal contrastive pretraining of ESM-2 + a relational GNN with domain-informed views.

Each training item is a positive pair of views (a, b) of a protein (identity, crop, family, superfamily and
their compositions; which views is the data module's `views`, so sweeps compare them). Both encoders embed
both views; a projection head per modality (Linear-ReLU-Linear to `proj_dim`, shared by the two views) maps
them into one contrastive space. The loss is

    w_seq_seq * NCE(s_a, s_b) + w_struct_struct * NCE(g_a, g_b) + w_seq_struct * NCE_inter

where NCE is symmetric InfoNCE with cosine similarity and temperature 0.07, and NCE_inter is the mean of the
four sequence-structure pairings NCE(s_a, g_a), NCE(s_b, g_b), NCE(s_a, g_b), NCE(s_b, g_a) (same view and
across views: the paper says "inter-modality pairs" without fixing which; we take all four). Copies of one
protein in a batch (equal `groups`) are removed from each other's negatives. The ESM learning rate is
`esm_lr_ratio` (0.1) times the GNN's; ESM can be frozen (all or all but the last layers).

Defaults follow the paper: ESM-2 650M (`esm_model: esm2_t33_650M_UR50D` loads its weights through fair-esm's
torch hub cache, `esm_path` from a local file; without either ESM starts from random weights of the 650M
shape, 33 x 1280, 20 heads), GearNet 6 x 512 with concatenated hidden layers and sum readout.
Primary metric: val/loss (min). `embed()` returns the fused embedding (not the projection).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from plexlab.datamodules.protein.datamodule import ProteinBatch, ProteinPairBatch
from plexlab.modules.contrastive import info_nce, retrieval_accuracy
from plexlab.modules.protein.encoders import EncoderSettings, ProteinEncoder, encoder_param_groups
from torch import nn


def projection_head(in_dim: int, out_dim: int) -> nn.Module:
    """Linear-ReLU-Linear projection (SimCLR-style) into the contrastive space."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))


class ProteinMMCL(pl.LightningModule):
    """Contrastive pretraining (intra seq-seq, struct-struct, inter seq-struct InfoNCE) of ESM-2 + GearNet.

    Args:
        num_residue_types ... fusion: the encoder's arguments, one line each in EncoderSettings.
        proj_dim: width of the contrastive space (both projection heads).
        temperature: InfoNCE temperature.
        w_seq_seq: weight of the sequence-sequence term.
        w_struct_struct: weight of the structure-structure term.
        w_seq_struct: weight of the sequence-structure term.
        lr: learning rate of the GNN and the heads.
        esm_lr_ratio: ESM's learning rate as a fraction of `lr`.
        weight_decay: AdamW weight decay.
    """

    primary_metric = "val/loss"
    primary_mode = "min"

    def __init__(
        self,
        num_residue_types: int = 21,
        num_relations: int = 7,
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
        proj_dim: int = 128,
        temperature: float = 0.07,
        w_seq_seq: float = 1.0,
        w_struct_struct: float = 1.0,
        w_seq_struct: float = 1.0,
        lr: float = 2.0e-4,
        esm_lr_ratio: float = 0.1,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = ProteinEncoder(EncoderSettings.from_hparams(self.hparams))
        self.seq_proj = projection_head(self.encoder.seq_dim, proj_dim)
        self.struct_proj = projection_head(self.encoder.struct_dim, proj_dim)

    def _project(self, batch: ProteinBatch) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(batch)
        if out["struct"] is None:
            raise ValueError("ProteinMMCL needs structures (residue graphs); the batch has sequences only")
        return self.seq_proj(out["seq"]), self.struct_proj(out["struct"])

    def losses(self, batch: ProteinPairBatch) -> dict[str, torch.Tensor]:
        """The three contrastive terms and their weighted sum (`loss`)."""
        hp = self.hparams
        s_a, g_a = self._project(batch.a)
        s_b, g_b = self._project(batch.b)
        ga, gb = batch.a.groups, batch.b.groups

        def excl(x, y):
            if x is None or y is None:
                return None
            return torch.tensor([[u == v for v in y] for u in x], dtype=torch.bool, device=s_a.device)

        t = hp.temperature
        seq_seq = info_nce(s_a, s_b, t, exclude=excl(ga, gb))
        struct_struct = info_nce(g_a, g_b, t, exclude=excl(ga, gb))
        inter = (
            info_nce(s_a, g_a, t, exclude=excl(ga, ga))
            + info_nce(s_b, g_b, t, exclude=excl(gb, gb))
            + info_nce(s_a, g_b, t, exclude=excl(ga, gb))
            + info_nce(s_b, g_a, t, exclude=excl(gb, ga))
        ) / 4
        loss = hp.w_seq_seq * seq_seq + hp.w_struct_struct * struct_struct + hp.w_seq_struct * inter
        return {
            "loss": loss,
            "seq_seq": seq_seq,
            "struct_struct": struct_struct,
            "seq_struct": inter,
            "acc_seq_struct": retrieval_accuracy(s_a, g_a),
        }

    def training_step(self, batch: ProteinPairBatch, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        n = len(batch)
        self.log("train/loss", out["loss"], on_step=True, on_epoch=False, batch_size=n)
        for k in ("seq_seq", "struct_struct", "seq_struct"):
            self.log(f"train/loss_{k}", out[k], on_step=True, on_epoch=False, batch_size=n)
        return out["loss"]

    def _eval(self, batch: ProteinPairBatch, stage: str) -> None:
        out = self.losses(batch)
        n = len(batch)
        self.log(f"{stage}/loss", out["loss"], on_epoch=True, batch_size=n, prog_bar=stage == "val")
        for k in ("seq_seq", "struct_struct", "seq_struct"):
            self.log(f"{stage}/loss_{k}", out[k], on_epoch=True, batch_size=n)
        self.log(f"{stage}/acc_seq_struct", out["acc_seq_struct"], on_epoch=True, batch_size=n)

    def validation_step(self, batch: ProteinPairBatch, batch_idx: int) -> None:
        self._eval(batch, "val")

    def test_step(self, batch: ProteinPairBatch, batch_idx: int) -> None:
        self._eval(batch, "test")

    def embed(self, batch: ProteinBatch | ProteinPairBatch) -> torch.Tensor:
        """One row per protein: the fused embedding (concat of ESM mean and GNN readout in parallel fusion);
        the ESM embedding alone for sequence-only batches."""
        if isinstance(batch, ProteinPairBatch):
            batch = batch.a
        out = self.encoder(batch)
        return out["fused"] if out["fused"] is not None else out["seq"]

    def predict_step(self, batch: ProteinBatch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.embed(batch)

    def configure_optimizers(self):
        hp = self.hparams
        groups = encoder_param_groups(self, self.encoder, hp.lr, hp.esm_lr_ratio)
        return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
