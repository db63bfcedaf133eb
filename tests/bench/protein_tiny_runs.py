"""Tiny ProteinMMCL pretraining + EC fine-tuning on the 70 shared structure files, bare Trainer on CPU.

Run from the repository root: `.venv/bin/python tests/bench/protein_tiny_runs.py 20` (epochs of pretraining).
Prints featurizing time (cold and warm cache), rejected chains by reason, the contrastive loss per epoch,
test metrics, and EC fine-tuning from scratch vs from the pretrained checkpoint. Writes under plexlab_runs/.
One torch thread: on a shared 2-core machine intra-op threads only contend.
"""

import csv
import logging
import shutil
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from plexlab.datamodules.protein.datamodule import ProteinDataModule
from plexlab.modules.protein.function import ProteinFunction
from plexlab.modules.protein.mmcl import ProteinMMCL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared quiet trainer
from _trainer import quiet_trainer

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
S = "../shared/data/proteins"
OUT = "plexlab_runs/protein_tiny"
cache = f"{OUT}/cache"
shutil.rmtree(cache, ignore_errors=True)
TINY = dict(esm_layers=2, esm_dim=32, esm_heads=4, gnn_dims=[32, 32])
pl.seed_everything(0)
for run in ("cold", "warm"):
    t = time.time()
    dm = ProteinDataModule(
        path=f"{S}/structures",
        scop2_dir=f"{S}/scop2",
        cache_dir=cache,
        views=["crop", "family+crop", "superfamily+crop"],
        batch_size=16,
        max_residues=300,
    )
    dm.setup("fit")
    print(
        f"setup {run}: {time.time() - t:.1f} s, chains {len(dm.items)}, rejected {dict(dm.skip_table())}, "
        f"cache hits {dm.cache.hits} misses {dm.cache.misses}"
    )
print(
    "train/val/test chains",
    len(dm.train_idx),
    len(dm.val_idx),
    len(dm.test_idx),
    "with family label",
    sum(bool(it["family"]) for it in dm.items),
)
m = ProteinMMCL(**dm.model_kwargs(), **TINY, proj_dim=32, lr=2e-3)
tr = pl.Trainer(
    max_epochs=int(sys.argv[1]),
    accelerator="cpu",
    logger=pl.loggers.CSVLogger(f"{OUT}/logs", name="mmcl"),
    default_root_dir=OUT,
    enable_progress_bar=False,
    enable_model_summary=False,
    log_every_n_steps=1,
)
t = time.time()
tr.fit(m, dm)
print(f"pretrain fit {time.time() - t:.1f} s")
rows = list(csv.DictReader(open(f"{tr.logger.log_dir}/metrics.csv")))
by_epoch = {}
for r in rows:
    if r.get("train/loss"):
        by_epoch.setdefault(int(r["epoch"]), []).append(float(r["train/loss"]))
for e, v in sorted(by_epoch.items()):
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss") and int(r["epoch"]) == e]
    print(f"epoch {e}: train/loss mean {sum(v) / len(v):.3f}  val/loss {val[0] if val else float('nan'):.3f}")
ck = f"{OUT}/mmcl_tiny.ckpt"
tr.save_checkpoint(ck)
test = tr.test(m, dm, verbose=False)
print("pretrain test", {k: round(v, 3) for k, v in test[0].items()})
emb = torch.cat(tr.predict(m, dm.predict_dataloader()))
print("embed", tuple(emb.shape), "ids", len(dm.sample_ids()))

fdm = ProteinDataModule(
    path=f"{S}/structures",
    labels_file=f"{S}/deepfri_ec/nrPDB-EC_2020.04_annot.tsv",
    cache_dir=cache,
    mode="function",
    batch_size=2,
)
fdm.setup("fit")
print("function chains", len(fdm.items), "labels", fdm.label_names)
for ckpt in (None, ck):
    pl.seed_everything(0)
    f = ProteinFunction(**fdm.model_kwargs(), **TINY, pretrained_ckpt=ckpt, head_hidden=32, lr=2e-3)
    ft = quiet_trainer(max_epochs=20, accelerator="cpu")
    ft.fit(f, fdm)
    out = ft.test(f, fdm, verbose=False)[0]
    print(
        "EC fine-tune",
        "from pretrained" if ckpt else "from scratch",
        {k: round(v, 3) for k, v in out.items()},
    )
