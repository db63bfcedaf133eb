"""CPAC and AffinityMLP: interaction-map normalization, padding invariance, loss terms, learning."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _affinity_files import write_tsv
from _trainer import quiet_trainer
from plexlab.datamodules.affinity.datamodule import AffinityDataModule
from plexlab.modules.affinity.cpac import CPAC
from plexlab.modules.affinity.mlp import AffinityMLP

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMILES = [
    "C", "CC", "CCC", "CCCC", "CCCCC", "CCCCCC", "CCO", "CCCO", "CCCCO", "c1ccccc1", "c1ccccc1O",
    "Cc1ccccc1", "CCc1ccccc1", "CC(=O)O", "CCC(=O)O", "CCN", "CCCN", "NCCN", "OCCO", "c1ccncc1",
]  # fmt: skip
SEQS = ["MKTAYIAKQRQISFVK", "GSHMLEDPVWACDEFGHIKLMNPQ", "WWWWYYYFFF", "ACDEFGHIKL"]


def tiny_cpac(**kw) -> CPAC:
    args = dict(hidden=16, chunk_size=4, gnn_layers=2, gnn_heads=2, gcn_layers=2, head_hidden=16, dropout=0.0)
    args.update(kw)
    dm_kw = {"atom_dim": 39, "protein_vocab": 22, "target_mean": 6.0, "target_std": 1.5}
    from plexlab.datamodules.affinity.molecule import ATOM_DIM

    dm_kw["atom_dim"] = ATOM_DIM
    return CPAC(**dm_kw, **args)


def batch_of(tmp_path: Path, rows: list[tuple], extra: tuple[str, ...] = (), name: str = "b.tsv"):
    dm = AffinityDataModule(str(write_tsv(tmp_path / name, rows, extra)), split="all", batch_size=len(rows))
    dm.setup("fit")
    recs = dm.sets["train"]
    return dm, dm.collate(recs, "val")


def test_interaction_map_normalized_and_masked(tmp_path: Path) -> None:
    pl.seed_everything(0)
    _, batch = batch_of(tmp_path, [("CCO", SEQS[0], 5.0), ("c1ccccc1O", SEQS[1], 6.0), ("C", SEQS[2], 7.0)])
    model = tiny_cpac().eval()
    out = model(batch)
    imap, pair = out["imap"], out["pair_mask"]
    assert imap.shape == (3, batch.residues.shape[1], batch.atom_x.shape[1])
    assert torch.allclose(imap.sum((1, 2)), torch.ones(3), atol=1e-5)
    assert imap[~pair].abs().max() == 0
    assert (imap[pair] > 0).all()
    assert torch.equal(pair, batch.protein_mask[batch.protein_of].unsqueeze(2) & batch.atom_mask.unsqueeze(1))


@pytest.mark.parametrize("cross", ["gate", "concat"])
def test_padding_never_changes_prediction(tmp_path: Path, cross: str) -> None:
    pl.seed_everything(0)
    model = tiny_cpac(cross=cross, head_pooled=True).eval()
    short = ("CCO", "MKTAYIAK", 5.0)  # short protein, small compound
    long_ = ("CC(=O)Nc1ccc(O)cc1", SEQS[1] + SEQS[0], 7.0)  # longer in both
    _, alone = batch_of(tmp_path, [short], name="a.tsv")
    _, padded = batch_of(tmp_path, [long_, short], name="p.tsv")
    assert (
        padded.residues.shape[1] > alone.residues.shape[1] and padded.atom_x.shape[1] > alone.atom_x.shape[1]
    )
    with torch.no_grad():
        a, p = model(alone), model(padded)
    assert torch.allclose(a["affinity"][0], p["affinity"][1], atol=1e-5)
    assert torch.allclose(a["joint"][0], p["joint"][1], atol=1e-5)
    n_res, n_at = alone.residues.shape[1], alone.atom_x.shape[1]
    assert torch.allclose(a["imap"][0], p["imap"][1, :n_res, :n_at], atol=1e-6)
    mlp = AffinityMLP(fingerprint_dim=2048, composition_dim=420).eval()
    assert torch.allclose(mlp(alone)[0], mlp(padded)[1], atol=1e-5)


def test_gate_formula() -> None:
    model = tiny_cpac()
    gate = model.gate_seq
    x_self, x_other = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    want = (torch.tanh((gate.mlp(x_other) * x_self).sum(-1, keepdim=True) / 4.0) + 1) * x_self
    assert torch.allclose(gate(x_self, x_other), want)


def test_loss_terms_hand_computed(tmp_path: Path) -> None:
    """Loss terms on a 2-sample batch with hand-made maps, against values computed by hand with numpy."""
    np.save(tmp_path / "c.npy", np.array([[1, 0], [0, 0], [1, 1]], dtype=np.uint8))  # 3 residues x 2 atoms
    rows = [("CC", "MKT", 5.0, "c.npy"), ("C", "MK", 7.0, "")]
    _, batch = batch_of(tmp_path, rows, ("contacts",))
    assert batch.has_contacts.tolist() == [True, False]
    model = tiny_cpac(lambda_contact=2.0, lambda_l1=0.5, lambda_fused=0.3, lambda_group=0.1)
    s0 = np.array([[0.5, 0.25], [0.25, 0.5], [0.75, 0.75]])
    s1 = np.array([[0.2, 0.0], [0.6, 0.0], [0.0, 0.0]])  # 2 residues x 1 atom, padded
    pair = torch.tensor([[[1, 1], [1, 1], [1, 1]], [[1, 0], [1, 0], [0, 0]]], dtype=torch.bool)
    s = torch.tensor(np.stack([s0, s1]), dtype=torch.float32)
    imap = s / s.sum((1, 2), keepdim=True)
    out = {"affinity": torch.tensor([5.5, 6.0]), "imap": imap, "smap": s, "pair_mask": pair}
    terms = model.loss_terms(out, batch)

    mse = ((5.5 - 5.0) ** 2 + (6.0 - 7.0) ** 2) / 2
    i0, i1 = s0 / s0.sum(), s1 / s1.sum()
    t0 = np.array([[1, 0], [0, 0], [1, 1]]) / 3.0
    contact = math.sqrt(((i0 - t0) ** 2).sum())  # only sample 0 has a map
    l1 = (s0.sum() / 6 + s1.sum() / 2) / 2
    fused = (np.abs(np.diff(i0, axis=0)).sum() + abs(i1[1, 0] - i1[0, 0])) / 2
    group = (
        np.sqrt((i0**2).sum(1)).sum()
        + np.sqrt((i0**2).sum(0)).sum()
        + np.sqrt((i1[:2, :1] ** 2).sum(1)).sum()
        + np.sqrt((i1[:2, :1] ** 2).sum(0)).sum()
    ) / 2
    for name, want in dict(mse=mse, contact=contact, l1=l1, fused=fused, group=group).items():
        assert terms[name].item() == pytest.approx(want, rel=1e-4, abs=1e-5), name
    total = mse + 2.0 * contact + 0.5 * l1 + 0.3 * fused + 0.1 * group
    assert terms["loss"].item() == pytest.approx(total, rel=1e-4)

    no_contacts = batch
    no_contacts.has_contacts = torch.zeros(2, dtype=torch.bool)
    assert model.loss_terms(out, no_contacts)["contact"].item() == 0.0


def _synthetic(tmp_path: Path) -> Path:
    """Affinity = 4 + 0.4 * heavy atoms + a per-protein offset: learnable from the graph and the sequence."""
    from plexlab.datamodules.affinity.molecule import featurize_smiles

    offsets = [0.0, 1.5, -1.0, 0.7]
    rows = []
    for smi in SMILES:
        for j, seq in enumerate(SEQS):
            y = 4 + 0.4 * featurize_smiles(smi).n_atoms + offsets[j]
            rows.append((smi, seq, round(y, 3)))
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    write_tsv(tmp_path / "train.tsv", rows[:60])
    write_tsv(tmp_path / "test.tsv", rows[60:])
    return tmp_path


def _fit_and_test(model: pl.LightningModule, dm: AffinityDataModule, epochs: int) -> dict[str, float]:
    trainer = quiet_trainer(max_epochs=epochs, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, dm)
    return trainer.test(model, dm, verbose=False)[0]


def test_tiny_cpac_run_beats_mean_predictor(tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = AffinityDataModule(str(_synthetic(tmp_path)), batch_size=8, val_fraction=0.15, seed=0)
    dm.setup("fit")
    model = CPAC(**dm.model_kwargs(), hidden=16, chunk_size=4, gnn_layers=1, gnn_heads=2, gcn_layers=2,
                 head_hidden=32, head_pooled=True, dropout=0.0, lr=1e-2)  # fmt: skip
    res = _fit_and_test(model, dm, epochs=30)
    y_test = np.array([r.target for r in dm.sets["test"]])
    mean_rmse = float(np.sqrt(np.mean((y_test - dm.model_kwargs()["target_mean"]) ** 2)))
    assert res["test/rmse"] < 0.6 * mean_rmse
    assert res["test/pearson"] > 0.7


def test_tiny_mlp_run_beats_mean_predictor(tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = AffinityDataModule(str(_synthetic(tmp_path)), batch_size=8, val_fraction=0.15, fingerprint_bits=256)
    dm.setup("fit")
    model = AffinityMLP(**dm.model_kwargs(), hidden=[64], dropout=0.0, lr=3e-3)
    res = _fit_and_test(model, dm, epochs=40)
    y_test = np.array([r.target for r in dm.sets["test"]])
    mean_rmse = float(np.sqrt(np.mean((y_test - dm.model_kwargs()["target_mean"]) ** 2)))
    assert res["test/rmse"] < mean_rmse


def test_head_norm_standardizes_pooled_inputs(tmp_path: Path) -> None:
    """Pooled features of long proteins barely differ between samples; head_norm standardizes them over the
    batch in training (unit spread per feature), uses running statistics in evaluation, and a one-sample
    training batch does not fail."""
    pl.seed_everything(0)
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 300)) for _ in range(6)]
    rows = [(SMILES[i], seqs[i % 6], 6.0 + i / 10) for i in range(12)]
    _, batch = batch_of(tmp_path, rows)
    model = tiny_cpac(head_pooled=True, head_norm=True).train()
    seen: dict[str, torch.Tensor] = {}
    model.head.register_forward_hook(lambda m, inp, out: seen.__setitem__("x", inp[0].detach()))
    model(batch)
    x = seen["x"]
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4)
    std = x.std(0, unbiased=False)  # below 1 only where a feature's batch variance is near batch norm's eps
    assert (std <= 1.0 + 1e-4).all() and (std > 0.8).all() and float(std.mean()) > 0.98
    assert float(model.head_norm.running_var.mean()) != 1.0  # running statistics updated
    one = model.head_norm(x[:1])
    assert one.shape == (1, x.shape[1]) and torch.isfinite(one).all()
    model.eval()
    a = model(batch)["affinity"]
    assert torch.equal(a, model(batch)["affinity"])  # evaluation does not depend on the batch's statistics
    _, single = batch_of(tmp_path, rows[:1], name="one.tsv")
    assert torch.allclose(model(single)["affinity"][0], a[0], atol=1e-5)


def test_cosine_schedule_anneals_to_lr_over_100() -> None:
    """lr_schedule=cosine: the learning rate decays per epoch from lr to lr / 100 at the run's last epoch."""
    model = tiny_cpac(lr=1e-2, lr_schedule="cosine")
    model.trainer = pl.Trainer(
        max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "epoch"
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(5):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert isinstance(tiny_cpac().configure_optimizers(), torch.optim.Adam)  # constant: no scheduler


def test_compiled_joint_matches_eager() -> None:
    """compile_joint fuses sum_ij I_ij tanh(P_i * C_j); values and gradients stay those of the eager form,
    for two shapes (compiled once, dynamic)."""
    from plexlab.modules.affinity.cpac import compiled_joint_embedding, joint_embedding

    gen = torch.Generator().manual_seed(0)
    for shape in ((3, 11, 5, 4), (2, 17, 7, 4)):
        b, length, atoms, k = shape
        inputs = [
            torch.rand(b, length, atoms, generator=gen),
            torch.randn(b, length, k, generator=gen),
            torch.randn(b, atoms, k, generator=gen),
        ]
        results = []
        for fn in (joint_embedding, compiled_joint_embedding()):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = fn(*leaves)
            out.pow(2).sum().backward()
            results.append([out.detach(), *(t.grad for t in leaves)])
        for eager, fused in zip(*results, strict=True):
            assert torch.allclose(eager, fused, atol=1e-5, rtol=1e-4)
