"""ReAGent (`seqattr.methods.reagent`): agreement with Inseq 0.7.1's own implementation on the same model, ids
and random draws; reproducible seeds; the one token a hand-built model depends on ranked first; the masked-LM
replacer; bad options and attributed functions refused. Fused == stepwise and batched == single for the
uniform replacer are in tests/test_invariants.py (its rows ``reagent``); here for the masked-LM replacer."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import seqattr
from exact import assert_close, assert_sequences_close, exact_model, float64_model, probability64
from seqattr.methods.reagent import masked_lm_sampler, probe_seed, replacement_vocab, updated_scores
from seqattr.testing import tiny_model

PROMPT = "The cat sat on the mat."
SMALL = {"num_probes": 4, "max_probe_steps": 12}


@pytest.fixture(scope="module")
def inseq_core():
    """Inseq 0.7.1's ReAGent modules (``make install`` installs Inseq without its dependencies, which this
    project's own cover; importing it takes ~15 s, so only the tests that compare with it pay for it)."""
    import inseq.attr.feat.ops.reagent_core as core
    from inseq.attr.feat.ops.reagent_core.token_sampler import TokenSampler

    class UniformTokenSampler(TokenSampler):
        """The uniform sampler of the ReAGent authors' repository (Inseq 0.7.1 ships only its POS-tag sampler,
        which downloads NLTK's tagger): a token uniform over ``[0, vocab)`` per position, from torch's global
        generator."""

        def __init__(self, vocab: int) -> None:
            self.vocab = vocab

        def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
            return (torch.rand(input_ids.shape) * self.vocab).long()

    return SimpleNamespace(
        **{name: getattr(core, name) for name in core.__all__}, UniformTokenSampler=UniformTokenSampler
    )


def inseq_reagent(core, hf_model, tokenizer, vocab: int, options: dict):
    """Inseq's ReAGent as its ``Reagent`` class assembles it, with the uniform sampler."""
    sampler = core.UniformTokenSampler(vocab)
    stopping = core.TopKStoppingConditionEvaluator(
        model=hf_model,
        sampler=sampler,
        top_k=options["stopping_condition_top_k"],
        keep_top_n=options["keep_top_n"],
        keep_ratio=options["keep_ratio"],
        invert_keep=options["invert_keep"],
    )
    evaluator = core.DeltaProbImportanceScoreEvaluator(
        model=hf_model,
        tokenizer=tokenizer,
        token_replacer=core.UniformTokenReplacer(sampler=sampler, ratio=options["replacing_ratio"]),
        stopping_condition_evaluator=stopping,
        max_steps=options["max_probe_steps"],
    )
    return core.AggregateRationalizer(
        importance_score_evaluator=evaluator,
        batch_size=options["num_probes"],
        overlap_threshold=0,
        overlap_strict_pos=True,
        keep_top_n=options["keep_top_n"],
        keep_ratio=options["keep_ratio"],
    )


INSEQ_CASES = [
    {"keep_top_n": 2, "keep_ratio": None, "invert_keep": False, "stopping_condition_top_k": 3},
    {"keep_top_n": 0, "keep_ratio": 0.4, "invert_keep": False, "stopping_condition_top_k": 5},
    {"keep_top_n": 1, "keep_ratio": None, "invert_keep": True, "stopping_condition_top_k": 4},
]


@pytest.mark.parametrize("case", INSEQ_CASES, ids=["keep_top_n", "keep_ratio", "invert_keep"])
@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_agrees_with_inseq_on_the_same_model_ids_and_draws(inseq_core, architecture, case):
    """Step ``t`` of seqattr draws from a generator seeded by ``probe_seed(seed, t)`` in Inseq's order, so
    Inseq's evaluator run on that step's prefix after ``torch.manual_seed(probe_seed(seed, t))`` replaces the
    same tokens in every round: the importances agree to rounding. Every token is a feature
    (``all_tokens``), as in Inseq; the encoder-decoder attributes source and target prefix together."""
    hf_model, tokenizer = float64_model(architecture)
    options = {**case, "replacing_ratio": 0.3, "max_probe_steps": 40, "num_probes": 4}
    model = seqattr.load_model(
        hf_model, "reagent", tokenizer=tokenizer, granularity="all_tokens", seed=5, **options
    )
    encoder_decoder = architecture == "t5"
    out = model.attribute(
        PROMPT, generation_args={"max_new_tokens": 4}, attribute_target=True, show_progress=False
    )
    seq = out[0]
    assert (seq.source_attributions is not None) == encoder_decoder
    compared = 0
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        target = torch.tensor([seq.target_ids[position]])
        rationalizer = inseq_reagent(inseq_core, hf_model, tokenizer, replacement_vocab(model), options)
        torch.manual_seed(probe_seed(5, step))
        with torch.no_grad():
            if encoder_decoder:
                source = torch.tensor([seq.source_ids])
                rationalizer(source, target, torch.tensor([seq.target_ids[:position]]), True)
                ours = torch.cat([seq.source_attributions[:, step], seq.target_attributions[:position, step]])
            else:
                rationalizer(torch.tensor([seq.target_ids[:position]]), target)
                ours = seq.target_attributions[:position, step]
        theirs = rationalizer.mean_importance_score
        if not rationalizer.importance_score_evaluator.stop_mask.any():
            # No probe stopped: Inseq divides by zero; seqattr averages all probes (and counts the step).
            assert theirs.isnan().all()
            continue
        assert_close(ours, theirs.to(ours.dtype), rtol=1e-9, what=f"step {step}")
        compared += 1
    assert compared >= 2  # the comparison is not vacuous


def test_the_update_is_inseqs_for_the_same_replacement_mask(inseq_core):
    """The deterministic core, on its own: Inseq's ``update_importance_score`` given the same mask."""
    evaluator = inseq_core.DeltaProbImportanceScoreEvaluator(
        model=None,
        tokenizer=float64_model("gpt2")[1],  # Inseq decodes the replaced ids for its debug log
        token_replacer=None,
        stopping_condition_evaluator=None,
        max_steps=1,
    )
    replaced = torch.tensor([[True, False, True], [False, False, True]])
    evaluator.token_replacer = lambda ids: (ids, replaced)
    evaluator.model = lambda input_ids: {"logits": torch.log(torch.tensor([[0.2, 0.8], [0.7, 0.3]]))[:, None]}
    scores = torch.tensor([[0.1, 0.5, 0.2], [0.9, 0.0, 0.3]])
    original = torch.tensor([[0.6], [0.6]])
    theirs = evaluator.update_importance_score(
        scores, torch.zeros(2, 3, dtype=torch.long), torch.tensor([1]), original
    )
    ours = updated_scores(scores, replaced, original[:, 0] - torch.tensor([0.8, 0.3]))
    assert_close(ours, theirs, rtol=1e-6)


# --- seeds --------------------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_numbers_and_another_seed_others():
    model = exact_model("llama", "reagent", **SMALL)
    outputs = {
        seed: model.attribute(PROMPT, generation_args={"max_new_tokens": 3}, seed=seed, show_progress=False)[
            0
        ]
        for seed in (1, 2)
    }
    again = model.attribute(PROMPT, generation_args={"max_new_tokens": 3}, seed=1, show_progress=False)[0]
    assert torch.equal(again.target_attributions.nan_to_num(), outputs[1].target_attributions.nan_to_num())
    differ = (outputs[1].target_attributions - outputs[2].target_attributions).nan_to_num().abs()
    assert float(differ.max()) > 1e-3


def test_seed_none_draws_from_torchs_generator_and_records_the_seed():
    model = exact_model("gpt2", "reagent", seed=None, **SMALL)
    torch.manual_seed(0)
    first = model.attribute(PROMPT, generation_args={"max_new_tokens": 2}, show_progress=False)
    torch.manual_seed(0)
    second = model.attribute(PROMPT, generation_args={"max_new_tokens": 2}, show_progress=False)
    recorded = first.info["method_info"]["seed"]
    assert second.info["method_info"]["seed"] == recorded
    assert torch.equal(first[0].target_attributions.nan_to_num(), second[0].target_attributions.nan_to_num())
    replay = model.attribute(
        PROMPT, generation_args={"max_new_tokens": 2}, seed=recorded, show_progress=False
    )
    assert torch.equal(replay[0].target_attributions.nan_to_num(), first[0].target_attributions.nan_to_num())


# --- a model whose every step depends on one known token ----------------------------------------------------


@pytest.fixture(scope="module")
def last_token_model() -> tuple[nn.Module, object]:
    """GPT-2 with every attention and MLP output zeroed: the residual stream at position p is token p's and
    position p's embedding, so the step predicting position p depends on token p - 1 alone."""
    hf_model, tokenizer = tiny_model("gpt2")
    hf_model = copy.deepcopy(hf_model).double()
    with torch.no_grad():
        for block in hf_model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
    return hf_model, tokenizer


@pytest.mark.parametrize("fused", [True, False])
def test_the_one_token_a_step_depends_on_ranks_first(last_token_model, fused):
    hf_model, tokenizer = last_token_model
    model = seqattr.load_model(
        hf_model,
        "reagent",
        tokenizer=tokenizer,
        keep_top_n=1,
        stopping_condition_top_k=1,  # a probe stops only when keeping its top token alone keeps the answer
        num_probes=8,
        max_probe_steps=300,
    )
    out = model.attribute(PROMPT, generation_args={"max_new_tokens": 5}, show_progress=False, fused=fused)
    seq = out[0]
    assert out.info["method_info"]["unstopped_steps"] == 0
    for step in range(seq.num_steps):
        scores = seq.target_attributions[:, step]
        assert int(scores.nan_to_num(-1.0).argmax()) == seq.attr_pos_start + step - 1, f"step {step}"
        assert float(scores.nansum()) == pytest.approx(1.0)  # a distribution over the step's features


# --- the masked-LM replacer ---------------------------------------------------------------------------------


class RecordingMaskedLM(nn.Module):
    """A masked LM that predicts token ``peak`` everywhere and records the ids it read."""

    def __init__(self, vocab: int, peak: int) -> None:
        super().__init__()
        self.vocab, self.peak, self.inputs = vocab, peak, []

    def forward(self, input_ids: torch.Tensor) -> dict:
        self.inputs.append(input_ids.clone())
        logits = torch.full((*input_ids.shape, self.vocab), -30.0)
        logits[..., self.peak] = 30.0
        return {"logits": logits}


def test_the_masked_lm_reads_the_replaced_slots_masked_and_replaces_them_by_its_samples():
    lm = RecordingMaskedLM(vocab=9, peak=7)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 1, 2]])
    replaced = torch.tensor([[False, True, False, True], [True, False, False, False]])
    out = masked_lm_sampler(lm, mask_token_id=0, vocab=9)(ids, replaced, torch.Generator().manual_seed(0))
    assert torch.equal(lm.inputs[0], torch.tensor([[1, 0, 3, 0], [0, 6, 1, 2]]))
    assert torch.equal(out, torch.tensor([[1, 7, 3, 7], [7, 6, 1, 2]]))


def test_the_masked_lm_samples_with_the_steps_generator():
    """A flat masked LM: the samples are random, drawn from the generator given (so seeded)."""
    lm = RecordingMaskedLM(vocab=50, peak=0)
    lm.forward = lambda input_ids: {"logits": torch.zeros(*input_ids.shape, 50)}
    ids, replaced = torch.zeros(1, 64, dtype=torch.long), torch.ones(1, 64, dtype=torch.bool)
    sample = masked_lm_sampler(lm, 0, 50)
    first = sample(ids, replaced, torch.Generator().manual_seed(3))
    assert torch.equal(first, sample(ids, replaced, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, sample(ids, replaced, torch.Generator().manual_seed(4)))
    assert len(first.unique()) > 10


@pytest.fixture(scope="module")
def tiny_masked_lm():
    """A random tiny BERT masked LM over the gpt2 test tokenizer's vocabulary."""
    from transformers import BertConfig, BertForMaskedLM

    _, tokenizer = tiny_model("gpt2")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return BertForMaskedLM(config).eval()


@pytest.mark.parametrize("architecture", ["gpt2"])
def test_the_masked_lm_replacer_fused_equals_stepwise_and_differs_from_uniform(architecture, tiny_masked_lm):
    options = {
        **SMALL,
        "replacer": "masked_lm",
        "replacer_model": tiny_masked_lm,
        "replacer_mask_token_id": 0,
    }
    model = exact_model(architecture, "reagent", **options)
    prompts = [PROMPT, "Why"]
    kwargs = {
        "generation_args": {"max_new_tokens": 3},
        "attributed_fn": probability64,
        "show_progress": False,
    }
    fused = model.attribute(prompts, **kwargs)
    stepwise = model.attribute(prompts, fused=False, **kwargs)
    for mine, reference in zip(fused, stepwise, strict=True):
        assert_sequences_close(mine, reference)
    assert fused.info["method_info"]["replacer"] == "masked_lm"
    uniform = exact_model(architecture, "reagent", **SMALL).attribute(prompts, **kwargs)
    differ = (fused[0].target_attributions - uniform[0].target_attributions).nan_to_num().abs()
    assert float(differ.max()) > 1e-3


def test_a_masked_lm_of_another_vocabulary_is_refused():
    lm = RecordingMaskedLM(vocab=11, peak=3)
    model = exact_model("gpt2", "reagent", replacer="masked_lm", replacer_model=lm, replacer_mask_token_id=0)
    with pytest.raises(ValueError, match="predicts 11 tokens but the attributed model's vocabulary has"):
        model.attribute(PROMPT, generation_args={"max_new_tokens": 1}, show_progress=False)


def test_a_masked_lm_without_a_mask_token_is_refused(tiny_masked_lm):
    model = exact_model("gpt2", "reagent", replacer="masked_lm", replacer_model=tiny_masked_lm)
    with pytest.raises(ValueError, match="the model's tokenizer has none; pass replacer_mask_token_id="):
        model.attribute(PROMPT, generation_args={"max_new_tokens": 1}, show_progress=False)


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replacer": "pos_tag"}, "replacer='pos_tag' is not offered"),
        ({"replacer": "bert"}, "unknown replacer 'bert'"),
        ({"replacer": "masked_lm"}, "pass replacer_model="),
        ({"replacer_mask_token_id": 3}, "used by replacer='masked_lm' only"),
        ({"keep_top_n": 0}, "keep_top_n=0 keeps a fraction of the features: pass keep_ratio in (0, 1]"),
        ({"keep_top_n": 0, "keep_ratio": 1.5}, "pass keep_ratio in (0, 1]"),
        ({"keep_top_n": -1}, "keep_top_n must be an integer >= 0"),
        ({"replacing_ratio": 0.0}, "replacing_ratio must lie in (0, 1]"),
        ({"num_probes": 0}, "num_probes must be a positive integer"),
        ({"max_probe_steps": 0}, "max_probe_steps must be a positive integer"),
        ({"stopping_condition_top_k": 0}, "stopping_condition_top_k must be a positive integer"),
        ({"granularity": "char"}, "unknown granularity 'char'"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_options_are_refused(options, message):
    hf_model, tokenizer = float64_model("gpt2")
    with pytest.raises(ValueError) as error:
        seqattr.load_model(hf_model, "reagent", tokenizer=tokenizer, **options)
    assert message in str(error.value)


def test_an_attributed_function_outside_zero_one_is_refused():
    model = exact_model("gpt2", "reagent", **SMALL)
    with pytest.raises(ValueError, match="reagent measures a probability .* attributed_fn='probability'"):
        model.attribute(
            PROMPT, generation_args={"max_new_tokens": 1}, attributed_fn="logit", show_progress=False
        )


def test_a_contrastive_attributed_function_is_refused():
    model = exact_model("gpt2", "reagent", **SMALL)
    with pytest.raises(ValueError, match="reagent measures the probability of the step's token"):
        model.attribute(
            PROMPT,
            PROMPT + " The dog",
            contrast_targets=PROMPT + " The dog",
            attributed_fn="contrast_prob_diff",
            show_progress=False,
        )


def test_a_step_where_no_probe_stops_is_counted_and_warned():
    model = exact_model(
        "gpt2", "reagent", num_probes=2, max_probe_steps=1, keep_top_n=1, stopping_condition_top_k=1
    )
    with pytest.warns(UserWarning, match="no probe met the stopping condition"):
        out = model.attribute(PROMPT, PROMPT + " zebra zebra", show_progress=False)
    assert out.info["method_info"]["unstopped_steps"] > 0
    assert not out[0].target_attributions.isnan().all()
