"""Does SAILERX's invariance term lower how much the embedding carries the library size? (real CITE-seq data)

Reproduce the figures: `.venv/bin/python tests/test_sailerx_invariance.py` (about 1 minute on 2 cores), or
`.venv/bin/pytest tests/test_sailerx_invariance.py -m slow`. Same model, seed and data; only
`invariance_weight` differs (0 vs 1). Leakage is the 5-fold cross-validated R^2 of a linear regression of the
log library size on the posterior means of all 500 cells, and the largest |Pearson r| of one latent dimension.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "single_cell" / "citeseq_citefuse_500cells.h5mu"
)


def compare(path: Path, epochs: int = 200, weights: tuple[float, ...] = (0.0, 1.0)) -> dict[float, dict]:
    import lightning.pytorch as pl
    from _trainer import quiet_trainer
    from plexlab.datamodules.single_cell import SingleCellDataModule
    from plexlab.modules.sailerx import SAILERX
    from plexlab.modules.single_cell_eval import embed_cells, library_leakage

    dm = SingleCellDataModule(
        str(path),
        modalities=["RNA", "ADT"],
        transforms={"RNA": "binary", "ADT": "clr"},
        n_top_features={"RNA": 1000},
        pca_components={"ADT": 50},
        batch_size=100,
    )
    dm.setup("fit")
    out = {}
    for lam in weights:
        pl.seed_everything(0)
        model = SAILERX(
            **dm.model_kwargs(),
            group_hidden=[128, 64],
            invariance_weight=lam,
            warmup_epochs=2,
            kl_cycle_epochs=0,
            lr=1e-3,
        )
        trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(model, dm)
        out[lam] = library_leakage(embed_cells(model, dm), np.log(dm.library_size))
    return out


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="measured 2026-11-23: the invariance term raised leakage here (CV R^2 0.37 -> 0.64)",
)
def test_invariance_lowers_library_leakage(shared_data: Path) -> None:
    res = compare(shared_data / "single_cell" / "citeseq_citefuse_500cells.h5mu")
    logging.getLogger(__name__).info("leakage without / with invariance: %s", res)
    assert res[1.0]["library_r2"] < res[0.0]["library_r2"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    for lam, m in compare(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA).items():
        sys.stdout.write(
            f"invariance_weight={lam:g}\tlibrary_r2={m['library_r2']:.3f}\t"
            f"library_corr={m['library_corr']:.3f}\n"
        )
