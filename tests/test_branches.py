"""BranchesBackbone (mixture of source-pretrained backbones) and BranchL2SP (L2-SP per branch)."""

import pytest
import torch
from torch import nn

from da.losses import BranchL2SP, StepContext
from da.models.branches import BranchesBackbone


def make_branch(value=None):
    b = nn.Linear(2, 3).double()
    b.out_features = 3
    if value is not None:
        with torch.no_grad():
            b.weight.fill_(value)
            b.bias.zero_()
    return b


class Model(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Identity()
        self.classifier = nn.Linear(3, 2).double()
        self.losses = nn.ModuleList()

    def pretrained_parameter_names(self):
        return {n for n, _ in self.named_parameters() if n.startswith("backbone.branches.")}


def ctx_for(model):
    z = torch.zeros(1, 2)
    return StepContext(f_s=z, f_t=None, logits_s=z, logits_t=None, y_s=torch.zeros(1, dtype=torch.long),
                       module=model)


def test_forward_is_weighted_sum_of_branches():
    bb = BranchesBackbone([make_branch(1.0), make_branch(2.0)], mixture=[1.0, 3.0])
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    # branch outputs 2 and 4 per feature; weights 0.25 and 0.75 -> 3.5
    torch.testing.assert_close(bb(x), torch.full((1, 3), 3.5, dtype=torch.float64))
    torch.testing.assert_close(bb.mixture_weights(), torch.tensor([0.25, 0.75]))
    assert bb.out_features == 3 and bb.num_branches == 2
    assert not any(n.startswith("mixture") for n, _ in bb.named_parameters())


def test_uniform_and_learned_mixture():
    uni = BranchesBackbone([make_branch(1.0), make_branch(3.0)], mixture="uniform")
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(uni(x), torch.full((1, 3), 2.0, dtype=torch.float64))
    learned = BranchesBackbone([make_branch(1.0), make_branch(3.0)], mixture="learned")
    assert isinstance(learned.mixture_logits, nn.Parameter)
    learned(x).sum().backward()
    # d/dm_0 of sum_f (pi_0 * 1 + pi_1 * 3) = 3 * pi_0 pi_1 (1 - 3) = -1.5 at pi = (1/2, 1/2)
    torch.testing.assert_close(learned.mixture_logits.grad, torch.tensor([-1.5, 1.5]))


def test_bad_mixtures_and_dims():
    with pytest.raises(ValueError, match="did you mean 'learned'"):
        BranchesBackbone([make_branch()], mixture="learnt")
    with pytest.raises(ValueError, match="2 non-negative"):
        BranchesBackbone([make_branch(), make_branch()], mixture=[1.0])
    other = nn.Linear(2, 4)
    other.out_features = 4
    with pytest.raises(ValueError, match="same int `out_features`"):
        BranchesBackbone([make_branch(), other])


def test_from_checkpoints(tmp_path):
    paths = []
    for d, v in enumerate([0.5, -1.0]):
        src = Model(make_branch(v))  # a TransferModule-like source model: keys backbone.*
        paths.append(tmp_path / f"src{d}.ckpt")
        torch.save({"state_dict": src.state_dict()}, paths[-1])
    plain = make_branch(2.0).state_dict()  # a plain backbone state dict
    bb = BranchesBackbone.from_checkpoints(make_branch, [*paths, plain], mixture="uniform")
    assert [b.weight[0, 0].item() for b in bb.branches] == [0.5, -1.0, 2.0]
    bad = nn.Linear(5, 5).state_dict()
    with pytest.raises(RuntimeError, match="does not fit"):
        BranchesBackbone.from_checkpoints(make_branch, [bad])


def test_branch_l2sp_per_branch_starting_points_and_alphas():
    model = Model(BranchesBackbone([make_branch(1.0), make_branch(2.0)], mixture="learned"))
    loss = BranchL2SP(alpha=[0.1, 1.0], beta=0.5)
    loss.setup(model)
    assert loss(ctx_for(model)).item() == pytest.approx(0.25 * sum(p.pow(2).sum().item()
                                                                   for p in model.classifier.parameters()), rel=1e-12)
    with torch.no_grad():
        model.backbone.branches[0].weight.add_(1.0)   # 6 entries moved by 1 -> ||.||^2 = 6
        model.backbone.branches[1].bias.add_(2.0)     # 3 entries moved by 2 -> ||.||^2 = 12
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(1.0)              # ||w_new||^2 = 2 + mixture logits 0
    value = loss(ctx_for(model))
    assert value.item() == pytest.approx(0.1 / 2 * 6 + 1.0 / 2 * 12 + 0.5 / 2 * 2, rel=1e-12)
    assert loss.last_logs["dist_branch0"].item() == pytest.approx(6 ** 0.5)
    assert loss.last_logs["dist_branch1"].item() == pytest.approx(12 ** 0.5)
    assert loss.last_logs["mix0"].item() == pytest.approx(0.5)
    value.backward()
    torch.testing.assert_close(model.backbone.branches[0].weight.grad, torch.full((3, 2), 0.1, dtype=torch.float64))
    torch.testing.assert_close(model.backbone.branches[1].bias.grad, torch.full((3,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(model.classifier.bias.grad, torch.full((2,), 0.5, dtype=torch.float64))


def test_branch_l2sp_errors():
    model = Model(BranchesBackbone([make_branch(), make_branch()]))
    with pytest.raises(ValueError, match="3 alphas for 2 branches"):
        BranchL2SP(alpha=[0.1, 0.1, 0.1]).setup(model)
    plain = Model(make_branch())
    with pytest.raises(ValueError, match="BranchesBackbone"):
        BranchL2SP().setup(plain)
