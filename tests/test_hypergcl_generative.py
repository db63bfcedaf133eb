"""HyperGCL's generative views: hard straight-through keep weights, the VHGAE loss by hand, no mutation of
the input graph, alternating steps that each move only their own parameters, and generative training beating
the feature MLP on a small hypergraph."""

import math

import lightning.pytorch as pl
import pytest
import torch
from _hypergraph_files import write_graph
from _hypergraph_fit import fit_test_accuracy as _test_accuracy
from plexlab.datamodules.hypergraph import Hypergraph, HypergraphDataModule
from plexlab.modules.hypergraph.hypergcl import AllDeepSets, HyperGCL
from plexlab.modules.hypergraph.node_mlp import NodeMLP
from plexlab.modules.hypergraph.vhgae import VHGAE, hard_keep, negative_incidences, vhgae_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def graph() -> Hypergraph:
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 24
    return Hypergraph(x, torch.tensor([0, 1, 2, 2, 3, 4, 5, 0]), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), 3)


def generator(in_dim: int = 4, hidden: int = 8) -> VHGAE:
    return VHGAE(AllDeepSets(in_dim, hidden, num_layers=1, mlp_layers=2, dropout=0.0), hidden)


def test_keep_weights_are_hard_in_forward_and_soft_in_backward():
    torch.manual_seed(0)
    logits = torch.randn(500, 2, requires_grad=True)
    keep = hard_keep(logits, tau=1.0)
    assert set(keep.tolist()) == {0.0, 1.0}  # exactly 0 or 1, both present
    (keep * torch.linspace(-1, 1, 500)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # Straight-through: the two logits of a row get opposite gradients (softmax over two classes).
    assert torch.allclose(logits.grad[:, 0], -logits.grad[:, 1], atol=1e-6)


def test_keep_follows_the_logits():
    torch.manual_seed(0)
    strong = torch.tensor([[-6.0, 6.0], [6.0, -6.0]]).repeat(200, 1)
    keep = hard_keep(strong, tau=1.0).reshape(200, 2)
    assert keep[:, 0].mean() > 0.95 and keep[:, 1].mean() < 0.05


def test_generated_view_weights_incidences_and_passes_gradient_to_the_generator():
    torch.manual_seed(0)
    g = graph()
    gen = generator()
    view, loss = gen(g)
    assert view.graph is g and view.kept.all()
    assert view.weight.shape == (g.node_idx.numel(),)
    assert ((view.weight == 0) | (view.weight == 1)).all()
    assert loss is not None and torch.isfinite(loss)
    # The contrastive encoder consumes the weights: its output's gradient reaches the generator's encoder.
    encoder = AllDeepSets(4, 8, num_layers=1, mlp_layers=2, dropout=0.0)
    encoder(view.graph, view.weight).pow(2).sum().backward()
    first = gen.encoder.layers[0].v2e_in[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in gen.decoder.parameters())


def test_vhgae_loss_matches_hand_computation():
    pos = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # (drop, keep) logits of two incidences
    neg = torch.tensor([[1.0, -1.0]])  # one non-incidence
    node_mean, node_std = torch.tensor([[0.5, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    edge_mean, edge_std = torch.tensor([[1.0]]), torch.tensor([[0.5]])

    def ce(logits, label):
        return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))

    reconstruction = (ce([0.0, 1.0], 1) + ce([2.0, 0.0], 1)) / 2 + ce([1.0, -1.0], 0)

    def kl(m, s):  # KL(N(m, s^2) || N(0, 1)) of one dimension
        return 0.5 * (m * m + s * s - 1) - math.log(s)

    kl_node = (
        ((kl(0.5, 1.0) + kl(0.0, 2.0)) + (kl(0.0, 1.0) + kl(0.0, 1.0))) / 2 / 2
    )  # mean over rows, / rows
    kl_edge = kl(1.0, 0.5) / 1 / 1
    expected = reconstruction + kl_node + kl_edge
    got = vhgae_loss(pos, neg, node_mean, node_std, edge_mean, edge_std)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_negative_incidences_are_not_incidences():
    torch.manual_seed(0)
    g = graph()
    nodes, edges = negative_incidences(g, 8)
    existing = set(zip(g.node_idx.tolist(), g.edge_idx.tolist(), strict=True))
    pairs = list(zip(nodes.tolist(), edges.tolist(), strict=True))
    assert pairs and len(set(pairs)) == len(pairs) and not existing & set(pairs)
    assert all(0 <= n < 6 and 0 <= e < 3 for n, e in pairs)


def test_generative_training_never_mutates_the_input_graph(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = HypergraphDataModule(str(write_graph(tmp_path / "g")))
    dm.setup("fit")
    g = dm.batch.graph
    before = (g.x.clone(), g.node_idx.clone(), g.edge_idx.clone(), g.num_edges)
    model = HyperGCL(**dm.model_kwargs(), hidden=8, views="generative")
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert torch.equal(g.x, before[0]) and torch.equal(g.node_idx, before[1])
    assert torch.equal(g.edge_idx, before[2]) and g.num_edges == before[3]
    assert trainer.global_step == 6  # two optimizer steps per epoch: generator, then encoder


def test_fabricated_views_keep_automatic_optimization_and_one_optimizer():
    model = HyperGCL(in_dim=4, num_classes=2, hidden=8)
    assert model.automatic_optimization and not hasattr(model, "generator")
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)
    gen = HyperGCL(in_dim=4, num_classes=2, hidden=8, views="generative")
    encoder_opt, generator_opt = gen.configure_optimizers()
    generator_params = {id(p) for p in gen.generator.parameters()}
    assert {id(p) for p in generator_opt.param_groups[0]["params"]} == generator_params
    assert not generator_params & {id(p) for p in encoder_opt.param_groups[0]["params"]}
    assert not gen.automatic_optimization


class StepSpy(pl.Callback):
    """Which optimizer steps, and a copy of every parameter before each step and after the batch."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def _snapshot(self, module: pl.LightningModule) -> None:
        self.snapshots.append({n: p.detach().clone() for n, p in module.named_parameters()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(next(i for i, o in enumerate(trainer.optimizers) if o is optimizer))
        self._snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._snapshot(pl_module)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """Top-level submodules ('encoder', 'generator', ...) with a parameter that changed."""
    return {n.split(".")[0] for n in before if not torch.equal(before[n], after[n])}


def test_alternating_steps_update_only_their_own_parameters(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = HypergraphDataModule(str(write_graph(tmp_path / "g")))
    dm.setup("fit")
    model = HyperGCL(**dm.model_kwargs(), hidden=8, views="generative")
    spy = StepSpy()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[spy],
    )
    trainer.fit(model, datamodule=dm)
    # Per batch: the generator's optimizer (index 1) steps, then the encoder's (index 0).
    assert spy.steps == [1, 0, 1, 0]
    for batch in range(2):
        before_generator, before_encoder, after = spy.snapshots[3 * batch : 3 * batch + 3]
        # The generator step moves the generator only; the encoder step everything but the generator.
        assert changed(before_generator, before_encoder) == {"generator"}
        assert changed(before_encoder, after) == {"encoder", "classifier", "projector"}


def test_generative_hypergcl_learns_a_hypergraph_past_the_feature_mlp(tmp_path):
    # 120 nodes, 3 classes, 24 labels; features are the one-hot class plus N(0, 1) noise per dimension, and
    # 12 disjoint hyperedges of 10 same-class nodes. Averaging over a hyperedge cuts the noise, so a model
    # that uses the hypergraph should beat the same-budget MLP on the features by a clear margin.
    folder = write_graph(tmp_path / "g", n=120)
    mlp_acc = _test_accuracy(NodeMLP, folder, epochs=100)
    gen_acc = _test_accuracy(HyperGCL, folder, epochs=100, views="generative")
    assert gen_acc > mlp_acc + 0.1, (gen_acc, mlp_acc)
