"""Every catalogued model builds, runs, and has the parameter count the paper (and torchvision) give."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import REPO
from torch import nn

from resnet_repro.catalog import CATALOG
from resnet_repro.errors import ReproError
from resnet_repro.models import (
    BasicBlock,
    Bottleneck,
    ZeroPadShortcut,
    build_model,
    count_parameters,
    response_layers,
)
from resnet_repro.plan import load_config

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


# Our name -> torchvision's for the same layout (the bottleneck nets differ in stride placement only).
TORCHVISION_TWINS = {
    "resnet18_b": "resnet18",
    "resnet34_b": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
}


@pytest.mark.parametrize(("ours", "theirs"), TORCHVISION_TWINS.items())
def test_imagenet_resnets_match_torchvision(ours: str, theirs: str) -> None:
    count = count_parameters(build_model(ours, num_classes=1000, image_size=224))
    assert count == count_parameters(getattr(torchvision.models, theirs)(weights=None))


def test_bottleneck_nets_have_the_papers_parameter_counts() -> None:
    # The paper's 25.6M / 44.5M / 60.2M, as torchvision counts the same layout.
    counts = {depth: count_parameters(build_model(f"resnet{depth}", 1000)) for depth in (50, 101, 152)}
    assert counts == {50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
    assert [f"{counts[d] / 1e6:.1f}" for d in (50, 101, 152)] == ["25.6", "44.5", "60.2"]


def test_bottleneck_nets_subsample_with_the_first_1x1_as_the_paper() -> None:
    ours, theirs = build_model("resnet50", 1000), torchvision.models.resnet50(weights=None)
    first = ours.stages[1][0]
    assert isinstance(first, Bottleneck)
    assert (first.conv1.kernel_size, first.conv1.stride, first.conv2.stride) == ((1, 1), (2, 2), (1, 1))
    assert (theirs.layer2[0].conv1.stride, theirs.layer2[0].conv2.stride) == ((1, 1), (2, 2))  # v1.5
    assert "first 1x1" in CATALOG["resnet50"].description and "torchvision" in CATALOG["resnet50"].description
    # Same layers and shapes otherwise: torchvision's weights load by position; only the features differ.
    load_by_position(ours, theirs)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert ours.eval()(x).shape == theirs.eval()(x).shape == (1, 1000)


def load_by_position(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy `theirs`' parameters and BN statistics into `ours` in module order (names differ, shapes must not)."""
    source = theirs.state_dict()
    assert len(source) == len(ours.state_dict())
    ours.load_state_dict(dict(zip(ours.state_dict(), source.values(), strict=True)))  # checks every shape


@pytest.mark.parametrize("depth", [18, 34])
def test_option_b_resnets_give_torchvisions_logits_with_its_weights(depth: int) -> None:
    torch.manual_seed(depth)
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for module in theirs.modules():  # non-trivial BN statistics and affine terms: a swapped layer shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    ours = build_model(f"resnet{depth}_b", num_classes=1000)
    load_by_position(ours, theirs)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = theirs.eval()(x)
        assert torch.allclose(ours.eval()(x), expected, rtol=1e-4, atol=1e-5)
        assert expected.std() > 0.1  # logits that say something


def test_every_table2_resnet_has_exactly_its_plain_twins_parameters() -> None:
    """Table 2 as printed: "the ResNets have no extra parameter compared to their plain counterparts"."""
    models = list(load_config(REPO / "config.yaml")["experiments"]["imagenet"]["models"])
    plain = {CATALOG[m].depth: m for m in models if CATALOG[m].args["shortcut"] == "none"}
    residual = [m for m in models if CATALOG[m].args["shortcut"] != "none"]
    assert sorted(plain) == [18, 34] and len(residual) == 2
    for model in residual:
        assert CATALOG[model].args["shortcut"] == "A"
        pads = [m for m in build_model(model, 1000).modules() if isinstance(m, ZeroPadShortcut)]
        assert len(pads) == 3  # one where each of the last three stages widens and subsamples
        twin = plain[CATALOG[model].depth]
        assert count_parameters(build_model(model, 1000)) == count_parameters(build_model(twin, 1000)), model
    # The option-B forms are not: each projection adds parameters.
    assert count_parameters(build_model("resnet34_b", 1000)) > count_parameters(build_model("plain34", 1000))


def test_option_c_projects_every_shortcut() -> None:
    model = build_model("resnet34_c", 1000)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 16
    for block in blocks:
        conv, bn = block.shortcut
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and isinstance(bn, nn.BatchNorm2d)
    # Option B projects only where the shape changes (3 of the 16 blocks); C adds a projection on the other 13.
    option_b = build_model("resnet34_b", 1000)
    projected = [m for m in option_b.modules() if isinstance(m, BasicBlock) and not isinstance(m.shortcut, nn.Identity)]
    assert len(projected) == 3
    extra = sum(count_parameters(b.shortcut) for b in blocks) - sum(count_parameters(b.shortcut) for b in projected)
    assert count_parameters(model) - count_parameters(option_b) == extra > 0


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_nets_drop_only_the_projections(depth: int) -> None:
    resnet = build_model(f"resnet{depth}_b", 1000)
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
    # A user error of the project's own kind (one line from the CLI), not a KeyError that a bug could also raise.
    with pytest.raises(ReproError, match="unknown model 'resnet21'") as raised:
        build_model("resnet21")
    assert not isinstance(raised.value, KeyError)


def test_response_layers_cover_every_3x3_conv_of_the_blocks() -> None:
    assert len(response_layers(build_model("resnet20"))) == 18
    assert len(response_layers(build_model("plain56"))) == 54
