import pytest
import torch
from torch import nn

from methods.mpismoe.ismoe import ISMoE


def ffn(d=8):
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d))


def make(**kw):
    torch.manual_seed(0)
    moe = ISMoE(ffn(), d_in=8, prior_dim=12, **kw)
    moe.set_prior_input(torch.randn(3, 12))
    return moe


@pytest.mark.parametrize("norm", ["softmax", "l2", "layernorm"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_sparse_dispatch_equals_dense_oracle(norm, k):
    moe = make(num_experts=4, top_k=k, norm=norm)
    x = torch.randn(3, 5, 8, requires_grad=True)
    torch.testing.assert_close(moe(x), moe.dense_forward(x))
    # gradients agree too
    g1 = torch.autograd.grad(moe(x).sum(), [x, moe.router.weight, moe.expert_tokens])
    g2 = torch.autograd.grad(moe.dense_forward(x).sum(), [x, moe.router.weight, moe.expert_tokens])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_only_chosen_experts_run():
    moe = make(num_experts=4, top_k=1)
    seen = {i: 0 for i in range(4)}
    for i, e in enumerate(moe.experts):
        e.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, seen[i] + inp[0].shape[0]))
    moe(torch.randn(3, 5, 8))
    assert sum(seen.values()) == 15  # every token ran through exactly one expert
    assert moe.usage.sum() == 15


def test_prior_changes_the_routing():
    moe = make(num_experts=4, top_k=1)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        moe.expert_tokens.zero_()
        moe.expert_tokens[2] = 50.0  # a prior that strongly prefers expert 2
    moe.set_prior_input(torch.ones(3, 12))
    _, idx_prior, _ = moe.routing(x)
    assert (idx_prior == 2).float().mean() > 0.9
    plain = make(num_experts=4, top_k=1, use_prior=False)
    plain.router.load_state_dict(moe.router.state_dict())
    _, idx_plain, _ = plain.routing(x)
    assert not torch.equal(idx_prior, idx_plain)


def test_prior_is_one_per_sample_and_normalised():
    moe = make(num_experts=4, norm="softmax")
    c = moe.prior()
    assert c.shape == (3, 4)
    torch.testing.assert_close(c.sum(-1), torch.ones(3))  # Eq. 8's c: a distribution per sample


def test_experts_start_as_perturbed_copies():
    base = ffn()
    moe = ISMoE(base, d_in=8, prior_dim=4, num_experts=3, perturb_std=0.01)
    assert torch.equal(moe.experts[0][0].weight, base[0].weight)
    d = (moe.experts[1][0].weight - base[0].weight).abs()
    assert 0 < d.max() < 0.1 * base[0].weight.abs().max()


def test_load_balance_loss_is_off_by_default_and_positive_when_on():
    x = torch.randn(3, 5, 8)
    moe = make()
    moe.train()
    moe(x)
    assert moe.pop_aux_loss() is None
    moe = make(balance_coef=0.01)
    moe.train()
    moe(x)
    aux = moe.pop_aux_loss()
    assert aux is not None and aux.item() > 0


def oracle(moe: ISMoE, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The spec, token by token, written without ``routing()``: logits W_g x; with the prior, Eq. 8's
    (softmax(logits) + softmax(h0 r^T)) / 2, or in the logit form logits + log_softmax(h0 r^T); keep the
    top-k scores, softmax over the kept ones only, mix the chosen experts' outputs."""
    B, L, _ = x.shape
    out = []
    for b in range(B):
        prior_logits = h0[b] @ moe.expert_tokens.t() if moe.use_prior else None
        for t in range(L):
            logits = moe.router.weight @ x[b, t]
            if prior_logits is None:
                scores = logits
            elif moe.prior_form == "eq8":
                scores = (torch.softmax(logits, -1) + torch.softmax(prior_logits, -1)) / 2
            else:
                scores = logits + torch.log_softmax(prior_logits, -1)
            order = sorted(range(moe.num_experts), key=lambda e: -float(scores[e]))[: moe.top_k]
            kept = torch.stack([scores[e] for e in order])
            w = torch.exp(kept - kept.max())
            w = w / w.sum()
            out.append(sum(w[i] * moe.experts[e](x[b, t]) for i, e in enumerate(order)))
    return torch.stack(out).reshape(B, L, -1)


@pytest.mark.parametrize("form", ["eq8", "logit"])
@pytest.mark.parametrize("k,use_prior", [(1, True), (2, True), (3, True), (2, False)])
def test_forward_matches_an_independent_oracle_of_the_spec(k, use_prior, form):
    moe = make(num_experts=4, top_k=k, use_prior=use_prior, prior_form=form)
    h0 = torch.randn(3, 12)
    moe.set_prior_input(h0)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), oracle(moe, x, h0), rtol=1e-5, atol=1e-6)


def _routed(form: str, router_probs: list[float], prior_probs: list[float], k: int = 1):
    """An ISMoE whose router gives ``router_probs`` and whose prior is ``prior_probs`` on one token."""
    n = len(router_probs)
    moe = ISMoE(ffn(n), d_in=n, prior_dim=n, num_experts=n, top_k=k, prior_form=form)
    with torch.no_grad():
        moe.router.weight.copy_(torch.diag(torch.tensor(router_probs).log()))
        moe.expert_tokens.copy_(torch.eye(n))
    moe.set_prior_input(torch.tensor([prior_probs]).log())
    x = torch.ones(1, 1, n)
    with torch.no_grad():
        return moe.routing(x)


def test_the_default_router_is_eq8_and_picks_other_experts_than_the_logit_form():
    """A confident router (expert 0) and a prior that rules expert 0 out: Eq. 8's mean of the two
    distributions keeps expert 0 (0.98 / 2 against 0.53 / 2), their product (the logit form) does not."""
    router, prior = [0.98, 0.02, 1e-6], [1e-6, 0.51, 0.49]
    assert ISMoE(ffn(), d_in=8, prior_dim=4).prior_form == "eq8"
    _, eq8, _ = _routed("eq8", router, prior)
    _, logit, _ = _routed("logit", router, prior)
    assert int(eq8[0, 0]) == 0 and int(logit[0, 0]) == 1
    # k = 2: Eq. 8's weights are the softmax over the kept means (squeezed), as Eq. 6 applies it
    w, idx, _ = _routed("eq8", router, prior, k=2)
    kept = torch.tensor([(0.98 + 1e-6) / 2, (0.02 + 0.51) / 2])
    assert idx[0].tolist() == [0, 1]
    torch.testing.assert_close(w[0], kept.softmax(-1), rtol=1e-4, atol=1e-5)


def test_the_method_builds_its_router_in_the_configured_form():
    from methods.mpismoe.method import MPISMoEConfig
    from methods.base import ConfigError

    assert MPISMoEConfig().prior_form == "eq8"
    with pytest.raises(ConfigError, match="prior_form"):
        MPISMoEConfig(prior_form="product")
    from helpers import build_module

    for form in ("eq8", "logit"):
        m = build_module("mpismoe", quantize_backbone=False, prior_form=form).method
        assert {moe.prior_form for moe in m.moes} == {form}


def test_mixing_weights_are_not_squeezed():
    """A softmax over probabilities keeps k = 2 weights within [0.27, 0.73]; over the kept logits a
    confident router gives its first expert nearly all the weight."""
    moe = make(num_experts=4, top_k=2, use_prior=False)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 50.0
    x = torch.zeros(1, 1, 8)
    x[..., 0] = 1.0
    with torch.no_grad():
        weights, idx, _ = moe.routing(x)
    assert int(idx[0, 0]) == 0 and float(weights[0, 0]) > 0.99


def test_router_entropy_and_expert_load_are_reported_and_reset():
    moe = make(num_experts=4, top_k=2)
    moe(torch.randn(3, 5, 8))
    stats = moe.pop_stats()
    assert sum(stats[f"expert{e}"] for e in range(4)) == pytest.approx(1.0)
    assert 0 < stats["router_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert moe.pop_stats() == {}  # counters reset
