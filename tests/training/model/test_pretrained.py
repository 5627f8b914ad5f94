"""Starting from Lumina-Next: a diffusers ``LuminaNextDiT2DModel`` folder (``save_pretrained``) loads into the backbone,
step 0 predicts what that transformer predicts, and every tensor not loaded as it is gets a note."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from diffusers import LuminaNextDiT2DModel

from pipelines import ConfigError
from training.config import load_train_config
from training.model import OmniLV, PretrainedError, backbone_config, backbone_fields, load_backbone, transformer_dir

#: A tiny Lumina-Next: 4 layers (the tiny preset has 2), grouped-query attention, the tiny text encoder's 32-d width.
TINY = dict(sample_size=16, patch_size=2, in_channels=3, hidden_size=32, num_layers=4, num_attention_heads=2,
            num_kv_heads=1, multiple_of=16, norm_eps=1e-5, qk_norm=True, cross_attention_dim=32)


def write_release(root: Path, *, learn_sigma: bool, seed: int = 0, **changes) -> Path:
    """A diffusers release laid out as Alpha-VLLM/Lumina-Next-SFT-diffusers: ``root/transformer/`` by save_pretrained,
    with every weight random (diffusers zero-inits the gates) and a NaN pad_token."""
    torch.manual_seed(seed)
    model = LuminaNextDiT2DModel(**{**TINY, **changes}, learn_sigma=learn_sigma)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
        model.pad_token.fill_(float("nan"))
    model.save_pretrained(root / "transformer", safe_serialization=True)
    (root / "text_encoder").mkdir()  # a release holds more than the transformer; only transformer/ is read
    return root


def _inputs(B: int = 2, H: int = 8, W: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return {"x_t": torch.randn(B, 3, H, W, generator=g), "t": torch.rand(B, generator=g),
            "cond": torch.randn(B, 3, H, W, generator=g), "text": torch.randn(B, 6, 32, generator=g),
            "text_mask": mask}


def _bare(folder: Path, net: OmniLV, x: dict) -> torch.Tensor:
    """The pretrained transformer's own prediction: its forward, its (diffusers) attention processor."""
    bare = LuminaNextDiT2DModel.from_pretrained(str(folder), local_files_only=True)
    H, W = x["x_t"].shape[-2:]
    rope = net.rope(H // 2, W // 2, torch.device("cpu"))
    with torch.no_grad():
        out = bare(x["x_t"], x["t"], x["text"], x["text_mask"], rope, cross_attention_kwargs={}).sample
    return out[:, : x["x_t"].shape[1]]  # learn_sigma: the first C channels, as LuminaText2ImgPipeline reads them


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_step_0_predicts_what_the_pretrained_transformer_predicts(tmp_path, learn_sigma):
    folder = transformer_dir(write_release(tmp_path, learn_sigma=learn_sigma))
    config = backbone_config(folder)
    net = OmniLV.from_preset("tiny", **backbone_fields(config))
    notes = {n.name: n for n in load_backbone(net, folder)}
    assert (net.config.num_layers, net.config.num_kv_heads) == (4, 1)  # the checkpoint's shape, not the preset's
    x = _inputs()
    g = torch.Generator().manual_seed(5)
    refs = {"ref_input": torch.randn(2, 3, 8, 12, generator=g), "ref_target": torch.randn(2, 3, 8, 12, generator=g),
            "ref_mask": torch.tensor([True, True])}
    with torch.no_grad():
        ours = net(**x, **refs)
    torch.testing.assert_close(ours, _bare(folder, net, x), rtol=1e-5, atol=1e-5)
    assert all(torch.count_nonzero(p) == 0 for p in net.adapter.proj.parameters())
    assert all(torch.count_nonzero(p) == 0 for p in net.prompt.out.parameters())
    assert torch.count_nonzero(net.backbone.pad_token) == 0 and "not loaded" in notes["pad_token"].action
    sliced = {k for k, n in notes.items() if n.action.startswith("sliced")}
    assert sliced == ({"norm_out.linear_2.weight", "norm_out.linear_2.bias"} if learn_sigma else set())
    if learn_sigma:
        assert notes["norm_out.linear_2.weight"].checkpoint == (24, 32)  # p·p·2C rows
        assert notes["norm_out.linear_2.weight"].model == (12, 32)
    assert set(notes) == {"pad_token"} | sliced  # everything else loaded as it is


def test_tensors_of_another_shape_are_reported_by_name_and_keep_their_init(tmp_path):
    folder = transformer_dir(write_release(tmp_path, learn_sigma=False))
    net = OmniLV.from_preset("tiny", **{**backbone_fields(backbone_config(folder)), "cross_attention_dim": 48})
    before = net.backbone.time_caption_embed.caption_embedder[1].weight.clone()
    notes = {n.name: n for n in load_backbone(net, folder)}
    caption = "time_caption_embed.caption_embedder.1.weight"
    assert notes[caption].checkpoint == (32, 32) and notes[caption].model == (32, 48)
    assert "kept this model's initialisation" in notes[caption].action
    assert torch.equal(net.backbone.time_caption_embed.caption_embedder[1].weight, before)
    for i in range(4):
        assert f"layers.{i}.attn2.to_k.weight" in notes and f"layers.{i}.norm1_context.weight" in notes


def _config(release: Path, *sets: str):
    return load_train_config("tiny_stage1", [f"model.pretrained={release}", *sets])


def test_build_flow_takes_shape_and_weights_from_the_release_and_logs_what_it_changed(tmp_path, caplog):
    from training.run import build_flow

    release = write_release(tmp_path, learn_sigma=True)
    with caplog.at_level(logging.WARNING):
        flow, codec, text = build_flow(_config(release), torch.device("cpu"))
    assert flow.net.config.num_layers == 4 and flow.net.config.preset == "tiny"
    x = _inputs()
    with torch.no_grad():
        ours = flow.net(**x)
    torch.testing.assert_close(ours, _bare(release / "transformer", flow.net, x), rtol=1e-5, atol=1e-5)
    log = caplog.text
    assert "num_layers: 4 from the checkpoint (preset 'tiny': 2)" in log  # preset fields it replaced
    assert "num_kv_heads: 1 from the checkpoint (preset 'tiny': None)" in log
    assert "norm_out.linear_2.weight" in log and "sliced" in log and "pad_token" in log


def test_a_caption_width_that_does_not_match_the_text_encoder_fails_at_load_time(tmp_path):
    release = write_release(tmp_path, learn_sigma=True, cross_attention_dim=48)
    with pytest.raises(ConfigError) as err:
        _config(release)  # before any worker, any Ray: the config does not validate
    msg = str(err.value)
    assert "caption width cross_attention_dim=48" in msg and "text encoder 'tiny' (32)" in msg and "Gemma-2B" in msg


def test_overrides_that_contradict_the_checkpoint_and_two_starting_points_are_errors(tmp_path):
    release = write_release(tmp_path, learn_sigma=False)
    with pytest.raises(ConfigError, match=r"model.overrides.num_layers=2 contradicts its num_layers=4"):
        _config(release, "model.overrides.num_layers=2")
    with pytest.raises(ConfigError, match="latent channels in_channels=4 does not match codec .pixel. \\(3\\)"):
        write_release(tmp_path / "vae4", learn_sigma=False, in_channels=4)
        _config(tmp_path / "vae4", "codec=pixel")  # in_channels 4 vs the pixel codec's 3
    with pytest.raises(ConfigError, match="both set"):
        _config(release, "stage.init_from=runs/x/export")
    assert _config(release, "model.overrides.adapter_dim=8").model.pretrained == str(release)  # ours: free


def test_a_folder_that_is_not_a_lumina_next_transformer_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no transformer/config.json"):
        _config(tmp_path)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ConfigError, match="describes a AutoencoderKL, not a LuminaNextDiT2DModel"):
        _config(tmp_path)
    release = write_release(tmp_path / "r", learn_sigma=False)
    weights = release / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    net = OmniLV.from_preset("tiny", **backbone_fields(backbone_config(release / "transformer")))
    with pytest.raises(PretrainedError, match="only safetensors are read"):
        load_backbone(net, release / "transformer")


def test_a_placeholder_path_is_checked_by_the_workers_not_at_load_time():
    cfg = load_train_config("stage1_512")  # /models/... is not on this machine: the config still validates
    assert cfg.model.pretrained and cfg.text_layer == -2


def test_an_s3_release_is_fetched_transformer_only(s3_server, tmp_path, monkeypatch):
    import fsspec

    import training.run.assemble as assemble
    from training.run import build_flow

    fetched = []
    copy = assemble.local_copy
    monkeypatch.setattr(assemble, "local_copy", lambda src: fetched.append(src) or copy(src))

    release = write_release(tmp_path / "release", learn_sigma=True)
    (release / "text_encoder" / "model.safetensors").write_bytes(b"never fetched")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"models-{os.getpid()}"
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.put(str(release), f"{bucket}/lumina-next", recursive=True)
    flow, *_ = build_flow(_config(f"s3://{bucket}/lumina-next"), torch.device("cpu"))
    assert fetched == [f"s3://{bucket}/lumina-next/transformer"]  # not the release's text encoder and VAE
    x = _inputs()
    with torch.no_grad():
        ours = flow.net(**x)
    torch.testing.assert_close(ours, _bare(release / "transformer", flow.net, x), rtol=1e-5, atol=1e-5)


def test_a_stand_in_release_for_rehearsals_loads_like_a_real_one(tmp_path):
    from training.model import OmniLVConfig, preset, save_release
    from training.run import build_flow

    fields = OmniLVConfig(**preset("tiny"), num_kv_heads=1).model_dump()
    release = save_release(tmp_path / "standin", fields)
    assert backbone_config(release / "transformer")["learn_sigma"] is True
    flow, *_ = build_flow(_config(release, "model.overrides.num_kv_heads=1"), torch.device("cpu"))
    x = _inputs()
    with torch.no_grad():
        ours = flow.net(**x)
    torch.testing.assert_close(ours, _bare(release / "transformer", flow.net, x), rtol=1e-5, atol=1e-5)
