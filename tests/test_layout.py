"""The package layout: layers and cycles, a light ``import svdecode``, and run directories written
before the reorganisation (tests/fixtures/run_v0, see its README) still loading and reporting."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_model

from svdecode import eval as ev
from svdecode.data import load_truthfulqa_mc
from svdecode.eval.report import render_report
from svdecode.model.steered_model import SteeredModel
from svdecode.train import load_adapter

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "run_v0"


def test_no_import_cycles_and_the_core_imports_only_the_core():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_layers.py")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no import cycles" in proc.stdout


def _check_layers():
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_layer_check_reads_layers_from_folders():
    cl = _check_layers()
    assert cl.layer_of("svdecode") == "core"
    assert cl.layer_of("svdecode.errors") == "core"
    assert cl.layer_of("svdecode.model.streams") == "core"
    assert cl.layer_of("svdecode.calibration") == "core"
    assert cl.layer_of("svdecode.eval.report") == "harness"
    assert cl.layer_of("svdecode.data") == "harness"
    assert cl.layer_of("svdecode.integrations.server.app") == "integrations"
    assert cl.layer_of("svdecode.cli.commands") == "cli"
    assert cl.layer_of("svdecode.newfolder.thing") is None


def test_the_layer_check_flags_each_kind_of_upward_import_on_a_synthetic_graph():
    cl = _check_layers()
    graph = {
        "svdecode.model.a": {"svdecode.errors", "svdecode.eval.report"},  # core -> harness
        "svdecode.errors": set(),
        "svdecode.eval.report": {"svdecode.model.a", "svdecode.cli.parser"},  # harness -> cli
        "svdecode.integrations.x": {"svdecode.model.a", "svdecode.train.y"},  # integrations -> harness
        "svdecode.train.y": {"svdecode.integrations.x"},  # harness -> integrations
        "svdecode.cli.parser": {"svdecode.eval.report", "svdecode.integrations.x", "svdecode.model.a"},
        "svdecode.newfolder.z": set(),
    }
    assert cl.violations(graph) == [
        "svdecode.eval.report (harness) imports svdecode.cli.parser (cli)",
        "svdecode.integrations.x (integrations) imports svdecode.train.y (harness)",
        "svdecode.model.a (core) imports svdecode.eval.report (harness)",
        "svdecode.newfolder.z is in a folder no layer names (add it to scripts/check_layers.py)",
        "svdecode.train.y (harness) imports svdecode.integrations.x (integrations)",
    ]
    assert cl.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cl.find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_core_module_importing_the_harness_fails_the_check(tmp_path):
    """The real script on a copy of the package with one planted core module that imports eval/."""
    shutil.copytree(ROOT / "svdecode", tmp_path / "svdecode", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "check_layers.py", tmp_path / "scripts")
    (tmp_path / "svdecode" / "model" / "planted.py").write_text(
        "def f():\n    from svdecode.eval import report\n"
    )
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "check_layers.py")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert (
        "LAYER VIOLATION: svdecode.model.planted (core) imports svdecode.eval.report (harness)" in proc.stdout
    )


def test_import_svdecode_pulls_in_no_harness_and_no_heavy_extras():
    code = (
        "import sys, svdecode; svdecode.steer_logits; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('transformers', 'peft', 'matplotlib', 'datasets', 'accelerate') or m.startswith(('svdecode.train', "
        "'svdecode.eval', 'svdecode.data')))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


@pytest.fixture(scope="module")
def old_base(tmp_path_factory, tokenizer):
    """The tiny base model the fixture was trained on (same seed, same weights)."""
    path = tmp_path_factory.mktemp("base")
    make_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_an_old_run_dir_loads_with_its_recorded_settings(old_base):
    cfg = json.loads((FIXTURE / "adapter" / "steering_config.json").read_text())
    model = SteeredModel.from_pretrained(FIXTURE / "adapter", base=str(old_base))
    assert model.steering.mu == cfg["mu"] and model.steering.alpha == cfg["alpha"]
    assert model.streams.kind == "lora-mixed-batch"
    # the warm-start record's base fingerprint still matches: same base, same checks
    peft_model = load_adapter(FIXTURE / "adapter", str(old_base))
    assert (
        peft_model.active_peft_config.r
        == json.loads((FIXTURE / "adapter" / "adapter_config.json").read_text())["r"]
    )


def test_an_old_evaluation_reproduces_and_reports(old_base, tmp_path):
    pytest.importorskip(
        "matplotlib", reason="the report's plots need the harness extra: pip install 'svdecode[harness]'"
    )
    old = ev.load_results(FIXTURE / "eval")
    task = old["tasks"]["truthfulqa_mc"]
    model = SteeredModel.from_pretrained(FIXTURE / "adapter", base=str(old_base))
    specs = [ev.MethodSpec.from_json(m) for m in task["methods"].values()]
    ids = [r["id"] for r in task["items"]["peft"]]
    items = [it for it in load_truthfulqa_mc() if it.id in ids]
    style = old["config"]["mc_prompt_style"]
    new = ev.evaluate_mc(model, items, specs, prompt_style=style, progress=False, n_boot=200)
    for name, records in task["items"].items():
        for rec_old, rec_new in zip(records, new["items"][name], strict=True):
            assert rec_old["id"] == rec_new["id"]
            assert rec_new["mc2_scores"] == pytest.approx(
                [ev.as_float(x) for x in rec_old["mc2_scores"]], abs=1e-4
            )
    md = render_report([FIXTURE / "eval"], tmp_path / "report", labels=["old"]).read_text()
    assert "TruthfulQA multiple choice" in md and "peft+svdecode" in md
    assert (tmp_path / "report" / "old_truthfulqa_mc_bars.png").is_file()
    assert any(p.name.startswith("old_truthfulqa_mc_mu_") for p in (tmp_path / "report").iterdir())


def test_the_cli_parser_builds_without_transformers():
    code = (
        "import sys, svdecode.cli; svdecode.cli.build_parser(); "
        "print(' '.join(m for m in ('transformers', 'peft', 'matplotlib', 'fastapi') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
