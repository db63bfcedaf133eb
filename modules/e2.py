"""E2: regional contrastive CLIP for fashion retrieval (selection tokens + Gumbel fusion blocks).

The image encoder is a CLIP ViT from `transformers` with ``num_entities * tokens_per_entity`` extra learnable
selection tokens placed right after CLS. After each of two chosen vision blocks a fusion block lets every
selection token pick exactly one patch (hard Gumbel-softmax over query-key scores with new projections) and
averages that patch into itself; after the second fusion the patch tokens are dropped and the remaining blocks
run on CLS + selection tokens only. The global image feature is CLIP's own head (post layer norm of CLS, then
CLIP's ``visual_projection``, reused, not re-initialised); the regional feature of entity k is the mean of its
selection tokens, a layer norm and a projection (one per entity). The text encoder is CLIP's, unchanged.

Loss = (1 - regional_weight) * CLIP(global image, caption)
     + regional_weight * mean_k CLIP(region_k, entity text_k)       (regional_weight = 0.5 as in the paper)

Training is two-stage: for ``stage1_epochs`` only the new parameters train (lr ``lr_stage1``), then everything
trains with ``lr_stage2``; AdamW, each stage its own linear warm-up + cosine decay.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.image_text.datamodule import ImageTextBatch
from plexlab.modules.clip_weights import clip_by_name, clip_from_folder
from plexlab.modules.step_logging import log_train_loss
from torch import nn

if TYPE_CHECKING:
    from transformers import CLIPModel

log = logging.getLogger(__name__)


def clip_loss(logits: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a square logit matrix whose diagonal holds the positive pairs.

    ``same`` (bool ``[N, N]``, optional) marks off-diagonal pairs that are not true negatives (e.g. two images
    whose entity texts are identical, "a man"); they are removed from both softmaxes.
    """
    n = logits.shape[0]
    if same is not None:
        off_diag = same & ~torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off_diag, float("-inf"))
    labels = torch.arange(n, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def same_text(ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[N, N]``: rows of a token-id matrix that are identical."""
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


def retrieval_recall(
    sim: torch.Tensor, text_owner: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K for image-to-text and text-to-image retrieval over all candidates.

    ``sim``: ``[n_images, n_texts]`` similarities; ``text_owner[t]`` is the image that text t describes.
    Image-to-text: hit when any of the image's texts is within the top K texts. Text-to-image: hit when the
    text's image is within the top K images. Ties count against the query (a constant model scores ~0).
    """
    n_img, n_txt = sim.shape
    img_ids = torch.arange(n_img, device=sim.device)
    positive = text_owner[None, :] == img_ids[:, None]
    best_pos = sim.masked_fill(~positive, float("-inf")).max(dim=1).values
    i2t_rank = ((sim >= best_pos[:, None]) & ~positive).sum(dim=1)
    own = sim[text_owner, torch.arange(n_txt, device=sim.device)]
    t2i_rank = ((sim >= own[None, :]) & ~positive).sum(dim=0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = (i2t_rank < k).float().mean().item()
        out[f"t2i_r{k}"] = (t2i_rank < k).float().mean().item()
    out["r_mean"] = sum(out.values()) / len(out)
    return out


class GumbelSelectFusion(nn.Module):
    """Each selection token picks one patch (hard Gumbel-softmax over q.k scores) and averages it in.

    New query/key projections (with pre-norms) score token-patch pairs; training samples a one-hot choice
    with the straight-through Gumbel-softmax (gradients reach the projections through the soft sample),
    evaluation takes the arg-max. Output token = (token + chosen patch) / 2.
    """

    def __init__(self, dim: int, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.scale = dim**-0.5

    def forward(self, tokens: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens ``[B, S, D]``, patches ``[B, P, D]`` -> fused tokens ``[B, S, D]``, choice ``[B, S, P]``."""
        scores = self.q(self.norm_q(tokens)) @ self.k(self.norm_k(patches)).transpose(1, 2) * self.scale
        if self.training:
            choice = F.gumbel_softmax(scores, tau=self.tau, hard=True, dim=-1)
        else:
            choice = F.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(scores.dtype)
        picked = choice @ patches
        return 0.5 * (tokens + picked), choice


def random_clip(
    *,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    max_text_length: int,
    image_size: int,
    vision_width: int,
    vision_layers: int,
    vision_heads: int,
    patch_size: int,
    text_width: int,
    text_layers: int,
    text_heads: int,
    projection_dim: int,
) -> CLIPModel:
    """A randomly initialised CLIP of the given sizes (MLP width 4x, as CLIP)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "max_position_embeddings": max_text_length,
            "pad_token_id": pad_token_id,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": 4 * vision_width,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    return CLIPModel(config)


def check_clip_fits(
    clip: CLIPModel, image_size: int, vocab_size: int, max_text_length: int, source: str
) -> None:
    """A pretrained CLIP must take the data's images and tokens (sizes the data module decides)."""
    vcfg, tcfg = clip.config.vision_config, clip.config.text_config
    if vcfg.image_size != image_size:
        raise DataError(
            "data.image_size", f"is {image_size} but the CLIP model's is {vcfg.image_size} ({source})"
        )
    if vocab_size > tcfg.vocab_size or max_text_length > tcfg.max_position_embeddings:
        raise DataError(
            "data.tokenizer_path",
            f"the tokenizer (vocab {vocab_size}, length {max_text_length}) does not fit the CLIP model "
            f"(vocab {tcfg.vocab_size}, length {tcfg.max_position_embeddings}) of {source}",
        )


def fusion_blocks(fusion_layers: list[int] | None, n_layers: int) -> list[int]:
    """The two 0-based vision blocks after which fusion runs; default [L-4, L-2], negatives from the end."""
    fusion = list(fusion_layers) if fusion_layers is not None else [n_layers - 4, n_layers - 2]
    fusion = [f + n_layers if f < 0 else f for f in fusion]
    if len(fusion) != 2 or not 0 <= fusion[0] < fusion[1] < n_layers:
        raise ValueError(
            f"fusion_layers {fusion_layers} must name two increasing vision blocks of {n_layers} "
            f"(0-based, negative counts from the end)"
        )
    return fusion


def regional_heads(clip: CLIPModel, num_entities: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """A layer norm and a projection per entity, starting as copies of CLIP's post layer norm and visual
    projection (regions begin in the global embedding space)."""
    vcfg = clip.config.vision_config
    width, proj_dim = vcfg.hidden_size, clip.config.projection_dim
    norms = nn.ModuleList([nn.LayerNorm(width, eps=vcfg.layer_norm_eps) for _ in range(num_entities)])
    projs = nn.ModuleList([nn.Linear(width, proj_dim, bias=False) for _ in range(num_entities)])
    with torch.no_grad():
        for norm, proj in zip(norms, projs, strict=True):
            norm.load_state_dict(clip.vision_model.post_layernorm.state_dict())
            proj.weight.copy_(clip.visual_projection.weight)
    return norms, projs


class E2(pl.LightningModule):
    """E2 regional contrastive CLIP (see the module docstring). Defaults: CLIP ViT-B/32 sizes, paper settings.

    Choices where the paper is silent: selection tokens are placed right after CLS, initialised like CLIP's
    class embedding (normal, std width**-0.5), without position embeddings (each token is its own
    parameter); ``fusion_layers`` default ``[L-4, L-2]`` (0-based vision blocks after which fusion runs, so
    the last block runs on CLS + selection tokens only; negative values count from the end); the per-entity
    regional layer norm and projection start as copies of CLIP's post layer norm and visual projection, so
    regions begin in the global embedding space; one learned temperature (CLIP's ``logit_scale``, capped at
    100) for all losses; identical texts in a batch are not used as negatives of each other; entities with
    no text (missing tag, or fewer caption chunks) are left out of their entity's loss.

    Real use: ``clip_model`` = a Hugging Face name (``openai/clip-vit-base-patch32``, through transformers'
    cache; see clip_weights.py) or ``clip_path`` = a local folder in ``save_pretrained`` format, and the
    data module's ``tokenizer_path`` = the matching tokenizer. The size arguments (``vision_width`` ...
    ``projection_dim``) shape a random CLIP only; a pretrained one keeps its own. Without either a randomly
    initialised CLIP of the given sizes is built (tests use a tiny one).
    Primary metric ``val/r_mean``: mean of image-to-text and text-to-image recall@1/5/10 over all
    validation candidates.

    Args:
        vocab_size: tokenizer vocabulary (given by the data module).
        pad_token_id: padding token (given by the data module).
        bos_token_id: start token (given by the data module).
        eos_token_id: end token, whose state CLIP pools (given by the data module).
        max_text_length: tokens per text (given by the data module).
        image_size: image side in pixels (given by the data module).
        num_entities: tag entities, each with its own regional feature and loss.
        clip_model: a pretrained CLIP by Hugging Face name, through transformers' cache.
        clip_path: a pretrained CLIP in a local ``save_pretrained`` folder.
        vision_width: ViT width (random CLIP only).
        vision_layers: ViT blocks (random CLIP only).
        vision_heads: ViT attention heads (random CLIP only).
        patch_size: ViT patch side in pixels (random CLIP only).
        text_width: text transformer width (random CLIP only).
        text_layers: text transformer layers (random CLIP only).
        text_heads: text attention heads (random CLIP only).
        projection_dim: joint embedding width (random CLIP only).
        tokens_per_entity: selection tokens per entity.
        fusion_layers: the two vision blocks after which fusion runs (default the 4th and 2nd from last).
        gumbel_tau: Gumbel-softmax temperature of the fusion blocks.
        regional_weight: weight of the regional loss (the global loss gets 1 - it).
        lr_stage1: learning rate of the new parameters in stage 1.
        lr_stage2: learning rate of every parameter in stage 2.
        stage1_epochs: epochs of stage 1 (CLIP frozen).
        warmup_fraction: linear warm-up as a fraction of each stage's steps.
        weight_decay: AdamW weight decay (not on norms, biases and the temperature).
    """

    primary_metric = "val/r_mean"
    primary_mode = "max"

    def __init__(
        self,
        vocab_size: int = 49408,
        pad_token_id: int = 49407,
        bos_token_id: int = 49406,
        eos_token_id: int = 49407,
        max_text_length: int = 77,
        image_size: int = 224,
        num_entities: int = 5,
        clip_model: str | None = None,
        clip_path: Path | str | None = None,
        vision_width: int = 768,
        vision_layers: int = 12,
        vision_heads: int = 12,
        patch_size: int = 32,
        text_width: int = 512,
        text_layers: int = 12,
        text_heads: int = 8,
        projection_dim: int = 512,
        tokens_per_entity: int = 2,
        fusion_layers: list[int] | None = None,
        gumbel_tau: float = 1.0,
        regional_weight: float = 0.5,
        lr_stage1: float = 5e-4,
        lr_stage2: float = 5e-5,
        stage1_epochs: int = 1,
        warmup_fraction: float = 0.1,
        weight_decay: float = 0.2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if clip_model and clip_path:
            raise DataError("model.clip_model", "give the weights once: clip_model (a name) or clip_path")
        if clip_model or clip_path:
            self.clip = clip_by_name(clip_model) if clip_model else clip_from_folder(clip_path)
            check_clip_fits(self.clip, image_size, vocab_size, max_text_length, clip_model or clip_path)
        else:
            self.clip = random_clip(
                vocab_size=vocab_size,
                pad_token_id=pad_token_id,
                bos_token_id=bos_token_id,
                eos_token_id=eos_token_id,
                max_text_length=max_text_length,
                image_size=image_size,
                vision_width=vision_width,
                vision_layers=vision_layers,
                vision_heads=vision_heads,
                patch_size=patch_size,
                text_width=text_width,
                text_layers=text_layers,
                text_heads=text_heads,
                projection_dim=projection_dim,
            )
        vcfg = self.clip.config.vision_config
        width = vcfg.hidden_size
        self.fusion_after = fusion_blocks(fusion_layers, vcfg.num_hidden_layers)
        self.num_entities = num_entities
        self.tokens_per_entity = tokens_per_entity
        self.num_selection = num_entities * tokens_per_entity

        # New parameters (stage 1 trains only these), created in this order (the seeded initialisation).
        self.selection_tokens = nn.Parameter(torch.randn(self.num_selection, width) * width**-0.5)
        self.fusions = nn.ModuleList([GumbelSelectFusion(width, gumbel_tau) for _ in range(2)])
        self.region_norms, self.region_projs = regional_heads(self.clip, num_entities)
        self._val_store: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------ encoders
    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not CLIP's (trained alone in stage 1)."""
        return [p for n, p in self.named_parameters() if not n.startswith("clip.")]

    def encode_image(
        self, pixel_values: torch.Tensor, return_details: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
        """Global ``[B, P]`` and regional ``[B, E, P]`` image features (not normalised)."""
        vm = self.clip.vision_model
        x = vm.embeddings(pixel_values)  # [B, 1 + patches, D], position embeddings added
        b, s = x.shape[0], self.num_selection
        sel = self.selection_tokens.unsqueeze(0).expand(b, -1, -1).to(x.dtype)
        x = vm.pre_layrnorm(torch.cat([x[:, :1], sel, x[:, 1:]], dim=1))
        choices, lengths = [], []
        for i, layer in enumerate(vm.encoder.layers):
            lengths.append(x.shape[1])
            x = layer(x, None)
            if i in self.fusion_after:
                j = self.fusion_after.index(i)
                tokens, choice = self.fusions[j](x[:, 1 : 1 + s], x[:, 1 + s :])
                choices.append(choice)
                # After the second fusion keep CLS + all s selection tokens (1 + s, not s: no off-by-one).
                x = torch.cat([x[:, :1], tokens] + ([x[:, 1 + s :]] if j == 0 else []), dim=1)
        glob = self.clip.visual_projection(vm.post_layernorm(x[:, 0]))
        ent = x[:, 1 : 1 + s].reshape(b, self.num_entities, self.tokens_per_entity, -1).mean(dim=2)
        regional = torch.stack(
            [
                proj(norm(ent[:, k]))
                for k, (norm, proj) in enumerate(zip(self.region_norms, self.region_projs, strict=True))
            ],
            dim=1,
        )
        if return_details:
            return glob, regional, {"choices": choices, "lengths": lengths, "hidden": x}
        return glob, regional

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """CLIP text features ``[N, P]`` (EOS pooling + CLIP's text projection), not normalised."""
        # Drop all-padding columns (right padding, causal attention, EOS pooling: same result, less work).
        length = max(1, int(attention_mask.sum(dim=1).max()))
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def embed(self, batch: ImageTextBatch) -> torch.Tensor:
        """L2-normalised global image embeddings, one row per image of the batch."""
        glob, _ = self.encode_image(batch.pixel_values)
        return F.normalize(glob, dim=-1)

    def predict_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        return self.embed(batch)

    # ------------------------------------------------------------------ loss
    def _logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def compute_loss(self, batch: ImageTextBatch) -> dict[str, torch.Tensor]:
        """Global, regional and total loss of one batch, plus the normalised global image features."""
        glob, regional = self.encode_image(batch.pixel_values)
        glob, regional = F.normalize(glob, dim=-1), F.normalize(regional, dim=-1)
        text = F.normalize(self.encode_text(batch.input_ids, batch.attention_mask), dim=-1)
        scale = self._logit_scale()
        loss_global = clip_loss(scale * glob @ text.t(), same_text(batch.input_ids))

        valid = batch.entity_valid.bool()
        losses = []
        if valid.any():
            ent_text = torch.zeros_like(regional)
            ent_text[valid] = F.normalize(
                self.encode_text(batch.entity_ids[valid], batch.entity_mask[valid]), dim=-1
            ).to(ent_text.dtype)
            for k in range(self.num_entities):
                rows = valid[:, k]
                if rows.sum() < 2:  # a contrastive loss needs a negative
                    continue
                logits = scale * regional[rows, k] @ ent_text[rows, k].t()
                losses.append(clip_loss(logits, same_text(batch.entity_ids[rows, k])))
        loss_regional = torch.stack(losses).mean() if losses else loss_global.new_zeros(())
        w = self.hparams.regional_weight
        return {
            "loss": (1 - w) * loss_global + w * loss_regional,
            "loss_global": loss_global,
            "loss_regional": loss_regional,
            "image": glob,
        }

    # ------------------------------------------------------------------ Lightning hooks
    def _stage(self) -> int:
        return 1 if self.current_epoch < self.hparams.stage1_epochs else 2

    def on_train_epoch_start(self) -> None:
        stage = self._stage()
        self.log("train/stage", float(stage), on_step=False, on_epoch=True, batch_size=1)  # once an epoch
        for name, p in self.named_parameters():
            if name.startswith("clip."):
                p.requires_grad_(stage == 2)

    def training_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        out = self.compute_loss(batch)
        n = len(batch)
        log_train_loss(self, out["loss"], n, prog_bar=True)
        self.log("train/loss_global", out["loss_global"], on_step=False, on_epoch=True, batch_size=n)
        self.log("train/loss_regional", out["loss_regional"], on_step=False, on_epoch=True, batch_size=n)
        return out["loss"]

    def _eval_step(self, batch: ImageTextBatch, prefix: str) -> None:
        out = self.compute_loss(batch)
        text = F.normalize(self.encode_text(batch.caption_ids, batch.caption_mask), dim=-1)
        self._val_store.append(
            (
                batch.image_index.cpu(),
                out["image"].float().cpu(),
                text.float().cpu(),
                batch.caption_owner.cpu(),
            )
        )
        n = len(batch)
        for key in ("loss", "loss_global", "loss_regional"):
            self.log(f"{prefix}/{key}", out[key], on_step=False, on_epoch=True, batch_size=n, sync_dist=True)

    def _eval_epoch_end(self, prefix: str) -> None:
        store, self._val_store = self._val_store, []
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered: list[object] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, store)
            store = [item for part in gathered for item in part]  # type: ignore[union-attr]
        if not store:
            return
        # A distributed sampler may repeat images: keep each image once.
        seen: set[int] = set()
        images, texts, owners = [], [], []
        for index, img, txt, owner in store:
            for b in range(len(index)):
                if int(index[b]) in seen:
                    continue
                seen.add(int(index[b]))
                images.append(img[b])
                texts.append(txt[owner == b])
                owners.append(torch.full((int((owner == b).sum()),), len(images) - 1, dtype=torch.long))
        sim = torch.stack(images) @ torch.cat(texts).t()
        for name, value in retrieval_recall(sim, torch.cat(owners)).items():
            self.log(f"{prefix}/{name}", value, on_step=False, on_epoch=True, rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._val_store = []

    def validation_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._val_store = []

    def test_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> dict[str, object]:
        """AdamW, new parameters at ``lr_stage1`` in stage 1; all parameters at ``lr_stage2`` in stage 2.

        One LambdaLR with a multiplier per group: each stage has its own linear warm-up
        (``warmup_fraction`` of the stage's steps) and cosine decay to zero. CLIP's parameters get zero
        learning rate (and no gradient) in stage 1.
        """
        hp = self.hparams
        new = self.new_parameters()
        new_ids = {id(p) for p in new}
        backbone = [p for p in self.parameters() if id(p) not in new_ids]

        def decay_split(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
            # No weight decay on norms, biases, embeddings-as-vectors and the temperature.
            return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]

        new_d, new_nd = decay_split(new)
        bb_d, bb_nd = decay_split(backbone)
        groups = [
            {"params": new_d, "lr": hp.lr_stage1, "weight_decay": hp.weight_decay},
            {"params": new_nd, "lr": hp.lr_stage1, "weight_decay": 0.0},
            {"params": bb_d, "lr": hp.lr_stage2, "weight_decay": hp.weight_decay},
            {"params": bb_nd, "lr": hp.lr_stage2, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)

        total = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        stage1_end = min(total, round(total * min(hp.stage1_epochs, max_epochs) / max_epochs))

        def warm_cosine(step: int, start: int, end: int) -> float:
            length = max(1, end - start)
            warm = max(1, round(hp.warmup_fraction * length)) if hp.warmup_fraction > 0 else 0
            t = step - start
            if t < warm:
                return (t + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, length - warm))))

        def new_lambda(step: int) -> float:
            if step < stage1_end:
                return warm_cosine(step, 0, stage1_end)
            return hp.lr_stage2 / hp.lr_stage1 * warm_cosine(step, stage1_end, total)

        def backbone_lambda(step: int) -> float:
            return 0.0 if step < stage1_end else warm_cosine(step, stage1_end, total)

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [new_lambda, new_lambda, backbone_lambda, backbone_lambda]
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
