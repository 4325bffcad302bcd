"""MP-ISMoE under the memory predictor's fake tensors (``benchmark.memory``; shapes, no values): the
three steps of MP-ISMoE that read data, each answered so that shapes, and so memory, are the real ones.

- GNP-IQ quantizes shape-only while the method is built (``quant.shape_only``: the same packed layout
  and dtypes, no fit);
- ``NoisyQuantLinear``'s construction reads one scalar from data (its initial noise sigma, a value):
  it reads 1;
- an ISMoE's token dispatch (``(idx == e).nonzero()`` per expert) assumes balanced routing: each expert
  gets its 1/N share of the k T routed rows, so the rows kept for backward add up as in any real
  routing; only the per-expert split is assumed.

``PerturbedQuantLinear`` (``noise_on=backbone``) and trainable LayerNorms need no answer: the noise is drawn
by shape and the checkpointed forward recomputes shapes only (a test holds the prediction to the tracker).
"""
from __future__ import annotations

from methods.base import FakeHints


def fake_hints() -> FakeHints:
    from methods.mpismoe.ismoe import ISMoE
    from methods.mpismoe.noisy import NoisyQuantLinear
    from methods.mpismoe.quant import shape_only

    return FakeHints(
        build_contexts=(shape_only,),
        placeholder_scalars={NoisyQuantLinear.__init__.__code__: "NoisyQuantLinear init sigma"},
        balanced_dispatch=lambda module: [(m, m.num_experts) for m in module.modules() if isinstance(m, ISMoE)],
        dispatch_note="balanced MoE routing")
