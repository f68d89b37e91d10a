"""docs/plugins.md does what it says: the tutorial, followed literally, trains ``method=mine``; its
shown outputs are the real ones; and its hook reference equals the hookspecs.

The tutorial runs in a throwaway virtual environment layered on this one (a ``.pth`` file adds this
interpreter's site-packages), so ``pip install -e ./alignkit-mine`` installs into that environment
only: the project's venv is never modified, nothing needs uninstalling, parallel runs do not see the
plugin, and no network is used (``PIP_NO_INDEX``; no build isolation, setuptools comes from here).

Regenerate the hook reference section with ``python tests/test_docs_plugins.py --write``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
START, END = "<!-- hook-reference:start -->", "<!-- hook-reference:end -->"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


# ----------------------------------------------------------------------------- reading the doc
def blocks(text: str) -> list[tuple[str, dict[str, str], str]]:
    """Fenced blocks as (language, {key: value or ""}, body), in document order."""
    out = []
    for match in FENCE.finditer(text):
        info, body = match.group(1).split(), match.group(2)
        lang = info[0] if info else ""
        attrs = dict((item.split("=", 1) + [""])[:2] for item in info[1:])
        out.append((lang, attrs, body))
    return out


def render_hook_reference() -> str:
    """The hook reference section, generated from ``alignkit.hookspecs``."""
    from alignkit import hookspecs

    parts = [START, ""]
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(fn).parameters)
        parts += [f"### `{name}({params})`", "", "```text", inspect.getdoc(fn), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def write_hook_reference() -> None:
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + render_hook_reference() + tail)


def test_hook_reference_equals_the_hookspecs():
    text = DOC.read_text()
    assert START in text and END in text
    section = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert section == render_hook_reference(), "docs/plugins.md is stale: run python tests/test_docs_plugins.py --write"


def test_hook_names_lists_every_hookspec():
    from alignkit import hookspecs

    specs = {name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")}
    assert specs == set(hookspecs.HOOK_NAMES)


#: alignkit modules the guide may send a plugin author to (every other one is internal, as the guide says).
PUBLIC_MODULES = {"api", "rl", "testing", "losses", "cli", "conf", "plugins"}


def test_the_guide_names_only_public_modules_and_names_that_exist():
    import importlib

    text = DOC.read_text()
    internal = sorted({m for m in re.findall(r"\balignkit\.([a-z_]+)", text) if m not in PUBLIC_MODULES})
    assert not internal, f"docs/plugins.md sends readers to internal modules: {internal}"
    for module, name in sorted(set(re.findall(r"\balignkit\.(api|rl|testing)\.([A-Za-z_]\w*)", text))):
        assert hasattr(importlib.import_module(f"alignkit.{module}"), name), f"alignkit.{module}.{name} does not exist"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation but - and _ dropped, spaces -> -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_within_the_guide_lead_to_a_heading():
    text = DOC.read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "no in-page links"
    assert not links - anchors, f"links to no heading: {sorted(links - anchors)}"


def _shown_signature(fn) -> str:
    """``name(a, *rest, b=1)`` without annotations, defaults as Python writes them."""
    params = []
    star = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            params.append(f"**{p.name}")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                params.append("*")
                star = True
            params.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{fn.__name__}({', '.join(params)})"


def test_the_testing_reference_lists_every_helper_with_its_signature():
    import ast

    import alignkit.testing as testing

    section = DOC.read_text().split("## Testing reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (fixture )?`([^`]+)` \|", section, re.M)
    shown_fixtures = {name for fixture, name in rows if fixture}
    def parts(signature: str) -> tuple:
        """A shown signature as (name, positional parameters, (keyword, default value) pairs): 1e-6 == 1e-06."""
        call = ast.parse(signature.replace("*,", "")).body[0].value
        return (ast.unparse(call.func), [ast.unparse(a) for a in call.args],
                [(k.arg, ast.literal_eval(k.value)) for k in call.keywords])

    for fixture, shown in rows:
        if not fixture:
            actual = _shown_signature(getattr(testing, shown.split("(", 1)[0]))
            assert parts(shown) == parts(actual), f"the guide shows {shown}, alignkit.testing has {actual}"
    source = ast.parse(inspect.getsource(testing))
    fixtures = {node.name for node in source.body if isinstance(node, ast.FunctionDef)
                and any("fixture" in ast.unparse(d) for d in node.decorator_list)}
    assert shown_fixtures == fixtures, f"fixtures of alignkit.testing {sorted(fixtures)}, the guide lists {sorted(shown_fixtures)}"
    for name in ("check_method", "check_scorer", "objective_for"):
        assert any(not fixture and shown.startswith(name + "(") for fixture, shown in rows), f"{name} is not listed"


def test_the_tree_lists_every_file_the_tutorial_writes():
    text = DOC.read_text()
    tree = next(body for lang, _, body in blocks(text) if body.startswith("alignkit-mine/\n"))
    files = [attrs["file"] for _, attrs, _ in blocks(text) if "file" in attrs]
    assert files, "no file blocks"
    for path in files:
        assert Path(path).name in tree, f"{path} is written by the tutorial but not shown in the Step 1 tree"


# ----------------------------------------------------------------------------- following the tutorial
def layered_venv(folder: Path) -> dict[str, str]:
    """A venv that sees this interpreter's packages; returns the environment that activates it."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    purelib = Path(subprocess.check_output([str(folder / "bin" / "python"), "-c",
                                            "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_alignkit_parent.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
    bindir = folder / "bin"
    for command, module in (("pip", "pip"), ("alignkit", "alignkit.cli"), ("pytest", "pytest")):
        script = bindir / command
        script.write_text(f'#!/bin/sh\nexec "{bindir / "python"}" -m {module} "$@"\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(folder), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",  # "0" turns build isolation off (pip's naming)
               PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def bash(script: str, cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_following_the_tutorial_trains_method_mine(tmp_path):
    text = DOC.read_text()
    work = tmp_path / "work"
    work.mkdir()
    env = layered_venv(tmp_path / "venv")
    ran = []
    for lang, attrs, body in blocks(text):
        if "file" in attrs:
            path = work / attrs["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        elif "run" in attrs:
            result = bash(body, work, env)
            assert result.returncode == 0, f"step failed:\n{body}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            ran.append((body, result))
    commands = [body.strip().split()[:2] for body, _ in ran]
    assert ["pip", "install"] in commands and ["alignkit", "train"] in commands and ["pytest", "-q"] in commands

    # Step 7 installed into the throwaway environment, not into this one.
    from importlib.metadata import PackageNotFoundError, distribution

    with pytest.raises(PackageNotFoundError):
        distribution("alignkit-mine")

    # Step 8: the JSON the doc shows is the entry `alignkit plugins` printed.
    report = json.loads((work / "plugins.json").read_text())
    shown = json.loads(next(body for lang, _, body in blocks(text) if lang == "json"))
    assert [p for p in report["plugins"] if p["name"] == "alignkit-mine"] == [shown]
    assert report["failures"] == []
    listing = next(result.stdout for body, result in ran if "alignkit ls methods" in body)
    assert re.search(r"^mine\s+alignkit-mine\s+0\.1\.0\s+ORPO-style", listing, re.M), listing

    # Step 9: the run folder holds what the doc says.
    run = work / "runs" / "mine-demo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "mine" and summary["steps"] == 2
    assert "lam: 0.2" in (run / "config.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"nll", "odds_ratio"} <= set(next(r for r in rows if r.get("split") == "train"))
    assert (run / "final" / "model.safetensors").exists()
    # The held-out metrics `summarize` returns: at step 0 and after the last step, in both files.
    held_out = {"odds_ratio", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "margin", "margin_ci_low",
                "margin_ci_high", "pairs"}
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 2]
    assert all(set(r) == {"step", "split"} | held_out for r in rows if r["split"] == "eval")
    for key in ("eval_before", "eval_after"):
        assert set(summary[key]) == held_out and summary[key]["pairs"] == 4

    # Step 10: pytest ran the plugin's four tests, the objective against plain torch and conformance included.
    tested = next(result.stdout for body, result in ran if body.strip().startswith("pytest"))
    assert "4 passed" in tested, tested

    # Shown console sessions print exactly what the doc shows, in the reader's environment: alignkit and
    # their plugin (other installed packages may register losses of the same family, e.g. alignkit-orpo).
    only_mine = {**env, "ALIGNKIT_PLUGINS": "alignkit-mine"}
    for lang, _, body in blocks(text):
        if lang == "" and body.startswith("$ "):
            command, *expected = body.strip().splitlines()
            result = bash(command[2:], work, only_mine)
            assert result.returncode == 2
            assert (result.stdout + result.stderr).strip().splitlines() == expected


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_hook_reference()
        print(f"wrote the hook reference into {DOC}")
    else:
        print(__doc__)
