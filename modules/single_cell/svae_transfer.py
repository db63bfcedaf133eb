"""Transfer of a trained SVAE to held-out perturbations (the three-stage procedure of sVAE+).

1. train (the ordinary fit of ``SVAE``; this module starts from its result);
2. threshold the masks (``sigmoid(logit) > 0.5``), freeze them, and retrain every other parameter on the
   training cells without the global (sparsity) term;
3. freeze the networks and fit only ``mu_a`` of the held-out perturbations on half of their cells.

Held-out perturbations start from ``mu_a = 0`` with a full mask (their logits reset to the initial 5, as the
reference does), i.e. before stage 3 their prior is the controls' N(0, I). The held-out ELBO and
importance-weighted ELBO are measured on the other half of their cells before and after stage 3. With the
networks frozen the reconstruction term does not depend on ``mu_a``, so stage 3 minimizes the summed
KL(q(z|x) || N(mu_a * m, I)) over the fit cells, full batch, with Adam. Everything runs on a deep copy:
the trained model is left untouched.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from plexlab.modules.single_cell.svae_losses import kl_to_prior

if TYPE_CHECKING:  # the model imports this module (export_artifacts runs the transfer): annotations only
    from plexlab.modules.single_cell.svae import SVAE

logger = logging.getLogger(__name__)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def retrain_with_frozen_masks(model: SVAE, datamodule: Any, epochs: int, lr: float | None = None) -> SVAE:
    """Stage 2 on ``model`` in place: threshold and freeze the masks, retrain without the global term."""
    with torch.no_grad():
        model.frozen_mask = (model.mask_logits > 0).float().detach().clone()
    model.use_global_kl = False
    model.mask_logits.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr or model.hparams.lr, weight_decay=model.hparams.weight_decay)
    device = model.mu_a.device
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in datamodule.loader("train", shuffle=True):
            out = model.objective(_to(batch, device), kl_weight=model.hparams.beta)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            total += float((out["nll"] + out["kl"]).detach().sum())
            count += len(batch["x"])
        logger.info("transfer stage 2, epoch %d: train -ELBO per cell %.3f", epoch, total / max(count, 1))
    return model


@torch.no_grad()
def heldout_elbo(model: SVAE, datamodule: Any, split: str, n_samples: int) -> pd.DataFrame:
    """Mean ELBO and IWELBO per held-out perturbation over the cells of ``split`` (eval mode)."""
    model.eval()
    device = model.mu_a.device
    rows = []
    for batch in datamodule.loader(split, batch_size=512):
        elbo, iw = model.elbo_iwelbo(_to(batch, device), n_samples)
        rows.append(
            pd.DataFrame({"a": batch["perturbation"].numpy(), "elbo": elbo.cpu(), "iwelbo": iw.cpu()})
        )
    df = (
        pd.concat(rows)
        .groupby("a")
        .agg(n_cells=("elbo", "size"), elbo=("elbo", "mean"), iwelbo=("iwelbo", "mean"))
    )
    return df


def fit_heldout_shifts(model: SVAE, datamodule: Any, steps: int, lr: float = 0.05) -> None:
    """Stage 3: networks frozen, fit ``mu_a`` of the held-out perturbations on their fit cells."""
    model.eval()  # frozen networks: batch norm uses its running statistics, no dropout
    device = model.mu_a.device
    means, logvars, acts = [], [], []
    with torch.no_grad():
        for batch in datamodule.loader("transfer_fit", batch_size=512):
            m, lv = model.encode(batch["x"].to(device))
            means.append(m)
            logvars.append(lv)
            acts.append(batch["perturbation"].to(device))
    q_mean, q_logvar, a = torch.cat(means), torch.cat(logvars), torch.cat(acts)
    held = torch.as_tensor(datamodule.heldout_index, device=device)
    shifts = torch.zeros(len(held), model.hparams.n_latent, device=device, requires_grad=True)
    slot = torch.full((model.hparams.n_perturbations,), -1, dtype=torch.long, device=device)
    slot[held] = torch.arange(len(held), device=device)
    mask = model.frozen_mask[a] if model.frozen_mask is not None else torch.ones_like(q_mean)
    opt = torch.optim.Adam([shifts], lr=lr)
    for _ in range(steps):
        loss = kl_to_prior(q_mean, q_logvar, shifts[slot[a]] * mask).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.mu_a[held] = shifts.detach()


def run_transfer(
    model: SVAE,
    datamodule: Any,
    retrain_epochs: int | None = None,
    fit_steps: int | None = None,
    n_samples: int | None = None,
) -> pd.DataFrame:
    """Stages 2 and 3 on a copy of ``model``; returns one row per held-out perturbation with the held-out ELBO
    and
    IWELBO (mean per cell over its evaluation cells) before and after fitting its shift."""
    hp = model.hparams
    retrain_epochs = hp.transfer_retrain_epochs if retrain_epochs is None else retrain_epochs
    fit_steps = hp.transfer_fit_steps if fit_steps is None else fit_steps
    n_samples = hp.n_importance_samples if n_samples is None else n_samples
    trainer, model._trainer = model._trainer, None  # copy the module without its Lightning trainer
    try:
        m = copy.deepcopy(model)
    finally:
        model._trainer = trainer
    for p in m.parameters():
        p.requires_grad_(True)
    retrain_with_frozen_masks(m, datamodule, retrain_epochs)

    held = torch.as_tensor(datamodule.heldout_index, device=m.mu_a.device)
    with torch.no_grad():  # unseen perturbations: no shift, full mask (logits back to their initial value)
        m.mu_a[held] = 0.0
        m.mask_logits[held] = float(hp.mask_logit_init)
        m.frozen_mask[held] = 1.0
    for p in m.parameters():
        p.requires_grad_(False)
    m.mu_a.requires_grad_(True)

    before = heldout_elbo(m, datamodule, "transfer_eval", n_samples)
    fit_heldout_shifts(m, datamodule, fit_steps)
    after = heldout_elbo(m, datamodule, "transfer_eval", n_samples)
    names = datamodule.perturbation_names
    table = pd.DataFrame(
        {
            "perturbation": [names[i] for i in before.index],
            "n_eval_cells": before["n_cells"].to_numpy(),
            "elbo_before": before["elbo"].to_numpy(),
            "elbo_after": after.loc[before.index, "elbo"].to_numpy(),
            "iwelbo_before": before["iwelbo"].to_numpy(),
            "iwelbo_after": after.loc[before.index, "iwelbo"].to_numpy(),
        }
    )
    logger.info(
        "transfer: held-out ELBO %.3f -> %.3f, IWELBO %.3f -> %.3f (mean over %d perturbations)",
        table.elbo_before.mean(),
        table.elbo_after.mean(),
        table.iwelbo_before.mean(),
        table.iwelbo_after.mean(),
        len(table),
    )
    return table


def plot_masks(model: SVAE, datamodule: Any, path: Path) -> None:
    """Heat map of the learned mask probabilities (perturbations x latents), next to the true graph if
    known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = torch.sigmoid(model.mask_logits.detach()).cpu().numpy()
    true = getattr(datamodule, "true_targets", None)
    n = 2 if true is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 6), squeeze=False)
    axes[0, 0].imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 0].set(title="learned mask P(m=1)", xlabel="latent", ylabel="perturbation")
    if true is not None:
        axes[0, 1].imshow(
            np.asarray(true), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
        )
        axes[0, 1].set(title="true targets (unmatched order)", xlabel="latent")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
