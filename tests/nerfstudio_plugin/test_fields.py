"""Radiance fields: KiloNeRF's grouped evaluation against its per-point twin, cell routing, output ranges."""

from __future__ import annotations

import pytest
import torch

from nerfstudio_plugin.fields import KiloRadianceField, RadianceField, cell_indices
from nf_precond.nn import FieldConfig  # noqa: E402


def test_cell_indices_route_points_to_their_cell_and_local_coordinates() -> None:
    # 2 cells per axis: the cube [-1, 1] splits at 0; cell index = (x * 2 + y) * 2 + z.
    points = torch.tensor([[-0.5, -0.5, -0.5], [0.5, -0.5, 0.5], [0.75, 0.25, -0.75], [1.0, 1.0, 1.0], [-3.0, 0.5, 0.5]])
    cells, local = cell_indices(points, resolution=2)
    assert cells.tolist() == [0, 5, 6, 7, 3]
    # Inside a cell of width 1, -0.5 is the center (0), 0.75 three quarters of the way (0.5), 0.25 a quarter (-0.5).
    torch.testing.assert_close(local[0], torch.zeros(3))
    torch.testing.assert_close(local[2], torch.tensor([0.5, -0.5, -0.5]))
    torch.testing.assert_close(local[3], torch.ones(3))  # the far corner belongs to the last cell
    torch.testing.assert_close(local[4], torch.tensor([-1.0, 0.0, 0.0]))  # clamped onto the cube


@pytest.mark.parametrize("activation", ["sine", "gauss"])
def test_kilo_field_matches_per_point_twin(activation: str) -> None:
    torch.manual_seed(0)
    field = KiloRadianceField(FieldConfig(layers=2, hidden=8, activation=activation), resolution=3).double()
    # Uneven occupancy: many points in one corner, a few elsewhere, some cells empty.
    points = torch.cat([torch.rand(40, 3) * 0.3 - 1.0, torch.rand(17, 3) * 2 - 1]).double().reshape(3, 19, 3)
    fast, reference = field(points), field.reference_forward(points)
    torch.testing.assert_close(fast.density, reference.density)
    torch.testing.assert_close(fast.rgb, reference.rgb)
    assert fast.density.shape == (3, 19, 1) and fast.rgb.shape == (3, 19, 3)


def test_kilo_field_gradients_reach_only_occupied_cells() -> None:
    torch.manual_seed(0)
    field = KiloRadianceField(FieldConfig(layers=2, hidden=8), resolution=2)
    points = torch.tensor([[-0.5, -0.5, -0.5], [-0.4, -0.6, -0.5]])  # both in cell 0
    output = field(points)
    (output.density.sum() + output.rgb.sum()).backward()
    grad_norms = field.nets.weights[0].grad.flatten(1).norm(dim=1)
    assert grad_norms[0] > 0 and torch.all(grad_norms[1:] == 0)


def test_radiance_field_ranges_and_view_dependence() -> None:
    torch.manual_seed(0)
    field = RadianceField(FieldConfig(activation="gauss", layers=2, hidden=16, sigma=0.1), view_dependent=True)
    positions = torch.rand(5, 7, 3) * 2 - 1
    directions = torch.nn.functional.normalize(torch.randn(5, 7, 3), dim=-1)
    output = field(positions, directions)
    assert output.density.shape == (5, 7, 1) and output.rgb.shape == (5, 7, 3)
    assert torch.all(output.density >= 0) and torch.all((output.rgb >= 0) & (output.rgb <= 1))
    flipped = field(positions, -directions)
    torch.testing.assert_close(flipped.density, output.density)  # density never depends on the view
    assert not torch.allclose(flipped.rgb, output.rgb)
    with pytest.raises(ValueError, match="view-dependent"):
        field(positions)


def test_radiance_field_without_view_dependence_ignores_directions() -> None:
    torch.manual_seed(0)
    field = RadianceField(FieldConfig(activation="gauss", layers=4, hidden=16), view_dependent=False)
    positions = torch.rand(6, 3) * 2 - 1
    torch.testing.assert_close(field(positions).rgb, field(positions, torch.randn(6, 3)).rgb)
