"""Lumen: the tiny offline LLaVA, which parameters each part trains, overfitting a tiny batch (heat peak on the
square, task head routing, masks from the decoder), the exported folder, and LumenPrepare's RLE masks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from training.data import LumenPrepare
from training.model import LUMEN_TASKS, Lumen, LumenError, build_tiny_llava, export_lumen, load_lumen, predict_image

SIZE = 64
SQUARES = [((12, 16, 32, 36), (1.0, 0.1, 0.1)), ((36, 8, 60, 32), (0.1, 0.2, 1.0))]  # box xyxy, colour
TEXTS = ["Detect every square.", "Find the blue square."]
TASKS = ["detection", "grounding"]


def box_maps(boxes: np.ndarray) -> np.ndarray:
    try:
        from degradations import box_maps as real
    except ImportError:  # the heatmap kernels not landed yet: a Gaussian of the same shape
        real = None
    if real is not None:
        return real((SIZE, SIZE), boxes)
    maps = np.zeros((SIZE, SIZE, 3), np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for x0, y0, x1, y1 in boxes:
        g = np.exp(-((xx - int((x0 + x1) / 2)) ** 2 + (yy - int((y0 + y1) / 2)) ** 2) / (2 * 2.0 ** 2))
        on = (g >= 0.5) & (g >= maps[..., 0])
        maps[..., 1][on], maps[..., 2][on] = (y1 - y0) / SIZE, (x1 - x0) / SIZE
        maps[..., 0] = np.maximum(maps[..., 0], g)
    return maps


def rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco

    enc = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in enc["size"]], "counts": enc["counts"].decode("ascii")}


def square_mask(box) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def record(instances, steps=()) -> str:
    return json.dumps({"steps": list(steps), "annotations": {
        "version": 1, "size": [SIZE, SIZE],
        "instances": [{"label": label, "box": list(map(float, box)), "mask": rle(square_mask(box))}
                      for label, box in instances]}})


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny", seed=0, vocab_texts=TEXTS)


@pytest.fixture(scope="module")
def batch():
    """A Collate batch: two images with one coloured square each, their target maps, instructions, records."""
    images, maps, records = [], [], []
    for i, (box, colour) in enumerate(SQUARES):
        img = np.full((SIZE, SIZE, 3), 0.5, np.float32)
        img[square_mask(box)] = colour
        images.append(img)
        maps.append(box_maps(np.array([box], np.float32)))
        step = {"name": TASKS[i], "params": {"category": "square"} if i == 0 else {"instance": 0}}
        records.append(record([("square", box)], [step]))
    to = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    return {"input": to(images), "target": to(maps), "txt": list(TEXTS), "task": list(TASKS), "json": records,
            "images": images}


def make(llava_dir, **config) -> Lumen:
    torch.manual_seed(0)
    return Lumen.from_folder(llava_dir, **config)


def fit(model: Lumen, inputs: dict, steps: int, lr: float = 2e-3) -> list[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(inputs)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the runs' DeepSpeed gradient_clipping
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained(llava_dir, batch):
    """Stage 1 then stage 2 on the fixed batch; (model, stage-1 losses, stage-2 losses)."""
    model = make(llava_dir)
    first = fit(model, LumenPrepare(model, "cpu")(batch), 60)
    stage2 = make(llava_dir, part="decoders")
    stage2.load_state_dict(model.state_dict())
    second = fit(stage2, LumenPrepare(stage2, "cpu")(batch), 60, lr=5e-3)
    return stage2.eval(), first, second


def test_tiny_llava_loads_offline_and_tokenizes_anything(llava_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    lmm = LlavaForConditionalGeneration.from_pretrained(llava_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(llava_dir, local_files_only=True)
    assert lmm.config.text_config.hidden_size == 64 and lmm.config.text_config.num_hidden_layers == 2
    assert tok.convert_tokens_to_ids("<image>") == lmm.config.image_token_index
    text = "Segment the naïve ☃ on the left."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok("Detect every square.", add_special_tokens=False)["input_ids"]) < len("Detect every square.")
    again = build_tiny_llava(tmp_path / "again", seed=0, vocab_texts=TEXTS)
    other = build_tiny_llava(tmp_path / "other", seed=1, vocab_texts=TEXTS)
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (llava_dir, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_model_adds_its_tokens_and_the_prompt_holds_each_once(llava_dir):
    model = make(llava_dir)
    vocab = model.tokenizer.get_vocab()
    assert all(t in vocab for t in ("[TASK]", "[LOC]", "[M]", "[H]", "[W]"))
    assert model.lmm.get_input_embeddings().num_embeddings == len(model.tokenizer)
    ids = model.prompt.ids("Find the blue square.")
    assert ids.count(model.prompt.image_id) == (SIZE // 8) ** 2
    assert [ids.count(i) for i in model.prompt.special_ids] == [1] * 5
    rows = model.lmm.get_input_embeddings().weight[model.prompt.special_ids]
    assert torch.isfinite(rows).all() and torch.cdist(rows, rows).fill_diagonal_(1).min() > 0  # distinct


def grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


@pytest.mark.parametrize("train_lmm", [False, True])
def test_stage_1_trains_the_aligner_and_heads_only(llava_dir, batch, train_lmm):
    model = make(llava_dir, train_lmm=train_lmm).train()
    loss = model(LumenPrepare(model, "cpu")(batch), generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(grads(model.aligner)) and any(grads(model.task_head))
    assert all(p.grad is None for p in model.mask_decoder.parameters())
    assert any(grads(model.lmm)) == train_lmm
    assert model.lmm.training == train_lmm  # a frozen LMM keeps eval mode


def test_stage_2_trains_the_mask_decoder_only(llava_dir, batch):
    model = make(llava_dir, part="decoders").train()
    inputs = LumenPrepare(model, "cpu")(batch)
    assert inputs["instances"].sum() == 2
    loss = model(inputs)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(grads(model.mask_decoder))
    others = [*model.lmm.parameters(), *model.aligner.parameters(), *model.task_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in others)
    none = {**inputs, "instances": torch.zeros_like(inputs["instances"])}  # no masks: a zero loss, zero grads
    model.zero_grad()
    empty = model(none)
    empty.backward()
    assert empty.item() == 0.0 and all(p.grad is not None for p in model.mask_decoder.parameters())


def test_forward_with_bf16_weights(llava_dir, batch):
    model = make(llava_dir, part="decoders")
    inputs = LumenPrepare(model, "cpu")(batch)  # float32, as a batch comes
    loss = model.to(torch.bfloat16).train()(inputs)
    loss.backward()
    assert torch.isfinite(loss) and all(grads(model.mask_decoder))


def test_overfit_puts_the_peak_on_the_square_and_routes_the_task(trained, batch):
    model, first, second = trained
    assert np.mean(first[-5:]) < 0.4 * np.mean(first[:3]), first
    assert np.mean(second[-5:]) < 0.6 * np.mean(second[:3]), second
    out = model.predict(batch["input"], TEXTS)
    assert out["maps"].shape == (2, 3, SIZE, SIZE) and out["maps"].min() >= 0 and out["maps"].max() <= 1
    assert [LUMEN_TASKS[i] for i in out["task"]] == TASKS
    for heat, (box, _) in zip(out["maps"][:, 0], SQUARES, strict=True):
        y, x = np.unravel_index(int(heat.argmax()), heat.shape)
        assert abs(x + 0.5 - (box[0] + box[2]) / 2) <= 4 and abs(y + 0.5 - (box[1] + box[3]) / 2) <= 4


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_predict_image_routes_to_each_decoder(trained, batch):
    model, _, _ = trained
    img, (box, _) = batch["images"][0], SQUARES[0]
    det = predict_image(model, img, TEXTS[0])
    assert det["task"] == "detection" and len(det["boxes"]) >= 1 and iou(det["boxes"][0], box) > 0.5
    assert det["masks"].shape == (0, SIZE, SIZE) and det["points"].shape == (0, 2)
    y, x = np.unravel_index(np.argmax(det["heat"]), det["heat"].shape)  # the heat `lumen predict` draws
    assert det["heat"].shape == (SIZE, SIZE) and box[0] <= x < box[2] and box[1] <= y < box[3]
    seg = predict_image(model, img, TEXTS[0], task="instance_segmentation")
    assert seg["masks"].shape == (len(seg["boxes"]), SIZE, SIZE)
    truth = square_mask(box)
    assert (seg["masks"][0] & truth).sum() / (seg["masks"][0] | truth).sum() > 0.5
    pose = predict_image(model, img, TEXTS[0], task="pose")
    assert len(pose["points"]) >= 1 and len(pose["boxes"]) == 0
    assert np.abs(pose["points"][0] - [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]).max() <= 4
    ground = predict_image(model, batch["images"][1], TEXTS[1])
    assert ground["task"] == "grounding" and len(ground["boxes"]) == 1
    masks = model.segment(batch["input"][:1], TEXTS[:1], model.predict(batch["input"][:1], TEXTS[:1])["maps"],
                          [np.array([[22.0, 26.0]])])
    assert masks[0].shape == (1, SIZE, SIZE) and masks[0].dtype == torch.bool
    with pytest.raises(LumenError, match="task 'segmentation'"):
        predict_image(model, img, TEXTS[0], task="segmentation")


def test_export_and_load_give_identical_outputs(trained, batch, tmp_path):
    model, _, _ = trained
    out = export_lumen(model, tmp_path / "export", {"stage": "test"})
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"lumen.json", "lumen.safetensors", "llava/config.json", "llava/model.safetensors"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    meta = json.loads((out / "lumen.json").read_text())
    assert meta["meta"] == {"stage": "test"} and meta["config"]["part"] == "decoders"
    loaded = load_lumen(out)
    export_lumen(copy.deepcopy(loaded).float(), tmp_path / "copy", {})  # as the run's final export does it
    a, b = model.predict(batch["input"], TEXTS), loaded.predict(batch["input"], TEXTS)
    assert torch.equal(a["maps"], b["maps"]) and torch.equal(a["task"], b["task"])
    centres = [np.array([[22.0, 26.0]]), np.array([[48.0, 20.0]])]
    for x, y in zip(model.segment(batch["input"], TEXTS, a["maps"], centres),
                    loaded.segment(batch["input"], TEXTS, b["maps"], centres), strict=True):
        assert torch.equal(x, y)
    export_lumen(loaded, out, {"stage": "again"})  # over an earlier export: swapped in whole
    assert json.loads((out / "lumen.json").read_text())["meta"] == {"stage": "again"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LumenError, match="not a Lumen export"):
        export_lumen(model, tmp_path / "other", {})
    (out / "lumen.safetensors").write_bytes(b"broken")
    with pytest.raises(LumenError, match="lumen.safetensors"):
        load_lumen(out)


def test_lumen_prepare_decodes_rle_masks_of_the_asked_instances(llava_dir, batch):
    model = make(llava_dir, part="decoders")
    prep = LumenPrepare(model, "cpu")
    a, b = ((5, 5, 20, 30), (30, 30, 60, 50))
    two = [("circle", a), ("square", b)]
    heat = np.stack([box_maps(np.array([b], np.float32))] * 4)[..., 0]  # the heat marks the square
    target = torch.from_numpy(np.stack([heat] * 3, axis=1)) * 2 - 1
    cases = {
        "detection": record(two, [{"name": "detection", "params": {"category": "square"}}]),
        "referring_segmentation": record(two, [{"name": "referring_segmentation", "params": {"instance": 0}}]),
        "instance_segmentation": record(two),  # no params: the instances on the heat's peaks
        "pose": record(two, [{"name": "pose", "params": {"category": "square", "keypoint": "top"}}]),
    }
    inputs = prep({"input": torch.zeros(4, 3, SIZE, SIZE), "target": target, "txt": ["Detect every square."] * 4,
                   "task": list(cases), "json": list(cases.values())})
    assert inputs["masks"].shape == (4, 1, SIZE, SIZE) and inputs["instances"].tolist() == [[True], [True], [True],
                                                                                          [False]]
    for i, box in enumerate([b, a, b]):
        assert torch.equal(inputs["masks"][i, 0], torch.from_numpy(square_mask(box)))
        assert inputs["boxes"][i, 0].tolist() == list(map(float, box))
    assert inputs["task"].tolist() == [LUMEN_TASKS.index(t) for t in cases]
    assert inputs["input_ids"].shape[0] == 4 and inputs["attention_mask"].all()
    assert prep.ids("Detect every square.") is prep.ids("Detect every square.")  # tokenized once
    by_tokenizer = LumenPrepare(model.tokenizer, "cpu", image_tokens=(SIZE // 8) ** 2)(batch)
    assert torch.equal(by_tokenizer["input_ids"], LumenPrepare(model, "cpu")(batch)["input_ids"])
    assert "masks" not in LumenPrepare(make(llava_dir), "cpu")(batch)  # stage 1 does not decode masks
    with pytest.raises(LumenError, match="no json records"):
        prep({k: v for k, v in batch.items() if k != "json"})
    from transformers import AutoTokenizer

    with pytest.raises(LumenError, match=r"\[TASK\]"):
        LumenPrepare(AutoTokenizer.from_pretrained(llava_dir), "cpu", image_tokens=64)


def test_focal_loss_and_the_stride_4_maps():
    from degradations import find_peaks
    from training.model.lumen_parts import cells, focal_loss, upsample4

    target = torch.zeros(1, 8, 8)
    target[0, 3, 5] = 1.0
    good, bad = torch.full((1, 8, 8), -6.0), torch.full((1, 8, 8), -6.0)
    good[0, 3, 5], bad[0, 5, 3] = 6.0, 6.0
    assert focal_loss(good, target) < 0.01 < focal_loss(bad, target)
    grid = torch.rand(2, 3, 8, 8)
    assert torch.equal(cells(upsample4(grid)), grid)
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 3, 5] = 1.0
    ys, xs, _ = find_peaks(upsample4(heat)[0, 0].numpy())
    assert (ys.tolist(), xs.tolist()) == ([14], [22])  # one peak, on pixel 4i+2


def test_an_s3_export_loads_like_the_local_one(trained, batch, tmp_path, s3_server):
    from omnilv.errors import OmniLVError
    from pipelines import Store, s3_options, upload_dir

    model, _, _ = trained
    Store("s3://lumen-exports/run", s3_options()).ensure_bucket()
    out = export_lumen(model, tmp_path / "export", {"stage": "s3"})
    upload_dir(out, "s3://lumen-exports/run/export")
    remote = load_lumen("s3://lumen-exports/run/export")
    assert torch.equal(remote.predict(batch["input"], TEXTS)["maps"], model.predict(batch["input"], TEXTS)["maps"])
    with pytest.raises(OmniLVError, match="nothing there"):
        load_lumen("s3://lumen-exports/run/nothing")
