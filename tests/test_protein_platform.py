"""Protein models through the platform: tiny ProteinMMCL pretraining and EC fine-tuning via `plexlab.api.fit`.

Both runs start from the experiment files (sweeps/protein_mmcl_pretrain.yaml, sweeps/protein_function_ec.yaml)
with overrides that shrink the encoders (ESM-2 2 x 32 from random weights, GNN 2 x 32) and the data (16 of the
shared structure files). Everything is read back from MLflow: the run finished, its params and best
checkpoint were logged, the contrastive training loss fell from the first epoch to the last, and the EC run,
which loads the pretraining's best checkpoint, logged test Fmax and AUPR under the benchmark's protocol
(split: deepfri, DeepFRI's 538 EC numbers as the label space). Of FILES' chains, DeepFRI lists 4AKE-A and
1DIX-A (two copies) for training and 1O1Z-A (two copies) for validation, none for test: the experiment
file evaluates its validation list at test time, so the EC figures are on 1O1Z-A, whose EC class 3.1.4.- no
training chain has (the old random split validated and tested on the training chains).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest
from _protein_files import SMALL
from mlflow.tracking import MlflowClient
from plexlab import api

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model.esm_layers": 2, "model.esm_dim": 32, "model.esm_heads": 4, "model.gnn_dims": [32, 32]}
# Small single-domain chains (the same set as test_protein_models), plus the EC-labelled ones less the
# 800-residue 4zxb chain, so the fine-tuning runs on structures the pretraining saw.
FILES = [
    *SMALL,
    "4akeA_alg_fixed.pdb.gz",
    "1dix.cif.gz",
    "1o1z.pdb.gz",
    "1o1z.cif.gz",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _chains_file(shared_data: Path, folder: Path) -> Path:
    """A chains list (file, chain) of FILES' protein chains, taken from the shared chains.tsv."""
    proteins = shared_data / "proteins"
    rows = [
        r
        for r in csv.DictReader(open(proteins / "chains.tsv"), delimiter="\t")
        if Path(r["file"]).name in FILES
    ]
    out = folder / "chains.tsv"
    out.write_text("file\tchain\n" + "".join(f"{r['file']}\t{r['chain']}\n" for r in rows))
    return out


def _epoch_means(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """Mean of a step-level metric per epoch, the epoch of each step read from Lightning's `epoch` metric."""
    epoch_at = {m.step: int(m.value) for m in client.get_metric_history(run_id, "epoch")}
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for m in client.get_metric_history(run_id, key):
        by_epoch[epoch_at[m.step]].append(m.value)
    return {e: sum(v) / len(v) for e, v in sorted(by_epoch.items())}


def test_tiny_pretraining_then_ec_fine_tuning_through_fit(workdir, shared_data):
    proteins = shared_data / "proteins"
    chains = _chains_file(shared_data, workdir)
    data = {
        "data.path": str(proteins),
        "data.chains_file": str(chains),
        "data.cache_dir": str(workdir / "graph_cache"),  # shared by both runs: featurize once
        "data.max_residues": 200,
    }
    epochs = 10
    pre = api.fit(
        ROOT / "sweeps" / "protein_mmcl_pretrain.yaml",
        {
            **TINY,
            **data,
            "model.proj_dim": 16,
            "model.temperature": 0.1,
            "model.lr": 3.0e-3,
            "data.scop2_dir": str(proteins / "scop2"),
            "data.crop_length": 30,
            "data.batch_size": 4,
            "data.val_fraction": 0.2,
            "data.test_fraction": 0.1,
            "trainer.max_epochs": epochs,
            "trainer.accelerator": "cpu",
            "trainer.log_every_n_steps": 1,  # every step's loss, for the per-epoch means
        },
    )
    client = MlflowClient(pre.tracking_uri)
    run = client.get_run(pre.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "protein_mmcl"
    assert run.data.params["model.esm_dim"] == "32"
    assert run.data.params["model.num_relations"] == "7"  # a data-derived size, logged with the config
    assert [a.path for a in client.list_artifacts(pre.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    assert pre.checkpoint is not None and pre.checkpoint.exists()
    # The module logs the contrastive loss per step only (train/loss); compare epoch means.
    means = _epoch_means(client, pre.run_id, "train/loss")
    print("train/loss epoch means", {e: round(v, 3) for e, v in means.items()})
    assert sorted(means) == list(range(epochs))
    # Chance is about 3 x ln(batch size 4) = 4.2; on seeds 0-4 the last epoch is 0.37-0.60 x the first.
    assert means[epochs - 1] < 0.8 * means[0], means
    assert "val/loss" in run.data.metrics and "test/loss" in run.data.metrics

    ec = api.fit(
        ROOT / "sweeps" / "protein_function_ec.yaml",
        {
            **TINY,
            **data,
            "model.pretrained_ckpt": str(pre.checkpoint),
            "model.head_hidden": 32,
            "model.lr": 3.0e-3,
            "data.labels_file": str(proteins / "deepfri_ec" / "nrPDB-EC_2020.04_annot.tsv"),
            "data.test_list_file": str(proteins / "deepfri_ec" / "nrPDB-EC_2020.04_valid.txt"),
            "data.batch_size": 4,
            "trainer.max_epochs": 2,
            "trainer.accelerator": "cpu",
        },
    )
    client = MlflowClient(ec.tracking_uri)
    run = client.get_run(ec.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.pretrained_ckpt"] == str(pre.checkpoint)
    assert run.data.params["data.split"] == "deepfri"
    assert int(run.data.params["model.num_labels"]) == 538  # DeepFRI's EC term list
    print("EC test metrics", {k: round(v, 3) for k, v in run.data.metrics.items() if k.startswith("test/")})
    for key in ("test/fmax", "test/aupr"):
        assert 0.0 <= run.data.metrics[key] <= 1.0, (key, run.data.metrics[key])
        assert ec.metrics[key] == pytest.approx(run.data.metrics[key])
    assert [a.path for a in client.list_artifacts(ec.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
