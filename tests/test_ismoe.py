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
    torch.testing.assert_close(c.exp().sum(-1), torch.ones(3))  # log-probabilities: a distribution per sample


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
    """The spec, token by token, written without ``routing()``: logits W_g x, the prior in logit space
    (log_softmax(h0 r^T) for the softmax norm), keep the top-k logits, softmax over the kept ones only,
    mix the chosen experts' outputs."""
    B, L, _ = x.shape
    out = []
    for b in range(B):
        prior = torch.log_softmax(h0[b] @ moe.expert_tokens.t(), dim=-1) if moe.use_prior else 0.0
        for t in range(L):
            logits = (moe.router.weight @ x[b, t]) + prior
            order = sorted(range(moe.num_experts), key=lambda e: -float(logits[e]))[: moe.top_k]
            kept = torch.stack([logits[e] for e in order])
            w = torch.exp(kept - kept.max())
            w = w / w.sum()
            out.append(sum(w[i] * moe.experts[e](x[b, t]) for i, e in enumerate(order)))
    return torch.stack(out).reshape(B, L, -1)


@pytest.mark.parametrize("k,use_prior", [(1, True), (2, True), (3, True), (2, False)])
def test_forward_matches_an_independent_oracle_of_the_spec(k, use_prior):
    moe = make(num_experts=4, top_k=k, use_prior=use_prior)
    h0 = torch.randn(3, 12)
    moe.set_prior_input(h0)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), oracle(moe, x, h0), rtol=1e-5, atol=1e-6)


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
