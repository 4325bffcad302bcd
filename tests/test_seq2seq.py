"""The seq2seq kind (T5 as the METL papers ran it): the encoder-decoder behind the backbone interface, the
label-word head (teacher forcing, rank classification), the text-to-text task formats, and methods that
train on it, end to end from local GLUE files."""
import json

import pytest
import torch

import methods  # noqa: F401
from benchmark.backbones import load_backbone
from benchmark.errors import UserError
from benchmark.heads import LabelWordHead
from benchmark.run import plan, run
from helpers import build_module, one_step, tiny_batch
from tasks.base import TASKS
from test_tasks import write_glue

SEQ2SEQ_METHODS = ["full", "lora", "bitfit", "lst", "side_tuning", "unipt", "sherl", "mpismoe"]
SIDE = ["lst", "side_tuning", "unipt", "sherl", "mpismoe"]
CONFIG = {"lora": {"r": 2}, "lst": {"init": "random", "reduction": 4}, "side_tuning": {"reduction": 4},
          "unipt": {"reduction": 4}, "sherl": {"reduction": 4}, "mpismoe": {"base_overrides": {"reduction": "4"}}}


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    return load_backbone("tiny-t5", head="seq2seq")


def test_the_backbone_computes_what_the_hugging_face_model_computes(t5):
    batch = tiny_batch(t5, n=3, length=10)
    batch.pop("labels")
    batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 1], [0, 2, 3, 4]])
    ours = t5.lm_logits(t5(batch))
    ref = t5.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"]).logits
    torch.testing.assert_close(ours, ref)
    states, _ = t5.decoder_hidden_states(batch, t5.hidden_states(batch)[0][-1], batch["attention_mask"])
    assert len(states) == t5.num_decoder_layers + 1 and states[-1].shape == (3, 4, t5.hidden_size)


def test_an_encoder_has_no_seq2seq_kind():
    with pytest.raises(UserError, match="no decoder for head=seq2seq"):
        load_backbone("tiny-bert", head="seq2seq")


def test_glue_inputs_and_label_words_follow_t5():
    mnli, stsb = TASKS.get("mnli").text_to_text, TASKS.get("stsb").text_to_text
    assert TASKS.get("rte").text_to_text.source("A.", "B.") == "rte sentence1: A. sentence2: B."
    assert mnli.source("P.", "H.") == "mnli hypothesis: H. premise: P."
    assert mnli.label_words == ("entailment", "neutral", "contradiction")
    assert stsb.label_words[:3] == ("0.0", "0.2", "0.4") and stsb.label_words[-1] == "5.0"
    assert stsb.target_class(torch.tensor([3.87, 0.09, 5.0])).tolist() == [19, 0, 25]  # 3.8, 0.0, 5.0


class Echo(torch.nn.Module):
    """A stand-in method whose decoder states make the tied LM head put all its mass on one word's tokens."""

    def __init__(self, backbone, word_ids):
        super().__init__()
        self.backbone, self.word_ids = backbone, word_ids

    def forward(self, inputs):
        B, T = inputs["decoder_input_ids"].shape
        emb = self.backbone.model.lm_head.weight  # [vocab, d]
        tokens = self.word_ids.clamp_min(0)[:T]
        return 1e3 * emb[tokens].unsqueeze(0).expand(B, -1, -1)


@pytest.mark.parametrize("word", [0, 1, 2])
def test_rank_classification_picks_the_word_the_decoder_writes(t5, word):
    task = TASKS.get("mnli")
    head = LabelWordHead(t5, task, target_length=8)
    batch = tiny_batch(t5, n=2, length=10)
    scores = head.scores(Echo(t5, head.word_ids[word]), {k: v for k, v in batch.items() if k != "labels"}, batch)
    assert scores.shape == (2, 3)
    assert head.predictions(scores).tolist() == [word, word]


def test_a_label_word_longer_than_the_target_length_is_one_line(t5):
    with pytest.raises(UserError, match="target_length"):
        LabelWordHead(t5, TASKS.get("mnli"), target_length=1)


def test_regression_predicts_the_value_of_the_chosen_word(t5):
    head = LabelWordHead(t5, TASKS.get("stsb"), target_length=8)
    scores = torch.full((2, 26), -9.0)
    scores[0, 19], scores[1, 0] = 0.0, 0.0
    assert head.predictions(scores).tolist() == pytest.approx([3.8, 0.0])


@pytest.mark.parametrize("method", SEQ2SEQ_METHODS)
def test_only_the_methods_parameters_change_on_seq2seq(method):
    module = build_module(method, "tiny-t5", head="seq2seq", **CONFIG.get(method, {}))
    batch = tiny_batch(module.method.backbone, n=4, length=12)
    changed, with_grad = one_step(module, batch)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    if method in SIDE:  # the frozen backbone, encoder and decoder, never sees a gradient
        assert not any(n.startswith("method.backbone.") for n in trainable | with_grad)
    if method in ("lst", "side_tuning", "sherl"):  # the side decoder trains, and so does the side encoder
        assert any(".dec_" in n for n in changed) and any(".dec_" not in n and n.startswith("method.") for n in changed)
    if method == "lora":  # q and v of encoder and decoder self-attention and of cross-attention
        assert any(".encoder." in n for n in changed) and any("EncDecAttention" in n for n in changed)
        assert any(".decoder." in n and "SelfAttention" in n for n in changed)
        assert all("lora_" in n for n in changed)
    if method == "bitfit":  # T5 has no biases: the LayerNorm scales of both stacks
        assert any(".decoder." in n for n in changed) and all("layer_norm" in n for n in changed)
    if method == "full":
        assert "method.backbone.model.lm_head.weight" in changed or "method.backbone.model.shared.weight" in changed


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue_seq2seq")
    write_glue(root)
    return root


TINY = {"backbone": "tiny-t5", "head": "seq2seq", "wandb": "disabled", "progress": "false", "max_steps": "2",
        "batch_size": "4", "eval_batch_size": "8", "limit_train_samples": "16", "limit_eval_samples": "8",
        "max_length": "32", "warmup_steps": "0"}


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_a_seq2seq_run_from_local_glue_files_writes_a_record_under_its_own_label(task, glue_dir, tmp_path):
    dirs = {"results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")}
    path = run({**TINY, **dirs, "method": "lora", "task": task, "data_dir": str(glue_dir)})
    rec = json.loads(path.read_text())
    assert rec["run"]["status"] == "ok" and rec["run"]["backbone"] == "tiny-t5:seq2seq"
    assert set(rec["metrics"]["test"]) >= {"score"}


def test_a_method_without_a_seq2seq_form_is_refused_in_one_line(glue_dir, tmp_path):
    from benchmark.run import build_components
    from methods.base import METHODS

    cls = METHODS.get("unipt")
    try:
        cls.runs_on_seq2seq = False  # as a newly added method that has no seq2seq form yet
        p = plan({**TINY, "method": "unipt", "task": "rte", "data_dir": str(glue_dir)})
        with pytest.raises(UserError, match="does not run on a seq2seq backbone yet") as e:
            build_components(p)
        assert "\n" not in str(e.value) and "lora" in str(e.value)
    finally:
        cls.runs_on_seq2seq = True


@pytest.mark.parametrize("method", SEQ2SEQ_METHODS)
def test_a_decoder_position_never_sees_a_later_target_token(method):
    """Teacher forcing feeds the gold word: any method that let position t read position t + 1 would learn
    to copy it, and rank classification would then rate every word alike."""
    module = build_module(method, "tiny-t5", head="seq2seq", **CONFIG.get(method, {})).eval()
    batch = tiny_batch(module.method.backbone, n=2, length=10)
    inputs = module.inputs(batch)
    a = torch.tensor([[0, 5, 6, 7, 8], [0, 9, 10, 11, 12]])
    b = a.clone()
    b[:, -1] = torch.tensor([100, 200])
    with torch.no_grad():
        ha = module.method({**inputs, "decoder_input_ids": a})
        hb = module.method({**inputs, "decoder_input_ids": b})
    torch.testing.assert_close(ha[:, :-1], hb[:, :-1])
    assert not torch.allclose(ha[:, -1], hb[:, -1])


@pytest.mark.parametrize("method", SIDE)
def test_side_methods_run_the_backbone_decoder_without_autograd(method):
    module = build_module(method, "tiny-t5", head="seq2seq", **CONFIG[method])
    bb = module.method.backbone
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
             for layer in list(bb.decoder_layers) + list(bb.layers)]
    batch = tiny_batch(bb, n=2, length=10)
    try:
        module.head.loss(module.method, module.inputs(batch), batch).backward()
    finally:
        for h in hooks:
            h.remove()
    # every frozen layer runs once without autograd; SHERL (and MP-ISMoE over it) then runs the last decoder
    # block once more with autograd, its late route
    late = 1 if method in ("sherl", "mpismoe") else 0
    assert seen.count(False) == bb.num_layers + bb.num_decoder_layers and seen.count(True) == late


def test_lst_side_decoder_cross_attends_the_side_encoder():
    module = build_module("lst", "tiny-t5", head="seq2seq", init="random", reduction=4)
    m = module.method
    d_side = m.d_side
    cross = m.dec_side_layers[0].layer[1].EncDecAttention
    assert cross.k.in_features == d_side and m.up.out_features == m.backbone.hidden_size
    assert len(m.dec_side_layers) == m.backbone.num_decoder_layers


def test_lst_fisher_init_prunes_both_stacks_with_one_hidden_set():
    from helpers import toy_task

    module = build_module("lst", "tiny-t5", head="seq2seq", reduction=2, fisher_samples=8)
    m = module.method
    batches = [tiny_batch(m.backbone, n=4, length=10, seed=s) for s in range(2)]
    m.prepare(batches, toy_task())
    enc, dec = m.prune_plan, m.decoder_prune_plan
    assert enc.samples == 8 and torch.equal(enc.hidden, dec.hidden)  # one hidden set for both stacks
    bb_q = m.backbone.decoder_layers[0].layer[0].SelfAttention.q.weight
    side_q = m.dec_side_layers[0].layer[0].SelfAttention.q.weight
    rows = dec.inner[0][0]  # the self-attention width of decoder layer 0
    torch.testing.assert_close(side_q, bb_q[rows][:, dec.hidden])
    cross_k = m.dec_side_layers[0].layer[1].EncDecAttention.k  # reads the side encoder's kept channels
    bb_k = m.backbone.decoder_layers[0].layer[1].EncDecAttention.k.weight
    torch.testing.assert_close(cross_k.weight, bb_k[dec.inner[0][1]][:, enc.hidden])
    assert not any(p.grad is not None for p in m.backbone.parameters())


def test_t5_names_default_to_the_seq2seq_kind_and_head_classifier_keeps_the_encoder(glue_dir):
    from benchmark.backbones import default_head

    assert [default_head(n) for n in ("t5-base", "tiny-t5", "hf:google/flan-t5-base", "minilm", "bert-base-uncased")] \
        == ["seq2seq", "seq2seq", "seq2seq", "classifier", "classifier"]
    assert plan({"backbone": "tiny-t5", "task": "rte"}).backbone_label == "tiny-t5:seq2seq"
    assert plan({"backbone": "tiny-t5", "task": "rte", "head": "classifier"}).backbone_label == "tiny-t5"
    assert plan({"backbone": "minilm", "task": "rte"}).run.head == "classifier"


def test_a_saved_encoder_directory_defaults_to_the_classifier_kind(tmp_path):
    from benchmark.backbones import default_head

    (tmp_path / "config.json").write_text('{"model_type": "t5", "architectures": ["T5EncoderModel"]}')
    assert default_head(str(tmp_path)) == "classifier"
    (tmp_path / "config.json").write_text('{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}')
    assert default_head(str(tmp_path)) == "seq2seq"


def test_a_saved_t5_directory_runs_as_seq2seq_through_the_hub_loading_path(glue_dir, tmp_path):
    """The code path of a hub name (from_pretrained of T5ForConditionalGeneration and its tokenizer), on a
    directory in the format save_pretrained writes."""
    t5 = load_backbone("tiny-t5", head="seq2seq")
    folder = tmp_path / "my-t5"
    t5.model.save_pretrained(folder)
    t5.tokenizer.save_pretrained(folder)
    dirs = {"results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")}
    quick = {k: v for k, v in TINY.items() if k not in ("backbone", "head")}
    path = run({**quick, **dirs, "backbone": str(folder), "method": "lst", "task": "rte", "data_dir": str(glue_dir),
                "fisher_samples": "4"})
    rec = json.loads(path.read_text())
    assert rec["run"]["backbone"] == f"{folder}:seq2seq" and rec["run"]["status"] == "ok"


@pytest.mark.parametrize("method", ["lst", "lora"])
def test_easy_vqa_runs_text_to_text_with_visual_tokens_in_the_encoder(method, tmp_path):
    """VL-T5's arrangement: the visual adapter's tokens follow the question in the encoder input, the decoder
    writes one of the 13 answers, scored by rank classification."""
    dirs = {"results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs"),
            "feature_cache": str(tmp_path / "features")}
    quick = {**TINY, "vision": "tiny-vision", "max_length": "16", "limit_train_samples": "8",
             "limit_eval_samples": "8", "fisher_samples": "4"} if method == "lst" else \
        {**TINY, "vision": "tiny-vision", "max_length": "16", "limit_train_samples": "8", "limit_eval_samples": "8"}
    rec = json.loads(run({**quick, **dirs, "method": method, "task": "easy_vqa"}).read_text())
    assert rec["run"]["backbone"] == "tiny-t5:seq2seq+tiny-vision" and rec["run"]["status"] == "ok"


def test_vl_tasks_without_a_word_form_are_one_line_on_seq2seq():
    from benchmark.data import TaskDataModule

    with pytest.raises(UserError, match="no text-to-text format") as e:
        TaskDataModule(TASKS.get("vqa"), None, max_length=16, batch_size=2, eval_batch_size=2, text_to_text=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("head", ["seq2seq", "classifier"])
@pytest.mark.parametrize("method", ["unipt", "side_tuning"])
def test_methods_that_read_the_finished_last_state_are_unchanged_by_the_raw_reading(method, head):
    """Only LST and SHERL read the last block's raw output; the others read the stack's finished output as
    before, whether or not the backbone keeps the raw one beside it."""
    module = build_module(method, "tiny-t5", head=head, **CONFIG[method]).eval()
    bb = module.method.backbone
    assert not bb.keep_raw_last
    batch = module.inputs(tiny_batch(bb, n=2, length=10))
    if head == "seq2seq":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 1]])
    with torch.no_grad():
        before = module.method(batch)
        bb.keep_raw_last = True
        after = module.method(batch)
    assert torch.equal(before, after)


def test_mpismoe_prior_reads_the_finished_last_state():
    """MP-ISMoE's prior reads the backbone's final output (after T5's final LayerNorm), though its SHERL base reads
    the raw one."""
    module = build_module("mpismoe", "tiny-t5", head="seq2seq", **CONFIG["mpismoe"]).eval()
    m = module.method
    bb = m.backbone
    assert bb.keep_raw_last and m.moes and any(moe.use_prior for moe in m.moes)
    seen = []
    for moe in m.moes:
        moe.set_prior_input = lambda h, f=moe.set_prior_input: (seen.append(h), f(h))[1]
    batch = module.inputs(tiny_batch(bb, n=2, length=10))
    batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 1]])
    with torch.no_grad():
        m(batch)
        states, ctx = bb.hidden_states(batch)
    expected = bb.salient(states[-1], batch["attention_mask"])
    assert seen and all(torch.allclose(h, expected) for h in seen)
    assert not torch.allclose(bb.salient(ctx.raw_last, batch["attention_mask"]), expected, atol=1e-3)
