"""What each ``svdecode`` subcommand does once its arguments are parsed: load, call the library or
the harness, print. The parser and the entry point are in :mod:`svdecode.cli`; heavy imports
happen inside each command so ``svdecode --help`` and Ctrl-C stay instant."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from svdecode import checks
from svdecode.cli.options import (
    KEEP,
    check_model_sources,
    read_prompt_file,
)
from svdecode.errors import InputError

log = logging.getLogger("svdecode")


def load_model(ns: argparse.Namespace):
    """A SteeredModel from --steered, or from --adapter (+ --base), with steering overrides."""
    from svdecode.model.loading import load_peft, load_tokenizer
    from svdecode.model.steered_model import SteeredModel
    from svdecode.runs import rundir

    check_model_sources(ns)
    mixed = False if ns.two_pass else None
    place = dict(dtype=ns.dtype, device=ns.device, device_map=ns.device_map)
    if ns.steered:
        model = SteeredModel.from_pretrained(
            ns.steered, base=ns.base, mixed_batch=mixed, force=ns.force, **place
        )
    elif ns.adapter:
        peft_model = load_peft(ns.adapter, ns.base, force=ns.force, **place)
        tok_src = (
            ns.adapter
            if (Path(ns.adapter) / "tokenizer_config.json").is_file()
            else ns.base or peft_model.active_peft_config.base_model_name_or_path or "default"
        )
        model = SteeredModel.from_peft(peft_model, load_tokenizer(tok_src), mixed_batch=mixed)
        model.adapter_digest = rundir.adapter_digest(ns.adapter)
    else:
        raise InputError("give --steered DIR or --adapter DIR (see svdecode warmstart to make an adapter)")
    model.steering.override(**{key: getattr(ns, key, None) for key in ("mu", "alpha", "method")})
    if getattr(ns, "lam", None) is not None:  # None is a value here (the scoring mode), so set directly
        model.steering.lam = None if ns.lam == KEEP else ns.lam
        model.steering.validate()
    return model


def cmd_generate(ns: argparse.Namespace) -> int:
    from svdecode.data import format_prompt

    prompts = list(ns.prompt or []) + read_prompt_file(ns.prompt_file)
    if not prompts:
        raise InputError("give --prompt TEXT (repeatable) or --prompt-file FILE")
    kwargs: dict[str, Any] = dict(
        max_new_tokens=ns.max_new_tokens, num_beams=ns.num_beams, do_sample=ns.sample
    )
    if ns.sample:
        kwargs.update(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p)
    if ns.stop:
        if not all(ns.stop):
            raise InputError("--stop must not be empty (an empty stop string would stop at once)")
        kwargs["stop_strings"] = ns.stop
    checks.check_generation(kwargs, {k: "--" + k.replace("_", "-") for k in kwargs})
    model = load_model(ns)
    prompts = [format_prompt(model.tokenizer, p, ns.chat) for p in prompts]
    if ns.seed is not None:
        import torch

        torch.manual_seed(ns.seed)
    s = model.steering
    _note_calibrated(ns)
    print(f"# method={s.method} mu={s.mu:.4g} alpha={s.alpha} lam={s.lam}", file=sys.stderr)
    texts = model.generate_text(
        prompts, batch_size=ns.batch_size, progress=True, truncate=ns.truncate, **kwargs
    )
    for prompt, text in zip(prompts, texts, strict=True):
        if ns.json:
            print(json.dumps({"prompt": prompt, "completion": text}))
        else:
            print(text)
    return 0


def _note_calibrated(ns: argparse.Namespace) -> None:
    """--adapter DIR decodes with the plain adapter (mu = 0 unless --mu) even when DIR holds a
    calibration: say which strength is used and how to get the other."""
    from svdecode.model.config import CONFIG_NAME, ConfigError, SteeringConfig

    if not ns.adapter or ns.mu is not None or not (Path(ns.adapter) / CONFIG_NAME).is_file():
        return
    try:
        calibrated = f"mu={SteeringConfig.load(ns.adapter).mu:.4g}"
    except ConfigError:
        calibrated = "a calibrated strength"
    log.warning(
        "note: --adapter %s decodes with mu = 0 (the plain adapter); its %s holds %s: pass --steered %s to "
        "use it, or --mu to set one",
        ns.adapter, CONFIG_NAME, calibrated, ns.adapter,
    )  # fmt: skip


def cmd_calibrate(ns: argparse.Namespace) -> int:
    from svdecode.data import load_task, sample
    from svdecode.eval.choices import calibration_choices
    from svdecode.model.config import SteeringConfig
    from svdecode.runs import distributed, rundir

    check_model_sources(ns)
    examples = sample(
        load_task(ns.data, ns.split, ns.prompt_col, ns.answer_col, ns.skip_bad_rows), ns.limit, ns.seed
    )
    cal = calibration_config(ns, batch_size=ns.batch_size)
    # the data's own multiple-choice view (TruthfulQA MC, commonsense labels) when it has one
    choices, metric = calibration_choices(examples)
    if not ns.out:
        model = load_model(ns)
        result = model.calibrate(examples, cal, choices=choices, choice_metric=metric)
        print(calibration_report(result.mu, result.objective, result.stats))
        return 0
    out = Path(ns.out)
    request = _calibration_request(ns, examples, cal, choices, metric)
    with rundir.locked(out):
        if distributed.on_main(
            lambda: rundir.reusable_for_adapter(
                out, request["adapter_sha256"], "calibration", request, ns.overwrite
            )
        ):
            cfg = SteeringConfig.load(out)
            print(calibration_report(cfg.mu, cfg.objective, cfg.calibration))
            print(f"reused: {out} holds this calibration already (pass --overwrite to compute it again)")
            return 0
        model = load_model(ns)
        result = model.calibrate(examples, cal, choices=choices, choice_metric=metric)
        print(calibration_report(result.mu, result.objective, result.stats))
        path = model.save_pretrained(out, overwrite=ns.overwrite, request=request)
    print(f"saved steering artifact: {path}")
    return 0


def _calibration_request(ns: argparse.Namespace, examples, cal, choices, metric) -> dict[str, Any]:
    """What ``svdecode calibrate`` is asked (:func:`svdecode.calibration.config.calibration_request`):
    the adapter (by content), base, data, calibration settings and the steering overrides."""
    from svdecode.calibration.config import calibration_request
    from svdecode.fileio import short_hash
    from svdecode.runs import rundir

    source = ns.steered or ns.adapter
    data = {"spec": ns.data, "split": ns.split, "limit": ns.limit, "seed": ns.seed,
            "n": len(examples), "ids_sha256": short_hash([ex.id for ex in examples])}  # fmt: skip
    return calibration_request(
        cal, data, rundir.adapter_digest(source) if source else None, choices, metric,
        base=ns.base, overrides={k: getattr(ns, k) for k in ("mu", "alpha", "lam", "method")},
    )  # fmt: skip


def calibration_config(ns: argparse.Namespace, **fields: Any):
    """The :class:`~svdecode.calibration.config.CalibrationConfig` of the calibration flags
    (cli_options.add_calibration_args) that calibrate, run and eval all take, with ``fields``."""
    from svdecode.calibration.config import CalibrationConfig

    return CalibrationConfig(
        objective=ns.objective, guard=not ns.no_guard, folds=ns.folds, bins=ns.confidence_bins,
        seed=ns.seed, **fields,
    )  # fmt: skip


def calibration_report(mu: float, objective: str, st: dict[str, Any]) -> str:
    """What calibration decided, in a few lines (from a result's or an artifact's statistics)."""
    guard = st.get("guard") or {}
    lines = [
        f"mu_bar = {mu:.6g} ({objective}, {st['n_tokens']} answer tokens from {st['n_examples']} examples, "
        f"{st.get('n_choice_items', 0)} choice items)",
        "objectives: " + ", ".join(f"{k}={v:.4g}" for k, v in st["estimates"].items()),
        "mu*_t quantiles: " + ", ".join(f"{k}={v:.3g}" for k, v in st["quantiles"].items()),
        f"gold token outside the confidence mask: {100 * st['frac_gold_outside_mask']:.1f}%",
    ]
    sel = st.get("selection")
    if sel:
        unit = "on the task metric" if sel["judge"] == "task" else "in log-likelihood per answer token"
        lines.append(
            f"candidates (held-out gain over mu = 0 {unit}, {sel['n_items']} items, {sel['folds']} folds; "
            f"score = {sel['criterion']}):"
        )
        for name, c in sel["candidates"].items():
            mu = c["mu"] if isinstance(c["mu"], list) else [c["mu"]]
            mark = "  <- chosen" if name == sel["chosen"] else ""
            lines.append(
                f"  {name:8s} mu = {', '.join(f'{m:+.4g}' for m in mu):24s} cv gain {c['cv_gain']:+.4g} "
                f"± {c['se']:.3g}  score {c['score']:+.4g}{mark}"
            )
        lines.append(
            f"  decision: chosen {sel['chosen']}; nested gain {sel['nested_gain']:+.4g} ± {sel['nested_se']:.3g}; "
            f"applied: {sel.get('applied', sel['chosen'])}"
        )
    if guard.get("unbounded"):
        lines.append(f"steering off: {guard.get('reason')}")
    elif guard.get("passed") is False:
        lines.append(f"steering off: calibration found no gain ({guard.get('reason')})")
    elif guard.get("enabled"):
        lines.append(f"guard passed: {guard.get('reason')}")
    bins = st.get("bins")
    if bins:
        kept = "applied" if bins.get("applied") else "not applied (not the chosen candidate)"
        kept += f"; {bins['note']}" if bins.get("note") else ""
        lines.append(f"confidence-binned strengths [{', '.join(f'{m:.3g}' for m in bins['mu'])}]: {kept}")
    return "\n".join(lines)


def cmd_warmstart(ns: argparse.Namespace) -> int:
    from svdecode.data import load_task
    from svdecode.train import trainer_args_from_args, warmstart, warmstart_config_from_args
    from svdecode.train.pipeline import split_pool

    cfg = warmstart_config_from_args(ns)
    check_model_sources(ns)
    pool = load_task(ns.data, ns.split, ns.prompt_col, ns.answer_col, ns.skip_bad_rows)
    splits = split_pool(pool, _n_train(ns), ns.n_calib, ns.n_test, ns.seed)
    splits.manifest["source"] = ns.data
    result = warmstart(
        splits.train,
        ns.out,
        cfg,
        base=ns.base or "default",
        manifest=splits.manifest,
        resume=ns.resume,
        overwrite=ns.overwrite,
        trainer_args=trainer_args_from_args(ns),
    )
    print(
        f"warm-started {result.method} on {result.num_examples} examples: {result.steps} steps in "
        f"{result.seconds:.0f} s, final loss {result.final_loss}, adapter in {result.out_dir}"
    )
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    from svdecode.data import load_task
    from svdecode.eval.choices import calibration_choices
    from svdecode.train import trainer_args_from_args, warmstart_config_from_args
    from svdecode.train.pipeline import SplitOptions, run_pipeline

    cfg = warmstart_config_from_args(ns)
    check_model_sources(ns)
    pool = load_task(ns.data, ns.split, ns.prompt_col, ns.answer_col, ns.skip_bad_rows)
    res = run_pipeline(
        pool,
        ns.out,
        cfg,
        base=ns.base or "default",
        splits=SplitOptions(_n_train(ns), ns.n_calib, ns.n_test, ns.seed, source=ns.data),
        calibration=calibration_config(ns),
        choices=calibration_choices,
        resume=ns.resume,
        overwrite=ns.overwrite,
        force=ns.force,
        trainer_args=trainer_args_from_args(ns),
    )
    st = res.model.steering
    ran = ", ".join(res.stages_run) or "nothing (both stages were asked the same before and are reused)"
    print(f"ran: {ran}; mu_bar = {st.mu:.6g} ({st.objective}); artifact in {res.out_dir}")
    if res.calibration is not None:
        print(calibration_report(res.calibration.mu, res.calibration.objective, res.calibration.stats))
    for stage, secs in res.seconds.items():
        print(f"  {stage}: {secs:.0f} s")
    return 0


def _n_train(ns: argparse.Namespace) -> int | None:
    """--n-train, else --limit (both >= 1 when given: 0 never means "all")."""
    return ns.n_train if ns.n_train is not None else ns.limit


def cmd_eval(ns: argparse.Namespace) -> int:
    from svdecode.eval import EvalOptions, OpenAIJudge, run_eval
    from svdecode.eval.runner import check_eval_dir, check_method_names
    from svdecode.eval.tasks import TASKS
    from svdecode.runs import rundir

    check_model_sources(ns)
    method_names = ns.methods.split(",")
    check_method_names(method_names)
    check_eval_dir(ns.out, ns.overwrite)
    data, calib = {}, {}
    for name in ns.tasks:
        data[name], calib[name] = TASKS[name].cli_data(ns)
    judge = OpenAIJudge(ns.judge_url, ns.judge_model) if ns.judge_url else None
    options = EvalOptions(  # limit: recorded (the data above is sampled already; sampling again keeps it)
        tuple(method_names), seed=ns.seed, limit=ns.limit, batch_size=ns.batch_size,
        max_new_tokens=ns.max_new_tokens, mc_prompt_style=ns.mc_prompt, mu_curves=not ns.no_mu_curve,
    )  # fmt: skip
    with rundir.locked(ns.out):  # a second writer is stopped before the model loads
        results = run_eval(
            load_model(ns),
            ns.out,
            tasks=ns.tasks,
            calib=calib,
            data=data,
            judge=judge,
            options=options,
            calibration=calibration_config(ns),
            run_info={"command": " ".join(sys.argv), "warmstart_fraction": ns.warmstart_fraction},
            overwrite=ns.overwrite,
        )
    print(Path(ns.out, "results.md").read_text())
    return 0 if results else 1


def cmd_report(ns: argparse.Namespace) -> int:
    from svdecode.eval.report import render_report

    labels = ns.labels.split(",") if ns.labels else None
    path = render_report(ns.results, ns.out, labels=labels, overwrite=ns.overwrite)
    print(f"report: {path}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from svdecode.cli.demo import DemoConfig, run_demo

    cfg = DemoConfig(out_dir=ns.out, base=ns.base, n_train=ns.n_train, n_test=ns.n_test, seed=ns.seed)
    run_demo(cfg, overwrite=ns.overwrite)
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
