"""SSL-AASIST head: recipe parameter count, any length, masks, gradients, learning, config system."""

from __future__ import annotations

import pytest
import torch

import metadg.models.aasist  # noqa: F401  registers the head (until models/__init__ imports it)
from metadg.config import ConfigError, validate_plugin
from metadg.models.aasist import AASISTConfig, AASISTHead
from metadg.registry import HEADS

# The reference computes bn1 in every non-first residual block and then feeds x, not
# its output, to conv1: these parameters count but never receive a gradient.
REFERENCE_DEAD = {f"encoder.{i}.bn1.{p}" for i in range(1, 6) for p in ("weight", "bias")}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a shared 2-core box, intra-op threads only contend (5-10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def head16() -> AASISTHead:
    torch.manual_seed(0)
    return AASISTHead(AASISTConfig(), in_dim=16)


def test_parameter_count_matches_recipe():
    big = AASISTHead(AASISTConfig(), in_dim=1024, num_classes=2)
    assert n_params(big) == 447_242
    small = AASISTHead(AASISTConfig(), in_dim=64, num_classes=2)
    # Only the projection's weight depends on in_dim.
    assert n_params(big) - n_params(small) == (1024 - 64) * 128


@pytest.mark.parametrize("frames", [1, 8, 10, 57, 201, 400])
@pytest.mark.parametrize("train", [True, False])
def test_any_length(head16, frames, train):
    head16.train(train)
    torch.manual_seed(frames)
    with torch.no_grad():  # train mode still uses batch statistics and dropout
        logits = head16(torch.randn(2, frames, 16))
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()


def test_eval_is_deterministic(head16):
    head16.eval()
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        assert torch.equal(head16(x), head16(x))


@pytest.mark.parametrize("preact", [False, True])
def test_gradients_reach_parameters(preact):
    torch.manual_seed(0)
    head = AASISTHead(AASISTConfig(residual_preact=preact), in_dim=16).train()
    head(torch.randn(4, 30, 16)).logsumexp(-1).sum().backward()
    dead = {n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert dead == (set() if preact else REFERENCE_DEAD)


def test_mask_ignores_padded_content(head16):
    head16.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 45, 16)
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.no_grad():
        ref = head16(x, mask)
        x2 = x.clone()
        x2[1, 30:] = 100.0 * torch.randn(15, 16)
        assert torch.allclose(head16(x2, mask), ref, atol=1e-5)
        # An all-valid mask is the same as no mask.
        assert torch.allclose(head16(x, torch.ones(2, 45, dtype=torch.bool)), head16(x), atol=1e-6)


def test_tiny_overfit():
    # Recipe architecture and dropouts; only a shorter "image" (proj_dim 32 → 10 spectral nodes) for speed.
    torch.manual_seed(0)
    head = AASISTHead(AASISTConfig(proj_dim=32), in_dim=16).train()
    x = torch.randn(8, 12, 16)
    y = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1  # chance is 0.69; the recipe reaches ~0.002 here


def test_through_config_system():
    plugin = validate_plugin(HEADS, {"name": "aasist"}, "model.head")
    assert plugin.as_dict()["temperatures"] == [2.0, 2.0, 100.0, 100.0]
    head = plugin.build(1024, 2)
    assert isinstance(head, AASISTHead) and n_params(head) == 447_242
    custom = validate_plugin(HEADS, {"name": "aasist", "gat_dims": [32, 16], "drop_out": 0.1}, "model.head")
    assert custom.build(16, 3).eval()(torch.randn(2, 20, 16)).shape == (2, 3)
    with pytest.raises(ConfigError, match="temperatures"):
        validate_plugin(HEADS, {"name": "aasist", "temperatures": [1.0]}, "model.head")
    with pytest.raises(ConfigError, match="filters"):
        validate_plugin(HEADS, {"name": "aasist", "filters": [[1, 32], [16, 64]]}, "model.head")
