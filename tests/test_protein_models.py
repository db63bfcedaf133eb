"""Protein models: InfoNCE, Fmax/AUPR, ESM SDPA path and pooling, relational conv, tiny training runs."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import math
import typing
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _protein_files import SMALL
from _trainer import quiet_trainer
from plexlab.datamodules.protein.datamodule import ProteinBatch, ProteinDataModule, esm_alphabet
from plexlab.modules.contrastive import info_nce
from plexlab.modules.protein.encoders import EncoderSettings, ProteinEncoder, RelationalConv, SequenceEncoder
from plexlab.modules.protein.function import ProteinFunction, fmax, micro_aupr
from plexlab.modules.protein.mmcl import ProteinMMCL

TINY = {"esm_layers": 2, "esm_dim": 32, "esm_heads": 4, "gnn_dims": [32, 32]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("model", [ProteinMMCL, ProteinFunction])
def test_each_model_takes_every_encoder_setting_as_a_flat_argument(model):
    """The signature is the config schema (flat `model.esm_layers` keys), so each model lists the settings'
    fields; they agree with EncoderSettings in name, default and type, and from_hparams takes them all."""
    own = inspect.signature(model.__init__).parameters
    hints = typing.get_type_hints(model.__init__)
    settings_hints = typing.get_type_hints(EncoderSettings)
    for f in dataclasses.fields(EncoderSettings):
        assert f.name in own, f.name
        assert own[f.name].default == f.default, f.name
        assert hints[f.name] == settings_hints[f.name], f.name
    with pytest.raises(TypeError, match="esm_heads"):
        EncoderSettings.from_hparams({"esm_layers": 2})


def test_protein_function_does_not_import_the_mmcl_model():
    """Sibling models share the encoder module, not each other (importing one never loads the other)."""
    import plexlab.modules.protein.function as function

    assert "plexlab.modules.protein.mmcl" not in {
        getattr(v, "__module__", None) for v in vars(function).values() if callable(v)
    }
    source = Path(function.__file__).read_text()
    assert "protein.mmcl" not in source


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # cosines: [[1, 1/sqrt2], [0, 1/sqrt2]]
    r = 1 / math.sqrt(2) / 0.5  # logits with temperature 0.5: [[2, r], [0, r]]
    a_to_b = (math.log(1 + math.exp(r - 2)) + math.log(1 + math.exp(-r))) / 2
    b_to_a = (math.log(1 + math.exp(-2)) + math.log(2)) / 2  # columns: [2, 0] and [r, r]
    assert float(info_nce(a, b, 0.5, symmetric=False)) == pytest.approx(a_to_b, abs=1e-6)
    assert float(info_nce(a, b, 0.5)) == pytest.approx((a_to_b + b_to_a) / 2, abs=1e-6)
    # excluding the off-diagonal pair leaves only the positive: zero loss
    assert float(info_nce(a, b, 0.5, exclude=torch.ones(2, 2, dtype=torch.bool))) == pytest.approx(
        0.0, abs=1e-7
    )


def test_fmax_and_aupr_hand_made():
    scores = torch.tensor([[0.9, 0.6, 0.2], [0.3, 0.8, 0.1]])
    targets = torch.tensor([[1, 0, 1], [0, 1, 0]])
    # best threshold in (0.6, 0.8]: protein 1 predicts {0}: P=1, R=1/2; protein 2 predicts {1}: P=1, R=1
    # -> P = 1, R = 3/4, F = 6/7 (t in (0.3, 0.6] gives 0.75, t <= 0.1 gives 2/3)
    assert float(fmax(scores, targets)) == pytest.approx(6 / 7, abs=1e-6)
    # ranking: 0.9 T, 0.8 T, 0.6 F, 0.3 F, 0.2 T, 0.1 F -> AP = (1 + 1 + 3/5) / 3
    assert float(micro_aupr(scores, targets)) == pytest.approx((1 + 1 + 3 / 5) / 3, abs=1e-6)
    # a protein without labels does not count
    s2 = torch.cat([scores, torch.tensor([[0.99, 0.99, 0.99]])])
    t2 = torch.cat([targets, torch.zeros(1, 3, dtype=torch.long)])
    assert float(fmax(s2, t2)) == pytest.approx(6 / 7, abs=1e-6)


def test_micro_aupr_matches_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    s = (torch.rand(50, 7, generator=g) * 10).round() / 10  # many ties
    y = (torch.rand(50, 7, generator=g) < 0.3).long()
    assert float(micro_aupr(s, y)) == pytest.approx(
        average_precision_score(y.flatten(), s.flatten()), abs=1e-6
    )


def _tokens(seqs):
    _, _, tokens = esm_alphabet().get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
    return tokens


def test_esm_sdpa_same_as_esm_attention_and_pooling_excludes_specials():
    torch.manual_seed(0)
    enc = SequenceEncoder(None, 2, 32, 4, use_sdpa=False).eval()
    tokens = _tokens(["MKTAYIAKQR", "GGW", "MKVLAAGIVGX"])
    with torch.no_grad():
        ref_tok, ref_pool = enc(tokens)
        enc.set_sdpa(True)
        tok, pool = enc(tokens)
        alone_tok, alone_pool = enc(_tokens(["GGW"]))
    assert torch.allclose(tok, ref_tok, atol=1e-5) and torch.allclose(pool, ref_pool, atol=1e-5)
    # the padded row equals the sequence run alone, and its mean covers the 3 residues only
    assert torch.allclose(pool[1], alone_pool[0], atol=1e-5)
    assert torch.allclose(pool[1], tok[1, 1:4].mean(0), atol=1e-6)
    assert torch.allclose(tok[1, :5], alone_tok[0], atol=1e-5)


def test_esm_freezing():
    enc = SequenceEncoder(None, 3, 16, 2, freeze="partial", trainable_layers=1)
    trainable = {n.split(".")[1] for n, p in enc.esm.named_parameters() if p.requires_grad and "layers" in n}
    assert trainable == {"2"} and not enc.esm.embed_tokens.weight.requires_grad
    enc = SequenceEncoder(None, 2, 16, 2, freeze="all")
    assert not any(p.requires_grad for p in enc.parameters())


def test_relational_conv_one_weight_per_relation():
    torch.manual_seed(0)
    conv = RelationalConv(3, 4, num_relations=2, batch_norm=False)
    x = torch.randn(3, 3)
    edge_index = torch.tensor([[0, 1, 2, 2], [1, 0, 0, 0]])  # (source, target)
    edge_type = torch.tensor([0, 1, 1, 0])
    w = conv.linear.weight.view(4, 2, 3)  # [out, relation, in]
    agg = torch.zeros(3, 2, 3)
    for (s, t), r in zip(edge_index.T.tolist(), edge_type.tolist(), strict=True):
        agg[t, r] += x[s]
    expected = torch.relu(torch.einsum("nri,ori->no", agg, w) + conv.linear.bias + conv.self_loop(x))
    assert torch.allclose(conv(x, edge_index, edge_type), expected, atol=1e-6)


# ------------------------------------------------------------------ tiny training on real structures

LABELLED = ["4akeA_alg_fixed.pdb.gz", "1dix.pdb.gz", "1dix.cif.gz", "1o1z.pdb.gz", "1o1z.cif.gz"]


@pytest.fixture(scope="module")
def small_chains(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    rows = [
        r
        for r in csv.DictReader(open(shared_data / "proteins" / "chains.tsv"), delimiter="\t")
        if Path(r["file"]).name in SMALL
    ]
    with open(d / "chains.tsv", "w") as fh:
        fh.write("file\tchain\n" + "".join(f"{r['file']}\t{r['chain']}\n" for r in rows))
    return d


def _pretrain_dm(shared_data, small_chains):
    return ProteinDataModule(
        chains_file=str(small_chains / "chains.tsv"),
        path=str(shared_data / "proteins"),
        cache_dir=str(small_chains / "cache"),
        views=["crop"],
        crop_length=30,
        batch_size=8,
        val_fraction=0.0,
        test_fraction=0.0,
    )


def test_contrastive_loss_falls_and_checkpoint_feeds_function(shared_data, small_chains, tmp_path):
    pl.seed_everything(0)
    dm = _pretrain_dm(shared_data, small_chains)
    dm.setup("fit")
    assert len(dm.items) >= 16
    model = ProteinMMCL(**dm.model_kwargs(), **TINY, proj_dim=16, lr=3e-3, temperature=0.1)
    fixed = list(dm._loader(dm.train_idx, train=False, pairs=True))  # fixed views for before/after

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = sum(float(model.losses(b)["loss"]) for b in fixed) / len(fixed)
        model.train()
        return loss

    before = eval_loss()
    trainer = quiet_trainer(max_epochs=6, accelerator="cpu", limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    after = eval_loss()
    assert after < 0.7 * before, (before, after)

    emb = model.embed(fixed[0].a)
    assert emb.shape == (len(fixed[0]), 32 + 64)  # ESM 32 + GNN concat 2 x 32

    ckpt = tmp_path / "mmcl.ckpt"
    trainer.save_checkpoint(ckpt)
    p = shared_data / "proteins"
    labelled = (
        small_chains / "labelled.tsv"
    )  # the EC-labelled chains of the shared set, less the 800-residue one
    labelled.write_text("file\tchain\n" + "".join(f"structures/{f}\tA\n" for f in LABELLED))
    fdm = ProteinDataModule(
        chains_file=str(labelled),
        path=str(p),
        labels_file=str(p / "chains.tsv"),
        mode="function",
        cache_dir=str(small_chains / "cache"),
        batch_size=6,
    )
    fdm.setup("fit")
    f = ProteinFunction(**fdm.model_kwargs(), **TINY, pretrained_ckpt=str(ckpt), head_hidden=32, lr=3e-3)
    assert torch.equal(f.encoder.gnn.layers[0].linear.weight, model.encoder.gnn.layers[0].linear.weight)
    ft = quiet_trainer(max_epochs=8, accelerator="cpu", num_sanity_val_steps=0)
    # the fit's own chains (3 entries: one each for train, val and test): does fine-tuning fit them?
    batch = next(iter(fdm._loader(fdm.train_idx, train=False, pairs=False)))
    f.eval()
    with torch.no_grad():
        bce0 = float(torch.nn.functional.binary_cross_entropy_with_logits(f(batch), batch.labels))
    f.train()
    ft.fit(f, fdm)
    f.eval()
    with torch.no_grad():
        bce1 = float(torch.nn.functional.binary_cross_entropy_with_logits(f(batch), batch.labels))
    assert bce1 < 0.5 * bce0
    assert 0 <= float(ft.callback_metrics["val/fmax"]) <= 1 and "val/aupr" in ft.callback_metrics
    preds = ft.predict(f, fdm.predict_dataloader())
    assert sum(len(x) for x in preds) == len(fdm.sample_ids())


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    torch.save(
        {"state_dict": {"encoder.seq.esm.embed_tokens.weight": torch.zeros(3, 3)}}, tmp_path / "x.ckpt"
    )
    with pytest.raises(ValueError, match="shapes differ"):
        ProteinFunction(num_labels=3, **TINY, pretrained_ckpt=str(tmp_path / "x.ckpt"))


def test_series_fusion_and_sequence_only_embed(tmp_path):
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    seqs = ["MKTAYIAKQR", "GGWAC"]
    graphs = []
    for s in seqs:
        n = len(s)
        ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        graphs.append(
            Data(
                x=torch.randint(0, 20, (n,)),
                residue_pos=torch.arange(n),
                edge_index=ei,
                edge_type=torch.zeros(n - 1, dtype=torch.long),
                num_nodes=n,
            )
        )
    batch = ProteinBatch(["a", "b"], _tokens(seqs), Batch.from_data_list(graphs))
    settings = EncoderSettings(esm_layers=2, esm_dim=16, esm_heads=2, gnn_dims=[8, 8], fusion="series")
    enc = ProteinEncoder(settings).eval()
    out = enc(batch)
    assert out["fused"].shape == (2, 16) and enc.gnn.layers[0].self_loop.in_features == 21 + 16
    model = ProteinMMCL(**TINY)
    seq_only = ProteinBatch(["a", "b"], _tokens(seqs), None)
    assert model.embed(seq_only).shape == (2, 32)


def test_fasta_sequence_only_embedding(tmp_path):
    f = tmp_path / "seqs.fasta"
    f.write_text(">2RQ6-A\nMVMTVRVIAPDKTVWDAPAEEV\n>1ABC-B\nGGWACKLM\n>3XYZ-C\nMKTAYIAKQRQISFVKSHFSRQ\n")
    dm = ProteinDataModule(fasta_file=str(f), cache_dir=str(tmp_path / "c"), batch_size=2)
    dm.setup("fit")
    model = ProteinMMCL(**dm.model_kwargs(), **TINY).eval()
    with torch.no_grad():
        rows = torch.cat([model.embed(b) for b in dm.predict_dataloader()])
    assert dm.sample_ids() == ["1ABC-B", "2RQ6-A", "3XYZ-C"] and rows.shape == (3, 32)
