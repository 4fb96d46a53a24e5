"""Denoising networks: temporal U-Net, MLP denoiser, time embedding."""

from __future__ import annotations

import pytest
import torch

from diffplan.nets import MLP, DiT1d, DiTBlock, MLPDenoiser, SinusoidalPosEmb, TemporalUnet1d


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_sinusoidal_pos_emb() -> None:
    emb = SinusoidalPosEmb(16)
    e = emb(torch.arange(10))
    assert e.shape == (10, 16)
    assert torch.allclose(e[0], torch.cat([torch.zeros(8), torch.ones(8)]))  # sin(0), cos(0)
    assert torch.cdist(e, e).add(torch.eye(10)).min() > 0.1  # distinct timesteps, distinct embeddings
    with pytest.raises(ValueError):
        SinusoidalPosEmb(7)


@pytest.mark.parametrize(("dim_mults", "horizon"), [((1, 2, 4), 32), ((1, 4, 8), 16), ((1,), 5), ((1, 2), 6)])
def test_temporal_unet_shapes(dim_mults: tuple[int, ...], horizon: int) -> None:
    torch.manual_seed(0)
    net = TemporalUnet1d(6, dim=16, dim_mults=dim_mults)
    x = torch.randn(3, horizon, 6)
    out = net(x, torch.tensor([0, 5, 99]))
    assert out.shape == (3, horizon, 6) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_temporal_unet_bad_inputs() -> None:
    net = TemporalUnet1d(6, dim=16, dim_mults=(1, 2, 4))
    with pytest.raises(ValueError, match=r"horizon 30 must be divisible by 4"):
        net(torch.randn(2, 30, 6), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="transition_dim=6"):
        net(torch.randn(2, 32, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="n_groups"):
        TemporalUnet1d(6, dim=12)


def test_temporal_unet_depends_on_time_and_is_local() -> None:
    torch.manual_seed(0)
    net = TemporalUnet1d(4, dim=16, dim_mults=(1, 2))
    x = torch.randn(2, 32, 4)
    t = torch.tensor([3, 3])
    assert not torch.allclose(net(x, t), net(x, t + 40))
    # A per-sample computation: changing sample 1 leaves sample 0's output unchanged.
    x2 = x.clone()
    x2[1] += 1.0
    assert torch.allclose(net(x, t)[0], net(x2, t)[0], atol=1e-6)


def test_temporal_unet_cond() -> None:
    torch.manual_seed(0)
    net = TemporalUnet1d(4, dim=16, dim_mults=(1, 2), cond_dim=3)
    x, t = torch.randn(5, 16, 4), torch.randint(0, 100, (5,))
    cond = torch.randn(5, 3)
    out_none = net(x, t, None)
    out_cond = net(x, t, cond)
    assert out_none.shape == out_cond.shape == (5, 16, 4)
    assert not torch.allclose(out_none, out_cond)
    # The null condition is distinct from an all-zero condition (classifier-free guidance relies on it).
    assert not torch.allclose(out_none, net(x, t, torch.zeros(5, 3)))
    # Per-row dropout: dropped rows equal the unconditional output, kept rows the conditional one.
    drop = torch.tensor([True, False, True, False, False])
    out_drop = net(x, t, cond, drop_cond=drop)
    assert torch.allclose(out_drop[drop], out_none[drop], atol=1e-6)
    assert torch.allclose(out_drop[~drop], out_cond[~drop], atol=1e-6)


def test_temporal_unet_param_counts() -> None:
    small = _n_params(TemporalUnet1d(6, dim=32, dim_mults=(1, 2, 4)))
    diffuser = _n_params(TemporalUnet1d(6, dim=32, dim_mults=(1, 4, 8)))
    assert 0.9e6 < small < 1.1e6, small
    assert 3.5e6 < diffuser < 3.9e6, diffuser


def test_mlp_and_mlp_denoiser() -> None:
    torch.manual_seed(0)
    mlp = MLP(5, 3, hidden=8, depth=2)
    assert mlp(torch.randn(4, 5)).shape == (4, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp) == 3
    assert MLP(5, 3, depth=0)(torch.randn(4, 5)).shape == (4, 3)

    den = MLPDenoiser(x_dim=4 * 2, cond_dim=3, hidden=16, depth=2)
    x, t = torch.randn(6, 4, 2), torch.randint(0, 10, (6,))
    out = den(x, t, torch.randn(6, 3))
    assert out.shape == (6, 4, 2)
    assert den(x, t, None).shape == (6, 4, 2)
    assert torch.allclose(den(x, t, None), den(x, t, torch.zeros(6, 3)))  # None means zeros here (documented)
    with pytest.raises(ValueError, match="x_dim=8"):
        den(torch.randn(6, 3, 2), t, None)


# ------------------------------------------------------------------------------------------------- DiT-1D
def test_dit_shapes_and_bad_inputs() -> None:
    net = DiT1d(6, width=32, depth=2, heads=4, patch=4, cond_dim=5)
    x, t = torch.randn(3, 16, 6), torch.tensor([0, 4, 9])
    assert net(x, t, torch.randn(3, 5)).shape == (3, 16, 6)
    assert net(torch.randn(2, 8, 6), torch.tensor([1, 2])).shape == (2, 8, 6)  # any horizon divisible by patch
    with pytest.raises(ValueError, match="patch"):
        net(torch.randn(1, 10, 6), torch.tensor([1]))
    with pytest.raises(ValueError, match="transition_dim"):
        net(torch.randn(1, 16, 5), torch.tensor([1]))
    with pytest.raises(ValueError, match="heads"):
        DiT1d(6, width=30, heads=4)


def test_dit_adaln_zero_starts_as_identity_blocks_and_zero_output() -> None:
    torch.manual_seed(0)
    block = DiTBlock(16, 2)
    tokens, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    assert torch.equal(block(tokens, c), tokens)  # gates are 0: both residual branches are off
    net = DiT1d(4, width=16, depth=2, heads=2, patch=2, cond_dim=3)
    assert torch.equal(net(torch.randn(2, 8, 4), torch.tensor([3, 7]), torch.randn(2, 3)), torch.zeros(2, 8, 4))
    # after one optimizer step the output depends on time and condition (adaLN carries them)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (net(torch.randn(4, 8, 4), torch.tensor([0, 3, 6, 9]), torch.randn(4, 3)) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(1, 8, 4)
    cond = torch.randn(1, 3)
    assert not torch.allclose(net(x, torch.tensor([0]), cond), net(x, torch.tensor([9]), cond))
    assert not torch.allclose(net(x, torch.tensor([0]), cond), net(x, torch.tensor([0]), None))
    # drop_cond nulls a row's condition exactly like cond=None
    both = net(torch.cat([x, x]), torch.tensor([5, 5]), torch.cat([cond, cond]), drop_cond=torch.tensor([False, True]))
    torch.testing.assert_close(both[1:], net(x, torch.tensor([5]), None))
    torch.testing.assert_close(both[:1], net(x, torch.tensor([5]), cond))
