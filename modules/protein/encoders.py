"""Protein encoders: ESM-2 (sequence), a GearNet-style relational GNN (structure), and their fusion.

- `EncoderSettings`: the one home of the encoder's arguments. Models keep them as flat keyword arguments
  (their signature is the experiment file's schema: `model.esm_layers`, ...) and build the settings once.
- `SequenceEncoder`: ESM-2 from fair-esm, built from its constructor with random weights (tests, or training
  from scratch), or pretrained: by fair-esm model name (`esm_model`, through the torch hub cache) or from a
  local file (`esm_path`), read with `weights_only=True` (see esm_weights.py); the architecture is then the
  checkpoint's. Per-residue representations are the final layer (after the last layer norm); the
  protein embedding is their mean over residue tokens only (padding, BOS and EOS excluded). The language-model
  and contact heads are dropped (unused). `freeze`: "none", "all", or "partial" (only the last
  `trainable_layers` transformer layers and the final layer norm train). `use_sdpa` runs the attention through
  `torch.nn.functional.scaled_dot_product_attention` (fused kernels on GPU); same outputs as ESM's own code.
- `RelationalGNN`: GearNet's relational graph convolution, h_i' = ReLU(BN(W_self h_i + sum_r W_r sum_{j in
  N_r(i)} h_j)) with one weight per relation, a shortcut where shapes match, `concat_hidden` (GearNet
  concatenates every layer's output: 6 x 512 = 3072 features) and sum or mean readout.
- `ProteinEncoder`: both encoders. Parallel fusion: they run side by side and the fused embedding is the
  concatenation [sequence, structure]. Series fusion: the GNN's node input is [residue one-hot, ESM residue
  representation], and the fused embedding is the GNN's output (it already carries the sequence).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from esm.multihead_attention import MultiheadAttention as EsmAttention
from plexlab.datamodules.errors import DataError
from plexlab.modules.protein import esm_weights
from torch import nn

log = logging.getLogger(__name__)


def _sdpa_attention(
    self,
    query,
    key=None,
    value=None,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    need_head_weights=False,
    **kwargs,
):
    """ESM's MultiheadAttention.forward for self-attention through scaled_dot_product_attention.

    Returns no attention weights (ESM2.forward only uses them for contacts); anything else ESM's code supports
    (head weights, an attention mask, incremental decoding, cross-attention, bias_kv / zero_attn) goes to it.
    """
    if (
        need_head_weights
        or attn_mask is not None
        or kwargs.get("incremental_state") is not None
        or (key is not None and key is not query)
        or self.bias_k is not None
        or self.add_zero_attn
    ):
        return EsmAttention.forward(
            self,
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            need_head_weights=need_head_weights,
            **kwargs,
        )
    tgt_len, bsz, embed_dim = query.shape
    h, d = self.num_heads, self.head_dim
    q = (self.q_proj(query) * self.scaling).contiguous().view(tgt_len, bsz * h, d).transpose(0, 1)
    k = self.k_proj(query).contiguous().view(tgt_len, bsz * h, d).transpose(0, 1)
    v = self.v_proj(query).contiguous().view(tgt_len, bsz * h, d).transpose(0, 1)
    if self.rot_emb is not None:
        q, k = self.rot_emb(q, k)
    q, k, v = (t.reshape(bsz, h, tgt_len, d) for t in (q, k, v))
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask.bool()[:, None, None, :]  # True = attend
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, scale=1.0
    )  # q is already scaled, as in ESM
    out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim)
    return self.out_proj(out), None


class SdpaAttention(EsmAttention):
    """fair-esm's MultiheadAttention whose self-attention runs through scaled_dot_product_attention.

    `SequenceEncoder.set_sdpa` switches a layer by swapping its attention module's class: the parameters and
    state dict are ESM's own, and, unlike a patched bound method, the module still pickles (torch.save of a
    whole model, spawned workers) and copies.
    """

    forward = _sdpa_attention


# ESM-2 650M, the paper's sequence encoder: the shape of a randomly initialised ESM without weights.
ESM2_650M_SHAPE = {"esm_layers": 33, "esm_dim": 1280, "esm_heads": 20}


def build_esm2(esm_model: str | None, esm_path: str | None, shape: dict[str, int | None]):
    """(ESM2, alphabet): pretrained by name or file (a shape given beside them must agree with theirs), or
    random weights of `shape` (None entries: the 650M shape)."""
    import esm

    if esm_model and esm_path:
        raise DataError("model.esm_model", "give the weights once: esm_model (a name) or esm_path")
    if not (esm_model or esm_path):
        full = {k: ESM2_650M_SHAPE[k] if v is None else v for k, v in shape.items()}
        alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
        model = esm.model.esm2.ESM2(
            num_layers=full["esm_layers"],
            embed_dim=full["esm_dim"],
            attention_heads=full["esm_heads"],
            alphabet=alphabet,
        )
        return model, alphabet
    if esm_model:
        model, alphabet = esm_weights.load_by_name(esm_model)
    else:
        model, alphabet = esm_weights.load_local(esm_path)
    found = {"esm_layers": model.num_layers, "esm_dim": model.embed_dim, "esm_heads": model.attention_heads}
    for key, value in shape.items():
        if value is not None and value != found[key]:
            raise DataError(
                f"model.{key}",
                f"is {value} but the weights ({esm_model or esm_path}) have {found[key]}; "
                "leave it null to take the checkpoint's",
            )
    return model, alphabet


class SequenceEncoder(nn.Module):
    """ESM-2: per-residue representations and mean-pooled protein embeddings.

    Args:
        esm_path: a local fair-esm checkpoint (.pt); `<stem>-contact-regression.pt` beside it is optional.
        num_layers: transformer layers; None: the checkpoint's, or 33 without one.
        embed_dim: embedding width; None: the checkpoint's, or 1280 without one.
        attention_heads: attention heads; None: the checkpoint's, or 20 without one.
        freeze: "none", "all", or "partial" (the last `trainable_layers` layers and the final norm train).
        trainable_layers: layers left trainable by `freeze="partial"`.
        use_sdpa: attention through scaled_dot_product_attention (same outputs as ESM's own code).
        esm_model: a fair-esm ESM-2 name (e.g. "esm2_t33_650M_UR50D"), from the torch hub cache.
    """

    def __init__(
        self,
        esm_path: str | None = None,
        num_layers: int | None = None,
        embed_dim: int | None = None,
        attention_heads: int | None = None,
        freeze: Literal["none", "all", "partial"] = "none",
        trainable_layers: int = 0,
        use_sdpa: bool = True,
        esm_model: str | None = None,
    ) -> None:
        super().__init__()
        shape = {"esm_layers": num_layers, "esm_dim": embed_dim, "esm_heads": attention_heads}
        model, alphabet = build_esm2(esm_model, esm_path, shape)
        model.lm_head = None  # unused heads: no dead parameters in the optimizer or in DDP
        model.contact_head = None
        self.esm = model
        self.dim = model.embed_dim
        self.padding_idx, self.cls_idx, self.eos_idx = (
            alphabet.padding_idx,
            alphabet.cls_idx,
            alphabet.eos_idx,
        )
        self.mask_idx = alphabet.mask_idx
        self.set_sdpa(use_sdpa)
        if freeze == "all":
            self.esm.requires_grad_(False)
        elif freeze == "partial":
            self.esm.requires_grad_(False)
            n = len(self.esm.layers)
            for layer in self.esm.layers[max(0, n - trainable_layers) :]:
                layer.requires_grad_(True)
            self.esm.emb_layer_norm_after.requires_grad_(True)
        self.freeze = freeze

    def set_sdpa(self, on: bool) -> None:
        """Route (or stop routing) every layer's attention through scaled_dot_product_attention."""
        for layer in self.esm.layers:
            attn = layer.self_attn
            if type(attn) not in (EsmAttention, SdpaAttention):
                raise TypeError(f"use_sdpa needs fair-esm's MultiheadAttention, not {type(attn).__name__}")
            attn.__class__ = SdpaAttention if on else EsmAttention

    def residue_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """True at residue tokens (not padding, BOS or EOS)."""
        return (tokens != self.padding_idx) & (tokens != self.cls_idx) & (tokens != self.eos_idx)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, T] -> (per-token representations [B, T, D], mean over residues [B, D])."""
        m = self.esm
        padding_mask = tokens.eq(m.padding_idx)
        x = m.embed_scale * m.embed_tokens(tokens)
        if m.token_dropout:  # as ESM2.forward (rescaling for masked tokens; a no-op without <mask>)
            x = x.masked_fill((tokens == m.mask_idx).unsqueeze(-1), 0.0)
            src_lengths = (~padding_mask).sum(-1)
            ratio = (tokens == m.mask_idx).sum(-1).to(x.dtype) / src_lengths
            x = x * (1 - 0.15 * 0.8) / (1 - ratio)[:, None, None]
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)
        pm = padding_mask if padding_mask.any() else None
        for layer in m.layers:
            x, _ = layer(x, self_attn_padding_mask=pm)
        x = m.emb_layer_norm_after(x).transpose(0, 1)
        mask = self.residue_mask(tokens).unsqueeze(-1).type_as(x)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return x, pooled


class RelationalConv(nn.Module):
    """One GearNet layer: per-relation sum aggregation, one weight per relation, self loop, BN, ReLU."""

    def __init__(self, in_dim: int, out_dim: int, num_relations: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.num_relations = num_relations
        self.linear = nn.Linear(num_relations * in_dim, out_dim)
        self.self_loop = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        n, r = x.shape[0], self.num_relations
        src, dst = edge_index
        agg = x.new_zeros(n * r, x.shape[1]).index_add_(0, dst * r + edge_type, x[src])
        out = self.linear(agg.view(n, -1)) + self.self_loop(x)
        return F.relu(self.bn(out))


class RelationalGNN(nn.Module):
    """GearNet-style relational GNN over residue graphs: node features and a per-graph readout."""

    def __init__(
        self,
        in_dim: int,
        hidden_dims: list[int],
        num_relations: int,
        batch_norm: bool = True,
        short_cut: bool = True,
        concat_hidden: bool = True,
        readout: Literal["sum", "mean"] = "sum",
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden_dims]
        self.layers = nn.ModuleList(
            RelationalConv(dims[i], dims[i + 1], num_relations, batch_norm) for i in range(len(hidden_dims))
        )
        self.short_cut, self.concat_hidden, self.readout = short_cut, concat_hidden, readout
        self.dim = sum(hidden_dims) if concat_hidden else hidden_dims[-1]

    def forward(self, x, edge_index, edge_type, batch, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        hiddens = []
        h = x
        for layer in self.layers:
            out = layer(h, edge_index, edge_type)
            if self.short_cut and out.shape == h.shape:
                out = out + h
            hiddens.append(out)
            h = out
        node = torch.cat(hiddens, -1) if self.concat_hidden else h
        graph = node.new_zeros(num_graphs, node.shape[1]).index_add_(0, batch, node)
        if self.readout == "mean":
            count = torch.bincount(batch, minlength=num_graphs).clamp(min=1).unsqueeze(-1)
            graph = graph / count.to(graph.dtype)
        return node, graph


@dataclass(frozen=True)
class EncoderSettings:
    """The protein encoder's arguments, in one place; models take them as flat keyword arguments (the
    experiment file's `model.<name>` keys) and pass them here once (`from_hparams`).

    Args:
        num_residue_types: residue classes of the graph's node features (20 amino acids + unknown).
        num_relations: edge relations of the residue graph (sequential offsets, radius, kNN).
        esm_model: a fair-esm ESM-2 name, e.g. "esm2_t33_650M_UR50D", loaded through the torch hub cache.
        esm_path: a local fair-esm ESM-2 checkpoint file; without either, ESM starts from random weights.
        esm_layers: ESM layers; None: the weights' (33 for a random ESM); set, it must agree with them.
        esm_dim: ESM embedding width; None: the weights' (1280 for a random ESM).
        esm_heads: ESM attention heads; None: the weights' (20 for a random ESM).
        esm_freeze: "none", "all", or "partial" (only the last `esm_trainable_layers` layers train).
        esm_trainable_layers: layers left trainable by esm_freeze "partial".
        use_sdpa: ESM attention through scaled_dot_product_attention (fused kernels on GPU).
        gnn_dims: hidden width of each GNN layer; None: GearNet's 6 x 512.
        gnn_batch_norm: batch norm in each GNN layer.
        gnn_short_cut: residual connection where a layer keeps its width.
        gnn_concat_hidden: the node feature is every layer's output concatenated (GearNet), else the last.
        readout: "sum" or "mean" over a protein's residues.
        fusion: "parallel" (concatenate ESM and GNN embeddings) or "series" (ESM features into the GNN).
    """

    num_residue_types: int = 21
    num_relations: int = 7
    esm_model: str | None = None
    esm_path: Path | str | None = None
    esm_layers: int | None = None
    esm_dim: int | None = None
    esm_heads: int | None = None
    esm_freeze: Literal["none", "all", "partial"] = "none"
    esm_trainable_layers: int = 0
    use_sdpa: bool = True
    gnn_dims: list[int] | None = field(default=None, hash=False)
    gnn_batch_norm: bool = True
    gnn_short_cut: bool = True
    gnn_concat_hidden: bool = True
    readout: Literal["sum", "mean"] = "sum"
    fusion: Literal["parallel", "series"] = "parallel"

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> EncoderSettings:
        """The settings among a model's hyperparameters; every field must be there (no silent default)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in hparams]
        if missing:
            raise TypeError(f"the model's arguments lack the encoder's {', '.join(missing)}")
        return cls(**{n: hparams[n] for n in names})


class ProteinEncoder(nn.Module):
    """Sequence + structure encoders with parallel (concat) or series (ESM features into the GNN) fusion.

    Args:
        settings: the encoder's arguments (see EncoderSettings).
    """

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        super().__init__()
        s = settings or EncoderSettings()
        self.settings = s
        self.seq = SequenceEncoder(
            s.esm_path,
            s.esm_layers,
            s.esm_dim,
            s.esm_heads,
            s.esm_freeze,
            s.esm_trainable_layers,
            s.use_sdpa,
            esm_model=s.esm_model,
        )
        self.num_residue_types = s.num_residue_types
        self.fusion = s.fusion
        in_dim = s.num_residue_types + (self.seq.dim if s.fusion == "series" else 0)
        self.gnn = RelationalGNN(
            in_dim,
            list(s.gnn_dims or [512] * 6),
            s.num_relations,
            s.gnn_batch_norm,
            s.gnn_short_cut,
            s.gnn_concat_hidden,
            s.readout,
        )
        self.seq_dim, self.struct_dim = self.seq.dim, self.gnn.dim
        self.fused_dim = self.gnn.dim if s.fusion == "series" else self.seq.dim + self.gnn.dim

    def forward(self, batch) -> dict[str, torch.Tensor | None]:
        """`batch`: a ProteinBatch. Returns protein embeddings `seq` [B, Ds], `struct` [B, Dg] (None without
        graphs), `fused` [B, D] (None without graphs), and per-residue `tokens` [B, T, Ds]."""
        tok, seq = self.seq(batch.tokens)
        out: dict[str, torch.Tensor | None] = {"seq": seq, "tokens": tok, "struct": None, "fused": None}
        g = batch.graph
        if g is None:
            return out
        x = F.one_hot(g.x, self.num_residue_types).to(tok.dtype)
        if self.fusion == "series":
            x = torch.cat([x, tok[g.batch, g.residue_pos + 1]], -1)  # token of residue p is at p + 1 (BOS)
        _, struct = self.gnn(x, g.edge_index, g.edge_type, g.batch, len(batch.ids))
        out["struct"] = struct
        out["fused"] = struct if self.fusion == "series" else torch.cat([seq, struct], -1)
        return out


def encoder_param_groups(
    model: nn.Module, encoder: ProteinEncoder, lr: float, esm_lr_ratio: float
) -> list[dict]:
    """Optimizer groups: ESM at lr * esm_lr_ratio, everything else at lr; frozen parameters left out."""
    esm_ids = {id(p) for p in encoder.seq.parameters()}
    esm = [p for p in encoder.seq.parameters() if p.requires_grad]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in esm_ids]
    groups = [{"params": rest, "lr": lr}]
    if esm:
        groups.append({"params": esm, "lr": lr * esm_lr_ratio})
    return groups
