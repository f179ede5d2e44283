"""The ``svdecode`` command line: generate, calibrate, warmstart, run, eval, report, demo, lm-eval."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("svdecode")


KEEP = "keep"


def _lam(text: str) -> float | str:
    """``-inf`` (paper), a float, or ``keep`` (scoring mode: masked tokens keep z_phi)."""
    if text.lower() in (KEEP, "none"):
        return KEEP
    value = float(text)
    if math.isnan(value) or value == math.inf:
        raise argparse.ArgumentTypeError(f"lam must be -inf, a finite number or 'keep', got {text}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model")
    src.add_argument(
        "--steered", help="a directory written by SteeredModel.save_pretrained / svdecode calibrate"
    )
    src.add_argument("--adapter", help="a PEFT adapter directory (e.g. from svdecode warmstart)")
    src.add_argument(
        "--base", default=None, help="base model: hub id, local path or 'default' (SmolLM2-135M-Instruct)"
    )
    src.add_argument(
        "--two-pass", action="store_true", help="never use one mixed-adapter forward pass (LoRA)"
    )
    add_placement_args(src)


def add_placement_args(group) -> None:
    from svdecode.models import DTYPE_NAMES

    group.add_argument(
        "--dtype",
        default="float32",
        type=str.lower,
        choices=DTYPE_NAMES,
        help="weights' dtype (auto = the checkpoint's); the steering math is fp32 whatever this is",
    )
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: cpu, or --device-map's)"
    )
    group.add_argument(
        "--device-map", default=None, help="transformers/accelerate placement, e.g. auto (excludes --device)"
    )


def add_steering_args(p: argparse.ArgumentParser) -> None:
    st = p.add_argument_group("steering")
    st.add_argument("--mu", type=float, default=None, help="steering strength (default: the calibrated one)")
    st.add_argument("--alpha", type=float, default=None, help="confidence-mask threshold (eq. 12; paper 0.1)")
    st.add_argument(
        "--lam", type=_lam, default=None, help="value for masked tokens: -inf (paper), a float, or 'keep'"
    )
    st.add_argument(
        "--method", default=None, choices=("svdecode", "prob_space", "logit_arithmetic", "adapted", "base")
    )


def load_model(ns: argparse.Namespace):
    """A SteeredModel from --steered, or from --adapter (+ --base), with steering overrides."""
    from svdecode.models import load_peft, load_tokenizer
    from svdecode.steered_model import SteeredModel

    mixed = False if ns.two_pass else None
    place = dict(dtype=ns.dtype, device=ns.device, device_map=ns.device_map)
    if ns.steered:
        model = SteeredModel.from_pretrained(ns.steered, base=ns.base, mixed_batch=mixed, **place)
    elif ns.adapter:
        peft_model = load_peft(ns.adapter, ns.base, **place)
        tok_src = (
            ns.adapter
            if (Path(ns.adapter) / "tokenizer_config.json").is_file()
            else ns.base or peft_model.active_peft_config.base_model_name_or_path or "default"
        )
        model = SteeredModel.from_peft(peft_model, load_tokenizer(tok_src), mixed_batch=mixed)
    else:
        raise SystemExit(
            "error: give --steered DIR or --adapter DIR (see svdecode warmstart to make an adapter)"
        )
    for key in ("mu", "alpha", "method"):
        if getattr(ns, key, None) is not None:
            setattr(model.steering, key, getattr(ns, key))
    if getattr(ns, "lam", None) is not None:
        model.steering.lam = None if ns.lam == KEEP else ns.lam
    model.steering.validate()
    return model


def cmd_generate(ns: argparse.Namespace) -> int:
    from svdecode.data import format_prompt

    model = load_model(ns)
    prompts = list(ns.prompt or [])
    if ns.prompt_file:
        prompts += [
            line.rstrip("\n") for line in Path(ns.prompt_file).read_text().splitlines() if line.strip()
        ]
    if not prompts:
        raise SystemExit("error: give --prompt TEXT (repeatable) or --prompt-file FILE")
    prompts = [format_prompt(model.tokenizer, p, ns.chat) for p in prompts]
    kwargs = dict(max_new_tokens=ns.max_new_tokens, num_beams=ns.num_beams, do_sample=ns.sample)
    if ns.sample:
        kwargs.update(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p)
    if ns.stop:
        kwargs["stop_strings"] = ns.stop
    if ns.seed is not None:
        import torch

        torch.manual_seed(ns.seed)
    s = model.steering
    print(f"# method={s.method} mu={s.mu:.4g} alpha={s.alpha} lam={s.lam}", file=sys.stderr)
    texts = model.generate_text(prompts, batch_size=ns.batch_size, progress=True, **kwargs)
    for prompt, text in zip(prompts, texts, strict=True):
        if ns.json:
            print(json.dumps({"prompt": prompt, "completion": text}))
        else:
            print(text)
    return 0


def cmd_calibrate(ns: argparse.Namespace) -> int:
    from svdecode.data import load_task, sample

    model = load_model(ns)
    examples = sample(
        load_task(ns.data, ns.split, ns.prompt_col, ns.answer_col, ns.skip_bad_rows), ns.limit, ns.seed
    )
    result = model.calibrate(examples, estimator=ns.estimator, batch_size=ns.batch_size)
    st = result.stats
    lines = [
        f"mu_bar = {result.mu:.6g} ({ns.estimator}, {st['n_tokens']} answer tokens from {st['n_examples']} examples)",
        "estimates: " + ", ".join(f"{k}={v:.4g}" for k, v in st["estimates"].items()),
        "mu*_t quantiles: " + ", ".join(f"{k}={v:.3g}" for k, v in st["quantiles"].items()),
        f"gold token outside the confidence mask: {100 * st['frac_gold_outside_mask']:.1f}%",
    ]
    print("\n".join(lines))
    if ns.out:
        path = model.save_pretrained(ns.out)
        print(f"saved steering artifact: {path}")
    return 0


def cmd_warmstart(ns: argparse.Namespace) -> int:
    from svdecode.data import load_task
    from svdecode.pipeline import split_pool
    from svdecode.warmstart import warmstart, warmstart_config_from_args

    cfg = warmstart_config_from_args(ns)
    pool = load_task(ns.data, ns.split, ns.prompt_col, ns.answer_col, ns.skip_bad_rows)
    splits = split_pool(pool, ns.n_train or ns.limit, ns.n_calib, ns.n_test, ns.seed)
    splits.manifest["source"] = ns.data
    result = warmstart(
        splits.train,
        ns.out,
        cfg,
        base=ns.base or "default",
        manifest=splits.manifest,
        resume=ns.resume,
        overwrite=ns.overwrite,
    )
    print(
        f"warm-started {result.method} on {result.num_examples} examples: {result.steps} steps in "
        f"{result.seconds:.0f} s, final loss {result.final_loss}, adapter in {result.out_dir}"
    )
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    from svdecode.data import load_task
    from svdecode.pipeline import run_pipeline
    from svdecode.warmstart import warmstart_config_from_args

    pool = load_task(ns.data, ns.split, ns.prompt_col, ns.answer_col, ns.skip_bad_rows)
    res = run_pipeline(
        pool,
        ns.out,
        warmstart_config_from_args(ns),
        base=ns.base or "default",
        n_train=ns.n_train or ns.limit,
        n_calib=ns.n_calib,
        n_test=ns.n_test,
        seed=ns.seed,
        estimator=ns.estimator,
        source=ns.data,
        resume=ns.resume,
    )
    st = res.model.steering
    ran = ", ".join(res.stages_run) or "nothing (all stages were complete)"
    print(f"ran: {ran}; mu_bar = {st.mu:.6g} ({st.estimator}); artifact in {res.out_dir}")
    for stage, secs in res.seconds.items():
        print(f"  {stage}: {secs:.0f} s")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from svdecode.data import load_commonsense, sample, truthfulqa_mc_split
    from svdecode.evaluate import OpenAIJudge, run_eval

    model = load_model(ns)
    tqa, mc_test = truthfulqa_mc_split(ns.tqa_calib, ns.tqa_test, ns.seed)
    data, calib = {}, {}
    if "truthfulqa_mc" in ns.tasks:
        data["truthfulqa_mc"] = sample(mc_test, ns.limit, ns.seed)
        calib["truthfulqa_mc"] = tqa.calib
    if "truthfulqa_gen" in ns.tasks:
        data["truthfulqa_gen"] = sample(tqa.test, ns.limit, ns.seed)
        calib["truthfulqa_gen"] = tqa.calib
    if "commonsense" in ns.tasks:
        data["commonsense"] = [
            ex
            for name in ns.datasets.split(",")
            for ex in sample(load_commonsense(name, "test"), ns.limit, ns.seed)
        ]
        if ns.calib_data:
            from svdecode.data import load_task

            calib["commonsense"] = sample(load_task(ns.calib_data, "train"), ns.n_calib, ns.seed)
        else:
            calib["commonsense"] = _recorded_calibration_split(ns)
    judge = OpenAIJudge(ns.judge_url, ns.judge_model) if ns.judge_url else None
    results = run_eval(
        model,
        ns.out,
        tasks=ns.tasks,
        method_names=ns.methods.split(","),
        calib=calib,
        data=data,
        seed=ns.seed,
        batch_size=ns.batch_size,
        max_new_tokens=ns.max_new_tokens,
        judge=judge,
        mc_prompt_style=ns.mc_prompt,
        run_info={"command": " ".join(sys.argv), "warmstart_fraction": ns.warmstart_fraction},
    )
    print(Path(ns.out, "results.md").read_text())
    return 0 if results else 1


def _recorded_calibration_split(ns: argparse.Namespace):
    """The calibration split recorded by ``svdecode run`` next to the adapter."""
    from svdecode.data import load_task, splits_from_manifest

    src = Path(ns.steered or ns.adapter)
    manifest = src / "split_manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} not found: give --calib-data to calibrate the commonsense methods"
        )
    recorded = json.loads(manifest.read_text())
    return splits_from_manifest(load_task(recorded.get("source", "commonsense:all"), "train"), recorded).calib


def cmd_report(ns: argparse.Namespace) -> int:
    from svdecode.report import render_report

    path = render_report(ns.results, ns.out, labels=ns.labels.split(",") if ns.labels else None)
    print(f"report: {path}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from svdecode.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out_dir=ns.out, base=ns.base, n_train=ns.n_train, n_test=ns.n_test, seed=ns.seed))
    return 0


def cmd_lm_eval(ns: argparse.Namespace) -> int:
    try:
        from svdecode.integrations.lm_eval import main as lm_eval_main
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("lm_eval"):
            raise
        raise SystemExit(
            "svdecode lm-eval: error: lm-eval is not installed: pip install 'svdecode[lm-eval]'"
        ) from err
    return lm_eval_main(ns.args)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from svdecode.versions import dependency_versions

        for name, version in dependency_versions().items():
            print(f"{name} {version}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svdecode", description="Steering Vector Decoding for transformers + peft"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--version", action=_VersionAction, help="print svdecode's and its dependencies' versions and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="steered generation from prompts")
    add_model_args(g)
    add_steering_args(g)
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompt-file", help="one prompt per line")
    g.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("calibrate", help="calibrate mu_bar on labelled data and save the steering artifact")
    add_model_args(c)
    add_steering_args(c)
    add_data_args(c, default_split="train")
    c.add_argument("--estimator", default="mean", choices=("mean", "median", "trimmed", "pooled"))
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--out", help="write adapter + steering_config.json here")
    c.set_defaults(func=cmd_calibrate)

    from svdecode.warmstart import add_warmstart_args

    w = sub.add_parser("warmstart", help="warm-start a PEFT adapter on task data (paper defaults)")
    add_data_args(w)
    _add_split_args(w)
    w.add_argument("--base", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    w.add_argument("--out", required=True, help="output directory (written atomically)")
    add_warmstart_args(w)
    w.set_defaults(func=cmd_warmstart)

    r = sub.add_parser(
        "run", help="warm-start -> calibrate mu_bar -> save the artifact (skips finished stages)"
    )
    add_data_args(r)
    _add_split_args(r)
    r.add_argument("--base", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    r.add_argument("--out", required=True)
    r.add_argument("--estimator", default="mean", choices=("mean", "median", "trimmed", "pooled"))
    add_warmstart_args(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate base / PEFT / PEFT+SVDecode / comparisons / ablations")
    add_model_args(e)
    e.add_argument(
        "--tasks",
        nargs="+",
        default=["truthfulqa_mc"],
        choices=("truthfulqa_mc", "commonsense", "truthfulqa_gen"),
    )
    e.add_argument(
        "--methods",
        default="base,peft,peft+svdecode,peft+logit_arith",
        help="comma-separated; ablations: no_projection, no_mask, alpha=0.3, lam=keep, estimator=median, "
        "decoding=beam4, groups alpha_sweep, estimators, lam_variants, decodings, ablations",
    )
    e.add_argument(
        "--datasets", default="boolq,piqa,social_i_qa,hellaswag,winogrande,ARC-Easy,ARC-Challenge,openbookqa"
    )
    e.add_argument(
        "--limit",
        type=int,
        default=None,
        help="seeded subset of the test items: per commonsense dataset, and of the TruthfulQA test questions",
    )
    e.add_argument(
        "--calib-data",
        default=None,
        help="commonsense calibration pool (default: the split recorded by svdecode run)",
    )
    e.add_argument("--n-calib", type=int, default=128)
    e.add_argument("--tqa-calib", type=int, default=100, help="TruthfulQA calibration questions")
    e.add_argument("--tqa-test", type=int, default=None, help="TruthfulQA test questions (default: the rest)")
    e.add_argument("--mc-prompt", default="qa_primer", choices=("qa_primer", "plain"))
    e.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the open-ended judge")
    e.add_argument("--judge-model", default=None)
    e.add_argument("--max-new-tokens", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--warmstart-fraction", type=float, default=None, help="recorded for the warm-start-length plot"
    )
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_eval)

    rp = sub.add_parser("report", help="tables and plots from one or more results.json")
    rp.add_argument("results", nargs="+")
    rp.add_argument("--out", required=True)
    rp.add_argument("--labels", default=None, help="comma-separated run labels")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser(
        "demo", help="the main job: warm-start, calibrate, evaluate and report on the default model"
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--base", default="default")
    d.add_argument("--n-train", type=int, default=128)
    d.add_argument("--n-test", type=int, default=40, help="test items per commonsense dataset")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    # lm-eval's own arguments pass through untouched: with "+" as this parser's only prefix, every
    # "--flag" after "lm-eval" is a plain token for REMAINDER instead of an unknown option here.
    le = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness with the svdecode model and the offline svdecode_* tasks "
        "(takes lm-eval's arguments, e.g. --model svdecode --model_args adapter=DIR --tasks ...)",
        add_help=False,
        prefix_chars="+",
    )
    le.add_argument("args", nargs=argparse.REMAINDER)
    le.set_defaults(func=cmd_lm_eval)
    return parser


def _add_split_args(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("split (seeded with --seed, recorded in split_manifest.json)")
    s.add_argument("--n-train", type=int, default=None, help="training examples (default: all not held out)")
    s.add_argument("--n-calib", type=int, default=128, help="calibration examples held out of training")
    s.add_argument("--n-test", type=int, default=None, help="test examples held out of training")


def add_data_args(p: argparse.ArgumentParser, default_split: str = "train") -> None:
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        required=True,
        help="commonsense:<names|all>, truthfulqa, a .jsonl/.json/.csv file, or hub:<name>",
    )
    d.add_argument("--split", default=default_split)
    d.add_argument("--prompt-col", default="prompt")
    d.add_argument("--answer-col", default="answer")
    d.add_argument("--limit", type=int, default=None, help="use a seeded subset of this many examples")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--skip-bad-rows", action="store_true", help="skip malformed rows (counted) instead of failing"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("svdecode").setLevel(logging.INFO)
    from svdecode.config import ConfigError
    from svdecode.data import DataError
    from svdecode.models import ModelLoadError

    try:
        return ns.func(ns)
    except (ConfigError, DataError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"svdecode {ns.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
