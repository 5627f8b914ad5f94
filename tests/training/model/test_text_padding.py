"""An instruction's features are the same alone or in a batch, whichever side the tokenizer pads (Gemma's: left)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from training.data import Prepare
from training.model import TextEncoder
from training.model.encoders import EncoderError

WORDS = ["remove", "the", "noise", "from", "this", "image", "please", "sharpen", "photo", "a", "little", "blur"]
TEXTS = ["sharpen", "remove the noise from this image please", "a little blur"]


def _encoder(tmp_path: Path, padding_side: str, layer: int = -1) -> TextEncoder:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab), padding_side=padding_side)
    cfg = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return TextEncoder(BertModel(cfg), tokenizer, "test-bert", layer=layer)


@pytest.mark.parametrize("layer", [-1, -2])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_features_alone_equal_features_in_a_batch(tmp_path, padding_side, layer):
    enc = _encoder(tmp_path, padding_side, layer)
    padded = enc.tokenizer(TEXTS, padding=True)["attention_mask"]
    assert (padded[0][0] == 0) == (padding_side == "left")  # the tokenizer itself does pad on that side
    emb, mask = enc.encode(TEXTS)  # (3, L, 32), (3, L)
    for i, text in enumerate(TEXTS):
        alone, alone_mask = enc.encode([text])
        n = int(mask[i].sum())
        assert n == int(alone_mask.sum()) and bool(mask[i, :n].all())  # real tokens first, at 0..n-1
        torch.testing.assert_close(emb[i, :n], alone[0, :n], rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(emb[i, n:]) == 0


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_prepare_gives_an_instruction_the_same_features_in_any_batch(tmp_path, padding_side):
    enc = _encoder(tmp_path, padding_side)
    cpu = torch.device("cpu")
    batch_emb, batch_mask = Prepare(None, enc, cpu, False).encode_text(TEXTS)
    for i, text in enumerate(TEXTS):
        one_emb, one_mask = Prepare(None, enc, cpu, False).encode_text([text])  # what restore and the cache see
        n = int(one_mask.sum())
        assert bool(batch_mask[i, :n].all()) and not bool(batch_mask[i, n:].any())
        torch.testing.assert_close(batch_emb[i, :n], one_emb[0, :n], rtol=1e-5, atol=1e-5)


def test_max_length_padding_and_the_tiny_encoder_follow_the_same_layout(tmp_path):
    enc = _encoder(tmp_path, "left")
    enc.padding, enc.max_length = "max_length", 12
    emb, mask = enc.encode(TEXTS)
    assert mask.shape == (3, 12) and mask[:, 0].all() and bool(mask[1, :9].all())
    tiny = TextEncoder.from_spec("tiny")
    emb, mask = tiny.encode(TEXTS)
    alone, _ = tiny.encode([TEXTS[0]])
    n = len(TEXTS[0]) + 2  # [CLS] bytes [SEP]
    assert int(mask[0].sum()) == n
    torch.testing.assert_close(emb[0, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


def test_a_text_layer_the_encoder_does_not_have_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match=r"text layer -4: .* has 2 layers, so hidden states -3..2"):
        _encoder(tmp_path, "right", layer=-4)
    assert TextEncoder.from_spec("tiny", layer=-2).encode(["x"])[0].shape == (1, 3, 32)


def test_the_text_cache_stays_under_its_byte_bound_and_gives_the_uncached_features():
    enc = TextEncoder.from_spec("tiny")
    bounded, fresh = Prepare(None, enc, torch.device("cpu"), False), Prepare(None, enc, torch.device("cpu"), False)
    texts = [f"denoise image {i:02d}" for i in range(12)]  # the same length: every entry costs the same bytes
    emb, mask = enc.encode(texts[:1])
    entry = emb[0].nelement() * emb.element_size() + mask[0].nelement() * mask.element_size()
    bounded.TEXT_CACHE_BYTES = 5 * entry
    for i in range(1, len(texts), 3):
        batch = texts[i:i + 3] + texts[:1]  # the first is in every batch: recently used, so kept
        emb, mask = bounded.encode_text(batch)
        ref_emb, ref_mask = fresh.encode_text(batch)
        assert torch.equal(mask, ref_mask) and torch.allclose(emb, ref_emb)
        assert bounded._cached_bytes <= bounded.TEXT_CACHE_BYTES
    assert len(bounded._text_cache) == 5 and len(fresh._text_cache) == len(texts)
    assert texts[0] in bounded._text_cache and texts[-1] in bounded._text_cache
