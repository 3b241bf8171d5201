"""Step functions: each one against an independent computation from the model's own logits; the registry,
options, the CLI, and the promise that step scores share one forward pass."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import seqattr
from seqattr import step_functions
from seqattr.cli import main as cli_main
from seqattr.step_functions import dropout_active
from seqattr.testing import tiny_model
from tests.conftest import attribution_model

# Two examples of different lengths, so padding is exercised.
DECODER_TEXTS = (
    ["the cat sat on the mat", "a dog"],
    ["the cat sat on the mat and the dog ran", "a dog is in the garden"],
)
ENCODER_TEXTS = (
    ["The cat sat on the mat.", "Why is the sky blue?"],
    ["Le chat est sur la table.", "Die Kinder spielen."],
)
CASES = {"gpt2": DECODER_TEXTS, "llama": DECODER_TEXTS, "t5": ENCODER_TEXTS, "bart": ENCODER_TEXTS}


def direct_logits(architecture: str, seq: seqattr.SequenceAttribution) -> torch.Tensor:
    """The tiny model's next-token logits for every explained step of ``seq``: a plain forward on its ids."""
    model, _ = tiny_model(architecture)
    with torch.no_grad():
        target = torch.tensor([seq.target_ids])
        if model.config.is_encoder_decoder:
            logits = model(input_ids=torch.tensor([seq.source_ids]), decoder_input_ids=target).logits[0]
        else:
            logits = model(input_ids=target).logits[0]
    return logits[seq.attr_pos_start - 1 : seq.attr_pos_end - 1]


def expected_scores(logits: torch.Tensor, targets: torch.Tensor, top_p: float) -> dict[str, torch.Tensor]:
    """Each step function's value, written out independently (one step at a time where that is clearer)."""
    probs = logits.softmax(-1)
    rows = torch.arange(len(targets))
    ce = F.cross_entropy(logits, targets, reduction="none")
    ranks, sizes = [], []
    for step, target in enumerate(targets.tolist()):
        order = logits[step].argsort(descending=True).tolist()
        ranks.append(sum(1 for v in logits[step] if v > logits[step, target]))
        mass, count = 0.0, 0
        for token in order:
            count += 1
            mass += float(probs[step, token])
            if mass >= top_p:
                break
        sizes.append(count)
    return {
        "probability": probs[rows, targets],
        "logprob": logits.log_softmax(-1)[rows, targets],
        "logit": logits[rows, targets],
        "crossentropy": ce,
        "perplexity": ce.exp(),
        "rank": torch.tensor(ranks, dtype=torch.float),
        "entropy": torch.distributions.Categorical(logits=logits).entropy(),
        "top_p_size": torch.tensor(sizes, dtype=torch.float),
    }


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_every_step_function_equals_a_direct_computation(architecture):
    inputs, outputs = CASES[architecture]
    top_p = 0.5
    names = ["probability", "logprob", "logit", "crossentropy", "perplexity", "rank", "entropy", "top_p_size"]
    # The tiny T5's large activations make its batched logits drift from single-example ones by ~2e-4
    # (relative): a batching matter, not a step-function one, so T5 runs one example per batch here.
    out = attribution_model(architecture).attribute(
        inputs,
        outputs,
        step_scores=names,
        step_scores_args={"top_p": top_p},
        show_progress=False,
        batch_size=1 if architecture == "t5" else None,
    )
    for seq in out:
        logits = direct_logits(architecture, seq)
        targets = torch.tensor(seq.target_ids[seq.attr_pos_start : seq.attr_pos_end])
        for name, expected in expected_scores(logits, targets, top_p).items():
            torch.testing.assert_close(
                seq.step_scores[name],
                expected.float(),
                rtol=1e-4,
                atol=1e-4,
                msg=lambda m, name=name: f"{name}: {m}",
            )
        assert (
            seq.step_scores["top_p_size"].max() > 1
        )  # the option arrived: p=0.5 is not reached by one token


def test_mc_dropout_average_equals_dropout_forwards_with_the_same_seed():
    model, tokenizer = tiny_model("gpt2")  # GPT-2 has dropout 0.1 (the seq2seq tiny models have none)
    prompt, text = "the cat sat on the mat", "the cat sat on the mat and the dog"
    am = attribution_model("gpt2")
    out = am.attribute(
        prompt,
        text,
        step_scores=["mc_dropout_prob_avg", "probability"],
        step_scores_args={"n_mcd_steps": 3, "seed": 7},
        show_progress=False,
    )
    seq = out[0]
    assert not model.training and not any(m.training for m in model.modules())  # eval mode restored
    ids = torch.tensor([seq.target_ids])
    targets = ids[0, seq.attr_pos_start : seq.attr_pos_end]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model.train()
        try:
            with torch.no_grad():
                runs = [
                    model(input_ids=ids).logits[0, seq.attr_pos_start - 1 : seq.attr_pos_end - 1].softmax(-1)
                    for _ in range(3)
                ]
        finally:
            model.eval()
    expected = torch.stack([r[torch.arange(len(targets)), targets] for r in runs]).mean(0)
    torch.testing.assert_close(seq.step_scores["mc_dropout_prob_avg"], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(seq.step_scores["mc_dropout_prob_avg"], seq.step_scores["probability"])
    again = am.attribute(
        prompt,
        text,
        step_scores=["mc_dropout_prob_avg"],
        step_scores_args={"n_mcd_steps": 3, "seed": 8},
        show_progress=False,
    )[0]
    assert not torch.equal(again.step_scores["mc_dropout_prob_avg"], seq.step_scores["mc_dropout_prob_avg"])


def test_dropout_mode_is_restored_after_an_exception():
    model, _ = tiny_model("gpt2")
    with pytest.raises(RuntimeError, match="boom"), dropout_active(model):
        assert model.training
        raise RuntimeError("boom")
    assert not any(m.training for m in model.modules())


def test_attributed_entropy_gradient_matches_autograd():
    """Any differentiable step function can be attributed: saliency of the entropy == its autograd."""
    model, _ = tiny_model("gpt2")
    seq = attribution_model("gpt2", abs=False).attribute(
        "the cat sat", "the cat sat on the mat", attributed_fn="entropy", show_progress=False
    )[0]
    ids = torch.tensor([seq.target_ids])
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        embeds = model.get_input_embeddings()(ids[:, :position]).detach().requires_grad_()
        logits = model(inputs_embeds=embeds).logits[0, -1]
        (grad,) = torch.autograd.grad(torch.distributions.Categorical(logits=logits).entropy(), embeds)
        # float32 sums over 64 hidden units of terms up to ~0.1 round to ~1e-6: atol 1e-5 (1.4e-6 was seen).
        torch.testing.assert_close(
            seq.target_attributions[:position, step], grad[0].sum(-1), rtol=1e-4, atol=1e-5
        )


def test_non_differentiable_attributed_function_is_refused_by_gradient_methods():
    with pytest.raises(ValueError, match="not differentiable"):
        attribution_model("gpt2").attribute(
            "the cat", "the cat sat", attributed_fn="rank", show_progress=False
        )


def test_step_function_options_are_checked():
    am = attribution_model("gpt2")
    with pytest.raises(TypeError, match="top_q.*valid: top_p"):
        am.attribute("the cat", "the cat sat", step_scores=["top_p_size"], step_scores_args={"top_q": 0.5})
    with pytest.raises(TypeError, match="no step function"):
        am.attribute("the cat", "the cat sat", attributed_fn_args={"top_p": 0.5})
    with pytest.raises(ValueError, match="unknown step function 'nope'.*register_step_function"):
        am.attribute("the cat", "the cat sat", step_scores=["nope"])


def my_logprob(args):
    """Log-probability, written again by a user."""
    return torch.log_softmax(args.logits, -1).gather(-1, args.target_ids[..., None])[..., 0]


def test_registered_function_matches_the_builtin_and_can_be_attributed(own_registry):
    seqattr.register_step_function(my_logprob, "test_my_logprob", overwrite=True)
    assert seqattr.list_step_functions()["test_my_logprob"] == "Log-probability, written again by a user."
    with pytest.raises(ValueError, match="exists already"):
        seqattr.register_step_function(my_logprob, "test_my_logprob")
    am = attribution_model("gpt2")
    kwargs = dict(input_texts="the cat sat", generated_texts="the cat sat on the mat", show_progress=False)
    mine = am.attribute(
        **kwargs, step_scores=["test_my_logprob", "logprob"], attributed_fn="test_my_logprob"
    )[0]
    builtin = am.attribute(**kwargs, attributed_fn="logprob")[0]
    torch.testing.assert_close(mine.step_scores["test_my_logprob"], mine.step_scores["logprob"])
    torch.testing.assert_close(mine.target_attributions, builtin.target_attributions, equal_nan=True)


@pytest.fixture
def own_registry(monkeypatch):
    """Registrations last for this test only: a later test (tests/test_docs_site.py) checks that every
    registered step function is documented."""
    monkeypatch.setattr(step_functions, "_REGISTRY", dict(step_functions._REGISTRY))


def test_registered_function_works_from_the_cli(tmp_path, capsys, own_registry):
    model, tokenizer = tiny_model("gpt2")
    folder = tmp_path / "tiny-gpt2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    plugin = tmp_path / "my_scores.py"
    plugin.write_text(
        "import torch, seqattr\n"
        "def cli_prob(args):\n"
        "    '''Probability, from a plugin.'''\n"
        "    return torch.softmax(args.logits, -1).gather(-1, args.target_ids[..., None])[..., 0]\n"
        "seqattr.register_step_function(cli_prob, 'test_cli_prob', overwrite=True)\n"
    )
    assert cli_main(["step-functions", "--import", str(plugin)]) == 0
    assert "test_cli_prob" in capsys.readouterr().out
    saved = tmp_path / "out.json"
    code = cli_main(
        [
            "attribute",
            "-m",
            str(folder),
            "-i",
            "the cat sat",
            "-g",
            "the cat sat on the mat",
            "--no-show",
            "--import",
            str(plugin),
            "--step-scores",
            "probability",
            "test_cli_prob",
            "top_p_size",
            "--step-scores-args",
            "top_p=0.5",
            "-o",
            str(saved),
        ]
    )
    assert code == 0
    seq = seqattr.load(saved)[0]
    torch.testing.assert_close(seq.step_scores["test_cli_prob"], seq.step_scores["probability"])
    assert json.loads(saved.read_text())["info"]["step_scores_args"] == {"top_p": 0.5}
    assert cli_main(["attribute", "-m", str(folder), "-i", "a", "-g", "a b", "--step-scores-args", "x"]) == 2


def count_forwards(architecture: str, **kwargs) -> int:
    """Forward calls of the Hugging Face model during one attribute() call on forced outputs."""
    model, _ = tiny_model(architecture)
    am = attribution_model(architecture)  # loading may run the model (e.g. to measure embedding scales)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        am.attribute(
            ["the cat sat", "a dog"],
            ["the cat sat on the mat", "a dog runs in the garden"],
            show_progress=False,
            **kwargs,
        )
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_step_scores_add_no_forward_pass(architecture):
    none = count_forwards(architecture)
    three = count_forwards(architecture, step_scores=["probability", "entropy", "rank"])
    all_plain = count_forwards(
        architecture, step_scores=["logit", "perplexity", "top_p_size", "crossentropy"]
    )
    assert none == three == all_plain
    # Contrastive scores share one extra pass over the contrast sequences, however many are asked for. With
    # a contrast, saliency's own (gradient) pass no longer stands in for the scoring pass: the contrast's
    # logits must meet the original's from the same kind of pass (`engine.attribute`), so that one runs too.
    contrast = {"contrast_sources": ["the dog sat", "a cat"]}
    one = count_forwards(architecture, step_scores=["contrast_prob"], **contrast)
    many = count_forwards(architecture, step_scores=["contrast_prob", "kl_divergence", "pcxmi"], **contrast)
    assert one == many == none + 2


def test_kl_divergence_filters_and_top_p_edges():
    """kl_divergence over the original's top-p nucleus and top-k, written out token by token."""
    generator = torch.Generator().manual_seed(0)
    logits, contrast = (
        torch.randn(2, 3, 11, generator=generator) * 3,
        torch.randn(2, 3, 11, generator=generator) * 3,
    )
    args = seqattr.StepFunctionArgs(
        logits,
        torch.zeros(2, 3, dtype=torch.long),
        contrast_target_ids=torch.zeros(2, 3, dtype=torch.long),
        contrast_forward=lambda: contrast,
    )
    kl = seqattr.step_functions.kl_divergence
    for top_k, top_p in [(0, 1.0), (4, 1.0), (0, 0.6), (3, 0.6)]:
        expected = torch.zeros(2, 3)
        for b in range(2):
            for t in range(3):
                probs = logits[b, t].softmax(-1)
                order = probs.argsort(descending=True).tolist()
                kept, mass = [], 0.0
                for token in order[: top_k or None]:
                    if mass >= top_p:
                        break
                    kept.append(token)
                    mass += float(probs[token])
                p, q = logits[b, t, kept].log_softmax(-1), contrast[b, t, kept].log_softmax(-1)
                expected[b, t] = (p.exp() * (p - q)).sum()
        torch.testing.assert_close(
            kl(args, top_k=top_k, top_p=top_p), expected, msg=f"top_k={top_k} top_p={top_p}"
        )
    assert (seqattr.step_functions.top_p_size(args, top_p=1.0) == 11).all()
    with pytest.raises(ValueError, match="top_p must be in"):
        kl(args, top_p=0.0)


# --- precision: the softmax in the logits' own precision -------------------------------------------------


def float64_step_args(top_k: int = 0):
    """StepFunctionArgs of the float64 tiny GPT-2 (original and a contrast text) and the direct values."""
    from seqattr.step_functions import StepFunctionArgs
    from tests.exact import float64_model

    model, tok = float64_model("gpt2")
    ids = torch.tensor([tok("the cat sat on the mat and the dog ran")["input_ids"]])
    c_ids = ids.clone()
    c_ids[0, -2] = ids[0, 2]  # one token substituted
    with torch.no_grad():
        logits, c_logits = model(input_ids=ids).logits[:, :-1], model(input_ids=c_ids).logits[:, :-1]
    assert logits.dtype == torch.float64
    targets, c_targets = ids[:, 1:], c_ids[:, 1:]
    args = StepFunctionArgs(logits, targets, c_targets, contrast_forward=lambda: c_logits)
    logprobs, c_logprobs = logits.log_softmax(-1), c_logits.log_softmax(-1)
    logprob = logprobs.gather(-1, targets[..., None])[..., 0]
    c_logprob = c_logprobs.gather(-1, c_targets[..., None])[..., 0]
    kept = logits.topk(top_k, -1).indices if top_k else None

    def restricted(values):
        return values if kept is None else values.gather(-1, kept)

    p, q = restricted(logits).log_softmax(-1), restricted(c_logits).log_softmax(-1)
    expected = {
        "probability": logprob.exp(),
        "logprob": logprob,
        "crossentropy": -logprob,
        "perplexity": (-logprob).exp(),
        "entropy": -(logprobs.exp() * logprobs).sum(-1),
        "contrast_prob": c_logprob.exp(),
        "contrast_logprob": c_logprob,
        "contrast_prob_diff": logprob.exp() - c_logprob.exp(),
        "pcxmi": logprob - c_logprob,
        "kl_divergence": (p.exp() * (p - q)).sum(-1),
    }
    return args, expected


@pytest.mark.parametrize("top_k", [0, 5])
def test_step_functions_keep_float64_precision(top_k):
    """Before: the softmax was cast to float32, ~1e-7 away from the float64 values."""
    from seqattr.step_functions import get_step_function

    args, expected = float64_step_args(top_k)
    for name, value in expected.items():
        fn = get_step_function(name)
        actual = fn(args, top_k=top_k) if name == "kl_divergence" else fn(args)
        torch.testing.assert_close(
            actual.double(),
            value,
            rtol=1e-12,
            atol=1e-12 * float(value.abs().max()),
            msg=lambda m, n=name: f"{n}: {m}",
        )
        assert actual.dtype == torch.float64, name


def test_half_precision_logits_are_computed_in_float32():
    from seqattr.step_functions import StepFunctionArgs, entropy, logprob, probability

    args, expected = float64_step_args()
    half = StepFunctionArgs(args.logits.to(torch.bfloat16), args.target_ids)
    for fn in (probability, logprob, entropy):
        actual = fn(half)
        assert actual.dtype == torch.float32
        reference = fn(StepFunctionArgs(args.logits.to(torch.bfloat16).double(), args.target_ids))
        torch.testing.assert_close(actual.double(), reference, rtol=1e-5, atol=1e-6)


def test_generation_trace_of_float64_logits_is_computed_in_float64():
    """The trace is stored in float32, rounded from float64 values (not computed in float32)."""
    from seqattr.trace import BatchTrace

    args, expected = float64_step_args()
    trace = BatchTrace.from_logits(args.logits, args.target_ids, top_k=3)
    assert trace.probabilities.dtype == torch.float32
    assert torch.equal(trace.probabilities, expected["probability"].float())
    assert torch.equal(trace.entropy, expected["entropy"].float())
