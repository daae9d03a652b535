import pytest
import torch

from gliomaseg.config import ModelConfig
from gliomaseg.model import build_model, count_parameters, dead_channels


@pytest.mark.parametrize("in_channels,depth", [(3, 4), (1, 3), (9, 2)])
def test_unet_returns_one_logit_map_of_input_size(in_channels, depth):
    torch.manual_seed(0)
    model = build_model(in_channels, ModelConfig(base_filters=4, depth=depth)).eval()
    out = model(torch.randn(2, in_channels, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in model.modules())  # returns logits


def test_has_batchnorm_dropout_and_skips():
    model = build_model(3, ModelConfig(base_filters=4, depth=3, dropout=0.2))
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"BatchNorm2d", "Dropout2d", "ConvTranspose2d", "MaxPool2d"} <= kinds
    # decoder blocks take the up-sampled features concatenated with the skip: 2x the width
    assert model.decoder[-1][0].in_channels == 2 * 4


def test_width_scales_parameters():
    small = count_parameters(build_model(3, ModelConfig(base_filters=8)))
    large = count_parameters(build_model(3, ModelConfig(base_filters=16)))
    assert 3.5 < large / small < 4.5  # convolution weights grow with width squared


def test_dropout_off_in_eval_mode_makes_output_deterministic():
    model = build_model(3, ModelConfig(base_filters=4, depth=2, dropout=0.5)).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x))


def test_ensemble_averages_the_logits_of_its_members():
    """members > 1: one network whose output is the mean of independent U-Nets' logits."""
    torch.manual_seed(0)
    cfg = ModelConfig(base_filters=4, depth=2, members=3)
    ensemble = build_model(1, cfg).eval()
    assert len(ensemble.members) == 3
    assert count_parameters(ensemble) == 3 * count_parameters(build_model(1, ModelConfig(
        base_filters=4, depth=2)))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in ensemble.members]).mean(dim=0)
        torch.testing.assert_close(ensemble(x), expected)
        assert not torch.allclose(ensemble.members[0](x), expected)  # members differ


def test_deep_supervision_adds_half_and_quarter_logits_in_training_only():
    torch.manual_seed(0)
    cfg = ModelConfig(base_filters=4, depth=3, deep_supervision=True)
    model = build_model(2, cfg).train()
    outs = model(torch.randn(2, 2, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 64, 64), (2, 1, 32, 32), (2, 1, 16, 16)]
    model.eval()
    x = torch.randn(1, 2, 64, 64)
    assert model(x).shape == (1, 1, 64, 64)  # inference and export see one logit map
    # the extra heads are all it adds: the same seed builds the same network around them
    torch.manual_seed(1)
    plain = build_model(2, ModelConfig(base_filters=4, depth=3)).eval()
    torch.manual_seed(1)
    deep = build_model(2, cfg).eval()
    torch.testing.assert_close(deep(x), plain(x))
    assert count_parameters(deep) - count_parameters(plain) == 8 + 16 + 2


def test_residual_blocks_add_a_shortcut_around_the_same_convolutions():
    torch.manual_seed(0)
    cfg = ModelConfig(base_filters=4, depth=2, block="residual")
    model = build_model(1, cfg).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    block = model.encoder[1]  # 4 -> 8 filters: a 1x1 projection on the shortcut
    assert block.shortcut[0].kernel_size == (1, 1)
    # the only parameters added are the projections (1x1 conv + BN), one per block
    plain = count_parameters(build_model(1, ModelConfig(base_filters=4, depth=2)))
    projections = [(1, 4), (4, 8), (8, 16), (16, 8), (8, 4)]  # encoder, bottleneck, decoder
    assert count_parameters(model) - plain == sum(cin * cout + 2 * cout for cin, cout in projections)
    # the shortcut carries the input: with the convolution branch silenced (its last BN
    # zeroed), a block is relu(projection(x))
    block = model.decoder[0]
    torch.nn.init.zeros_(block.body[-1].weight)
    torch.nn.init.zeros_(block.body[-1].bias)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))
        assert block(x).abs().sum() > 0


def test_leaky_relu_passes_negative_features_at_a_hundredth_and_adds_no_parameters():
    torch.manual_seed(0)
    relu = build_model(1, ModelConfig(base_filters=4, depth=2)).eval()
    torch.manual_seed(0)
    leaky = build_model(1, ModelConfig(base_filters=4, depth=2, activation="leaky_relu")).eval()
    assert count_parameters(leaky) == count_parameters(relu)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for net, act in [(relu, lambda t: t.clamp(min=0)), (leaky, lambda t: t.where(t > 0, 0.01 * t))]:
            pre = net.encoder[0][:-1](x)  # the first block up to its last nonlinearity
            assert (pre < 0).any()
            torch.testing.assert_close(net.encoder[0](x), act(pre))
        assert not torch.allclose(leaky(x), relu(x))


def test_dead_channels_counts_output_channels_whose_weights_are_all_near_zero():
    net = build_model(1, ModelConfig(base_filters=4, depth=2))
    widths = 4 + 4 + 8 + 8 + 16 + 16 + 8 + 4 + 8 + 8 + 4 + 4 + 1  # encoder, bottleneck, up, decoder, head
    assert dead_channels(net) == (0, widths)
    with torch.no_grad():
        net.bottleneck[0].weight[:3] = 1e-7  # three output channels of a conv
        net.up[0].weight[:, 0] = 0.0  # one output channel of a transposed conv: dim 1
        net.up[1].weight[0] = 0.0  # an input channel only: every output channel still lives
    assert dead_channels(net) == (4, widths)
    assert dead_channels(net, tol=1e-8) == (1, widths)
