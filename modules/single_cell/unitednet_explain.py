"""SHAP explanations for UnitedNet: feature relevance for group identification and for cross-modal prediction.

Expected gradients (`shap.GradientExplainer`) on the trained networks in eval mode: background cells are drawn
from the training cells, explained cells from all cells, both with a fixed seed. Tables are TSV (mean |SHAP|
per feature), plots PNG heatmaps of the most relevant features.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class _GroupModel(nn.Module):
    """Concatenated modality features -> group probabilities of the model's best head."""

    def __init__(self, net: Any, dims: list[int]) -> None:
        super().__init__()
        self.net = net
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.dims, dim=1)
        z = {m: self.net.encoders[m](p) for m, p in zip(self.net.mods, parts, strict=True)}
        logits = self.net.heads[self.net.best_head()](self.net.fuse(z))[0]
        return torch.softmax(logits, dim=1)


class _TranslationModel(nn.Module):
    """Features of modality `src` -> the chosen target features of modality `dst`."""

    def __init__(self, net: Any, src: str, dst: str, targets: np.ndarray) -> None:
        super().__init__()
        self.net, self.src, self.dst = net, src, dst
        self.register_buffer("targets", torch.as_tensor(targets, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.translate(self.src, self.dst, x)
        if self.dst in self.net.binary:
            out = torch.sigmoid(out)
        return out[:, self.targets]


def _as_array(values: Any, n_out: int) -> np.ndarray:
    """shap returns (cells, features, outputs) or a list of per-output arrays, depending on version."""
    if isinstance(values, list):
        return np.stack([np.asarray(v) for v in values], axis=-1)
    arr = np.asarray(values)
    return arr if arr.ndim == 3 else arr[..., None].repeat(n_out, axis=-1)


def shap_values(
    model: nn.Module, background: torch.Tensor, cells: torch.Tensor, n_out: int, nsamples: int = 64
) -> np.ndarray:
    """SHAP values (cells x features x outputs) by expected gradients."""
    import shap

    explainer = shap.GradientExplainer(model, background)
    return _as_array(explainer.shap_values(cells, nsamples=nsamples, rseed=0), n_out)


def _heatmap(table: np.ndarray, rows: list[str], cols: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(cols) + 2.5), max(3, 0.22 * len(rows) + 1.2)))
    im = ax.imshow(table, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7, label="mean |SHAP|")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_table(path: Path, first: str, names: list[str], cols: list[str], table: np.ndarray) -> None:
    order = np.argsort(-table.max(axis=1), kind="stable")
    lines = [first + "\t" + "\t".join(cols)]
    lines += [names[i] + "\t" + "\t".join(f"{v:.6g}" for v in table[i]) for i in order]
    path.write_text("\n".join(lines) + "\n")


def explain(net: Any, dm: Any, out_dir: Path, top: int = 20) -> list[Path]:
    """Write SHAP tables (TSV) and heatmaps (PNG) for group identification and every cross-modal direction."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hp = net.hparams
    rng = np.random.default_rng(0)
    train = np.asarray(dm.train_idx)
    bg_idx = np.sort(rng.choice(train, size=min(hp.shap_background, len(train)), replace=False))
    all_cells = dm.all_cells()
    ex_idx = np.sort(rng.choice(all_cells, size=min(hp.shap_cells, len(all_cells)), replace=False))
    was = net.training
    net.eval()
    device = net.device
    bg, ex = dm.make_batch(bg_idx), dm.make_batch(ex_idx)
    feats = {m: [f"{m}:{f}" for f in dm.feature_names(m)] for m in net.mods}
    written: list[Path] = []
    try:
        # group identification: relevance of every feature of every modality, per group
        dims = [bg.x[m].shape[1] for m in net.mods]
        xb = torch.cat([bg.x[m] for m in net.mods], 1).to(device)
        xe = torch.cat([ex.x[m] for m in net.mods], 1).to(device)
        gm = _GroupModel(net, dims)
        with torch.no_grad():
            pred = gm(xe).argmax(1).cpu().numpy()
        sv = np.abs(shap_values(gm, xb, xe, net.n_groups, hp.shap_samples))
        names = [f for m in net.mods for f in feats[m]]
        table = np.stack(
            [
                sv[pred == k, :, k].mean(0) if (pred == k).any() else sv[:, :, k].mean(0)
                for k in range(net.n_groups)
            ],
            axis=1,
        )
        cols = [f"group_{k}" for k in range(net.n_groups)]
        path = out_dir / "unitednet_shap_groups.tsv"
        _write_table(path, "feature", names, cols, table)
        keep = np.unique(np.concatenate([np.argsort(-table[:, k])[:5] for k in range(table.shape[1])]))[
            : 4 * top
        ]
        png = out_dir / "unitednet_shap_groups.png"
        _heatmap(
            table[keep], [names[i] for i in keep], cols, "feature relevance for group identification", png
        )
        written += [path, png]
        # cross-modal prediction: relevance of the source features for the most variable target features
        for a, b in net._pairs():
            var = ex.x[b].var(0).numpy()
            targets = np.sort(np.argsort(-var, kind="stable")[: hp.shap_targets])
            tm = _TranslationModel(net, a, b, targets).to(device)
            sv = shap_values(tm, bg.x[a].to(device), ex.x[a].to(device), len(targets), hp.shap_samples)
            sv = np.abs(sv).mean(0)
            tcols = [feats[b][t] for t in targets]
            path = out_dir / f"unitednet_shap_{a}_to_{b}.tsv"
            _write_table(path, "feature", feats[a], tcols, sv)
            keep = np.argsort(-sv.max(axis=1), kind="stable")[:top]
            png = out_dir / f"unitednet_shap_{a}_to_{b}.png"
            _heatmap(sv[keep], [feats[a][i] for i in keep], tcols, f"predicting {b} from {a}", png)
            written += [path, png]
    finally:
        net.train(was)
    return written
