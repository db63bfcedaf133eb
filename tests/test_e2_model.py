"""E2: Gumbel selection, hand-computed loss and recall, token bookkeeping, stages, learning."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _trainer import quiet_trainer
from PIL import Image
from plexlab.datamodules.image_text.datamodule import ImageTextDataModule
from plexlab.modules.e2 import E2, GumbelSelectFusion, clip_loss, retrieval_recall

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {
    "vision_width": 32,
    "vision_layers": 4,
    "vision_heads": 4,
    "patch_size": 8,
    "text_width": 32,
    "text_layers": 2,
    "text_heads": 4,
    "projection_dim": 32,
}


def tiny_e2(**kw: object) -> E2:
    args = {"vocab_size": 50, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "max_text_length": 12}
    args.update({"image_size": 32, **TINY, **kw})
    return E2(**args)  # type: ignore[arg-type]


def test_gumbel_selection_picks_exactly_one_patch() -> None:
    torch.manual_seed(0)
    fusion = GumbelSelectFusion(8)
    tokens, patches = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    for training in (True, False):
        fusion.train(training)
        out, choice = fusion(tokens, patches)
        assert choice.shape == (3, 4, 6)
        assert torch.all((choice == 0) | (choice == 1)) and torch.all(choice.sum(-1) == 1)
        picked = patches[torch.arange(3)[:, None], choice.argmax(-1)]  # [3, 4, 8]
        assert torch.allclose(out, 0.5 * (tokens + picked), atol=1e-6)
    # straight-through: the new query/key projections get gradients through the hard choice
    fusion.train()
    out, _ = fusion(tokens, patches)
    (out * torch.randn_like(out)).sum().backward()
    assert fusion.q.weight.grad is not None and fusion.q.weight.grad.abs().sum() > 0
    assert fusion.k.weight.grad is not None and fusion.k.weight.grad.abs().sum() > 0


def test_clip_loss_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    # rows: log(1+e^-2), log(1+e^-2); columns: log(1+e^-1), log(1+e^-3)
    expected = 0.5 * (math.log1p(math.exp(-2)) + 0.5 * (math.log1p(math.exp(-1)) + math.log1p(math.exp(-3))))
    assert abs(expected - 0.153926) < 1e-5
    assert clip_loss(logits).item() == pytest.approx(0.153926, abs=1e-5)
    # identical texts 0 and 1 are not each other's negatives
    logits3 = torch.tensor([[1.0, 5.0, 0.0], [5.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    # rows 0 and 1 -> log(1+e^-1); row 2 -> log(2+e)-1; symmetric, so columns give the same
    expected3 = (2 * math.log1p(math.exp(-1)) + math.log(2 + math.e) - 1) / 3
    assert clip_loss(logits3, same).item() == pytest.approx(expected3, abs=1e-5)
    assert clip_loss(logits3).item() > clip_loss(logits3, same).item()


def test_retrieval_recall_hand_computed() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.8, 0.3, 0.4, 0.1], [0.7, 0.6, 0.5, 0.2]])
    owner = torch.tensor([0, 0, 1, 2])
    r = retrieval_recall(sim, owner, ks=(1, 2, 5))
    # image->text best-positive ranks 0, 1, 3; text->image ranks 0, 2, 2, 1 (the 0.2 tie counts against)
    assert r["i2t_r1"] == pytest.approx(1 / 3) and r["i2t_r2"] == pytest.approx(2 / 3) and r["i2t_r5"] == 1.0
    assert r["t2i_r1"] == pytest.approx(1 / 4) and r["t2i_r2"] == pytest.approx(2 / 4) and r["t2i_r5"] == 1.0
    assert r["r_mean"] == pytest.approx((1 / 3 + 2 / 3 + 1 + 1 / 4 + 2 / 4 + 1) / 6)
    constant = retrieval_recall(torch.zeros(3, 4), owner, ks=(1,))  # a collapsed model scores nothing
    assert constant["i2t_r1"] == 0.0 and constant["t2i_r1"] == 0.0


def test_selection_tokens_all_kept_no_off_by_one() -> None:
    torch.manual_seed(0)
    model = tiny_e2().eval()
    assert model.num_selection == 10 and model.fusion_after == [0, 2]
    patches = (32 // 8) ** 2
    glob, regional, d = model.encode_image(torch.randn(2, 3, 32, 32), return_details=True)
    assert d["lengths"] == [1 + 10 + patches] * 3 + [1 + 10]  # the last block sees CLS + all 10 tokens
    hidden = d["hidden"]
    assert hidden.shape[1] == 11 and glob.shape == (2, 32) and regional.shape == (2, 5, 32)
    for k in range(5):  # entity k = mean of tokens 1+2k and 2+2k (the last entity uses the last token)
        mean = hidden[:, 1 + 2 * k : 3 + 2 * k].mean(1)
        ref = model.region_projs[k](model.region_norms[k](mean))
        assert torch.allclose(regional[:, k], ref, atol=1e-5)
    assert [c.shape for c in d["choices"]] == [(2, 10, patches)] * 2


def test_global_projection_is_clips_own(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_e2()
    source.clip.save_pretrained(tmp_path / "clip")
    model = tiny_e2(clip_path=str(tmp_path / "clip"))
    w = source.clip.visual_projection.weight
    assert torch.equal(model.clip.visual_projection.weight, w)
    assert torch.equal(model.region_projs[4].weight, w)  # regional heads start from it as well
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    glob, _, d = model.encode_image(x, return_details=True)
    ref = model.clip.visual_projection(model.clip.vision_model.post_layernorm(d["hidden"][:, 0]))
    assert torch.allclose(glob, ref, atol=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        tiny_e2(clip_path=str(tmp_path / "clip"), image_size=64)
    with pytest.raises(ValueError, match="fusion_layers"):
        tiny_e2(fusion_layers=[2, 1])


def _synthetic(root: Path, n: int = 16) -> Path:
    (root / "images").mkdir(parents=True)
    colors = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "white": (240, 240, 240)}
    with open(root / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        for i in range(n):
            name = list(colors)[i % 4]
            Image.new("RGB", (36, 32), colors[name]).save(root / "images" / f"{i}.png")
            w.writerow([f"{i}.png", f"a {name} square in a {name} box"])
    return root


def _trainer(epochs: int) -> pl.Trainer:
    return quiet_trainer(max_epochs=epochs, accelerator="cpu", deterministic=True)


def test_two_stage_training_freezes_clip_in_stage_one(tmp_path: Path) -> None:
    dm = ImageTextDataModule(str(_synthetic(tmp_path)), image_size=32, max_text_length=12, batch_size=4)
    dm.setup("fit")
    for epochs in (1, 2):
        pl.seed_everything(0)
        model = E2(**dm.model_kwargs(), **TINY, stage1_epochs=1)
        clip0 = {n: p.detach().clone() for n, p in model.clip.named_parameters()}
        new0 = [p.detach().clone() for p in model.new_parameters()]
        lrs: list[tuple[int, list[float]]] = []

        class RecordLR(pl.Callback):
            def __init__(self, out: list[tuple[int, list[float]]]) -> None:
                self.out = out

            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
                self.out.append(
                    (trainer.current_epoch, [g["lr"] for g in trainer.optimizers[0].param_groups])
                )

        trainer = _trainer(epochs)
        trainer.callbacks.append(RecordLR(lrs))
        trainer.fit(model, dm)
        # groups: new (decay, no decay), CLIP (decay, no decay); stage 1 = epoch 0
        for epoch, (new_lr, _, clip_lr, _) in lrs:
            if epoch == 0:
                assert clip_lr == 0.0 and 0 < new_lr <= model.hparams.lr_stage1
            else:
                assert 0 < clip_lr <= model.hparams.lr_stage2 and 0 < new_lr <= model.hparams.lr_stage2
        clip_changed = any(not torch.equal(clip0[n], p) for n, p in model.clip.named_parameters())
        new_changed = any(not torch.equal(a, b) for a, b in zip(new0, model.new_parameters(), strict=True))
        assert new_changed
        assert clip_changed == (epochs == 2)


def test_tiny_run_learns_flickr_subset(shared_data: Path) -> None:
    """A tiny random CLIP fits 32 real Flickr images: loss falls clearly, train-set recall@10 above chance."""
    pl.seed_everything(0)
    dm = ImageTextDataModule(
        str(shared_data / "image_text" / "flickr8k_1k"),
        image_size=32,
        max_text_length=24,
        max_images=40,
        val_fraction=0.1,
        test_fraction=0.1,
        batch_size=8,
    )
    dm.setup("fit")
    model = E2(**dm.model_kwargs(), **TINY, stage1_epochs=1, lr_stage1=3e-3, lr_stage2=3e-3, weight_decay=0.0)
    train_eval = dm._loader(dm.splits["train"], train=False)
    trainer = _trainer(20)
    before = trainer.validate(model, dataloaders=train_eval, verbose=False)[0]
    trainer.fit(model, dm)
    after = trainer.validate(model, dataloaders=train_eval, verbose=False)[0]
    chance = 10 / len(dm.splits["train"])  # 32 images, 160 captions: recall@10 by chance ~0.31
    assert after["val/loss"] < 0.7 * before["val/loss"]
    assert after["val/t2i_r10"] > 2 * chance and after["val/i2t_r10"] > 1.5 * chance


def test_embed_over_predict_loader_is_deterministic(tmp_path: Path) -> None:
    dm = ImageTextDataModule(str(_synthetic(tmp_path, n=10)), image_size=32, max_text_length=12, batch_size=4)
    dm.setup("predict")
    torch.manual_seed(0)
    model = E2(**dm.model_kwargs(), **TINY).eval()
    rows = torch.cat(_trainer(1).predict(model, dm))
    assert rows.shape == (len(dm.sample_ids()), 32) == (10, 32)
    assert torch.allclose(rows.norm(dim=1), torch.ones(10), atol=1e-5)
    again = torch.cat([model.embed(b) for b in dm.predict_dataloader()])
    assert torch.allclose(rows, again, atol=1e-6)  # eval mode: arg-max selection, no Gumbel noise


def test_local_pretrained_tokenizer_path(tmp_path: Path) -> None:
    """tokenizer_path: a local transformers CLIP (BPE) tokenizer, here a toy one written offline."""
    import json

    from transformers import CLIPTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz.")
    vocab = {
        c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])
    }
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(
        tmp_path / "tok"
    )
    dm = ImageTextDataModule(
        str(_synthetic(tmp_path / "data", n=10)),
        image_size=32,
        max_text_length=40,
        batch_size=4,
        tokenizer_path=str(tmp_path / "tok"),
    )
    dm.setup("fit")
    kw = dm.model_kwargs()
    assert (kw["vocab_size"], kw["bos_token_id"], kw["eos_token_id"]) == (56, 54, 55)
    batch = next(iter(dm.train_dataloader()))
    assert torch.all(batch.input_ids[:, 0] == 54) and torch.all((batch.input_ids == 55).any(dim=1))
    torch.manual_seed(0)
    out = E2(**kw, **TINY).compute_loss(batch)
    assert torch.isfinite(out["loss"]) and out["loss_regional"] > 0
