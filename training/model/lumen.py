"""Lumen (NeurIPS 2024): a LLaVA-style multimodal model + a V-L dense aligner -> one instruction-aligned heatmap
(stage 1), then light task decoders (stage 2). docs/lumen.md is the contract; the parts are in ``lumen_parts.py``.

The instruction and the image go through ``LlavaForConditionalGeneration`` (a local folder, never downloaded), the
sequence extended with ``[TASK] [LOC] [M] [H] [W]``, teacher-forced: the last layer's states at those positions are
read. The aligner matches [LOC] (or [M], for referring segmentation's mask heat) with stride-4 image features ->
heat logits, [H]/[W] -> box height/width maps; a task head on [TASK] routes the prediction; the mask decoder turns
(features, heat, a Gaussian prompt at an instance) into that instance's mask.

Inputs of :meth:`Lumen.forward` (what :class:`training.data.LumenPrepare` makes):

- ``image`` (B, 3, H, W) in [-1, 1], H and W multiples of 4; ``input_ids``, ``attention_mask`` (B, L) from
  :class:`LumenPrompt`; ``maps`` (B, 3, H, W) target maps in [0, 1]; ``task`` (B,) long, index into
  :data:`TASKS`, -1 when unknown;
- ``part="decoders"`` also: ``masks`` (B, N, H, W), ``boxes`` (B, N, 4) xyxy pixels, ``instances`` (B, N) bool.

Losses. ``aligner``: CenterNet's penalty-reduced focal loss on the heat (alpha 2, beta 4; the target max-pooled to
stride 4) + L1 on the sigmoid size channels where the target's are written (``box_maps`` writes them exactly where
the heat is >= 0.5; a mask heat or a point heat would otherwise teach zero sizes) + cross-entropy on the task.
``decoders``: BCE + Dice of each instance's mask (logits upsampled bilinearly to H×W), prompted at its box.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from degradations import decode_boxes, decode_mask, decode_points
from training.model.export import describe_file, read_record
from training.model.lumen_parts import (
    MASK_HEAT,
    SPECIAL_TOKENS,
    STRIDE,
    TASKS,
    DenseAligner,
    LumenError,
    LumenPrompt,
    MaskDecoder,
    box_prompts,
    cells,
    dice_loss,
    focal_loss,
    upsample4,
)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # LLaVA's CLIP
LUMEN_FORMAT, META, WEIGHTS, LLAVA = 1, "lumen.json", "lumen.safetensors", "llava"


def _grow_embeddings(lmm: nn.Module, rows: int) -> None:
    """Resize the LMM's token embeddings to ``rows``; each new row is the old rows' mean plus their per-dimension
    spread times a fixed normal draw: in distribution, distinct per token, the same on every rank and run."""
    n = lmm.get_input_embeddings().num_embeddings
    lmm.resize_token_embeddings(rows, mean_resizing=False)
    tables = (lmm.get_input_embeddings(), lmm.get_output_embeddings())
    weights = {id(m.weight): m.weight for m in tables if m is not None}  # once each, tied or not
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for w in weights.values():
            old = w[:n].float()
            w[n:] = (old.mean(0) + old.std(0) * torch.randn(rows - n, w.shape[1])).to(w.dtype)


class Lumen(nn.Module):
    """LLaVA + special tokens + dense aligner + size/task heads + mask decoder; ``forward(inputs) -> loss``."""

    def __init__(self, lmm: nn.Module, tokenizer: Any, *, aligner_dim: int = 64, aligner_layers: int = 2,
                 aligner_heads: int = 4, decoder_dim: int = 32, part: Literal["aligner", "decoders"] = "aligner",
                 train_lmm: bool = False, image_size: int | None = None, size_weight: float = 1.0,
                 task_weight: float = 1.0) -> None:
        super().__init__()
        if part not in ("aligner", "decoders"):
            raise LumenError(f"part must be 'aligner' (stage 1) or 'decoders' (stage 2), got {part!r}")
        self.config = dict(aligner_dim=aligner_dim, aligner_layers=aligner_layers, aligner_heads=aligner_heads,
                           decoder_dim=decoder_dim, part=part, train_lmm=train_lmm, image_size=image_size,
                           size_weight=size_weight, task_weight=task_weight)
        self.lmm, self.tokenizer, self.part = lmm, tokenizer, part
        self.size_weight, self.task_weight = size_weight, task_weight
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        if len(tokenizer) > lmm.get_input_embeddings().num_embeddings:
            _grow_embeddings(lmm, len(tokenizer))
        cfg = lmm.config
        vc = cfg.vision_config
        self.image_size = int(image_size or vc.image_size)
        if self.image_size % vc.patch_size:
            raise LumenError(f"image_size {self.image_size} is not a multiple of the vision patch {vc.patch_size}")
        layers = cfg.vision_feature_layer
        self.feature_layers = [layers] if isinstance(layers, int) else list(layers)
        grid = (self.image_size // vc.patch_size) ** 2
        self.prompt = LumenPrompt(tokenizer, grid + (cfg.vision_feature_select_strategy == "full"))
        self.aligner = DenseAligner(cfg.text_config.hidden_size, vc.hidden_size * len(self.feature_layers),
                                    aligner_dim, aligner_layers, aligner_heads)
        d = cfg.text_config.hidden_size
        self.task_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, aligner_dim), nn.GELU(),
                                       nn.Linear(aligner_dim, len(TASKS)))
        self.mask_decoder = MaskDecoder(aligner_dim, decoder_dim)
        stage1 = part == "aligner"
        self.lmm.requires_grad_(stage1 and train_lmm)
        for module in (self.aligner, self.task_head):
            module.requires_grad_(stage1)
        self.mask_decoder.requires_grad_(not stage1)
        self.train()

    @classmethod
    def from_folder(cls, llava_dir: str | Path, *, aligner_dim: int = 64, aligner_layers: int = 2,
                    part: Literal["aligner", "decoders"] = "aligner", train_lmm: bool = False,
                    image_size: int | None = None, **config: Any) -> Lumen:
        """A LLaVA folder (``save_pretrained`` layout, safetensors) + its tokenizer -> a Lumen; the keywords are the
        constructor's. Loaded in float32, fully in memory (the folder may go away afterwards)."""
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        folder = Path(llava_dir)
        if not (folder / "config.json").is_file():
            raise LumenError(f"{folder}: not a LLaVA folder (no config.json); save one with save_pretrained or "
                             "use build_tiny_llava")
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load would interleave with ours
        try:
            lmm = LlavaForConditionalGeneration.from_pretrained(str(folder), local_files_only=True,
                                                                use_safetensors=True, dtype=torch.float32)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        with torch.no_grad():  # own storage, not the file's mapping
            for p in lmm.parameters():
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(lmm, tokenizer, aligner_dim=aligner_dim, aligner_layers=aligner_layers, part=part,
                   train_lmm=train_lmm, image_size=image_size, **config)

    def train(self, mode: bool = True) -> Lumen:
        """Frozen parts stay in eval mode (no dropout) whatever the caller asks."""
        super().train(mode)
        for module in (self.lmm, self.aligner, self.task_head, self.mask_decoder):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    # -- the shared pass -------------------------------------------------------------------------------------
    def _lmm_pass(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features (B, g·g, Dv) of the vision tower and the LMM's states (B, 5, D) at the special tokens."""
        model, cfg = self.lmm.model, self.lmm.config
        tower = model.vision_tower
        pix = F.interpolate((image + 1) / 2, size=(self.image_size,) * 2, mode="bilinear", antialias=True,
                            align_corners=False)
        mean, std = (torch.tensor(v, device=pix.device, dtype=pix.dtype).view(1, 3, 1, 1) for v in (CLIP_MEAN,
                                                                                                     CLIP_STD))
        pix = ((pix - mean) / std).to(next(tower.parameters()).dtype)  # under bf16 the weights are cast, not the batch
        vis = tower(pix, output_hidden_states=True,
                    interpolate_pos_encoding=self.image_size != cfg.vision_config.image_size)
        feats = torch.cat([vis.hidden_states[i] for i in self.feature_layers], dim=-1)  # (B, 1 + g·g, Dv)
        image_tokens = model.multi_modal_projector(feats if cfg.vision_feature_select_strategy == "full"
                                                   else feats[:, 1:])  # (B, n, D)
        slots = ids == self.prompt.image_id  # (B, L)
        if int(slots.sum()) != image_tokens.shape[0] * image_tokens.shape[1]:
            raise LumenError(f"input_ids hold {int(slots.sum())} image tokens, the image gives "
                             f"{image_tokens.shape[0]}x{image_tokens.shape[1]}: make them with this model's prompt")
        emb = self.lmm.get_input_embeddings()(ids)  # (B, L, D)
        emb = emb.masked_scatter(slots[..., None].expand_as(emb), image_tokens.to(emb.dtype))
        hidden = model.language_model(inputs_embeds=emb, attention_mask=mask.long()).last_hidden_state
        special = torch.tensor(self.prompt.special_ids, device=ids.device)
        # The last occurrence: the appended tokens come after anything an instruction itself may spell.
        pos = ids.shape[1] - 1 - (ids.flip(1)[:, None, :] == special[None, :, None]).int().argmax(dim=2)  # (B, 5)
        states = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, 5, D)
        return feats[:, 1:], states

    def run(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, task: torch.Tensor | None = None
            ) -> dict[str, torch.Tensor]:
        """Map logits (B, 3, h, w), pixel features (B, A, h, w), task logits (B, T) and the task routed (B,):
        ``task`` where given (>= 0), else the task head's choice."""
        if image.shape[-2] % STRIDE or image.shape[-1] % STRIDE:
            raise LumenError(f"image sides {tuple(image.shape[-2:])} must be multiples of {STRIDE}")
        dtype = self.aligner.bias.dtype
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and any(p.requires_grad for p in self.lmm.parameters())):
            patches, states = self._lmm_pass(image, ids, mask)
        patches, states = patches.to(dtype), states.to(dtype)
        with torch.set_grad_enabled(grad and self.part == "aligner"):
            task_logits = self.task_head(states[:, 0])  # (B, T)
            routed = task_logits.argmax(dim=1)
            if task is not None:
                routed = torch.where(task >= 0, task.to(routed.device), routed)
            logits, pixels = self.aligner(image.to(dtype), patches, states[:, 1:], routed == MASK_HEAT)
        return {"logits": logits, "pixels": pixels, "task_logits": task_logits, "task": routed}

    def forward(self, inputs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss of ``part`` (module docstring); ``generator`` is accepted and unused (nothing is random)."""
        task = inputs.get("task")
        out = self.run(inputs["image"], inputs["input_ids"], inputs["attention_mask"], task)
        if self.part == "aligner":
            return self._aligner_loss(out, inputs["maps"], task)
        return self._decoder_loss(out, inputs["masks"], inputs["boxes"], inputs["instances"])

    def _aligner_loss(self, out: dict[str, torch.Tensor], maps: torch.Tensor, task: torch.Tensor | None
                      ) -> torch.Tensor:
        logits = out["logits"].float()
        target = F.max_pool2d(maps.float(), STRIDE)  # (B, 3, h, w): a peak's 1.0 survives
        heat = focal_loss(logits[:, 0], target[:, 0])
        written = (target[:, 1:] > 0).any(dim=1, keepdim=True).float()  # (B, 1, h, w)
        size = ((logits[:, 1:].sigmoid() - target[:, 1:]).abs() * written).sum() / (2 * written.sum()).clamp(min=1)
        task_logits = out["task_logits"].float()
        if task is None or not bool((task >= 0).any()):
            ce = task_logits.sum() * 0.0  # every trainable parameter takes part in every step (ZeRO, DDP)
        else:
            ce = F.cross_entropy(task_logits, task.to(task_logits.device), ignore_index=-1)
        return heat + self.size_weight * size + self.task_weight * ce

    def _decoder_loss(self, out: dict[str, torch.Tensor], masks: torch.Tensor, boxes: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor:
        b, n = valid.bool().nonzero(as_tuple=True)
        if b.numel() == 0:
            return sum(p.sum() for p in self.mask_decoder.parameters()) * 0.0
        logits = self._masks(out["pixels"][b], out["logits"][b, :1].sigmoid(), boxes[b, n].float())  # (M, h, w)
        full = F.interpolate(logits[:, None].float(), size=masks.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]  # (M, H, W)
        target = masks[b, n].float()
        return F.binary_cross_entropy_with_logits(full, target) + dice_loss(full, target)

    def _masks(self, pixels: torch.Tensor, heat: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Mask logits (M, h, w) at stride 4 of M instances, each prompted at its box (M, 4) xyxy pixels."""
        prompts = box_prompts(boxes.float(), *pixels.shape[-2:]).to(pixels.dtype)  # pixel coordinates in fp32
        return self.mask_decoder(pixels.detach(), heat.detach().to(pixels.dtype), prompts)

    # -- inference -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, images: torch.Tensor, instructions: Sequence[str], tasks: Sequence[str | None] | None = None
              ) -> dict[str, torch.Tensor]:
        """``run`` on images (B, 3, H, W) in [-1, 1] of any size (padded to a multiple of 4 by repeating the edge),
        plus ``maps`` (B, 3, H, W) in [0, 1]; ``tasks`` overrides the task head per image (None: its choice)."""
        dev = self.aligner.bias.device
        H, W = images.shape[-2:]
        padded = F.pad(images.to(dev), (0, -W % STRIDE, 0, -H % STRIDE), mode="replicate")
        ids, mask = self.prompt.batch([self.prompt.ids(t) for t in instructions])
        task = None if tasks is None else torch.tensor([TASKS.index(t) if t else -1 for t in tasks], device=dev)
        out = self.run(padded, ids.to(dev), mask.to(dev), task)
        out["maps"] = upsample4(out["logits"].float().sigmoid())[..., :H, :W]
        return out

    def predict(self, images: torch.Tensor, instructions: Sequence[str]) -> dict[str, torch.Tensor]:
        """``maps`` (B, 3, H, W) in [0, 1] (heat, height, width) and ``task`` (B,) indices into :data:`TASKS`."""
        out = self.infer(images, instructions)
        return {"maps": out["maps"], "task": out["task"]}

    @torch.no_grad()
    def segment(self, images: torch.Tensor, instructions: Sequence[str], maps: torch.Tensor,
                centres: Sequence[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """Masks (N_i, H, W) bool per image at ``centres[i]`` (N_i, 2) xy pixels, each sized by ``maps``' height and
        width channels there (``maps`` as :meth:`predict` gives them)."""
        out = self.infer(images, instructions)
        H, W = images.shape[-2:]
        heat = cells(F.pad(maps.to(out["pixels"]), (0, -W % STRIDE, 0, -H % STRIDE), mode="replicate")[:, :1])
        result = []
        for i, c in enumerate(centres):
            c = torch.as_tensor(np.asarray(c, dtype=np.float32)).reshape(-1, 2).to(maps.device)
            x = c[:, 0].long().clamp(0, W - 1)
            y = c[:, 1].long().clamp(0, H - 1)
            bh, bw = maps[i, 1, y, x] * H, maps[i, 2, y, x] * W
            boxes = torch.stack([c[:, 0] - bw / 2, c[:, 1] - bh / 2, c[:, 0] + bw / 2, c[:, 1] + bh / 2], dim=1)
            result.append(self.masks_at(out, i, boxes, (H, W), heat=heat[i:i + 1]))
        return result

    def masks_at(self, out: dict[str, torch.Tensor], i: int, boxes: torch.Tensor, size: tuple[int, int], *,
                 heat: torch.Tensor | None = None) -> torch.Tensor:
        """Masks (M, H, W) bool of image ``i`` of an :meth:`infer` result, prompted at ``boxes`` (M, 4); ``heat``
        (1, 1, h, w) replaces the predicted heat."""
        if boxes.shape[0] == 0:
            return torch.zeros(0, *size, dtype=torch.bool)
        M = boxes.shape[0]
        pixels = out["pixels"][i:i + 1].expand(M, -1, -1, -1)
        heat = out["logits"][i:i + 1, :1].sigmoid() if heat is None else heat
        logits = self._masks(pixels, heat.expand(M, -1, -1, -1), boxes.to(pixels.device))
        full = F.interpolate(logits[:, None].float(), size=(pixels.shape[-2] * STRIDE, pixels.shape[-1] * STRIDE),
                             mode="bilinear", align_corners=False)[:, 0]
        return (full[:, : size[0], : size[1]] > 0).cpu()


def predict_image(model: Lumen, image: np.ndarray, instruction: str, *, task: str | None = None,
                  threshold: float = 0.3, k: int = 100) -> dict[str, Any]:
    """One image (H, W, 3) float32 in [0, 1] -> ``task``, ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``masks``
    (M, H, W) bool, ``points`` (P, 2) xy, ``point_scores`` (P,), routed by the predicted task (or ``task``):
    detection/grounding -> peaks + sizes (grounding keeps the best box); instance_segmentation -> those boxes +
    the mask decoder at each; referring_segmentation -> the heat as a mask (>= 0.5) and its bounding box;
    pose -> the heat's peaks. What is not asked for comes back empty."""
    if task is not None and task not in TASKS:
        raise LumenError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise LumenError(f"expected an (H, W, 3) image, got shape {img.shape}")
    H, W = img.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None] * 2 - 1
    out = model.infer(x, [instruction], [task])
    name = task or TASKS[int(out["task"][0])]
    maps = out["maps"][0].permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    result: dict[str, Any] = {"task": name, "boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                              "masks": np.zeros((0, H, W), bool), "points": np.zeros((0, 2), np.float32),
                              "point_scores": np.zeros(0, np.float32), "heat": maps[..., 0].copy()}
    if name == "pose":
        result["points"], result["point_scores"] = decode_points(maps[..., 0], threshold, k)
    elif name == "referring_segmentation":
        mask = decode_mask(maps[..., 0])
        if mask.any():
            ys, xs = np.nonzero(mask)
            result["boxes"] = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            result["scores"] = np.array([maps[..., 0][mask].mean()], np.float32)
            result["masks"] = mask[None]
    else:
        boxes, scores = decode_boxes(maps, threshold, 1 if name == "grounding" else k)
        result["boxes"], result["scores"] = boxes.astype(np.float32), scores.astype(np.float32)
        if name == "instance_segmentation":
            result["masks"] = model.masks_at(out, 0, torch.from_numpy(boxes).float(), (H, W)).numpy()
    return result


# -- the exported folder ---------------------------------------------------------------------------------------
def export_lumen(model: Lumen, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` to ``folder``: ``llava/`` (the LMM with its added tokens + tokenizer, save_pretrained),
    ``lumen.safetensors`` (every other weight), ``lumen.json`` (constructor args, ``meta``, every file's size and
    sha256; written last). Built beside as ``.NAME.tmp-…`` and renamed in: a reader never sees half an export."""
    out = Path(folder).absolute()
    if out.exists() and any(out.iterdir()) and not (out / META).is_file():
        raise LumenError(f"{out}: holds files that are not a Lumen export; export somewhere else")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model.lmm.save_pretrained(tmp / LLAVA)
        model.tokenizer.save_pretrained(tmp / LLAVA)
        ours = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("lmm.")}
        save_file(ours, str(tmp / WEIGHTS))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        record = {"format": LUMEN_FORMAT, "config": model.config, "meta": meta,
                  "files": {name: describe_file(tmp / name) for name in files}}
        (tmp / META).write_text(json.dumps(record, indent=1, sort_keys=True))
        if out.exists():  # a previous export: moved aside, the new one renamed in, the old one removed
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_lumen(folder: str | Path, device: str | torch.device = "cpu") -> Lumen:
    """The Lumen model of an :func:`export_lumen` folder, local or ``s3://`` (downloaded first), in eval mode on
    ``device`` (safetensors only)."""
    from pipelines import is_remote, local_copy

    if is_remote(str(folder)):
        with local_copy(str(folder)) as local:
            return load_lumen(local, device)
    root = Path(folder)
    record = read_record(root / META, LUMEN_FORMAT, LumenError,
                         f"not a Lumen export (no {META}); train a Lumen stage (its export) first")
    for name, want in record.get("files", {}).items():
        file = root / name
        if not file.is_file() or file.stat().st_size != want.get("bytes"):
            raise LumenError(f"{file}: missing or not the size {META} lists; the export is incomplete, export again")
    model = Lumen.from_folder(root / LLAVA, **record["config"])
    missing, unexpected = model.load_state_dict(load_file(str(root / WEIGHTS)), strict=False)
    missing = [k for k in missing if not k.startswith("lmm.")]
    if missing or unexpected:
        raise LumenError(f"{root / WEIGHTS} does not fit {META}'s config: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return model.eval().to(device)
