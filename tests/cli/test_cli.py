"""The svdecode command line end to end on a tiny local base model."""

from __future__ import annotations

import json

from svdecode.cli import main
from svdecode.model.config import CONFIG_NAME


def test_run_then_generate_calibrate_and_skip(base_dir, data_file, tmp_path, capsys):
    out = tmp_path / "steered"
    args = ["run", "--data", str(data_file), "--n-train", "8", "--n-calib", "4", "--base", str(base_dir)]
    assert main([*args, "--out", str(out), "--lr", "1e-2"]) == 0
    first = capsys.readouterr().out
    assert "ran: warmstart, calibrate" in first
    cfg = json.loads((out / CONFIG_NAME).read_text())
    manifest = json.loads((out / "split_manifest.json").read_text())
    assert cfg["calibration"]["n_examples"] == 4 and cfg["adapter_type"] == "LORA"
    assert manifest["source"] == str(data_file) and len(manifest["ids"]["train"]) == 8
    assert not set(manifest["ids"]["train"]) & set(manifest["ids"]["calib"])

    assert main([*args, "--out", str(out), "--lr", "1e-2"]) == 0  # same request: nothing reruns
    assert "ran: nothing" in capsys.readouterr().out

    assert (
        main(
            [
                "generate",
                "--steered",
                str(out),
                "--prompt",
                "Q: is 3 even?\nA:",
                "--max-new-tokens",
                "3",
                "--json",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["prompt"] == "Q: is 3 even?\nA:"

    cal = [
        "calibrate",
        "--steered",
        str(out),
        "--data",
        str(data_file),
        "--limit",
        "6",
        "--estimator",
        "median",
    ]
    assert main([*cal, "--out", str(out)]) == 2  # another calibration is recorded there
    assert "holds a calibration asked for something else" in capsys.readouterr().err
    assert main([*cal, "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "mu_bar = " in printed and "decision: chosen median" in printed  # one line per candidate too
    assert all(f"  {c:8s} mu = " in printed for c in ("nll", "mean", "median", "trimmed", "pooled"))
    recal = json.loads((out / CONFIG_NAME).read_text())
    assert recal["calibration"]["selection"]["chosen"] == "median"  # --estimator: the old name of --objective
    assert recal["objective"] in ("median", "off") and recal["calibration"]["n_examples"] == 6


def test_errors_name_the_input(tmp_path, capsys):
    assert main(["generate", "--adapter", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["calibrate", "--steered", str(tmp_path), "--data", "commonsense:all"]) == 2
    assert "not a saved SteeredModel" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "answer": ""}\n')
    assert main(["warmstart", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 1" in err and not (tmp_path / "o").exists()


def test_eval_limit_takes_a_seeded_subset_of_truthfulqa_test_questions(base_dir, data_file, tmp_path, capsys):
    from svdecode.data import sample, truthfulqa_mc_split

    steered = tmp_path / "steered"
    run = ["run", "--data", str(data_file), "--n-train", "8", "--n-calib", "4", "--base", str(base_dir)]
    assert main([*run, "--out", str(steered)]) == 0
    out = tmp_path / "eval"
    args = ["eval", "--steered", str(steered), "--tasks", "truthfulqa_gen", "--tqa-calib", "4"]
    args += ["--limit", "3", "--max-new-tokens", "2", "--methods", "peft,peft+svdecode", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    res = json.loads((out / "results.json").read_text())["tasks"]["truthfulqa_gen"]
    tqa, _ = truthfulqa_mc_split(4, None, 0)
    want = {ex.id for ex in sample(tqa.test, 3, 0)}
    assert res["n_items"] == 3
    for records in res["items"].values():
        assert {r["id"] for r in records} == want
    assert not want & {ex.id for ex in tqa.calib}


def test_eval_no_mu_curve_skips_the_strength_curve(base_dir, data_file, tmp_path, capsys):
    steered = tmp_path / "steered"
    run = ["run", "--data", str(data_file), "--n-train", "8", "--n-calib", "4", "--base", str(base_dir)]
    assert main([*run, "--out", str(steered)]) == 0
    args = ["eval", "--steered", str(steered), "--tasks", "truthfulqa_mc", "--tqa-calib", "4", "--limit", "2"]
    args += ["--methods", "peft,peft+svdecode"]
    for flag, out in (([], tmp_path / "with"), (["--no-mu-curve"], tmp_path / "without")):
        assert main([*args, *flag, "--out", str(out)]) == 0
    capsys.readouterr()
    task = "truthfulqa_mc"
    assert "mu_curve" in json.loads((tmp_path / "with" / "results.json").read_text())["tasks"][task]
    assert "mu_curve" not in json.loads((tmp_path / "without" / "results.json").read_text())["tasks"][task]
