"""ESM-2 attention through scaled_dot_product_attention (`use_sdpa`) against fair-esm's own code.

The reference is fair-esm's `ESM2.forward` (its MultiheadAttention with -inf key masking and float32
softmax) on a random-weight tiny ESM-2 carrying the same weights; batches are padded (sequences of
different lengths), so the key padding mask is exercised.
"""

from __future__ import annotations

import io

import esm
import pytest
import torch
from esm.multihead_attention import MultiheadAttention as EsmAttention
from plexlab.datamodules.protein.datamodule import esm_alphabet
from plexlab.modules.protein.encoders import SdpaAttention, SequenceEncoder, _sdpa_attention
from plexlab.modules.protein.mmcl import ProteinMMCL

LAYERS, DIM, HEADS = 2, 32, 4
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GGW", "MKVLAAGIVGXLLW", "ACDEFGHIKLMNPQRSTVWY"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tokens(seqs: list[str]) -> torch.Tensor:
    _, _, tokens = esm_alphabet().get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
    return tokens


def _pair() -> tuple[SequenceEncoder, esm.model.esm2.ESM2]:
    """Our encoder (SDPA on) and a plain fair-esm ESM2 holding the same weights."""
    torch.manual_seed(0)
    enc = SequenceEncoder(None, LAYERS, DIM, HEADS, use_sdpa=True)
    ref = esm.model.esm2.ESM2(
        num_layers=LAYERS,
        embed_dim=DIM,
        attention_heads=HEADS,
        alphabet=esm.data.Alphabet.from_architecture("ESM-1b"),
    )
    missing, unexpected = ref.load_state_dict(enc.esm.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("lm_head", "contact_head")) for k in missing)
    return enc, ref


def test_tokens_are_padded():
    tokens = _tokens(SEQS)
    assert (tokens == esm_alphabet().padding_idx).sum() > 0


def test_sdpa_matches_fair_esm_forward_with_padding():
    enc, ref = _pair()
    enc.eval(), ref.eval()
    tokens = _tokens(SEQS)
    with torch.no_grad():
        expected = ref(tokens, repr_layers=[LAYERS])["representations"][LAYERS]
        got, pooled = enc(tokens)
    assert all(a.forward.__func__ is _sdpa_attention for a in (la.self_attn for la in enc.esm.layers))
    real = tokens != esm_alphabet().padding_idx
    assert torch.allclose(got[real], expected[real], atol=1e-5, rtol=1e-5)
    # pooling: mean over residue tokens only, from fair-esm's representations
    for i, s in enumerate(SEQS):
        assert torch.allclose(pooled[i], expected[i, 1 : len(s) + 1].mean(0), atol=1e-5)


def test_sdpa_gradients_match_esm_attention():
    enc, _ = _pair()
    enc.train()
    tokens = _tokens(SEQS)
    weights = torch.randn(tokens.shape[0], tokens.shape[1], DIM, generator=torch.Generator().manual_seed(1))
    real = (tokens != esm_alphabet().padding_idx).unsqueeze(-1)

    def grads(sdpa: bool) -> dict[str, torch.Tensor]:
        enc.set_sdpa(sdpa)
        enc.zero_grad()
        out, pooled = enc(tokens)
        ((out * weights * real).sum() + pooled.square().sum()).backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    esm_grads, sdpa_grads = grads(False), grads(True)
    assert esm_grads.keys() == sdpa_grads.keys() and len(esm_grads) > 10
    for name in esm_grads:
        assert torch.allclose(sdpa_grads[name], esm_grads[name], atol=1e-5, rtol=1e-4), name


def test_padding_does_not_change_a_sequence():
    enc, _ = _pair()
    enc.eval()
    with torch.no_grad():
        batch, _ = enc(_tokens(SEQS))
        alone, _ = enc(_tokens([SEQS[1]]))
    n = len(SEQS[1]) + 2  # BOS, residues, EOS
    assert torch.allclose(batch[1, :n], alone[0], atol=1e-5)


def test_head_weights_requests_fall_back_to_esm():
    enc, ref = _pair()
    enc.eval(), ref.eval()
    tokens = _tokens(SEQS)
    pad = tokens.eq(esm_alphabet().padding_idx)
    x = torch.randn(tokens.shape[1], tokens.shape[0], DIM, generator=torch.Generator().manual_seed(2))
    kw = dict(key_padding_mask=pad, need_weights=True, need_head_weights=True)
    with torch.no_grad():
        out, weights = enc.esm.layers[0].self_attn(x, x, x, **kw)
        ref_out, ref_weights = ref.layers[0].self_attn(x, x, x, **kw)
        fast, none = enc.esm.layers[0].self_attn(x, x, x, key_padding_mask=pad, need_weights=False)
    assert weights is not None and torch.allclose(weights, ref_weights, atol=1e-6)
    assert torch.allclose(out, ref_out, atol=1e-6)
    assert none is None and torch.allclose(fast, ref_out, atol=1e-5)
    # cross-attention (keys from another sequence) is not what the SDPA path computes: ESM's code runs it
    y = torch.randn_like(x)
    with torch.no_grad():
        cross, _ = enc.esm.layers[0].self_attn(x, y, y, key_padding_mask=pad, need_weights=False)
        ref_cross, _ = ref.layers[0].self_attn(x, y, y, key_padding_mask=pad, need_weights=False)
    assert torch.allclose(cross, ref_cross, atol=1e-6) and not torch.allclose(cross, ref_out, atol=1e-3)


def test_sdpa_encoder_pickles_and_switches_back():
    enc, _ = _pair()
    enc.eval()
    tokens = _tokens(SEQS)
    buf = io.BytesIO()
    torch.save(enc, buf)  # the whole module, not a state dict
    buf.seek(0)
    copy = torch.load(buf, weights_only=False)
    assert all(type(la.self_attn) is SdpaAttention for la in copy.esm.layers)
    with torch.no_grad():
        a, _ = enc(tokens)
        b, _ = copy(tokens)
    assert torch.equal(a, b)
    copy.set_sdpa(False)
    assert all(type(la.self_attn) is EsmAttention for la in copy.esm.layers)
    assert copy.state_dict().keys() == enc.state_dict().keys()


def test_model_flag_switches_the_attention_and_keeps_outputs():
    kw = dict(esm_layers=LAYERS, esm_dim=DIM, esm_heads=HEADS, gnn_dims=[16])
    torch.manual_seed(0)
    on = ProteinMMCL(use_sdpa=True, **kw).eval()
    torch.manual_seed(0)
    off = ProteinMMCL(use_sdpa=False, **kw).eval()
    layers = on.encoder.seq.esm.layers
    assert all(la.self_attn.forward.__func__ is _sdpa_attention for la in layers)
    assert all(la.self_attn.forward.__func__ is not _sdpa_attention for la in off.encoder.seq.esm.layers)
    tokens = _tokens(SEQS)
    with torch.no_grad():
        a, _ = on.encoder.seq(tokens)
        b, _ = off.encoder.seq(tokens)
    real = tokens != esm_alphabet().padding_idx
    assert torch.allclose(a[real], b[real], atol=1e-5)
