"""The ``svdecode`` command line: generate, calibrate, warmstart, run, eval, report, demo, serve,
lm-eval. This module parses and dispatches (and turns errors and interrupts into one line); what
each subcommand does is in :mod:`svdecode.cli.commands`, the shared option groups in
:mod:`svdecode.cli.options`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from svdecode import checks
from svdecode.catalog import COMMONSENSE_DATASETS, TASK_NAMES, TRUTHFULQA_MC
from svdecode.cli.commands import (
    cmd_calibrate,
    cmd_demo,
    cmd_eval,
    cmd_generate,
    cmd_lm_eval,
    cmd_report,
    cmd_run,
    cmd_warmstart,
    load_model,
)
from svdecode.cli.options import (
    DTYPE_NAMES,
    NONNEG_INT,
    POS_INT,
    SEED,
    VersionAction,
    add_calibration_args,
    add_data_args,
    add_model_args,
    add_split_args,
    add_steering_args,
    number_type,
)
from svdecode.errors import SvdecodeError
from svdecode.runs import distributed

__all__ = [
    "DTYPE_NAMES",
    "add_data_args",
    "add_model_args",
    "add_steering_args",
    "build_parser",
    "load_model",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svdecode", description="Steering Vector Decoding for transformers + peft"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--version", action=VersionAction, help="print svdecode's and its dependencies' versions and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    _add_generate_parser(sub)

    _add_pipeline_parsers(sub)
    _add_eval_parser(sub)

    _add_output_parsers(sub)
    return parser


def _add_pipeline_parsers(sub) -> None:
    """calibrate, warmstart, run: the stages that produce a steered model directory."""
    c = sub.add_parser("calibrate", help="calibrate mu_bar on labelled data and save the steering artifact")
    add_model_args(c)
    add_steering_args(c)
    add_data_args(c, default_split="train")
    add_calibration_args(c)
    c.add_argument("--batch-size", type=POS_INT, default=8)
    c.add_argument("--out", help="write adapter + steering_config.json here")
    c.add_argument(
        "--overwrite", action="store_true", help="replace what --out holds (another calibration, another run)"
    )
    c.set_defaults(func=cmd_calibrate)

    from svdecode.train import add_warmstart_args

    w = sub.add_parser("warmstart", help="warm-start a PEFT adapter on task data (paper defaults)")
    add_data_args(w)
    add_split_args(w)
    w.add_argument("--base", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    w.add_argument("--out", required=True, help="output directory (written atomically)")
    add_warmstart_args(w)
    w.set_defaults(func=cmd_warmstart)

    r = sub.add_parser(
        "run", help="warm-start -> calibrate mu_bar -> save the artifact (skips finished stages)"
    )
    add_data_args(r)
    add_split_args(r, min_calib=1)
    r.add_argument("--base", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    r.add_argument("--out", required=True)
    add_calibration_args(r)
    r.add_argument(
        "--force", action="store_true", help="reuse a warm-start even on a base whose fingerprint differs"
    )
    add_warmstart_args(r)
    r.set_defaults(func=cmd_run)


def _add_output_parsers(sub) -> None:
    """report, demo, serve, lm-eval: what turns models and results into tables, runs and services."""
    rp = sub.add_parser("report", help="tables and plots from one or more results.json")
    rp.add_argument("results", nargs="+")
    rp.add_argument("--out", required=True)
    rp.add_argument("--labels", default=None, help="comma-separated run labels")
    rp.add_argument("--overwrite", action="store_true", help="replace a report of other results in --out")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser(
        "demo", help="the main job: warm-start, calibrate, evaluate and report on the default model"
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--base", default="default")
    d.add_argument("--n-train", type=POS_INT, default=128)
    d.add_argument("--n-test", type=POS_INT, default=40, help="test items per commonsense dataset")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument("--overwrite", action="store_true", help="redo every stage, replacing what --out holds")
    d.set_defaults(func=cmd_demo)
    from svdecode.integrations.server.cli import add_serve_args, run_serve

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server: steered, adapter and base models")
    add_serve_args(sv)
    sv.set_defaults(func=run_serve)

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


def _add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="steered generation from prompts")
    add_model_args(g)
    add_steering_args(g)
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompt-file", help="one prompt per line")
    g.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    g.add_argument(
        "--truncate",
        action="store_true",
        help="cut prompts too long for the model's context to their last tokens",
    )
    g.add_argument("--max-new-tokens", type=POS_INT, default=64)
    g.add_argument("--num-beams", type=POS_INT, default=1)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    g.add_argument("--temperature", type=number_type(checks.GENERATION_RULES["temperature"]), default=1.0)
    g.add_argument("--top-k", type=NONNEG_INT, default=50)
    g.add_argument("--top-p", type=number_type(checks.GENERATION_RULES["top_p"]), default=1.0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--batch-size", type=POS_INT, default=8)
    g.add_argument("--seed", type=SEED, default=None)
    g.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    g.set_defaults(func=cmd_generate)


def _add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate base / PEFT / PEFT+SVDecode / comparisons / ablations")
    add_model_args(e)
    e.add_argument(
        "--tasks",
        nargs="+",
        default=[TRUTHFULQA_MC],
        choices=TASK_NAMES,  # the registry's (svdecode.eval.tasks.TASKS), without importing the harness
    )
    e.add_argument(
        "--methods",
        default="base,peft,peft+svdecode,peft+logit_arith",
        help="comma-separated; ablations: no_projection, no_mask, alpha=0.3, lam=keep, estimator=median, "
        "decoding=beam4, groups alpha_sweep, estimators, lam_variants, decodings, ablations",
    )
    e.add_argument("--datasets", default=",".join(COMMONSENSE_DATASETS))
    e.add_argument(
        "--limit",
        type=POS_INT,
        default=None,
        help="seeded subset of the test items: per commonsense dataset, and of the TruthfulQA test questions",
    )
    e.add_argument(
        "--calib-data",
        default=None,
        help="commonsense calibration pool (default: the split recorded by svdecode run)",
    )
    e.add_argument("--n-calib", type=POS_INT, default=128)
    e.add_argument("--tqa-calib", type=POS_INT, default=100, help="TruthfulQA calibration questions")
    e.add_argument(
        "--tqa-test", type=POS_INT, default=None, help="TruthfulQA test questions (default: the rest)"
    )
    e.add_argument("--mc-prompt", default="qa_primer", choices=("qa_primer", "plain"))
    e.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the open-ended judge")
    e.add_argument("--judge-model", default=None)
    e.add_argument("--max-new-tokens", type=POS_INT, default=None)
    e.add_argument("--batch-size", type=POS_INT, default=8)
    e.add_argument("--seed", type=SEED, default=0)
    e.add_argument(
        "--warmstart-fraction",
        type=number_type(checks.POSITIVE_FLOAT),
        default=None,
        help="recorded for the warm-start-length plot",
    )
    e.add_argument("--out", required=True)
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the evaluation --out holds (caches are reused where valid)",
    )
    e.add_argument(
        "--no-mu-curve",
        action="store_true",
        help="skip the strength curve (one extra scoring pass over the multiple-choice test items)",
    )
    add_calibration_args(e)
    e.set_defaults(func=cmd_eval)


def _end_progress_bars() -> None:
    """Close the progress bars a stopped stage left open, so the message starts on its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status: 0 done, 2 a bad input or usage (one line on
    stderr naming it), 130 / 143 interrupted by Ctrl-C / SIGTERM (one line: what was saved and the
    command that resumes)."""
    from svdecode.cli.interrupts import Terminated, interrupted_line, sigterm_as_interrupt

    argv = list(sys.argv[1:] if argv is None else argv)
    ns = None
    try:
        with sigterm_as_interrupt():  # from the first moment: the heavy imports happen in ns.func
            try:
                ns = build_parser().parse_args(argv)
            except SystemExit as done:  # --help / --version (0), or a usage error argparse printed (2)
                return done.code if isinstance(done.code, int) else 2
            logging.basicConfig(
                level=logging.INFO if ns.verbose else logging.WARNING,
                format="%(levelname)s %(name)s: %(message)s",
            )
            if distributed.is_main():
                logging.getLogger("svdecode").setLevel(logging.INFO)
            else:  # under a launcher the main process reports; the others only warn
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
            return ns.func(ns)
    except KeyboardInterrupt as err:
        _end_progress_bars()
        if not distributed.is_main():  # under a launcher the main process says it, once
            pass
        elif ns is None:
            print("svdecode: interrupted before the command started; nothing was written", file=sys.stderr)
        else:
            print(interrupted_line(ns.command, getattr(ns, "out", None), argv, err), file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except (SvdecodeError, ValueError, OSError) as err:  # the library's errors name the input
        _end_progress_bars()
        if isinstance(err, distributed.MainProcessFailed):  # the main process printed why
            return 2
        message = " ".join(str(err).split())
        who = f" (process {distributed.rank()})" if not distributed.is_main() else ""
        print(f"svdecode {ns.command}{who}: error: {message}", file=sys.stderr)
        return 2
