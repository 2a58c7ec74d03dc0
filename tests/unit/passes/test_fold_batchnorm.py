"""fold_batchnorm: eval BatchNorm after Conv/Linear disappears and the numbers stay the same;
BatchNorms that cannot be folded exactly are left alone."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from tests.fixtures.passcheck import apply, check_pass, export_graph, ops


def randomise(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters (fresh ones would make folding a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 2 + 0.1)
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return bn


def conv_bn(cin: int = 3, cout: int = 4, bias: bool = True, **bn_kwargs) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), randomise(nn.BatchNorm2d(cout, **bn_kwargs)))


def image(cin: int = 3) -> torch.Tensor:
    return torch.randn(2, cin, 6, 6, generator=torch.Generator().manual_seed(0))


def test_conv_bn_folds_into_the_conv():
    out, report = check_pass("fold_batchnorm", conv_bn(), image())
    assert ops(out)["batch_norm"] == 0 and ops(out)["conv2d"] == 1
    assert report["changed"] and report["folded"] == ["conv2d"]


def test_conv_without_bias_gets_one():
    out, _ = check_pass("fold_batchnorm", conv_bn(bias=False), image())
    conv = next(n for n in out.graph.nodes if n.target == torch.ops.aten.conv2d.default)
    assert conv.args[2] is not None and conv.args[2].op == "get_attr"  # the folded shift


def test_folded_tensors_leave_the_graph_module():
    out, report = check_pass("fold_batchnorm", conv_bn(), image())
    names = set(out.state_dict())
    assert not any(n.endswith(("running_mean", "running_var", "num_batches_tracked")) for n in names), names
    # 4x3x3x3 weights + 4 bias remain; the 4 BatchNorm tensors of 4 channels (and the counter) go
    assert report["after"]["params"] == 4 * 3 * 3 * 3 + 4


def test_batchnorm_without_affine_folds():
    out, _ = check_pass("fold_batchnorm", conv_bn(affine=False), image())
    assert ops(out)["batch_norm"] == 0


def test_batchnorm_without_running_stats_is_kept():
    """Without running stats eval BatchNorm normalises by the batch: not a constant affine map."""
    out, report = check_pass("fold_batchnorm", conv_bn(track_running_stats=False), image())
    assert ops(out)["batch_norm"] == 1 and not report["changed"]


def test_linear_batchnorm1d_folds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), randomise(nn.BatchNorm1d(7)), nn.ReLU())
    out, report = check_pass("fold_batchnorm", model, torch.randn(4, 5))
    assert ops(out)["batch_norm"] == 0 and report["folded"] == ["linear"]


class LinearOverSequence(nn.Module):
    """Linear on [N, C, L] acts on L, BatchNorm1d on C: with C == L the shapes fit but they differ."""

    def __init__(self):
        super().__init__()
        self.linear, self.bn = nn.Linear(6, 6), randomise(nn.BatchNorm1d(6))

    def forward(self, x):
        return self.bn(self.linear(x))


def test_linear_on_3d_input_is_not_folded():
    torch.manual_seed(0)
    out, report = check_pass("fold_batchnorm", LinearOverSequence(), torch.randn(3, 6, 6))
    assert ops(out)["batch_norm"] == 1 and not report["changed"]


class SharedConv(nn.Module):
    """The conv output feeds the BatchNorm and a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), randomise(nn.BatchNorm2d(3))

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_conv_with_two_users_is_not_folded():
    torch.manual_seed(0)
    out, report = check_pass("fold_batchnorm", SharedConv(), image())
    assert ops(out)["batch_norm"] == 1 and report["folded"] == []


def test_batchnorm_after_a_non_producer_is_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), randomise(nn.BatchNorm2d(4)))
    out, report = check_pass("fold_batchnorm", model, image())
    assert ops(out)["batch_norm"] == 1 and not report["changed"]


def test_training_mode_batchnorm_is_kept():
    model = conv_bn().train()
    gm = export_graph(model, image())
    out, report = apply(gm, "fold_batchnorm")
    assert not report["changed"] and ops(out)["batch_norm"] == 1


def test_resnet_example_folds_every_batchnorm():
    from examples.resnet_small.model import build_model
    model = build_model(width=8)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    out, report = check_pass("fold_batchnorm", model, torch.randn(2, 3, 32, 32), atol=1e-5, rtol=1e-4)
    assert len(report["folded"]) == count == 8
    assert ops(out)["batch_norm"] == 0
    assert report["after"]["params"] < report["before"]["params"]


@settings(max_examples=12, deadline=None)
@given(cin=st.integers(1, 6), cout=st.integers(1, 8), kernel=st.sampled_from([1, 3]), bias=st.booleans(),
       depthwise=st.booleans(), eps=st.floats(1e-6, 1e-1), seed=st.integers(0, 2**16))
def test_fold_matches_eager_for_random_shapes(cin, cout, kernel, bias, depthwise, eps, seed):
    torch.manual_seed(seed)
    groups, cout = (cin, cin) if depthwise else (1, cout)
    model = nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias, groups=groups),
                          randomise(nn.BatchNorm2d(cout, eps=eps), seed))
    out, report = check_pass("fold_batchnorm", model, torch.randn(2, cin, 5, 5), atol=1e-5, rtol=1e-4)
    assert report["folded"] == ["conv2d"] and ops(out)["batch_norm"] == 0
