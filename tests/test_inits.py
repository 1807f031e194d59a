"""Init strategies: zero, free (tiling, noise), learned (heads for every component, Normal sampling)."""

import pytest
import torch

from crnn_core import ConfigError
from crnn_core.interfaces.options import build_options
from crnn_plugins.inits.free_init import FreeInit
from crnn_plugins.inits.learned_init import LearnedInit
from crnn_plugins.inits.zero_init import ZeroInit

SPEC = {"h": (4,), "A": (4, 4)}
KW = {"device": torch.device("cpu"), "dtype": torch.float32}


def make(cls, raw=None, context_size=None):
    return cls(SPEC, context_size, build_options(cls.Options, raw or {}, "init"))


def test_zero_builds_every_component_with_value():
    state = make(ZeroInit, {"value": "0.5"})(3, None, **KW)
    assert state["h"].shape == (3, 4) and state["A"].shape == (3, 4, 4)
    assert (state["A"] == 0.5).all()


def test_free_is_tiled_and_learnable():
    init = make(FreeInit, {"init_std": "1.0"})
    state = init(5, None, **KW)
    assert torch.equal(state["h"][0], state["h"][4])
    state["h"].sum().backward()
    assert init.values["h"].grad is not None and torch.equal(init.values["h"].grad, torch.full((4,), 5.0))


def test_free_noise_only_while_training():
    init = make(FreeInit, {"noise": "0.1"})
    init.train()
    noisy = init(6, None, **KW)["h"]
    assert not torch.equal(noisy[0], noisy[1])
    init.eval()
    assert (init(6, None, **KW)["h"] == 0).all()


def test_learned_needs_context():
    with pytest.raises(ConfigError, match="needs context"):
        make(LearnedInit, context_size=None)


def test_learned_has_a_head_per_component():
    init = make(LearnedInit, context_size=7)
    assert set(init.heads) == {"h", "A"}
    state = init(2, torch.randn(2, 7), **KW)
    assert state["A"].shape == (2, 4, 4)
    only_h = make(LearnedInit, {"components": "h"}, context_size=7)
    state = only_h(2, torch.randn(2, 7), **KW)
    assert set(only_h.heads) == {"h"} and (state["A"] == 0).all()
    with pytest.raises(ConfigError, match="names no state component"):
        make(LearnedInit, {"components": "c"}, context_size=7)


def test_learned_normal_samples_with_reparameterisation():
    init = make(LearnedInit, {"distribution": "normal", "sigma_init": "0.25"}, context_size=7)
    assert init.can_sample
    torch.testing.assert_close(init.scale("h"), torch.full((4,), 0.25))
    ctx = torch.randn(1, 7).expand(4000, 7)
    init.train()
    draws = init(4000, ctx, **KW)["h"]
    mean = init(4000, ctx, **KW, sample=False)["h"]
    torch.testing.assert_close(draws.std(0), torch.full((4,), 0.25), atol=0.02, rtol=0)
    torch.testing.assert_close(draws.mean(0), mean[0], atol=0.03, rtol=0)
    draws.pow(2).sum().backward()
    assert init.sigmas["h"].grad is not None and init.sigmas["h"].grad.abs().sum() > 0
    init.eval()
    assert torch.equal(init(4, ctx[:4], **KW)["h"], mean[:4])  # evaluation: the mean
    assert not torch.equal(init(4, ctx[:4], **KW, sample=True)["h"], mean[:4])  # unless asked to sample
