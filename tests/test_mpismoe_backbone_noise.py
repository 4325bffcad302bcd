"""GNP-IQ's noise on the frozen backbone itself (``noise_on=backbone``) and trainable backbone LayerNorms
(``train_layernorm``): the paper's Table 4 setting, where the backbone runs with autograd."""
import pytest
import torch
from torch import nn

from helpers import build_module, inputs, one_step, tiny_batch

UNIPT = {"base": "unipt", "moe": False, "prior": False}
NOISE = {**UNIPT, "noise": True, "noise_on": "backbone"}


def trainable(module) -> dict[str, int]:
    return {n: p.numel() for n, p in module.named_parameters() if p.requires_grad}


def test_backbone_noise_is_per_output_channel_of_every_quantized_layer_linear_and_trains():
    from methods.mpismoe.noisy import PerturbedQuantLinear

    module = build_module("mpismoe", **NOISE)
    m = module.method
    layer_linears = [n for n, x in m.backbone.model.named_modules() if isinstance(x, PerturbedQuantLinear)]
    assert m.perturbed == layer_linears and len(layer_linears) == m.quant_stats["perturbed"] > 0
    assert all(any(x is y for layer in m.backbone.layers for y in layer.modules())
               for x in m.perturbed_layers())  # inside the backbone's layers only
    plain = build_module("mpismoe", **{**UNIPT, "noise": False})
    extra = set(trainable(module)) - set(trainable(plain))
    assert extra == {f"method.backbone.model.{n}.{p}" for n in m.perturbed for p in ("noise_mu", "noise_log_sigma")}
    assert sum(trainable(module)[n] for n in extra) == 2 * sum(x.out_features for x in m.perturbed_layers())
    changed, _ = one_step(module, tiny_batch(m.backbone))
    assert extra <= changed  # trained through the forward pass: every layer's mu and sigma moved
    assert all(not n.startswith("method.backbone.") or n in extra for n in changed)


def test_the_default_keeps_the_backbone_out_of_autograd_and_the_noise_mode_runs_it_with_autograd():
    from helpers import backbone_outputs

    assert not build_module("mpismoe").method.backbone_trains  # the default: the paper's GLUE memory
    default = build_module("mpismoe", **UNIPT).method
    assert default.perturbed == [] and not default.backbone_trains and default.config.noise_on == "trained"
    default.train()
    assert all(o == (False, False) for o in backbone_outputs(default, tiny_batch(default.backbone)))
    for cfg in (NOISE, {**UNIPT, "train_layernorm": True}):
        m = build_module("mpismoe", **cfg).method
        m.train()
        assert m.backbone_trains and all(o == (True, True) for o in backbone_outputs(m, tiny_batch(m.backbone)))


def test_perturbed_linear_samples_in_training_sees_the_mean_in_eval_and_keeps_no_weight():
    from methods.mpismoe.noisy import PerturbedQuantLinear
    from methods.mpismoe.qlinear import QuantLinear

    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(64, 8), bits=8, group_size=32)
    layer = PerturbedQuantLinear.from_quant(q)
    step = layer.step_size()
    with torch.no_grad():
        layer.noise_mu.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(5, 64)
    layer.eval()
    mean_w = q.dequantize() + step * layer.noise_mu.detach()[:, None]
    torch.testing.assert_close(layer(x), x @ mean_w.t() + q.bias)
    layer.train()
    with torch.no_grad():
        draws = torch.stack([layer.perturbed(layer.noise_mu, layer.noise_log_sigma, True) for _ in range(3000)])
    z = (draws - q.dequantize()) / step
    assert (z.mean(0) - layer.noise_mu.detach()[:, None]).abs().max() < 0.1
    assert (z.std(0) - 0.5).abs().max() < 0.1  # sigma starts at half a step
    # gradients: the checkpointed forward matches plain autograd through the same sample
    xg = x.clone().requires_grad_(True)
    state = torch.get_rng_state()
    y = layer(xg)
    (y ** 2).sum().backward()
    torch.set_rng_state(state)
    mu, ls = layer.noise_mu.detach().clone().requires_grad_(), layer.noise_log_sigma.detach().clone().requires_grad_()
    x2 = x.clone().requires_grad_(True)
    y2 = layer._linear(x2, mu, ls, True)
    (y2 ** 2).sum().backward()
    torch.testing.assert_close(y, y2)
    for a, b in ((xg.grad, x2.grad), (layer.noise_mu.grad, mu.grad), (layer.noise_log_sigma.grad, ls.grad)):
        torch.testing.assert_close(a, b)


def test_backbone_requantization_refits_only_the_chosen_groups_on_the_perturbed_weights():
    from methods.mpismoe.noisy import PerturbedQuantLinear
    from methods.mpismoe.qlinear import QuantLinear

    torch.manual_seed(0)
    layer = PerturbedQuantLinear.from_quant(QuantLinear.from_linear(nn.Linear(100, 6), bits=4, group_size=32))
    before = layer.dequantize().clone()
    scales = layer.scales.clone()
    with torch.no_grad():
        layer.noise_mu.fill_(2.0)  # two steps up: every refit group moves
    chosen = layer.requantize(0.25)
    changed_groups = (layer.scales != scales).view(-1).nonzero().view(-1)
    assert set(changed_groups.tolist()) <= set(chosen.tolist())
    ngroups = layer.scales.shape[1]
    after = layer.dequantize()
    for flat in range(layer.scales.numel()):
        r, g = divmod(flat, ngroups)
        cols = slice(g * 32, min((g + 1) * 32, 100))
        moved = (after[r, cols] - before[r, cols]).mean() / layer.step_size()[r, cols].mean()
        if flat in set(chosen.tolist()):
            assert moved > 1.0  # refit on the perturbed weight: shifted by about mu steps
        else:
            assert torch.equal(after[r, cols], before[r, cols])


def test_the_methods_schedule_requantizes_the_perturbed_backbone_and_checkpoints_keep_it():
    m = build_module("mpismoe", **NOISE).method
    layer = m.perturbed_layers()[0]
    packed = layer.packed.clone()
    with torch.no_grad():
        layer.noise_mu.fill_(3.0)
    m.after_epoch(0)
    assert not torch.equal(layer.packed, packed)
    assert f"backbone.model.{m.perturbed[0]}." in m.extra_state_prefixes()
    assert "gnpiq/backbone/mu" in m.training_stats()


def test_train_layernorm_trains_the_backbones_norms_and_refuses_quantized_ones():
    from benchmark.errors import ConfigError
    from methods.mpismoe.method import MPISMoEConfig

    module = build_module("mpismoe", **UNIPT, train_layernorm=True)
    m = module.method
    norms = m.backbone.layer_norms()
    assert m.trained_layernorms == list(norms) and all(p.requires_grad for n in norms.values() for p in n.parameters())
    assert all(type(n) is nn.LayerNorm for n in norms.values())  # fp32, as they were
    changed, _ = one_step(module, tiny_batch(m.backbone))
    assert {f"method.backbone.model.{n}.weight" for n in norms} <= changed
    with pytest.raises(ConfigError, match="train_layernorm"):
        MPISMoEConfig(train_layernorm=True, quantize_layernorm=True)
    with pytest.raises(ConfigError, match="noise_on"):
        MPISMoEConfig(noise_on="everything")
    with pytest.raises(ConfigError, match="noise_on"):
        MPISMoEConfig(noise_on="backbone", quantize_backbone=False)


def test_on_seq2seq_only_the_encoder_trains_the_backbone():
    """The base runs T5's decoder without autograd, so noise and LayerNorm training stay in the encoder."""
    module = build_module("mpismoe", "tiny-t5", head="seq2seq", base_overrides={"reduction": "4"},
                          noise=True, noise_on="backbone", train_layernorm=True)
    m = module.method
    assert m.perturbed and all(n.startswith("encoder.") for n in m.perturbed)
    assert m.trained_layernorms and all(n.startswith("encoder.") for n in m.trained_layernorms)
    changed, _ = one_step(module, tiny_batch(m.backbone, n=2, length=10))
    backbone = {n for n in changed if n.startswith("method.backbone.")}
    assert backbone and all(n.startswith("method.backbone.model.encoder.") for n in backbone)


def test_the_noise_row_adds_a_tenth_of_a_million_parameters_on_a_base_sized_backbone():
    """The paper: + noise raises trainable parameters by about 0.1 M (12.4 -> 12.5 M). On a 12-layer,
    768-wide encoder (BERT-base's shipped config, fake tensors, no download) the noise row adds mu and sigma
    per output channel of its 72 layer linears: 2 x 12 x 6912 = 165,888."""
    from benchmark.memory.simulate import simulate

    shape = {"batch_size": "2", "max_length": "16", "target": "cpu", "steps": "2", "backbone": "bert-base-uncased",
             "method": "mpismoe"}
    mixed, noise = (simulate({**shape, "variant": v}, fake=True)["trainable_params"]
                    for v in ("table4-mixed-precision", "table4-mixed-noise"))
    assert 50_000 <= noise - mixed <= 200_000
    assert noise - mixed == 2 * 12 * (4 * 768 + 3072 + 768)


@pytest.mark.parametrize("variant", ["table4-mixed-precision", "table4-mixed-noise"])
def test_the_memory_predictor_holds_what_the_backbone_training_rows_hold(variant):
    """Fake tensors (shapes only) predict these rows' peak and parameters exactly as the real tracker
    measures them: the checkpointed noise sample and the trainable LayerNorms need no hint."""
    from benchmark.memory.simulate import simulate

    shape = {"batch_size": "4", "max_length": "16", "target": "cpu", "steps": "2", "backbone": "tiny-bert",
             "method": "mpismoe", "variant": variant}
    predicted, real = simulate(shape, fake=True), simulate(shape, fake=False)
    assert predicted["peak_train_bytes"] == real["peak_train_bytes"]
    assert predicted["trainable_params"] == real["trainable_params"]
    assert predicted["backbone_storage_bytes"] == real["backbone_storage_bytes"]
