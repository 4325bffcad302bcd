import time

import pytest
import torch

from benchmark.backbones import load_backbone
from benchmark.errors import UserError
from helpers import tiny_batch


@pytest.mark.parametrize("name", ["minilm", "tiny-bert", "tiny-t5", "tiny-mpnet"])
def test_layer_by_layer_equals_hf_forward(name):
    bb = load_backbone(name)
    batch = tiny_batch(bb, n=3, length=10)
    batch.pop("labels")
    with torch.no_grad():
        states, _ = bb.hidden_states(batch)
        if bb.family.name == "t5":
            out = bb.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True)
            ref = list(out.hidden_states[:-1]) + [out.last_hidden_state]
        else:
            ref = bb.model(**batch, output_hidden_states=True).hidden_states
    assert len(states) == bb.num_layers + 1 == len(ref)
    for a, b in zip(states, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_minilm_is_the_pretrained_model_and_frozen():
    bb = load_backbone("minilm")
    assert (bb.num_layers, bb.hidden_size) == (6, 384)
    assert sum(p.numel() for p in bb.parameters()) == 22_713_216 - 384 * 384 - 384  # pooler dropped
    assert not any(p.requires_grad for p in bb.parameters())
    assert len(bb.linear_modules()) == 6 * 6


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-t5", "tiny-mpnet"])
def test_narrow_layer_runs_at_reduced_width(name):
    bb = load_backbone(name)
    layer = bb.narrow_layer(4, 0)
    batch = tiny_batch(bb, n=2, length=8)
    h = torch.randn(2, 8, bb.hidden_size // 4)
    out = bb.run_layer(layer, h, bb.layer_context(batch["attention_mask"], h.dtype))
    assert out.shape == h.shape


def test_salient_token_pooling():
    bb = load_backbone("tiny-bert")
    h = torch.arange(12.0).view(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(bb.salient(h, mask), h[:, 0])
    bb.pooling = "mean"
    assert torch.allclose(bb.salient(h, mask), h[:, :2].mean(1))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UserError) as e:
        load_backbone("nope")
    msg = str(e.value)
    assert "\n" not in msg and "minilm" in msg and "t5-base" in msg


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(UserError) as e:
        load_backbone("some-user/some-model-that-is-not-cached")
    assert time.time() - t0 < 5
    assert "unreachable" in str(e.value) and "\n" not in str(e.value)


# --- the last layer's raw output, for the methods whose code reads it (LST, SHERL) --------------------------
def _batch(bb):
    batch = tiny_batch(bb, n=2, length=10)
    batch.pop("labels")
    return batch


def test_raw_last_is_the_finished_state_where_finish_is_the_identity():
    """BERT-like stacks end with their last layer: the raw reading is the same tensor (MiniLM's rows unchanged)."""
    bb = load_backbone("tiny-bert")
    bb.keep_raw_last = True
    with torch.no_grad():
        states, ctx = bb.hidden_states(_batch(bb))
    assert ctx.raw_last is states[-1]


@pytest.mark.parametrize("head", ["classifier", "seq2seq"])
def test_raw_last_is_the_last_blocks_output_before_t5s_final_norm(head):
    torch.manual_seed(0)
    bb = load_backbone("tiny-t5", head=head).eval()
    batch = _batch(bb)
    with torch.no_grad():
        plain, ctx0 = bb.hidden_states(batch)
        bb.keep_raw_last = True
        states, ctx = bb.hidden_states(batch)
        stacks = [(plain, states, ctx, ctx0, bb.finish)]
        if head == "seq2seq":
            batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 1]])
            dec, dctx = bb.decoder_hidden_states(batch, states[-1], batch["attention_mask"])
            bb.keep_raw_last = False
            dec0, dctx0 = bb.decoder_hidden_states(batch, plain[-1], batch["attention_mask"])
            stacks.append((dec0, dec, dctx, dctx0, bb.finish_decoder))
    for before, after, kept, unkept, finish in stacks:
        assert unkept.raw_last is None  # off: nothing more is held
        assert all(torch.equal(a, b) for a, b in zip(before, after))  # the states every method reads: unchanged
        torch.testing.assert_close(finish(kept.raw_last), after[-1])
        assert not torch.allclose(kept.raw_last, after[-1], atol=1e-3)
