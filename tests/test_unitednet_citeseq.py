"""UnitedNet on the real CITE-seq file with sweeps/unitednet_citeseq.yaml: cross-modal R^2, clusters, SHAP.

Slow (about 1 minute on 2 free cores): `.venv/bin/pytest tests/test_unitednet_citeseq.py -m slow -s`.
The best epoch by val/r2 (what the platform checkpoints) is tested; the file has no cell-type labels, so the
clusters are compared with Leiden clusters of the protein alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_unitednet_citeseq(shared_data: Path, tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule
    from plexlab.modules.single_cell.evaluation import cluster_metrics, embed_cells, leiden_clusters
    from plexlab.modules.single_cell.unitednet import UnitedNet

    cfg = yaml.safe_load((ROOT / "sweeps" / "unitednet_citeseq.yaml").read_text())
    data = {k: v for k, v in cfg["data"].items() if k != "name"}
    data["path"] = str(shared_data / "single_cell" / "citeseq_citefuse_500cells.h5mu")
    pl.seed_everything(cfg["seed"])
    dm = SingleCellDataModule(**data)
    dm.setup("fit")
    model = UnitedNet(**dm.model_kwargs(), **{k: v for k, v in cfg["model"].items() if k != "name"})
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/r2", mode="max")
    trainer = pl.Trainer(
        max_epochs=cfg["trainer"]["max_epochs"],
        logger=False,
        callbacks=[ck],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    best = UnitedNet.load_from_checkpoint(ck.best_model_path, weights_only=True)
    res = trainer.test(best, dm, verbose=False)[0]
    ref = SingleCellDataModule(
        data["path"], modalities=["ADT"], transforms={"ADT": "clr"}, pca_components={"ADT": 20}
    )
    ref.setup("fit")
    clusters = cluster_metrics(
        embed_cells(best, dm), leiden_clusters(ref.pca["ADT"], resolution=0.5), resolution=0.5
    )
    logging.getLogger(__name__).warning("unitednet citeseq: %s %s", res, clusters)
    assert res["test/r2_RNA_to_ADT"] > 0.1
    assert clusters["ari"] > 0.3
    best.export_artifacts(dm, tmp_path / "artifacts")
    assert (tmp_path / "artifacts" / "unitednet_shap_RNA_to_ADT.tsv").is_file()
    assert (tmp_path / "artifacts" / "unitednet_shap_groups.png").is_file()
