"""Protein encoders: ESM-2 (sequence), a GearNet-style relational GNN (structure), and their fusion.

- `SequenceEncoder`: ESM-2 from fair-esm, built from its constructor with random weights (tests, or training
  from scratch) or loaded from a local file (`esm_path`, `esm.pretrained.load_model_and_alphabet_local`;
  nothing is downloaded). Per-residue representations are the final layer (after the last layer norm); the
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

import inspect
import logging
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from esm.multihead_attention import MultiheadAttention as EsmAttention
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


class SequenceEncoder(nn.Module):
    """ESM-2: per-residue representations and mean-pooled protein embeddings."""

    def __init__(
        self,
        esm_path: str | None = None,
        num_layers: int = 33,
        embed_dim: int = 1280,
        attention_heads: int = 20,
        freeze: Literal["none", "all", "partial"] = "none",
        trainable_layers: int = 0,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        import esm

        if esm_path:
            model, alphabet = esm.pretrained.load_model_and_alphabet_local(esm_path)
        else:
            alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
            model = esm.model.esm2.ESM2(
                num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads, alphabet=alphabet
            )
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


class ProteinEncoder(nn.Module):
    """Sequence + structure encoders with parallel (concat) or series (ESM features into the GNN) fusion."""

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> ProteinEncoder:
        """Build from a LightningModule's hyperparameters, taking the encoder's own arguments by name."""
        names = inspect.signature(cls.__init__).parameters.keys() - {"self"}
        return cls(**{name: hparams[name] for name in names if name in hparams})

    def __init__(
        self,
        num_residue_types: int = 21,
        num_relations: int = 7,
        esm_path: str | None = None,
        esm_layers: int = 33,
        esm_dim: int = 1280,
        esm_heads: int = 20,
        esm_freeze: Literal["none", "all", "partial"] = "none",
        esm_trainable_layers: int = 0,
        use_sdpa: bool = True,
        gnn_dims: list[int] | None = None,
        gnn_batch_norm: bool = True,
        gnn_short_cut: bool = True,
        gnn_concat_hidden: bool = True,
        readout: Literal["sum", "mean"] = "sum",
        fusion: Literal["parallel", "series"] = "parallel",
    ) -> None:
        super().__init__()
        self.seq = SequenceEncoder(
            esm_path, esm_layers, esm_dim, esm_heads, esm_freeze, esm_trainable_layers, use_sdpa
        )
        self.num_residue_types = num_residue_types
        self.fusion = fusion
        in_dim = num_residue_types + (self.seq.dim if fusion == "series" else 0)
        self.gnn = RelationalGNN(
            in_dim,
            list(gnn_dims or [512] * 6),
            num_relations,
            gnn_batch_norm,
            gnn_short_cut,
            gnn_concat_hidden,
            readout,
        )
        self.seq_dim, self.struct_dim = self.seq.dim, self.gnn.dim
        self.fused_dim = self.gnn.dim if fusion == "series" else self.seq.dim + self.gnn.dim

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
