"""README.md's commands for the three roles, run as written with the installed ``omnilv`` from a folder outside the
repository, in README order, each checked by what it should leave behind. The commands are read from README.md's
```bash blocks, so a changed README changes what runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
OMNILV = Path(sys.executable).with_name("omnilv")

# What only a cluster, S3 credentials, real model folders or GPUs can run; each has its own tests.
SKIPS: dict[str, str] = {
    "--address ray://": "needs a Ray cluster",
    "s3://": "needs S3 credentials (tests/pipelines/test_corpus_s3.py covers s3:// on a loopback endpoint)",
    "omnilv train stage1_512": "the 2B model: needs GPUs and the real text encoder and VAE folders",
    "cache-latents stage1_512": "encodes with the real VAE and text encoder folders",
    "cluster submit": "needs a Ray head's job server (tests/cluster covers submission on a loopback head)",
    "omnilv rehearse --s3 local": "has its own test (tests/training/distributed/test_rehearse.py)",
    "omnilv lumen quickstart": "has its own test (tests/training/distributed/test_lumen_train.py)",
}
PLUGIN_PLACEHOLDER = "my_package.plugins:MyPlugin"
PLUGIN_IMPORTS = ("from dataclasses import dataclass\n\nimport numpy as np\n\n"
                  "from degradations import Degradation, draw_float\n\n\n")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Every ``omnilv …`` line of the README's bash blocks, in order, trailing ``# comment`` removed."""
    lines = (re.sub(r"\s+#\s.*$", "", line).strip() for block in blocks("bash") for line in block.splitlines())
    return [line for line in lines if line.startswith("omnilv ")]


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPS.items() if pattern in command), None)


def clean_env(**extra: str) -> dict[str, str]:
    """No AWS_* and no RAY_ADDRESS: every command starts its own local Ray and reads local disk."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("RAY_ADDRESS", "PYTHONPATH")}
    return env | {"RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"} | extra


def run(args: list[str], cwd: Path, timeout: int = 600, **env: str) -> str:
    res = subprocess.run([str(OMNILV), *args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                         timeout=timeout)
    shown = " ".join(["omnilv", *args])
    assert res.returncode == 0, f"`{shown}` exited {res.returncode}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def write_plugin(root: Path) -> str:
    """The README's plugin block as ``my_package/plugins.py`` under ``root``; returns the class name."""
    (code,) = blocks("python")
    (name,) = re.findall(r"^class (\w+)\(", code, flags=re.M)
    package = root / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugins.py").write_text(PLUGIN_IMPORTS + code)
    return name


def option(args: list[str], name: str) -> Path:
    return Path(args[args.index(name) + 1])


def assert_png(path: Path, min_side: int = 32) -> tuple[int, int]:
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) >= min_side, (path, im.format, im.size)
        return im.size


# -- what each command must leave behind (args: the command after `omnilv`, placeholders filled in) ---------------
def check_build(args, out, cwd):
    name = args[2] if len(args) > 2 else "quickstart"
    manifest = json.loads((cwd / "corpus" / name / "manifest.json").read_text())
    assert manifest and "samples in" in out, out


def check_inspect(args, out, cwd):
    assert "OK" in out, out


def check_ls(args, out, cwd):
    lines = out.splitlines()
    assert lines[0].split()[0] == "key" and len(lines) > 1, out
    assert key_of(args[2], cwd) in out, out


def check_corpus_preview(args, out, cwd):
    assert_png(cwd / option(args, "--out"), min_side=64)


def check_regenerate(args, out, cwd):
    assert "identical" in out and "DIFFERENT" not in out and "exactly" in out, out


def check_sample(args, out, cwd):
    folder = cwd / option(args, "--out")
    assert_png(folder / "input.png", min_side=16)
    assert (folder / "instruction.txt").read_text().strip(), out


def check_degradations_list(args, out, cwd):
    assert "gaussian_noise" in out, out


def check_degradations_preview(args, out, cwd):
    assert_png(cwd / option(args, "--out"), min_side=64)


def check_plugin(args, out, cwd):
    assert "failed" not in out, out


def check_train(args, out, cwd):
    (export,) = re.findall(r"export (\S+)$", out, flags=re.M)
    path = Path(export) if Path(export).is_absolute() else cwd / export
    assert path.is_dir() and path.resolve().is_relative_to(cwd.resolve()), out


def check_restore(args, out, cwd):
    assert assert_png(cwd / args[-1], min_side=16) == assert_png(cwd / args[-2], min_side=16)


def check_eval(args, out, cwd):
    folder = cwd / option(args, "--out")
    assert json.loads((folder / "results.json").read_text())["samples"] > 0, out
    assert_png(folder / "sheet.png", min_side=64)


def check_scenes(args, out, cwd):
    folder = cwd / args[2]
    coco = json.loads((folder / "annotations" / "instances_val.json").read_text())
    assert coco["annotations"] and coco["refs"] and (folder / "images" / coco["images"][0]["file_name"]).is_file()


def check_lumen_predict(args, out, cwd):
    assert_png(cwd / args[-1], min_side=16)
    assert_png(cwd / "prediction.png", min_side=128)


def check_lumen_eval(args, out, cwd):
    report = json.loads((cwd / "lumen-eval" / "lumen" / "lumen_eval.json").read_text())
    assert report["scores"]["detection"] and "trivial baseline" in out, out
    assert_png(cwd / "lumen-eval" / "lumen" / "lumen_eval.png", min_side=128)


def check_plan(args, out, cwd):
    assert re.search(r"shards\s.*\d", out), out


def check_render(args, out, cwd):
    doc = yaml.safe_load((cwd / option(args, "--out")).read_text())
    assert doc and doc.get("cluster_name"), doc


CHECKS: dict[str, Callable[[list[str], str, Path], None]] = {
    "corpus build": check_build, "corpus inspect": check_inspect, "corpus ls": check_ls,
    "corpus preview": check_corpus_preview, "corpus regenerate": check_regenerate, "corpus sample": check_sample,
    "degradations list": check_degradations_list, "degradations preview": check_degradations_preview,
    "degradations check": check_plugin, "train": check_train, "restore": check_restore, "eval": check_eval,
    "cluster plan": check_plan, "cluster render": check_render,
    "lumen scenes": check_scenes, "lumen predict": check_lumen_predict, "lumen eval": check_lumen_eval,
}
_keys: dict[str, str] = {}


def key_of(corpus: str, cwd: Path) -> str:
    """The first key `omnilv corpus ls CORPUS --json` lists (what a reader picks for KEY)."""
    if corpus not in _keys:
        _keys[corpus] = json.loads(run(["corpus", "ls", corpus, "--json"], cwd).splitlines()[0])["key"]
    return _keys[corpus]


def check_name(args: list[str]) -> str:
    name = next((n for n in CHECKS if args[:len(n.split())] == n.split()), None)
    assert name, f"no check for `omnilv {shlex.join(args)}`: add one to CHECKS"
    return name


def test_the_readme_lists_its_commands():
    commands = readme_commands()
    assert blocks("bash")[0].lstrip().startswith("make quickstart")
    assert "omnilv corpus build" in commands and "omnilv train tiny_stage1 --set data.corpus=corpus/quickstart" \
        in commands and any(PLUGIN_PLACEHOLDER in c for c in commands)
    assert all(pattern in " ".join(commands) for pattern in SKIPS), "a skip no README command needs: drop it"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_readme_commands_run_as_written(tmp_path):
    """`make quickstart` (= `omnilv quickstart`) first, since the ML engineer's restore and eval read its export;
    then every README command that runs on one machine, in README order."""
    _keys.clear()
    out = run(["quickstart"], tmp_path, timeout=900)
    assert "model exported to" in out and (tmp_path / "quickstart-out/runs/quickstart/export").is_dir(), out

    plugin = write_plugin(tmp_path)
    ran, skipped, checked = [], [], set()
    for command in readme_commands():
        if why := skip_reason(command):
            skipped.append(f"{command}  ({why})")
            continue
        args = shlex.split(command.replace(PLUGIN_PLACEHOLDER, f"my_package.plugins:{plugin}"))[1:]
        if "KEY" in args:
            args[args.index("KEY")] = key_of(args[2], tmp_path)
        env = {"PYTHONPATH": "."} if args[:2] == ["degradations", "check"] else {}
        name = check_name(args)
        CHECKS[name](args, run(args, tmp_path, **env), tmp_path)
        ran.append(command)
        checked.add(name)
    print("ran:", *ran, "skipped:", *skipped, sep="\n  ")
    assert checked == set(CHECKS), f"README no longer runs: {sorted(set(CHECKS) - checked)}"
