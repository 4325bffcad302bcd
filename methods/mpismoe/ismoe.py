"""ISMoE: the interactive side mixture of experts (MP-ISMoE, AAAI 2026), written by hand.

A side network's FFN becomes N experts (copies of that FFN, slightly perturbed so they can diverge).
Each token is routed to its top-k experts; the routing is refined by an interaction prior computed
once per sample from the frozen backbone's salient token h0 and N learnable expert tokens r:

    router logits   g(x) = W_g x                  [tokens, N]
    prior           c = Norm(h0 r^T)              [samples, N], shared by a sample's tokens

and then one of two refinements (``prior_form``):

- ``eq8`` (default, the paper's Eq. 8 as written): g'(x) = (softmax(g(x)) + c) / 2, the mean of the
  router's and the prior's distributions (with Norm = softmax); keep the top-k of g', G = softmax over
  the kept entries (Eq. 6), output = sum_{i in top-k} G_i(x) E_i(x). The softmax acts on values in
  [0, 1], so the mixing weights stay close to uniform (k = 2: within 0.27-0.73).
- ``logit`` (a variant, our reading): g'(x) = g(x) + c in logit space, with c = log_softmax(h0 r^T)
  for Norm = softmax, so the kept-entry softmax is the renormalised product softmax(g) * softmax(h0 r^T)
  and the weights are not squeezed. It exists because Eq. 8 bounds the mixing weights and this form
  does not, so the two are an ablation of that choice; a confident prior picks other experts here than
  under Eq. 8 (a product vetoes an expert either distribution rules out, a mean does not).

Without the prior both are Eq. 6: top-k of g, softmax over the kept logits. ``l2`` / ``layernorm``
norms use the normalised prior logits as they are, in either form.

Dispatch is sparse: an expert runs only on the tokens routed to it, so only those activations are
kept for backward. ``dense_forward`` runs every expert on every token and masks: the test oracle.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("softmax", "l2", "layernorm")
PRIOR_FORMS = ("eq8", "logit")


class ISMoE(nn.Module):
    def __init__(self, expert: nn.Module, d_in: int, prior_dim: int, num_experts: int = 4, top_k: int = 2,
                 use_prior: bool = True, norm: str = "softmax", perturb_std: float = 0.01,
                 balance_coef: float = 0.0, prior_form: str = "eq8"):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts], got {top_k} of {num_experts}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}")
        if prior_form not in PRIOR_FORMS:
            raise ValueError(f"prior_form must be one of {PRIOR_FORMS}")
        self.num_experts, self.top_k, self.use_prior, self.norm = num_experts, top_k, use_prior, norm
        self.prior_form = prior_form
        self.balance_coef = balance_coef
        self.experts = nn.ModuleList()
        for i in range(num_experts):
            e = copy.deepcopy(expert)
            if i > 0 and perturb_std > 0:  # expert 0 keeps the base FFN exactly
                with torch.no_grad():
                    for p in e.parameters():
                        if p.ndim >= 2:
                            p.add_(torch.randn_like(p) * perturb_std * p.std().clamp_min(1e-6))
            self.experts.append(e)
        self.router = nn.Linear(d_in, num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.expert_tokens = nn.Parameter(torch.randn(num_experts, prior_dim) * 0.02) if use_prior else None
        self.register_buffer("usage", torch.zeros(num_experts), persistent=False)  # tokens per expert
        self.register_buffer("entropy_sum", torch.zeros(()), persistent=False)  # router entropy, summed
        self.register_buffer("entropy_tokens", torch.zeros(()), persistent=False)
        self._prior_input: torch.Tensor | None = None
        self._aux: torch.Tensor | None = None

    # --- the interaction prior ------------------------------------------------------------------
    def set_prior_input(self, h0: torch.Tensor | None) -> None:
        """The backbone's salient token per sample, [B, prior_dim]; set before every forward."""
        self._prior_input = h0

    def prior(self) -> torch.Tensor:
        """c = Norm(h0 r^T), [B, N]: probabilities for the softmax norm (Eq. 8's c)."""
        logits = self._prior_input.to(self.expert_tokens.dtype) @ self.expert_tokens.t()  # [B, N]
        if self.norm == "softmax":
            return logits.softmax(-1)
        if self.norm == "l2":
            return F.normalize(logits, dim=-1)
        return F.layer_norm(logits, (self.num_experts,))

    def _prior_logits(self) -> torch.Tensor:
        """The prior in logit space, [B, N] (the ``logit`` form): log c for the softmax norm."""
        if self.norm != "softmax":
            return self.prior()
        return (self._prior_input.to(self.expert_tokens.dtype) @ self.expert_tokens.t()).log_softmax(-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The scores top-k and the kept-entry softmax act on, float32, [B * L, N] for x [B, L, d]: g(x)
        without the prior; with it, Eq. 8's (softmax(g) + c) / 2 or, in the ``logit`` form, g + log c."""
        B, L, _ = x.shape
        g = self.router(x).float()  # [B, L, N]
        if self.use_prior:
            if self._prior_input is None:
                raise RuntimeError("ISMoE: set_prior_input(h0) must be called before forward")
            if self.prior_form == "eq8":
                g = (g.softmax(-1) + self.prior().float()[:, None, :]) / 2
            else:
                g = g + self._prior_logits().float()[:, None, :]
        return g.reshape(B * L, -1)

    def routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k weights [T, k], top-k expert ids [T, k], router probabilities [T, N]) for x [B, L, d]:
        top-k over the refined scores, softmax over the kept scores only; the probabilities are that
        softmax over all N (entropy logs, balance loss)."""
        logits = self.logits(x)
        top_val, top_idx = logits.topk(self.top_k, dim=-1)
        probs = logits.softmax(-1)
        with torch.no_grad():  # router entropy over all N experts, averaged over tokens (logged per epoch)
            ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
            self.entropy_sum += ent.sum()
            self.entropy_tokens += ent.numel()
        return top_val.softmax(-1), top_idx, probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        weights, idx, probs = self.routing(x)
        flat = x.reshape(B * L, d)
        out = None
        counts = torch.zeros(self.num_experts, device=x.device)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            counts[e] = rows.numel()
            if rows.numel() == 0:
                continue
            y = expert(flat[rows]) * weights[rows, slot].unsqueeze(-1).to(flat.dtype)
            if out is None:
                out = flat.new_zeros(B * L, y.shape[-1], dtype=y.dtype)
            out = out.index_add(0, rows, y)
        self.usage += counts.detach()
        if self.balance_coef > 0 and self.training:
            # Switch-Transformer load balance: N * sum_e (fraction of routed slots to e) * (mean prob of e)
            frac = counts / counts.sum().clamp_min(1)
            self._aux = self.balance_coef * self.num_experts * (frac * probs.mean(0)).sum()
        return out.reshape(B, L, -1)

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, unselected ones weighted 0: equal to ``forward`` (test oracle)."""
        B, L, d = x.shape
        weights, idx, _ = self.routing(x)
        full = torch.zeros(B * L, self.num_experts, dtype=weights.dtype, device=x.device)
        full.scatter_(1, idx, weights)
        ys = torch.stack([e(x.reshape(B * L, d)) for e in self.experts], 1)  # [T, N, d_out]
        return (ys * full.unsqueeze(-1).to(ys.dtype)).sum(1).reshape(B, L, -1)

    def pop_stats(self) -> dict[str, float]:
        """Expert load (fraction of routed token slots per expert) and mean router entropy (nats) since
        the last call; resets the counters."""
        out = {}
        total = float(self.usage.sum())
        if total > 0:
            out.update({f"expert{e}": n / total for e, n in enumerate(self.usage.tolist())})
        if float(self.entropy_tokens) > 0:
            out["router_entropy"] = float(self.entropy_sum / self.entropy_tokens)
        self.usage.zero_()
        self.entropy_sum.zero_()
        self.entropy_tokens.zero_()
        return out

    def pop_aux_loss(self) -> torch.Tensor | None:
        aux, self._aux = self._aux, None
        return aux
