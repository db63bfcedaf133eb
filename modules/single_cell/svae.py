"""sVAE+: sparse mechanism shift VAE for single-cell perturbation data (Lopez et al., CLeaR 2023).

Each perturbation ``a`` is a stochastic intervention that shifts a sparse, unknown subset of the latents:
``p(z | a) = N(mu_a * m, I)`` with a learned shift ``mu_a`` and a binary mask ``m`` (the perturbation-target
graph), controls ``p(z) = N(0, I)``. Genes are negative binomial given ``z`` and the cell's observed library
size. The baselines of the paper are settings of the same module (``variant``):

- ``svae+``: masks drawn per cell from a hard (straight-through) Gumbel-sigmoid on learned logits (init 5,
  i.e. every latent on at first) with a Beta(1, lambda) prior on their probabilities. Loss per step
  ``N * mean_batch(-log p(x|z) + beta * KL(q(z|x) || p(z|a))) - sum log Beta(sigmoid(logits); 1, lambda)``
  with ``N`` the number of training cells (the "global KL" of the paper, in its practical form p = q).
- ``svae``: the same masks, penalty ``lambda * mean(sigmoid(logits))``. Choice where the paper is silent: the
  penalty is added to the per-cell objective, i.e. scaled by ``N`` like the data term, so ``sparsity`` means
  the same order of magnitude in both variants.
- ``ivae``: dense shifts ``p(z|a) = N(mu_a, I)`` (no mask, no sparsity).
- ``vae``: ``p(z) = N(0, I)`` for every cell; perturbation labels unused.

Other choices where the paper is silent: the encoder reads log1p(counts) (no library normalization) and
outputs a mean and a log-variance (std = exp(logvar / 2), the same convention in sampling and KL); the decoder
mirrors the encoder without dropout and ends in a softmax over genes times the observed library; gene-wise
inverse dispersion ``theta = exp(log_theta)``. The perturbation parameters (``mu_a``, mask logits) have their
own learning rate (``prior_lr``). At evaluation time the mask is deterministic: ``sigmoid(logit) > 0.5``. The
estimated target graph is that mask (``svae+``, ``svae``), ``|mu_a| > graph_threshold`` (``ivae``), or, for
``vae``, the latent mean shift of the perturbation's cells from the controls' in units of the controls' std,
above ``graph_threshold``. Latent dimensions are matched to the true latents by the Hungarian assignment that
maximises the absolute Pearson correlation (the MCC), and the graph is scored after that permutation, over the
perturbations with cells.

Metrics: ``val/elbo`` (primary, per cell, one posterior sample, deterministic masks), ``val/nll``, ``val/kl``,
``val/mask_density``, and, when the data module carries ground truth (the simulator): ``val/mcc``,
``val/target_precision``, ``val/target_recall``, ``val/target_f1``. The three-stage transfer to held-out
perturbations lives in ``plexlab.modules.single_cell.svae_transfer`` and runs from ``export_artifacts``
when the data module holds perturbations out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from plexlab.modules.layers import mlp
from plexlab.modules.single_cell.svae_losses import (
    beta_sparsity_log_prob,
    hard_gumbel_sigmoid,
    kl_to_prior,
    nb_log_likelihood,
)
from plexlab.modules.single_cell.svae_transfer import plot_masks, run_transfer
from plexlab.modules.step_logging import log_train_loss
from scipy.optimize import linear_sum_assignment
from torch import nn

logger = logging.getLogger(__name__)

Variant = Literal["svae+", "svae", "ivae", "vae"]


# ---------------------------------------------------------------------------------------------- metrics
def mean_correlation_coefficient(z_true: np.ndarray, z_hat: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean absolute Pearson correlation after Hungarian matching of latent dimensions.

    Returns (mcc, perm) where ``perm[k]`` is the learned dimension matched to true latent ``k``.
    """
    d = z_true.shape[1]
    zt = (z_true - z_true.mean(0)) / (z_true.std(0) + 1e-12)
    zh = (z_hat - z_hat.mean(0)) / (z_hat.std(0) + 1e-12)
    corr = np.abs(zt.T @ zh) / len(zt)  # true x learned
    rows, cols = linear_sum_assignment(-corr)
    perm = np.full(d, -1, dtype=np.int64)
    perm[rows] = cols
    return float(corr[rows, cols].sum() / d), perm


def graph_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a predicted 0/1 perturbation-target graph against the true one."""
    true, pred = true.astype(bool), pred.astype(bool)
    tp = float((true & pred).sum())
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(true.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def _mlp(n_in: int, n_hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    """`n_layers` x (Linear -> BatchNorm -> ReLU [-> Dropout when dropout > 0])."""
    return mlp(
        [n_in] + [n_hidden] * n_layers, dropout if dropout > 0 else None, nn.BatchNorm1d, last_plain=False
    )


class SVAE(pl.LightningModule):
    """Sparse mechanism shift VAE (sVAE+) with the sVAE, iVAE and VAE baselines as ``variant`` settings.

    See the module docstring for the model, the loss of each variant and the choices made where the paper is
    silent. ``n_train_cells`` is the N of the loss (supplied by the data module); without it the loss is the
    plain batch mean. ``sparsity`` is lambda: Beta(1, lambda) for ``svae+``, the penalty weight for ``svae``.
    """

    primary_metric = "val/elbo"
    primary_mode = "max"

    def __init__(
        self,
        n_genes: int,
        n_perturbations: int,
        n_train_cells: int | None = None,
        variant: Variant = "svae+",
        n_latent: int = 15,
        n_hidden: int = 128,
        n_layers: int = 2,
        dropout: float = 0.1,
        beta: float = 1.0,
        sparsity: float = 30.0,
        mask_logit_init: float = 5.0,
        gumbel_temperature: float = 1.0,
        lr: float = 1e-3,
        prior_lr: float = 1e-2,
        weight_decay: float = 0.0,
        kl_warmup_epochs: int = 0,
        graph_threshold: float = 1.0,
        n_importance_samples: int = 100,
        transfer_retrain_epochs: int = 20,
        transfer_fit_steps: int = 500,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if sparsity <= 0:
            raise ValueError("sparsity (lambda) must be > 0")
        self.encoder = _mlp(n_genes, n_hidden, n_layers, dropout)
        self.enc_out = nn.Linear(n_hidden, 2 * n_latent)
        self.decoder = _mlp(n_latent, n_hidden, n_layers, 0.0)
        self.dec_out = nn.Linear(n_hidden, n_genes)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.mu_a = nn.Parameter(torch.randn(n_perturbations, n_latent))
        self.mask_logits = nn.Parameter(torch.full((n_perturbations, n_latent), float(mask_logit_init)))
        # Stage 2/3 of the transfer threshold and freeze the masks; None means masks are sampled from the
        # logits.
        self.frozen_mask: torch.Tensor | None = None
        self.use_global_kl = True
        self._val_outputs: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------------------------------ model
    @property
    def has_mask(self) -> bool:
        return self.hparams.variant in ("svae+", "svae")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x) from log1p(counts)."""
        mean, logvar = self.enc_out(self.encoder(torch.log1p(x))).chunk(2, dim=-1)
        return mean, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NB mean (library * softmax over genes) and the gene-wise inverse dispersion."""
        shape = z.shape
        h = self.dec_out(self.decoder(z.reshape(-1, shape[-1])))
        scale = torch.softmax(h, dim=-1).reshape(*shape[:-1], -1)
        return library.unsqueeze(-1) * scale, self.log_theta.exp()

    def mask(self, a: torch.Tensor, sample: bool) -> torch.Tensor:
        """Mask rows for perturbation indices ``a`` (controls -1 get an arbitrary row; the caller zeroes
        them)."""
        idx = a.clamp(min=0)
        if self.frozen_mask is not None:
            return self.frozen_mask.to(self.mu_a.dtype)[idx]
        logits = self.mask_logits[idx]
        if sample:
            return hard_gumbel_sigmoid(logits, self.hparams.gumbel_temperature)
        return (logits > 0).to(logits.dtype)

    def prior_mean(self, a: torch.Tensor, sample: bool) -> torch.Tensor:
        """Mean of p(z | a): mu_a * m (sVAE, sVAE+), mu_a (iVAE), 0 (VAE and controls)."""
        n_latent = self.hparams.n_latent
        if self.hparams.variant == "vae":
            return torch.zeros(len(a), n_latent, device=self.mu_a.device, dtype=self.mu_a.dtype)
        mean = self.mu_a[a.clamp(min=0)]
        if self.has_mask:
            mean = mean * self.mask(a, sample)
        return mean * (a >= 0).unsqueeze(-1).to(mean.dtype)

    def loss_terms(self, batch: dict[str, torch.Tensor], sample_mask: bool) -> dict[str, torch.Tensor]:
        """Per-cell -log p(x|z) (one reparameterized sample) and KL(q(z|x) || p(z|a))."""
        x, library, a = batch["x"], batch["library"], batch["perturbation"]
        q_mean, q_logvar = self.encode(x)
        z = q_mean + torch.randn_like(q_mean) * (0.5 * q_logvar).exp()
        mu, theta = self.decode(z, library)
        nll = -nb_log_likelihood(x, mu, theta).sum(-1)
        kl = kl_to_prior(q_mean, q_logvar, self.prior_mean(a, sample_mask))
        return {"nll": nll, "kl": kl, "q_mean": q_mean}

    def sparsity_penalty(self, n_cells: float) -> torch.Tensor:
        """The global term: -sum log Beta(p; 1, lambda) (svae+) or N * lambda * mean(p) (svae); else 0."""
        if not self.use_global_kl or self.frozen_mask is not None:
            return self.mask_logits.new_zeros(())
        lam = self.hparams.sparsity
        if self.hparams.variant == "svae+":
            return -beta_sparsity_log_prob(self.mask_logits, lam).sum()
        if self.hparams.variant == "svae":
            return n_cells * lam * torch.sigmoid(self.mask_logits).mean()
        return self.mask_logits.new_zeros(())

    def kl_weight(self) -> float:
        warm = self.hparams.kl_warmup_epochs
        if warm <= 0 or self._trainer is None:
            return self.hparams.beta
        return self.hparams.beta * min(1.0, (self.current_epoch + 1) / warm)

    def objective(
        self, batch: dict[str, torch.Tensor], kl_weight: float | None = None
    ) -> dict[str, torch.Tensor]:
        """The training loss of the variant on one batch, with its parts (loss is N-scaled)."""
        terms = self.loss_terms(batch, sample_mask=True)
        n = float(self.hparams.n_train_cells or len(batch["x"]))
        w = self.kl_weight() if kl_weight is None else kl_weight
        data = n * (terms["nll"] + w * terms["kl"]).mean()
        penalty = self.sparsity_penalty(n)
        return {"loss": data + penalty, "penalty": penalty, **terms}

    # ------------------------------------------------------------------------------------------ Lightning
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.objective(batch)
        n = float(self.hparams.n_train_cells or len(batch["x"]))
        bs = len(batch["x"])
        # Logged per cell (loss / N) so that runs with different data sizes read alike.
        log_train_loss(self, out["loss"] / n, bs)
        self.log("train/nll", out["nll"].mean(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/kl", out["kl"].mean(), on_step=False, on_epoch=True, batch_size=bs)
        return out["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        terms = self.loss_terms(batch, sample_mask=False)
        rec = {"nll": terms["nll"], "kl": terms["kl"], "q_mean": terms["q_mean"], "a": batch["perturbation"]}
        if "z_true" in batch:
            rec["z_true"] = batch["z_true"]
        self._val_outputs.append({k: v.detach().cpu() for k, v in rec.items()})

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        if not self._val_outputs:
            return
        cat = {k: torch.cat([o[k] for o in self._val_outputs]) for k in self._val_outputs[0]}
        self._val_outputs = []
        metrics = {
            "elbo": -(cat["nll"] + cat["kl"]).mean().item(),
            "nll": cat["nll"].mean().item(),
            "kl": cat["kl"].mean().item(),
        }
        if self.has_mask:
            metrics["mask_density"] = (self.mask_logits > 0).float().mean().item()
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if "z_true" in cat:
            metrics.update(
                self.simulation_metrics(
                    cat["q_mean"].numpy(),
                    cat["a"].numpy(),
                    cat["z_true"].numpy(),
                    getattr(dm, "true_targets", None),
                )
            )
        for k, v in metrics.items():
            self.log(f"{prefix}/{k}", v, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The perturbation parameters (mu_a, mask logits) get their own, larger learning rate: with Adam a
        # parameter moves about lr per step, and each row sees only the few cells of its perturbation in a
        # batch, so at 1e-3 a shift needs thousands of steps to reach its size (about 5) and a logit to fall
        # from 5 to 0.
        prior = [self.mu_a, self.mask_logits]
        rest = [p for n, p in self.named_parameters() if n not in ("mu_a", "mask_logits")]
        return torch.optim.Adam(
            [{"params": rest}, {"params": prior, "lr": self.hparams.prior_lr, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )

    # ------------------------------------------------------------------------------------------ analysis
    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Posterior means of the latents, one row per cell."""
        return self.encode(batch["x"])[0]

    def estimated_graph(self, q_mean: np.ndarray, a: np.ndarray) -> np.ndarray:
        """The estimated perturbation-target graph (perturbations x learned latents), see the module
        docstring."""
        thr = self.hparams.graph_threshold
        variant = self.hparams.variant
        if variant in ("svae+", "svae"):
            mask = self.frozen_mask if self.frozen_mask is not None else self.mask_logits > 0
            return mask.detach().cpu().numpy().astype(np.int64)
        if variant == "ivae":
            return (self.mu_a.detach().abs().cpu().numpy() > thr).astype(np.int64)
        ref = q_mean[a < 0] if (a < 0).sum() > 1 else q_mean
        center, spread = ref.mean(0), ref.std(0) + 1e-8
        graph = np.zeros((self.hparams.n_perturbations, q_mean.shape[1]), dtype=np.int64)
        for p in np.unique(a[a >= 0]):
            graph[p] = np.abs(q_mean[a == p].mean(0) - center) / spread > thr
        return graph

    def simulation_metrics(
        self, q_mean: np.ndarray, a: np.ndarray, z_true: np.ndarray, true_targets: np.ndarray | None
    ) -> dict[str, float]:
        """MCC of the posterior means against the true latents and, with the true graph, target P/R/F1."""
        mcc, perm = mean_correlation_coefficient(z_true, q_mean)
        out = {"mcc": mcc}
        if true_targets is not None:
            seen = np.unique(a[a >= 0])  # perturbations with cells in this split (held-out ones have none)
            pred = self.estimated_graph(q_mean, a)[:, perm]
            scores = graph_scores(true_targets[seen], pred[seen])
            out.update({f"target_{k}": v for k, v in scores.items()})
        return out

    @torch.no_grad()
    def elbo_iwelbo(
        self, batch: dict[str, torch.Tensor], n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell ELBO and importance-weighted ELBO with ``n_samples`` posterior samples (deterministic
        masks)."""
        x, library, a = batch["x"], batch["library"], batch["perturbation"]
        q_mean, q_logvar = self.encode(x)
        std = (0.5 * q_logvar).exp()
        z = q_mean + torch.randn((n_samples, *q_mean.shape), device=x.device, dtype=x.dtype) * std
        mu, theta = self.decode(z, library.expand(n_samples, -1))
        log_px = nb_log_likelihood(x, mu, theta).sum(-1)
        p_mean = self.prior_mean(a, sample=False)
        log_pz = torch.distributions.Normal(p_mean, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(q_mean, std).log_prob(z).sum(-1)
        log_w = log_px + log_pz - log_qz  # samples x cells
        return log_w.mean(0), torch.logsumexp(log_w, 0) - math.log(n_samples)

    def export_artifacts(self, datamodule: Any, out_dir: Path) -> None:
        """Simulation scores and mask plot (when ground truth exists); the transfer table (when perturbations
        are
        held out): ``transfer_elbo.csv`` per held-out perturbation and ``transfer_summary.csv``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.has_mask:
            plot_masks(self, datamodule, out_dir / "masks.png")
        if len(getattr(datamodule, "heldout_index", [])) > 0:
            table = run_transfer(self, datamodule)
            table.to_csv(out_dir / "transfer_elbo.csv", index=False)
            summary = table.drop(columns=["perturbation"]).mean(numeric_only=True)
            summary.to_frame("mean").to_csv(out_dir / "transfer_summary.csv")
            if self.logger is not None:
                self.logger.log_metrics({f"transfer/{k}": float(v) for k, v in summary.items()})
