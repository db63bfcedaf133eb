"""UnitedNet: explainable multi-task network for multi-modal single-cell data.

Joint group identification (classification with labels, clustering without) and cross-modal prediction,
trained by two schedules that both run in every epoch, each with its own optimizer (manual optimization).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from plexlab.datamodules.single_cell.datamodule import SingleCellBatch
from plexlab.modules.layers import mlp
from plexlab.modules.step_logging import log_train_loss
from torch import nn

log = logging.getLogger(__name__)
EPS = 1e-9


# ---- loss terms (module-level so the tests check each against a hand-computed value) --------------------
def recon_loss(pred: torch.Tensor, target: torch.Tensor, binary: bool) -> torch.Tensor:
    """BCE on logits for binary modalities, else MSE; mean over entries."""
    if binary:
        return F.binary_cross_entropy_with_logits(pred, target)
    return F.mse_loss(pred, target)


def lsgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN discriminator loss: 0.5 * (E(D(x) - 1)^2 + E D(G(z))^2)."""
    return 0.5 * ((d_real - 1).pow(2).mean() + d_fake.pow(2).mean())


def lsgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN generator loss: 0.5 * E(D(G(z)) - 1)^2."""
    return 0.5 * (d_fake - 1).pow(2).mean()


def cross_modal_contrastive(
    za: torch.Tensor, zb: torch.Tensor, groups: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """InfoNCE between two modalities' latents of the same cells (cosine / temperature), both directions.

    The positive of cell i is its own other-modality latent; its negatives are the cells of other (predicted)
    groups only, so cells of the same group are not pushed apart. `groups=None`: every other cell is a
    negative.
    """
    sim = F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T / temperature
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    neg = ~eye if groups is None else groups[:, None] != groups[None, :]
    keep = eye | neg
    masked = sim.masked_fill(~keep, float("-inf"))
    pos = sim.diagonal()
    loss_ab = torch.logsumexp(masked, dim=1) - pos
    loss_ba = torch.logsumexp(masked.T, dim=1) - pos
    return 0.5 * (loss_ab.mean() + loss_ba.mean())


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy with class weights n / (K_present * n_k) from the batch's labels (-1 = unlabelled)."""
    keep = labels >= 0
    if not keep.any():
        return logits.new_zeros(())
    logits, labels = logits[keep], labels[keep]
    counts = torch.bincount(labels, minlength=logits.shape[1]).to(logits.dtype)
    present = (counts > 0).sum()
    weight = torch.where(
        counts > 0, labels.numel() / (present * counts.clamp_min(1)), torch.zeros_like(counts)
    )
    return F.cross_entropy(logits, labels, weight=weight)


def _triu_mean(m: torch.Tensor) -> torch.Tensor:
    k = m.shape[0]
    return 2.0 / (k * (k - 1)) * torch.triu(m, diagonal=1).sum()


def cauchy_schwarz_divergence(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """DDC's d_cs: mean over cluster pairs of <a_i, K a_j> / sqrt(<a_i, K a_i><a_j, K a_j>)."""
    nom = a.T @ kernel @ a
    dnom = torch.diagonal(nom)[:, None] * torch.diagonal(nom)[None, :]
    return _triu_mean(nom.clamp_min(EPS) / dnom.clamp_min(EPS**2).sqrt())


def ddc_loss(assign: torch.Tensor, hidden: torch.Tensor, rel_sigma: float = 0.15) -> torch.Tensor:
    """Deep divergence-based clustering (Kampffmeyer et al. 2019): separation + orthogonality + simplex terms.

    The Gaussian kernel on the projector output uses sigma^2 = rel_sigma * median squared distance.
    """
    k = assign.shape[1]
    d2 = torch.cdist(hidden, hidden).pow(2)
    sigma2 = (rel_sigma * d2.detach().median()).clamp_min(EPS)
    kernel = torch.exp(-d2 / (2 * sigma2))
    ddc1 = cauchy_schwarz_divergence(assign, kernel)
    n = assign.shape[0]
    ddc2 = 2.0 / (n * (n - 1)) * torch.triu(assign @ assign.T, diagonal=1).sum()
    corners = torch.eye(k, device=assign.device, dtype=assign.dtype)
    m = torch.exp(-torch.cdist(assign, corners).pow(2))
    ddc3 = cauchy_schwarz_divergence(m, kernel)
    return ddc1 + ddc2 + ddc3


def negative_entropy(assign: torch.Tensor) -> torch.Tensor:
    """sum_k p_k log p_k of the mean assignment: minimizing it keeps clusters from collapsing."""
    p = assign.mean(0)
    return (p * torch.log(p.clamp_min(EPS))).sum()


def hungarian_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy after matching predicted groups to labels one-to-one (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    if len(labels) == 0:
        return float("nan")
    k = int(max(pred.max(), labels.max())) + 1
    cm = np.zeros((k, k))
    np.add.at(cm, (pred, labels), 1)
    r, c = linear_sum_assignment(-cm)
    return float(cm[r, c].sum() / len(labels))


R2Average = Literal["uniform_average", "variance_weighted"]
NMIAverage = Literal["geometric", "arithmetic", "min", "max"]


class R2Accumulator:
    """Streaming R^2 of a multi-feature prediction, as scikit-learn's `r2_score` over all cells seen.

    Per feature: R^2_f = 1 - SS_res_f / SS_tot_f (SS_tot about the feature's mean). `uniform_average` (the
    default, scikit-learn's and UnitedNet's) is their plain mean, so each feature counts once;
    `variance_weighted` pools them, 1 - sum SS_res / sum SS_tot, so high-variance features dominate. A
    feature constant over the cells scores 1 when predicted exactly and 0 otherwise (scikit-learn's
    `force_finite`).
    """

    def __init__(self) -> None:
        self.n = 0
        self.sy: torch.Tensor | None = None
        self.syy: torch.Tensor | None = None
        self.res: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        y, pred = y.detach().double().cpu(), pred.detach().double().cpu()
        sums = (y.sum(0), y.pow(2).sum(0), (y - pred).pow(2).sum(0))
        if self.sy is None:
            self.sy, self.syy, self.res = sums
        else:
            self.sy, self.syy, self.res = self.sy + sums[0], self.syy + sums[1], self.res + sums[2]
        self.n += y.shape[0]

    def compute(self, multioutput: R2Average = "uniform_average") -> float:
        if self.sy is None or self.syy is None or self.res is None or self.n < 2:
            return float("nan")
        ss_tot = (self.syy - self.sy.pow(2) / self.n).clamp_min(0.0)
        # streaming sums leave rounding noise where a feature is constant: relative to its sum of squares
        constant = ss_tot <= 1e-12 * self.syy.clamp_min(1.0)
        if multioutput not in ("uniform_average", "variance_weighted"):
            raise ValueError(f"multioutput must be uniform_average or variance_weighted, not {multioutput!r}")
        if multioutput == "variance_weighted" and not bool(constant.all()):
            return float(1.0 - self.res[~constant].sum() / ss_tot[~constant].sum())
        per_feature = torch.where(
            constant, (self.res == 0).double(), 1.0 - self.res / torch.where(constant, 1.0, ss_tot)
        )
        return float(per_feature.mean())  # also scikit-learn's fallback when every feature is constant


def group_metrics(
    pred: np.ndarray, labels: np.ndarray, supervised: bool, nmi_average: NMIAverage = "geometric"
) -> dict[str, float]:
    """Accuracy (plain when supervised, after Hungarian matching when clustering), ARI and NMI of predicted
    groups against labels; cells with a negative label (unknown) are left out, and nothing is scored with
    fewer than two labelled cells. NMI normalizes by the `nmi_average` of the two entropies (geometric, as
    UnitedNet's evaluation; scikit-learn's default is arithmetic)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    keep = labels >= 0
    if keep.sum() < 2:
        return {}
    pred, labels = pred[keep], labels[keep]
    acc = float((pred == labels).mean()) if supervised else hungarian_accuracy(pred, labels)
    return {
        "acc": acc,
        "ari": float(adjusted_rand_score(labels, pred)),
        "nmi": float(normalized_mutual_info_score(labels, pred, average_method=nmi_average)),
    }


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Dropout between layers; the last Linear plain."""
    return mlp(sizes, dropout, norm=nn.BatchNorm1d)


class CosineHead(nn.Module):
    """Projector (Linear -> `proj_dim`, ReLU) then a cosine classifier: normalized rows, logits = cos / T."""

    def __init__(self, latent: int, proj_dim: int, n_groups: int, temperature: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(latent, proj_dim), nn.ReLU())
        self.weight = nn.Parameter(torch.randn(n_groups, proj_dim) * 0.1)
        self.temperature = temperature

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(z)
        logits = F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).T / self.temperature
        return logits, h


class UnitedNet(pl.LightningModule):
    """UnitedNet (Tang et al. 2023): per-modality encoders/decoders, translation, LSGAN, fusion, cosine heads.

    Every decoder is applied to every modality latent (reconstruction for the same modality, translation for
    the others). Every epoch runs both schedules, each on its own optimizer. Translation: reconstruction +
    translation + cross-modal contrastive + `gan_weight` * LSGAN generator loss (after a separate
    discriminator step on its own optimizer), updating encoders and decoders. Group identification: the
    head losses averaged over the heads (supervised: class-balanced cross entropy, updating encoders,
    fusion and heads; unsupervised: `ddc_weight` * DDC + `entropy_weight` * negative entropy, updating only
    fusion and heads), as the reference's schedules. Fusion is a softmax-weighted mean of the modality
    latents (`fusion`: one weight per modality or per modality and latent dimension). `val/r2` (primary)
    is the mean over directions of each direction's cross-modal R^2, averaged uniformly over features as
    the reference's `r2_score`; `val/nmi` is normalized geometrically as the reference's.

    Choices where the reference differs or is silent: the two schedules alternate batch by batch (the
    translation step, then the group step on the same batch) where the reference runs a whole pass of one
    then a whole pass of the other (and repeats the classification pass 2 x n_modalities times); both see
    every batch once per epoch, and the steps stay inside Lightning's training step (so DDP synchronizes
    them and no loader is iterated twice). Heads are scored by a running mean of their group loss and the
    best one predicts; the cosine classifier divides by `classifier_temperature` (0.1) so that softmax
    assignments can become sharp; class weights come from each batch; supervised accuracy is plain (a
    class is its label), clustering accuracy is after Hungarian matching.

    Args:
        modality_dims, n_batches, n_classes, pca_dims, feature_groups: sizes from the data module.
        modalities: the modalities to use, in order (default: all).
        binary_modalities: modalities reconstructed with BCE on logits (the others with MSE).
        hidden_dims: hidden widths of each encoder (mirrored in each decoder).
        latent_dim: size of each modality's latent.
        projector_dim: width of each head's projector.
        n_groups: clusters when unsupervised (default: the number of classes, at least 10).
        n_heads: number of group-identification heads.
        supervised: classification (labels needed) or clustering (default: supervised if labels exist).
        fusion: `modality` (one weight per modality) or `dimension` (per modality and latent dimension).
        recon_weight: weight of the reconstruction loss.
        translation_weight: weight of the cross-modal translation loss.
        gan_weight: weight of the LSGAN generator loss (0: no discriminators trained).
        contrastive_weight: weight of the cross-modal contrastive loss.
        contrastive_temperature: temperature of the contrastive loss.
        ddc_weight: weight of the DDC clustering loss.
        entropy_weight: weight of the negative-entropy loss.
        classifier_temperature: temperature of the cosine classifier.
        dropout: dropout between MLP layers.
        lr: Adam learning rate of every optimizer.
        group_schedule: `paper` (as above) or `with_autoencoder` (plexlab's earlier schedule: the group
            step also updates encoders and decoders and adds the reconstruction loss).
        r2_multioutput: how `*/r2*` average over features: `uniform_average` (the reference) or
            `variance_weighted` (pooled over features).
        nmi_average: normalization of `*/nmi`: `geometric` (the reference), `arithmetic`, `min` or `max`.
        shap_cells, shap_background, shap_targets, shap_samples: sizes of the SHAP explanations.
        leiden_resolution: resolution of the Leiden clusters in the artifacts.
    """

    primary_metric = "val/r2"
    primary_mode = "max"

    def __init__(
        self,
        modality_dims: dict[str, int] | None = None,
        n_batches: int = 1,
        n_classes: int = 0,
        pca_dims: dict[str, int] | None = None,
        feature_groups: dict[str, list[int]] | None = None,
        modalities: list[str] | None = None,
        binary_modalities: list[str] | None = None,
        hidden_dims: list[int] | None = None,
        latent_dim: int = 64,
        projector_dim: int = 100,
        n_groups: int | None = None,
        n_heads: int = 3,
        supervised: bool | None = None,
        fusion: str = "modality",
        recon_weight: float = 1.0,
        translation_weight: float = 1.0,
        gan_weight: float = 0.1,
        contrastive_weight: float = 1.0,
        contrastive_temperature: float = 0.1,
        ddc_weight: float = 0.1,
        entropy_weight: float = 0.1,
        classifier_temperature: float = 0.1,
        dropout: float = 0.1,
        lr: float = 1e-3,
        group_schedule: Literal["paper", "with_autoencoder"] = "paper",
        r2_multioutput: R2Average = "uniform_average",
        nmi_average: NMIAverage = "geometric",
        shap_cells: int = 100,
        shap_background: int = 50,
        shap_targets: int = 10,
        shap_samples: int = 64,
        leiden_resolution: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if not modality_dims:
            raise ValueError("modality_dims is required (the data module supplies it)")
        self.mods = list(modalities or modality_dims)
        if len(self.mods) < 2:
            raise ValueError("UnitedNet needs at least two modalities")
        missing = [m for m in self.mods if m not in modality_dims]
        if missing:
            raise ValueError(f"modality {missing[0]!r} is not among {list(modality_dims)}")
        if fusion not in ("modality", "dimension"):
            raise ValueError("fusion must be 'modality' or 'dimension'")
        if group_schedule not in ("paper", "with_autoencoder"):
            raise ValueError(f"group_schedule must be 'paper' or 'with_autoencoder', not {group_schedule!r}")
        if r2_multioutput not in ("uniform_average", "variance_weighted"):
            raise ValueError(f"r2_multioutput must be uniform_average or variance_weighted: {r2_multioutput}")
        if nmi_average not in ("geometric", "arithmetic", "min", "max"):
            raise ValueError(f"nmi_average must be geometric, arithmetic, min or max, not {nmi_average!r}")
        self.binary = set(binary_modalities or [])
        self.supervised = bool(n_classes > 0) if supervised is None else supervised
        if self.supervised and n_classes <= 0:
            raise ValueError("supervised training needs labels (cell_type_key in the data module)")
        self.n_groups = n_classes if self.supervised else (n_groups or max(n_classes, 10))
        hidden = list(hidden_dims or [256])
        dims = {m: modality_dims[m] for m in self.mods}
        self.encoders = nn.ModuleDict({m: _mlp([d, *hidden, latent_dim], dropout) for m, d in dims.items()})
        self.decoders = nn.ModuleDict(
            {m: _mlp([latent_dim, *hidden[::-1], d], dropout) for m, d in dims.items()}
        )
        self.discriminators = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)) for m, d in dims.items()}
        )
        shape = (len(self.mods),) if fusion == "modality" else (len(self.mods), latent_dim)
        self.fusion_logits = nn.Parameter(torch.zeros(shape))
        self.heads = nn.ModuleList(
            [
                CosineHead(latent_dim, projector_dim, self.n_groups, classifier_temperature)
                for _ in range(n_heads)
            ]
        )
        self.register_buffer("head_loss", torch.zeros(n_heads))
        self._r2: dict[tuple[str, str], R2Accumulator] = {}
        self._groups: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- model -----------------------------------------------------------------------------------------
    def encode(self, batch: SingleCellBatch) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](batch.x[m]) for m in self.mods}

    def fuse(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.fusion_logits, dim=0)
        stack = torch.stack([z[m] for m in self.mods])  # M x B x D
        w = w[:, None, None] if w.dim() == 1 else w[:, None, :]
        return (w * stack).sum(0)

    def translate(self, src: str, dst: str, x: torch.Tensor) -> torch.Tensor:
        """Predict modality `dst` from modality `src` (sigmoid-free logits for binary modalities)."""
        return self.decoders[dst](self.encoders[src](x))

    def best_head(self) -> int:
        return int(torch.argmin(self.head_loss)) if self.head_loss.abs().sum() > 0 else 0

    def embed(self, batch: SingleCellBatch) -> torch.Tensor:
        """The fused latent of each cell."""
        return self.fuse(self.encode(batch))

    def predict_groups(self, batch: SingleCellBatch) -> torch.Tensor:
        return self.heads[self.best_head()](self.embed(batch))[0].argmax(1)

    def _pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.mods for b in self.mods if a != b]

    # ---- schedules -------------------------------------------------------------------------------------
    def translation_losses(self, batch: SingleCellBatch) -> tuple[dict[str, torch.Tensor], dict]:
        hp = self.hparams
        z = self.encode(batch)
        out: dict[str, torch.Tensor] = {}
        out["recon"] = sum(
            recon_loss(self.decoders[m](z[m]), batch.x[m], m in self.binary) for m in self.mods
        )
        fakes = {(a, b): self.decoders[b](z[a]) for a, b in self._pairs()}
        out["translation"] = sum(recon_loss(p, batch.x[b], b in self.binary) for (a, b), p in fakes.items())
        with torch.no_grad():
            groups = None
            if self.current_epoch > 0:
                groups = self.heads[self.best_head()](self.fuse(z))[0].argmax(1)
        pairs = [(a, b) for a, b in self._pairs() if a < b]
        out["contrastive"] = sum(
            cross_modal_contrastive(z[a], z[b], groups, hp.contrastive_temperature) for a, b in pairs
        ) / max(len(pairs), 1)
        out["loss"] = (
            hp.recon_weight * out["recon"]
            + hp.translation_weight * out["translation"]
            + hp.contrastive_weight * out["contrastive"]
        )
        return out, fakes

    def generator_loss(self, fakes: dict) -> torch.Tensor:
        """LSGAN generator loss of all translations, against the (already updated) discriminators."""
        return sum(lsgan_g_loss(self.discriminators[b](self._gan_input(b, p))) for (a, b), p in fakes.items())

    def _gan_input(self, mod: str, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) if mod in self.binary else x

    def discriminator_loss(self, batch: SingleCellBatch, fakes: dict) -> torch.Tensor:
        return sum(
            lsgan_d_loss(
                self.discriminators[b](batch.x[b]), self.discriminators[b](self._gan_input(b, p.detach()))
            )
            for (a, b), p in fakes.items()
        )

    def _updates_encoders(self) -> bool:
        """Whether the group step trains the encoders: classification does, clustering does not."""
        return self.supervised or self.hparams.group_schedule == "with_autoencoder"

    def group_losses(self, batch: SingleCellBatch) -> dict[str, torch.Tensor]:
        """Per-head group losses, their mean over heads (`group`) and the group step's `loss`."""
        hp = self.hparams
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._updates_encoders()):
            z = self.encode(batch)
        fused = self.fuse(z)
        per_head = []
        for head in self.heads:
            logits, h = head(fused)
            if self.supervised:
                per_head.append(balanced_cross_entropy(logits, batch.label))
            else:
                a = torch.softmax(logits, dim=1)
                per_head.append(hp.ddc_weight * ddc_loss(a, h) + hp.entropy_weight * negative_entropy(a))
        heads = torch.stack(per_head)
        out = {"heads": heads, "group": heads.mean(), "loss": heads.mean()}
        if hp.group_schedule == "with_autoencoder":
            out["recon"] = sum(
                recon_loss(self.decoders[m](z[m]), batch.x[m], m in self.binary) for m in self.mods
            )
            out["loss"] = out["loss"] + hp.recon_weight * out["recon"]
        return out

    def translation_step(self, batch: SingleCellBatch, opt_t, opt_d) -> torch.Tensor:
        """One update of the translation schedule (after the discriminators' own update)."""
        n = len(batch)
        out, fakes = self.translation_losses(batch)
        if self.hparams.gan_weight > 0:
            d_loss = self.discriminator_loss(batch, fakes)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            self.log("train/disc", d_loss, on_step=False, on_epoch=True, batch_size=n)
        # the generator loss is built after the discriminator step, on the updated discriminators
        out["gan"] = self.generator_loss(fakes)
        out["loss"] = out["loss"] + self.hparams.gan_weight * out["gan"]
        opt_t.zero_grad()
        self.manual_backward(out["loss"])
        opt_t.step()
        for k in ("recon", "translation", "contrastive", "gan"):
            self.log(f"train/{k}", out[k], on_step=False, on_epoch=True, batch_size=n)
        return out["loss"]

    def group_step(self, batch: SingleCellBatch, opt_g) -> torch.Tensor:
        """One update of the group-identification schedule."""
        out = self.group_losses(batch)
        opt_g.zero_grad()
        self.manual_backward(out["loss"])
        opt_g.step()
        with torch.no_grad():
            h = out["heads"].detach()
            self.head_loss.copy_(torch.where(self.head_loss == 0, h, 0.9 * self.head_loss + 0.1 * h))
        self.log("train/group", out["group"], on_step=False, on_epoch=True, batch_size=len(batch))
        return out["loss"]

    def training_step(self, batch: SingleCellBatch, batch_idx: int) -> None:
        opt_t, opt_g, opt_d = self.optimizers()
        loss = self.translation_step(batch, opt_t, opt_d) + self.group_step(batch, opt_g)
        log_train_loss(self, loss.detach(), len(batch))

    def configure_optimizers(self) -> Any:
        lr = self.hparams.lr
        encoders, decoders = list(self.encoders.parameters()), list(self.decoders.parameters())
        opt_t = torch.optim.Adam(encoders + decoders, lr=lr)
        group = [self.fusion_logits, *self.heads.parameters()]
        if self.hparams.group_schedule == "with_autoencoder":
            group = encoders + decoders + group
        elif self.supervised:
            group = encoders + group
        opt_g = torch.optim.Adam(group, lr=lr)
        opt_d = torch.optim.Adam(self.discriminators.parameters(), lr=lr)
        return [opt_t, opt_g, opt_d]

    # ---- evaluation ------------------------------------------------------------------------------------
    def _eval_step(self, batch: SingleCellBatch) -> None:
        for a, b in self._pairs():
            pred = self.translate(a, b, batch.x[a])
            if b in self.binary:
                pred = torch.sigmoid(pred)
            self._r2.setdefault((a, b), R2Accumulator()).update(pred, batch.x[b])
        self._groups.append((self.predict_groups(batch).cpu(), batch.label.cpu()))

    def validation_step(self, batch: SingleCellBatch, batch_idx: int) -> None:
        self._eval_step(batch)
        out, fakes = self.translation_losses(batch)
        loss = out["loss"] + self.hparams.gan_weight * self.generator_loss(fakes)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch))

    def test_step(self, batch: SingleCellBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def _epoch_end(self, stage: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        r2s = []
        for (a, b), acc in self._r2.items():
            r2 = acc.compute(self.hparams.r2_multioutput)
            metrics[f"{stage}/r2_{a}_to_{b}"] = r2
            r2s.append(r2)
        metrics[f"{stage}/r2"] = float(np.mean(r2s)) if r2s else float("nan")
        if self._groups:
            pred = torch.cat([g[0] for g in self._groups]).numpy()
            labels = torch.cat([g[1] for g in self._groups]).numpy()
            scores = group_metrics(pred, labels, self.supervised, self.hparams.nmi_average)
            metrics.update({f"{stage}/{k}": v for k, v in scores.items()})
        self._r2.clear()
        self._groups.clear()
        for k, v in metrics.items():
            self.log(k, v)
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: SingleCellBatch, batch_idx: int) -> torch.Tensor:
        return self.embed(batch)

    # ---- artifacts -------------------------------------------------------------------------------------
    def cross_modal_r2(self, loader, multioutput: R2Average | None = None) -> dict[str, float]:
        """R^2 of every cross-modal prediction over a loader's cells (averaged over features as
        `multioutput`, default `r2_multioutput`)."""
        from lightning.fabric.utilities.apply_func import move_data_to_device

        was = self.training
        self.eval()
        accs = {p: R2Accumulator() for p in self._pairs()}
        with torch.no_grad():
            for batch in loader:
                batch = move_data_to_device(batch, self.device)
                for a, b in self._pairs():
                    pred = self.translate(a, b, batch.x[a])
                    accs[(a, b)].update(torch.sigmoid(pred) if b in self.binary else pred, batch.x[b])
        self.train(was)
        how = multioutput or self.hparams.r2_multioutput
        return {f"{a}->{b}": acc.compute(how) for (a, b), acc in accs.items()}

    def export_artifacts(self, datamodule: Any, out_dir: Path) -> None:
        """UMAP + cluster metrics of the fused embedding, cross-modal R^2 table, SHAP tables and plots."""
        from plexlab.modules.single_cell.evaluation import evaluate_cells
        from plexlab.modules.single_cell.unitednet_explain import explain

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        evaluate_cells(
            self,
            datamodule,
            out_dir,
            "unitednet",
            self.hparams.leiden_resolution,
            nmi_average=self.hparams.nmi_average,
        )
        r2 = self.cross_modal_r2(datamodule.test_dataloader())
        (out_dir / "unitednet_cross_modal_r2.tsv").write_text(
            "direction\tr2\n" + "".join(f"{k}\t{v:.6g}\n" for k, v in r2.items())
        )
        explain(self, datamodule, out_dir)
