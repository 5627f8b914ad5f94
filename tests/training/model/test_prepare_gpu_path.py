"""The batch preparation a GPU run leans on, proven on CPU: placeholder exemplars are neither moved nor encoded,
and a bf16 run's frozen encoders run in bf16 (issue: first GPU run, items 7 and 9)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from training.config import load_train_config
from training.data import Prepare
from training.model import ImageCodec, TextEncoder


class CountingCodec(ImageCodec):
    """A real tiny VAE codec that remembers how many images it encoded."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__("tiny-vae", vae)
        self.encoded = 0

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        self.encoded += img.shape[0]
        return super().encode(img)


def _batch(mask: list[bool]) -> dict:
    g = torch.Generator().manual_seed(0)
    n = len(mask)
    img = lambda: torch.rand(n, 3, 16, 16, generator=g) * 2 - 1  # noqa: E731
    return {"input": img(), "target": img(), "ref_input": img(), "ref_target": img(),
            "ref_mask": torch.tensor(mask), "txt": ["denoise"] * n}


def test_placeholder_exemplars_are_not_encoded_and_real_ones_equal_a_full_encode():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    codec = CountingCodec(vae)
    prep = Prepare(codec, TextEncoder.from_spec("tiny"), torch.device("cpu"), use_exemplars=True)
    batch = _batch([True, False, False, True])
    out = prep(batch)
    assert codec.encoded == 4 + 4 + 2 + 2  # target, input, and the two real exemplar pairs only
    full_in, full_tgt = codec.encode(batch["ref_input"]), codec.encode(batch["ref_target"])
    for got, full in ((out["ref_input"], full_in), (out["ref_target"], full_tgt)):
        assert torch.allclose(got[[0, 3]], full[[0, 3]], atol=1e-6)
        assert torch.count_nonzero(got[[1, 2]]) == 0
    codec.encoded = 0
    none = prep(_batch([False, False]))
    assert codec.encoded == 2 + 2 and torch.count_nonzero(none["ref_input"]) == 0
    codec.encoded = 0
    prep(_batch([True, True]))
    assert codec.encoded == 2 + 2 + 2 + 2


def test_a_bf16_run_puts_its_frozen_encoders_in_bf16_and_an_fp32_run_keeps_fp32():
    from training.run import build_model

    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cfg = load_train_config("tiny_stage1", [f"deepspeed.precision={precision}"])
        built = build_model(cfg, torch.device("cpu"))
        text = built.prepare.text
        assert {p.dtype for p in text.model.parameters()} == {dtype}
        emb, _ = built.prepare.encode_text(["Remove the noise."])
        assert emb.dtype == torch.float32  # features are widened for the network
