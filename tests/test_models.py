"""Every catalogued model builds, runs, and has the parameter count the paper (and torchvision) give."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from resnet_repro.catalog import CATALOG
from resnet_repro.models import BasicBlock, ZeroPadShortcut, build_model, count_parameters, response_layers

# Table 6 of the paper, as printed (millions of parameters, CIFAR-10).
TABLE6_PARAMS = {
    "resnet20": "0.27",
    "resnet32": "0.46",
    "resnet44": "0.66",
    "resnet56": "0.85",
    "resnet110": "1.7",
    "resnet1202": "19.4",
}


@pytest.mark.parametrize(("name", "printed"), TABLE6_PARAMS.items())
def test_cifar_resnet_parameters_match_table6(name: str, printed: str) -> None:
    count = count_parameters(build_model(name, num_classes=10))
    decimals = len(printed.split(".")[1])
    assert f"{count / 1e6:.{decimals}f}" == printed


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_nets_have_the_same_parameters_as_their_resnets(depth: int) -> None:
    assert count_parameters(build_model(f"plain{depth}")) == count_parameters(build_model(f"resnet{depth}"))


def test_option_a_shortcuts_are_parameter_free_and_pad_channels() -> None:
    model = build_model("resnet20")
    shortcuts = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2  # one at each of the two stage transitions
    assert all(count_parameters(s) == 0 for s in shortcuts)
    x = torch.randn(2, 16, 32, 32)
    y = shortcuts[0](x)
    assert y.shape == (2, 32, 16, 16)
    # Identity on the subsampled map for the original channels, zeros in the new ones.
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_plain_blocks_have_no_shortcut() -> None:
    blocks = [m for m in build_model("plain20").modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9 and all(b.shortcut is None for b in blocks)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_imagenet_resnets_match_torchvision(depth: int) -> None:
    ours = count_parameters(build_model(f"resnet{depth}", num_classes=1000, image_size=224))
    theirs = count_parameters(getattr(torchvision.models, f"resnet{depth}")(weights=None))
    assert ours == theirs


@pytest.mark.parametrize("depth", [16, 19])
def test_imagenet_vgg_matches_torchvision(depth: int) -> None:
    ours = count_parameters(build_model(f"vgg{depth}_bn", num_classes=1000, image_size=224))
    assert ours == count_parameters(getattr(torchvision.models, f"vgg{depth}_bn")(weights=None))


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_nets_drop_only_the_projections(depth: int) -> None:
    resnet = build_model(f"resnet{depth}", 1000)
    projections = sum(count_parameters(m.shortcut) for m in resnet.modules() if isinstance(m, BasicBlock))
    assert count_parameters(build_model(f"plain{depth}", 1000)) == count_parameters(resnet) - projections


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_model_builds_and_runs(name: str) -> None:
    family = CATALOG[name].family
    size = 64 if family == "imagenet" else 8 if name == "resnet1202" else 32  # 1202 layers: keep it quick
    # Training mode: BN uses batch statistics, as in the first step of training (in eval mode an untrained
    # 1202-layer net's unit running statistics let activations grow without bound).
    model = build_model(name, num_classes=7, in_channels=3, image_size=size).train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet8", "plain20", "cifar_resnet18", "cifar_vgg16_bn", "fc20"])
def test_models_take_other_channels_and_sizes(name: str) -> None:
    model = build_model(name, num_classes=10, in_channels=1, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_fc_nets_have_the_requested_depth_and_width() -> None:
    for depth in (20, 56):
        linears = [m for m in build_model(f"fc{depth}", width=64).modules() if isinstance(m, nn.Linear)]
        assert len(linears) == depth
        assert {m.out_features for m in linears[:-1]} == {64}
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in build_model("fc56").modules())


def test_initialization_follows_the_paper() -> None:
    torch.manual_seed(0)
    model = build_model("resnet56")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # He normal, fan_out mode: std = sqrt(2 / (out_channels * k * k)).
    conv = convs[-1]
    expected = (2 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown model 'resnet21'"):
        build_model("resnet21")


def test_response_layers_cover_every_3x3_conv_of_the_blocks() -> None:
    assert len(response_layers(build_model("resnet20"))) == 18
    assert len(response_layers(build_model("plain56"))) == 54
