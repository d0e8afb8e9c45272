"""Each model adapts to channels, image size and classes, and exposes features + head."""

import pytest
import torch

from ls_bench.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape,k", [((1, 8, 8), 10), ((3, 32, 32), 100)])
def test_shapes(name: str, shape: tuple[int, int, int], k: int) -> None:
    model = build_model(name, shape[0], k, shape[1]).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        z, f = model(x), model.features(x)
    assert z.shape == (2, k)
    assert f.shape == (2, model.head.in_features)
    torch.testing.assert_close(model.head(f), z)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_papers() -> None:
    # He et al. 2016 Table 6: ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.7M;
    # Zagoruyko & Komodakis 2016: WRN-28-10 36.5M.
    assert abs(n_params(build_model("resnet20", 3, 10, 32)) / 1e6 - 0.27) < 0.01
    assert abs(n_params(build_model("resnet56", 3, 10, 32)) / 1e6 - 0.85) < 0.01
    assert abs(n_params(build_model("resnet110", 3, 10, 32)) / 1e6 - 1.7) < 0.05
    assert abs(n_params(build_model("wrn28_10", 3, 10, 32)) / 1e6 - 36.5) < 0.2
