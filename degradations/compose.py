"""Composition of plugins into tasks, and the sample-level synthesize / replay pair.

A *node* draws from the sample's generator and transforms an image, appending every
plugin it actually applied to ``record`` as a :class:`Step` (name, params, seed).
The record alone regenerates the sample: :func:`replay` re-applies each step with a
generator seeded from the recorded seed, never re-drawing a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from degradations import registry
from degradations.base import (
    DEGRADING_DOMAINS,
    DOMAINS,
    Annotations,
    Degradation,
    PluginError,
    check_image,
    check_probability,
    draw_bool,
    render_instruction,
    to_jsonable,
)

_SEED_BOUND = 2**63 - 1


@dataclass(frozen=True)
class Step:
    """One applied plugin: enough to re-apply it bit for bit."""

    name: str
    params: dict[str, Any]
    seed: int
    version: int = 1  # the plugin's kernel version (recorded only when > 1, so older records read the same)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "params": to_jsonable(self.params), "seed": self.seed}
        return {**out, "version": self.version} if self.version != 1 else out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        return cls(str(d["name"]), dict(d["params"]), int(d["seed"]), int(d.get("version", 1)))


@dataclass
class Context:
    """What nodes of one sample share: the original size, annotations, the growing record."""

    orig_size: tuple[int, int]
    ann: Annotations | None = None
    record: list[Step] = field(default_factory=list)


class Node(Protocol):
    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray: ...


@dataclass(frozen=True)
class Apply:
    """Apply one plugin: sample its params, then apply with a recorded child seed."""

    plugin: Degradation

    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray:
        p = self.plugin
        kw = {"ann": ctx.ann} if p.requires else {}
        params = to_jsonable(p.sample_params(rng, **kw))
        seed = int(rng.integers(_SEED_BOUND))
        ctx.record.append(Step(p.display_name(), params, seed, p.version))
        return p.apply(img, np.random.default_rng(seed), **params, **kw)


@dataclass(frozen=True)
class Chain:
    """Apply nodes in order."""

    nodes: tuple[Node, ...]

    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray:
        for node in self.nodes:
            img = node.run(img, rng, ctx)
        return img


@dataclass(frozen=True)
class OneOf:
    """Apply exactly one node, drawn with ``weights`` (uniform when omitted)."""

    nodes: tuple[Node, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.nodes:
            raise PluginError("OneOf needs at least one node")
        if self.weights is not None and (len(self.weights) != len(self.nodes) or min(self.weights) < 0
                                         or sum(self.weights) <= 0):
            raise PluginError(f"OneOf weights {self.weights} must be >= 0, sum > 0, one per node")

    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray:
        w = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.nodes), float)
        idx = int(rng.choice(len(self.nodes), p=w / w.sum()))
        return self.nodes[idx].run(img, rng, ctx)


@dataclass(frozen=True)
class Maybe:
    """Apply ``node`` with probability ``p``."""

    node: Node
    p: float = 0.5

    def __post_init__(self) -> None:
        check_probability("Maybe.p", self.p)

    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray:
        return self.node.run(img, rng, ctx) if draw_bool(rng, self.p) else img


@dataclass(frozen=True)
class Shuffle:
    """Apply all nodes in a random order (Real-ESRGAN's final sinc / JPEG)."""

    nodes: tuple[Node, ...]

    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray:
        for idx in rng.permutation(len(self.nodes)):
            img = self.nodes[int(idx)].run(img, rng, ctx)
        return img


@dataclass(frozen=True)
class ResizeTo:
    """Resize to ``orig_size / factor`` (recorded as an explicit-size ``resize`` step)."""

    factor: float = 4.0
    interpolation_choices: tuple[str, ...] = ("area", "bilinear", "bicubic")

    def run(self, img: np.ndarray, rng: np.random.Generator, ctx: Context) -> np.ndarray:
        h, w = ctx.orig_size
        params = {"height": max(1, round(h / self.factor)), "width": max(1, round(w / self.factor)),
                  "interpolation": str(rng.choice(self.interpolation_choices))}
        seed = int(rng.integers(_SEED_BOUND))
        ctx.record.append(Step("resize", params, seed))
        return registry.create("resize").apply(img, np.random.default_rng(seed), **params)


@dataclass(frozen=True)
class Task:
    """A named unit of the task mixture: one plugin or a chain, with its domain and instructions."""

    name: str
    domain: str
    node: Node
    #: Empty: use the templates of the first applied plugin, filled from its params.
    instructions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise PluginError(f"task {self.name!r}: domain {self.domain!r} is not one of {DOMAINS}")


@dataclass
class Synthesis:
    """One synthesized sample (images in the boundary convention) and the record that regenerates it."""

    input: np.ndarray
    target: np.ndarray
    instruction: str
    task: str
    domain: str
    steps: list[Step]
    target_bits: int = 8

    def record(self) -> dict[str, Any]:
        return {"task": self.task, "domain": self.domain, "target_bits": self.target_bits,
                "steps": [s.to_json() for s in self.steps]}


def task_for(name: str, **ranges: Any) -> Task:
    """The task registered as ``name``: a chain preset if one has that name, else a single plugin."""
    if name in registry.entries(registry.CHAIN_GROUP):
        return registry.get_chain(name)(**ranges)
    plugin = registry.create(name, **ranges)
    return Task(name, plugin.domain, Apply(plugin), ())


def synthesize(task: Task, clean: np.ndarray, rng: np.random.Generator,
               ann: Annotations | None = None) -> Synthesis:
    """Make one (input, target, instruction) sample of ``task`` from a clean image."""
    check_image(clean, f"task {task.name!r} input")
    ctx = Context(orig_size=clean.shape[:2], ann=ann)
    out = task.node.run(clean, rng, ctx)
    check_image(out, f"task {task.name!r} output")
    out = _fit(out, clean.shape[:2])
    if not ctx.record:
        raise PluginError(f"task {task.name!r} applied no step; give it at least one unconditional node")
    first = registry.get(ctx.record[0].name) if ctx.record[0].name in registry.entries() else None
    if task.instructions:
        params: dict[str, Any] = {}
        for s in ctx.record:
            params = {**s.params, **params}  # first occurrence wins
        text = render_instruction(task.name, task.instructions, rng, params)
    else:
        text = render_instruction(task.name, first.instructions if first else (), rng, ctx.record[0].params)
    bits = max((registry.get(s.name).target_bits for s in ctx.record if s.name in registry.entries()), default=8)
    inp, tgt = (out, clean) if task.domain in DEGRADING_DOMAINS else (clean, out)
    return Synthesis(inp, tgt, text, task.name, task.domain, ctx.record, bits)


def replay(record: dict[str, Any], clean: np.ndarray, ann: Annotations | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate (input, target) of a sample from its json record and its clean crop."""
    img = clean
    for step in (Step.from_json(s) for s in record["steps"]):
        plugin = registry.get(step.name)()
        if plugin.version != step.version:
            raise PluginError(f"step {step.name!r} was recorded by version {step.version} of the plugin, but version "
                             f"{plugin.version} is installed and draws other pixels from the same seed; install the "
                             "omnilv release that built the corpus to regenerate it")
        kw = {"ann": ann} if plugin.requires else {}
        img = plugin.apply(img, np.random.default_rng(step.seed), **step.params, **kw)
    img = _fit(img, clean.shape[:2])
    return (img, clean) if record["domain"] in DEGRADING_DOMAINS else (clean, img)


def _fit(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a size-changing chain's output back to the target size (bicubic, clipped)."""
    if img.shape[:2] == tuple(size):
        return np.ascontiguousarray(img, dtype=np.float32)
    h, w = size
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def chain(*nodes: Node | Degradation | Sequence) -> Chain:
    """Convenience: ``chain(GaussianBlur(), Maybe(Apply(Jpeg()), 0.5))``; bare plugins are wrapped."""
    return Chain(tuple(Apply(n) if isinstance(n, Degradation) else n for n in nodes))
