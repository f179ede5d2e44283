"""lm-eval integration: the ``svdecode`` model, the offline ``svdecode_*`` tasks, ``svdecode lm-eval``.

Cross-checks (tiny random-weight models, a few items; the default model in the slow test):
mu=0 equals lm-eval's own ``hf`` model with ``peft=<adapter>`` request by request; a nonzero mu
equals ``SteeredModel.score``/``generate`` on the same strings and differs from mu=0; TruthfulQA
MC1/MC2 from lm-eval equal svdecode's own evaluation on the same questions.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed: pip install 'svdecode[lm-eval]'")

import lm_eval
import numpy as np
import torch
from conftest import TEST_ROWS, TRUTHFULQA_ROWS, make_model, make_tokenizer
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.utils import apply_template
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import svdecode.integrations.lm_eval as le
from svdecode.cli import main as cli_main
from svdecode.integrations.lm_eval_tasks import loaders
from svdecode.model.config import SteeringConfig
from svdecode.model.loading import ModelLoadError
from svdecode.model.steered_model import SteeredModel

MU = 10.0  # the saved (calibrated) strength of the fixture adapter; large enough to change greedy text
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"

# -- a tiny world: base model, LoRA adapter + steering_config.json, task data in the shared layout --

TQA = [
    {
        "question": "What is the capital of France?",
        "mc1_targets": {"Paris is the capital of France.": 1, "The sky is blue.": 0, "I have no comment.": 0},
        "mc2_targets": {
            "Paris is the capital of France.": 1,
            "Paris.": 1,
            "The sky is blue.": 0,
            "I have no comment.": 0,
        },
    },
    {
        "question": "What is the sky?",
        "mc1_targets": {"The sky is blue.": 1, "Paris.": 0, "I have no comment.": 0},
        "mc2_targets": {
            "The sky is blue.": 1,
            "I have no comment.": 1,
            "Paris is the capital.": 0,
            "Paris.": 0,
        },
    },
    {
        "question": "Is Paris the capital of France?",
        "mc1_targets": {"yes": 1, "no": 0},
        "mc2_targets": {"yes": 1, "no": 0, "I have no comment.": 0},
    },
]

ASK = "Please choose the correct answer to the question: "
COMMONSENSE = {
    "ARC-Easy": [
        (
            f"{ASK}What is blue?\n\nAnswer1: the sky Answer2: Paris Answer3: France\n\nAnswer format: answer1/answer2/answer3",
            "answer1",
        ),
        (
            f"{ASK}What is Paris?\n\nAnswer1: blue Answer2: the capital of France\n\nAnswer format: answer1/answer2",
            "answer2",
        ),
    ],
    "boolq": [
        (
            "Please answer the following question with true or false, question: is the sky blue?\n\nAnswer format: true/false",
            "true",
        ),
        (
            "Please answer the following question with true or false, question: is paris the sky?\n\nAnswer format: true/false",
            "false",
        ),
    ],
    "winogrande": [
        (
            "Please choose the correct answer to fill in the blank to complete the given sentence: "
            "Paris is the capital so _ is blue.\n\nOption1: Paris Option2: the sky Answer format: option1/option2",
            "option2",
        )
    ],
    "piqa": [
        (
            "Please choose the correct solution to the question: What is the sky?\n\nSolution1: blue\n\n"
            "Solution2: Paris\n\nAnswer format: solution1/solution2",
            "solution1",
        )
    ],
    "social_i_qa": [
        (
            f"{ASK}Paris is the capital. What is France?\n\nAnswer1: yes Answer2: no Answer3: blue\n\nAnswer format: answer1/answer2/answer3",
            "answer1",
        )
    ],
    "hellaswag": [
        (
            "Please choose the correct ending to complete the given sentence: Sky: the sky is\n\nEnding1: blue. "
            "Ending2: Paris. Ending3: France. Ending4: go home [title] no.\n\nAnswer format: ending1/ending2/ending3/ending4",
            "ending1",
        )
    ],
}
COMMONSENSE["ARC-Challenge"] = COMMONSENSE["ARC-Easy"]
COMMONSENSE["openbookqa"] = COMMONSENSE["ARC-Easy"]


def _write_data(root: Path) -> None:
    (root / "truthfulqa").mkdir(parents=True)
    (root / "truthfulqa" / "mc_task.json").write_text(json.dumps(TQA))
    for name, rows in COMMONSENSE.items():
        folder = root / "commonsense" / name
        folder.mkdir(parents=True)
        records = [
            {"instruction": i, "input": "", "output": f"the correct answer is {a}", "answer": a}
            for i, a in rows
        ]
        (folder / f"{loaders.EVAL_FILES.get(name, 'test')}.json").write_text(json.dumps(records))
        if name not in loaders.EVAL_FILES:  # the few-shot pool
            (folder / "train.json").write_text(json.dumps(records))


def _save_base(path: Path, hidden: int = 32) -> None:
    tok = make_tokenizer()
    model = make_model(len(tok), hidden=hidden)
    model.config.max_position_embeddings = 2048  # RoPE: the 6-shot TruthfulQA primer fits untruncated
    model.save_pretrained(path)
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_eval")
    _save_base(root / "base")
    torch.manual_seed(1)  # init_lora_weights=False: a random (nonzero) LoRA, so phi differs from theta
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(root / "base"),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(root / "adapter")
    SteeringConfig(mu=MU, calibration={"mu": MU}).save(root / "adapter")
    peft_model.save_pretrained(root / "bare_adapter")  # no steering_config.json
    _save_base(root / "wide_base", hidden=48)
    _write_data(root / "data")
    return {k: root / k for k in ("base", "adapter", "bare_adapter", "wide_base", "data")}


@pytest.fixture()
def data_env(world, monkeypatch):
    monkeypatch.setenv(loaders.DATA_ENV, str(world["data"]))


def _evaluate(model: str, model_args: dict, tasks: list[str], **kw) -> dict:
    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=le.task_manager(include_defaults=False),
        log_samples=True,
        device="cpu",
        batch_size=2,
        **kw,
    )


def _logliks(results: dict) -> dict[tuple[str, int, int], float]:
    """(task, doc, request index) -> log-likelihood, from logged samples."""
    return {
        (task, s["doc_id"], i): float(r[0][0])
        for task, samples in results["samples"].items()
        for s in samples
        for i, r in enumerate(s["resps"])
    }


def _svd(world, **extra) -> dict:
    return {"adapter": str(world["adapter"]), "dtype": "float32", **extra}


# -- import hygiene -------------------------------------------------------------------------------


def test_import_svdecode_does_not_import_lm_eval():
    code = (
        "import sys, svdecode, svdecode.cli, svdecode.integrations; svdecode.SteeredModel; "
        "assert 'lm_eval' not in sys.modules, 'lm_eval imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_is_registered_on_import():
    assert get_model("svdecode") is le.SVDecodeLM


# -- task configs ---------------------------------------------------------------------------------


def _task(name: str):
    return le.task_manager(include_defaults=False).load([name])["tasks"][name]


def test_task_names_and_index(data_env):
    names = le.task_manager(include_defaults=False).all_tasks
    shipped = [
        f"svdecode_{n}" for n in ("truthfulqa_mc1", "truthfulqa_mc2", "arc_easy", "arc_challenge", "boolq")
    ]
    shipped += [f"svdecode_{n}" for n in ("openbookqa", "social_iqa", "winogrande", "piqa", "hellaswag")]
    assert sorted(names) == le.task_names() == sorted([*shipped, *le.TAGS])


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("svdecode_truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml"),
        ("svdecode_arc_easy", "arc/arc_easy.yaml"),
        ("svdecode_openbookqa", "openbookqa/openbookqa.yaml"),
        ("svdecode_piqa", "piqa/piqa.yaml"),
    ],
)
def test_prompts_equal_lm_evals_own_templates(data_env, ours, theirs):
    """Where the data has the hub's fields, lm-eval's own task template renders our docs to the
    same context, choices and target as our config (guards against lm-eval changing its prompt)."""
    cfg = load_yaml(LM_EVAL_TASKS / theirs, resolve_func=False)
    task = _task(ours)
    docs = list(task.eval_docs)
    assert docs
    for doc in docs:
        text = cfg["doc_to_text"]
        expected_text = apply_template(text, doc) if "{" in text else doc[text]
        assert task.doc_to_text(doc) == expected_text
        assert task.doc_to_choice(doc) == eval(apply_template(cfg["doc_to_choice"], doc))  # noqa: S307
        target = cfg["doc_to_target"]
        assert task.doc_to_target(doc) == (
            target
            if isinstance(target, int)
            else int(apply_template(target, doc))
            if "{" in str(target)
            else doc[target]
        )


def test_commonsense_docs_parsed(data_env):
    boolq = list(_task("svdecode_boolq").eval_docs)
    assert [(d["question"], d["label"]) for d in boolq] == [("is the sky blue", 1), ("is paris the sky", 0)]
    assert _task("svdecode_boolq").doc_to_text(boolq[0]) == "Question: is the sky blue?\nAnswer:"
    wino = _task("svdecode_winogrande")
    doc = next(iter(wino.eval_docs))
    assert wino.doc_to_choice(doc) == ["Paris is the capital so Paris", "Paris is the capital so the sky"]
    assert wino.doc_to_target(doc) == "is blue." and wino.doc_to_text(doc) == 1
    hs = next(iter(_task("svdecode_hellaswag").eval_docs))
    assert hs["query"] == "Sky: the sky is" and hs["choices"][3] == "go home. no." and hs["label"] == 0
    siqa = _task("svdecode_social_iqa")
    assert siqa.doc_to_text(next(iter(siqa.eval_docs))) == "Q: Paris is the capital. What is France?\nA:"


def test_mc2_true_mass_survives_underflow():
    assert loaders.mc2_true_mass([-1.0, -2.0, -3.0], [1, 0, 1]) == pytest.approx(
        (math.exp(-1) + math.exp(-3)) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    )
    assert loaders.mc2_true_mass([-2000.0, -2001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {
                "instruction": f"{ASK}Q?\n\nAnswer1: a Answer3: b\n\nAnswer format: answer1/answer2",
                "answer": "answer1",
            },
            "expected Answer1..Answer2",
        ),
        ({"instruction": f"{ASK}Q?\n\nAnswer1: a Answer2: b", "answer": "answer1"}, "no 'Answer format:'"),
        (
            {
                "instruction": f"{ASK}Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2",
                "answer": "answer3",
            },
            "not one of",
        ),
    ],
)
def test_malformed_commonsense_rows_name_the_row(record, message):
    with pytest.raises(loaders.TaskDataError, match=message) as err:
        loaders.parse_commonsense(record, "ARC-Easy", "ARC-Easy/test.json[7]")
    assert "ARC-Easy/test.json[7]" in str(err.value)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data folder is not beside the repository")
def test_every_shared_row_parses():
    counts = {
        name: len(loaders.load_commonsense(name, "test", str(SHARED))["test"])
        for name in loaders.COMMONSENSE_DATASETS
    }
    assert counts == TEST_ROWS
    tqa = loaders.load_truthfulqa_mc(str(SHARED))["validation"]
    assert len(tqa) == TRUTHFULQA_ROWS and all(d["mc1_targets"]["labels"][0] == 1 for d in tqa)


def test_loaders_use_the_one_definition_of_the_datasets():
    """The lm-eval loaders and the harness read the same core definition (svdecode.catalog)."""
    from svdecode import catalog
    from svdecode.data import commonsense

    assert loaders.COMMONSENSE_DATASETS is catalog.COMMONSENSE_DATASETS is commonsense.COMMONSENSE_DATASETS
    assert commonsense.LABELS is catalog.LABELS
    with pytest.raises(loaders.TaskDataError, match="known: boolq, piqa"):
        loaders.load_commonsense("nope", "test", str(SHARED))


# -- cross-checks -----------------------------------------------------------------------------------

TASKS = [
    "svdecode_truthfulqa_mc1",
    "svdecode_truthfulqa_mc2",
    "svdecode_arc_easy",
    "svdecode_boolq",
    "svdecode_winogrande",
]


@pytest.fixture(scope="module")
def hf_peft(world):
    """lm-eval's own HF model with the adapter: the PEFT reference, per request."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(loaders.DATA_ENV, str(world["data"]))
        return _evaluate(
            "hf", {"pretrained": str(world["base"]), "peft": str(world["adapter"]), "dtype": "float32"}, TASKS
        )


@pytest.fixture(scope="module")
def svd_runs(world):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(loaders.DATA_ENV, str(world["data"]))
        return {mu: _evaluate("svdecode", _svd(world, mu=mu), TASKS) for mu in (0.0, MU)}


def test_mu0_equals_lm_eval_hf_with_peft(hf_peft, svd_runs):
    ref, ours = _logliks(hf_peft), _logliks(svd_runs[0.0])
    assert ref.keys() == ours.keys() and len(ref) == 30  # 8 + 11 mc1/mc2, 5 arc, 4 boolq, 2 winogrande
    assert max(abs(ref[k] - ours[k]) for k in ref) < 1e-4
    for task in TASKS:
        assert svd_runs[0.0]["results"][task]["acc,none"] == pytest.approx(
            hf_peft["results"][task]["acc,none"], abs=1e-9
        )


def test_nonzero_mu_changes_every_task(svd_runs):
    zero, steered = _logliks(svd_runs[0.0]), _logliks(svd_runs[MU])
    for task in TASKS:  # float32 noise between two runs is ~1e-5
        assert max(abs(steered[k] - zero[k]) for k in zero if k[0] == task) > 1e-2, task


def test_steering_is_recorded_in_the_results(svd_runs):
    info = svd_runs[MU]["config"]["svdecode"]
    assert info["mu"] == MU and info["mu_source"] == "model_args" and info["method"] == "svdecode"
    assert info["loglikelihood"].startswith("lam=None") and info["generate_until_lam"] == "-inf"
    assert info["streams"] == "lora-mixed-batch"


@pytest.fixture(scope="module")
def steered_lm(world):
    """The lm-eval model at the saved strength (no mu in model_args) and the same SteeredModel."""
    lm = get_model("svdecode").create_from_arg_string(f"adapter={world['adapter']},device=cpu,batch_size=3")
    ref = SteeredModel.from_pretrained(world["adapter"])
    ref.steering.lam = None  # the scoring mode the lm-eval model uses for log-likelihoods
    return lm, ref


PAIRS = [
    ("Q: What is the capital of France?\nA:", " Paris is the capital of France."),
    ("Q: What is the sky?\nA:", " The sky is blue."),
    ("the correct answer is", " true"),
    ("the correct answer is", " answer1 answer2"),
]


def test_saved_mu_loglikelihood_equals_steered_score(steered_lm):
    lm, ref = steered_lm
    assert lm.model.steering.mu == MU and lm.svdecode_args.mu_source.endswith("steering_config.json")
    for ctx, cont in PAIRS:  # both split the text into the same tokens, so the values must agree
        ctx_enc, cont_enc = lm._encode_pair(ctx, cont)
        assert (ctx_enc, cont_enc) == (ref.tokenizer(ctx).input_ids, ref.tokenizer(cont).input_ids)
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)])
    want = [float(s.sum()) for s in ref.score([c for c, _ in PAIRS], [a for _, a in PAIRS])]
    assert np.allclose([g for g, _ in got], want, atol=1e-4, rtol=0)
    ref.steering.mu = 0.0
    zero = [float(s.sum()) for s in ref.score([c for c, _ in PAIRS], [a for _, a in PAIRS])]
    ref.steering.mu = MU
    assert max(abs(g - z) for (g, _), z in zip(got, zero, strict=True)) > 0.05


def test_loglikelihood_rolling_is_steered(steered_lm):
    lm, ref = steered_lm
    text = "The sky is blue. Paris is the capital of France."
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    # one window: every token scored after the BOS prefix token
    (want,) = ref.score([ref.tokenizer.bos_token], [text])
    assert got == pytest.approx(float(want.sum()), abs=1e-4)


def test_generate_until_is_steered_generate(steered_lm):
    lm, ref = steered_lm
    prompts = ["the correct answer is", "Q: What is the sky?\nA:"]
    reqs = [
        Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 6}), i)
        for i, p in enumerate(prompts)
    ]
    got = lm.generate_until(reqs)
    ref.steering.lam = float("-inf")  # generation uses the artifact's lam
    try:
        want = ref.generate_text(prompts, max_new_tokens=6, do_sample=False)
        ref.steering.mu = 0.0
        plain = ref.generate_text(prompts, max_new_tokens=6, do_sample=False)
    finally:
        ref.steering.mu, ref.steering.lam = MU, None
    assert got == [w.split("\n")[0] for w in want]
    assert got != [p.split("\n")[0] for p in plain]


def _choices_labels(targets: dict[str, int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    return tuple(targets), tuple(targets.values())


def test_truthfulqa_mc_equals_svdecode_eval(world, svd_runs):
    """MC1/MC2 per question from lm-eval (steered) and from svdecode's own evaluation (same
    prompt: the QA primer; same scoring mode) on the same questions."""
    from svdecode.data import MCItem
    from svdecode.eval.methods import MethodSpec
    from svdecode.eval.truthfulqa_mc import evaluate_mc

    items = [
        MCItem(str(i), q["question"], *_choices_labels(q["mc1_targets"]), *_choices_labels(q["mc2_targets"]))
        for i, q in enumerate(TQA)
    ]
    model = SteeredModel.from_pretrained(world["adapter"])
    spec = MethodSpec(name="peft+svdecode", method="svdecode", mu=MU, score_lam=None)
    ours = evaluate_mc(model, items, [spec], batch_size=2, prompt_style="qa_primer", progress=False)["items"][
        spec.name
    ]
    _assert_same_mc(svd_runs[MU]["samples"], ours)


def _assert_same_mc(samples: dict, ours: list[dict]) -> None:
    """Per choice the same log-likelihood (1e-4), per question the same MC1 and MC2."""
    for task, key in (("svdecode_truthfulqa_mc1", "MC1"), ("svdecode_truthfulqa_mc2", "MC2")):
        got = sorted(samples[task], key=lambda s: s["doc_id"])
        scores = [[r[0][0] for r in s["resps"]] for s in got]
        want = [r[f"{key.lower()}_scores"] for r in ours]
        assert np.allclose(np.concatenate(scores), np.concatenate(want), atol=1e-4, rtol=0), task
        assert [s["acc"] for s in got] == pytest.approx([r[key] for r in ours], rel=1e-4, abs=1e-12), task


# -- distribution -----------------------------------------------------------------------------------


def test_shards_requests_across_accelerate_processes(steered_lm):
    """HFLM leaves world_size 1 without several GPUs; under accelerate the model takes the ranks."""

    class FakeAccelerator:
        num_processes, process_index = 2, 1

    lm, _ = steered_lm
    lm.accelerator = FakeAccelerator()
    try:
        lm._shard_across_processes()
        assert (lm.rank, lm.world_size) == (1, 2)
    finally:
        del lm.accelerator
        lm._rank, lm._world_size = 0, 1


# -- bad input: clear errors, before any weights load -------------------------------------------------


@pytest.fixture()
def no_weight_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the argument error")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (
            {"adapter": "{adapter}", "mu": 1, "temperature": 0.5},
            le.ModelArgsError,
            r"unknown model_args key\(s\) \['temperature'\].*accepted: adapter",
        ),
        ({"mu": 1.0}, le.ModelArgsError, "adapter=<dir> is required"),
        ({"adapter": "{root}/nope", "mu": 1.0}, ModelLoadError, "adapter directory .*nope' does not exist"),
        ({"adapter": "{data}", "mu": 1.0}, ModelLoadError, "holds no adapter_config.json"),
        ({"adapter": "{bare_adapter}"}, le.ModelArgsError, "no steering_config.json.*pass mu=<number>"),
        ({"adapter": "{adapter}", "mu": float("nan")}, le.ModelArgsError, "mu=nan: must be finite"),
        ({"adapter": "{adapter}", "mu": "inf"}, le.ModelArgsError, "mu='inf': must be finite"),
        (
            {"adapter": "{adapter}", "mu": "strong"},
            le.ModelArgsError,
            "mu='strong': expected a finite number",
        ),
        ({"adapter": "{adapter}", "mu": True}, le.ModelArgsError, "mu=True: expected a finite number"),
        ({"adapter": "{adapter}", "alpha": 2}, le.ModelArgsError, r"'alpha' must be a number in \[0, 1\]"),
        (
            {"adapter": "{adapter}", "pretrained": "{wide_base}"},
            ModelLoadError,
            r"does not fit pretrained=.*wide_base.*adapter \(4, 32\), base model \(4, 48\)",
        ),
        (
            {"adapter": "{adapter}", "pretrained": "{root}/nope"},
            ModelLoadError,
            "pretrained=.*nope': cannot read its model config",
        ),
        ({"adapter": "{adapter}", "dtype": "int8"}, le.ModelArgsError, "unknown dtype 'int8'"),
        (
            {"adapter": "{adapter}", "batch_size": 0},
            le.ModelArgsError,
            "batch_size=0: expected a positive integer",
        ),
        (
            {"adapter": "{adapter}", "two_pass": "no"},
            le.ModelArgsError,
            "two_pass='no': expected true or false",
        ),
    ],
)
def test_bad_model_args(world, no_weight_loading, args, error, message):
    paths = {k: str(v) for k, v in world.items()} | {"root": str(world["base"].parent)}
    args = {k: v.format(**paths) if isinstance(v, str) else v for k, v in args.items()}
    with pytest.raises(error, match=message):
        get_model("svdecode").create_from_arg_obj(args, {"batch_size": 1, "device": "cpu"})


def test_explicit_missing_device_is_an_error_but_the_cli_default_falls_back(world, no_weight_loading):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(le.ModelArgsError, match="device 'cuda'.*no usable CUDA"):
        le.resolve_model_args(adapter=str(world["adapter"]), device="cuda")
    merged = le.merge_cli_config({"adapter": "x", "batch_size": 4}, {"batch_size": 1, "device": "cuda:0"})
    assert merged == {"adapter": "x", "batch_size": 4}


def test_cli_bad_inputs(world, data_env, capsys):
    assert (
        cli_main(
            [
                "lm-eval",
                "--model",
                "svdecode",
                "--model_args",
                f"adapter={world['adapter']},mu=nan",
                "--tasks",
                "svdecode_boolq",
            ]
        )
        == 2
    )
    assert "svdecode lm-eval: error: model_args mu=nan: must be finite" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "lm-eval",
                "--model",
                "svdecode",
                "--model_args",
                f"adapter={world['adapter']}",
                "--tasks",
                "svdecode_boolq,svdecode_mmlu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown task(s) svdecode_mmlu; svdecode ships: svdecode, svdecode_arc_challenge" in err


def test_cli_runs_lm_eval_with_our_model_and_tasks(world, tmp_path, capsys, monkeypatch):
    """lm-eval's own arguments, our model and task folder; the data folder given as task metadata."""
    from lm_eval import tasks

    # only to save time: without lm-eval's ~thousands of built-in YAMLs the index takes ms, not ~10 s
    monkeypatch.setattr(tasks, "TaskManager", functools.partial(tasks.TaskManager, include_defaults=False))
    monkeypatch.delenv(loaders.DATA_ENV, raising=False)
    out = tmp_path / "out"
    args = f"adapter={world['adapter']},mu=0.5,dtype=float32"
    argv = ["lm-eval", "--model", "svdecode", "--model_args", args, "--tasks", "svdecode_arc_easy"]
    argv += ["--metadata", f"svdecode_data={world['data']}", "--batch_size", "2", "--device", "cpu"]
    assert cli_main([*argv, "--output_path", str(out)]) == 0
    assert "svdecode_arc_easy" in capsys.readouterr().out
    (result,) = out.rglob("results_*.json")
    data = json.loads(result.read_text())
    assert data["config"]["svdecode"]["mu"] == 0.5 and data["results"]["svdecode_arc_easy"]["sample_len"] == 2


# -- the default model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_cross_checks(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct with a random LoRA: mu=0 vs lm-eval hf+peft, mu=20 (the scale μ̄ takes on
    TruthfulQA here) vs svdecode's TruthfulQA evaluation and vs mu=0,
    on the first shared questions and items."""
    from svdecode.data import load_truthfulqa_mc
    from svdecode.eval.methods import MethodSpec
    from svdecode.eval.truthfulqa_mc import evaluate_mc
    from svdecode.model.loading import load_base

    if not SHARED.is_dir():
        pytest.skip("the shared data folder is not beside the repository")
    monkeypatch.setenv(loaders.DATA_ENV, str(SHARED))
    base, tok = load_base("default")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    for p in peft_model.parameters():  # a visible but modest shift from the base
        if p.requires_grad:
            p.data.mul_(0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    tasks = ["svdecode_truthfulqa_mc1", "svdecode_truthfulqa_mc2", "svdecode_arc_easy", "svdecode_winogrande"]
    limit, mu = 3, 20.0
    base_path = str(peft_model.peft_config["default"].base_model_name_or_path)
    ref = _evaluate(
        "hf",
        {"pretrained": base_path, "peft": str(tmp_path / "adapter"), "dtype": "float32"},
        tasks,
        limit=limit,
    )
    runs = {
        m: _evaluate("svdecode", {"adapter": str(tmp_path / "adapter"), "mu": m}, tasks, limit=limit)
        for m in (0.0, mu)
    }
    a, b, c = _logliks(ref), _logliks(runs[0.0]), _logliks(runs[mu])
    delta = max(abs(a[k] - b[k]) for k in a)
    shift = max(abs(b[k] - c[k]) for k in b)
    print(
        f"default model: {len(a)} requests; max |d loglik| mu=0 vs hf+peft {delta:.2e}, mu={mu} vs 0 {shift:.3f}"
    )
    assert delta < 1e-4 and shift > 0.01
    items = {it.question: it for it in load_truthfulqa_mc()}
    docs = loaders.load_truthfulqa_mc(str(SHARED))["validation"]
    chosen = [items[" ".join(d["question"].split())] for d in docs.select(range(limit))]
    model = SteeredModel.from_peft(peft_model, tok, mu=mu, lam=None)
    spec = MethodSpec(name="peft+svdecode", method="svdecode", mu=mu, score_lam=None)
    ours = evaluate_mc(model, chosen, [spec], batch_size=4, progress=False)["items"][spec.name]
    _assert_same_mc(runs[mu]["samples"], ours)
