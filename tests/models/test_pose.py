import numpy as np
import pytest
import torch

from models.geometry import project_to_so3, random_rotation, rotation_error_deg
from models.pose import FlatPoseRegressor, build_pose_model


def test_exam_shapes_batch_8_points_100() -> None:
    """Exam 8.3: B = 8, N = 100 gives a 300-feature input layer and 12 outputs."""
    model = FlatPoseRegressor(n_points=100, hidden=[64], activation="relu")
    seen = {}
    first, last = model.net[0], model.net[-1]
    first.register_forward_hook(lambda module, inputs, output: seen.update(first=inputs[0].shape))
    last.register_forward_hook(lambda module, inputs, output: seen.update(last=output.shape))
    rotation_raw, translation = model(torch.randn(8, 100, 3))
    assert seen == {"first": (8, 300), "last": (8, 12)}
    assert first.in_features == 300 and last.out_features == 12
    assert rotation_raw.shape == (8, 3, 3) and translation.shape == (8, 3)


@pytest.mark.parametrize(
    ("hidden", "activation", "modules"),
    [
        ([], "none", ["Linear"]),
        ([32, 16], "elu", ["Linear", "ELU", "Linear", "ELU", "Linear"]),
        ([32], "relu", ["Linear", "ReLU", "Linear"]),
    ],
)
def test_depth_width_and_activation_are_configurable(
    hidden: list[int], activation: str, modules: list[str]
) -> None:
    model = build_pose_model("flat_fc", 10, hidden=hidden, activation=activation)
    assert [type(module).__name__ for module in model.net] == modules


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        build_pose_model("pointnet++", 10)


def test_a_single_linear_layer_can_be_exact_for_copies_of_one_template() -> None:
    """The object pose of template copies is linear in the flattened cloud: least squares finds it."""
    generator = torch.Generator().manual_seed(0)
    template = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    rotation = random_rotation(200, generator, dtype=torch.float64)
    translation = torch.randn(200, 3, generator=generator, dtype=torch.float64)
    clouds = template @ rotation + translation[:, None]
    features = torch.cat([clouds.reshape(200, -1), torch.ones(200, 1, dtype=torch.float64)], dim=1)
    targets = torch.cat([rotation.reshape(200, 9), translation], dim=1)
    solution = torch.linalg.lstsq(features, targets, driver="gelsd").solution  # (3N + 1, 12)

    model = FlatPoseRegressor(n_points=50).double()
    with torch.no_grad():
        model.net[0].weight.copy_(solution[:-1].T)
        model.net[0].bias.copy_(solution[-1])
    fresh_rotation = random_rotation(100, generator, dtype=torch.float64)
    fresh_translation = torch.randn(100, 3, generator=generator, dtype=torch.float64)
    rotation_raw, predicted_translation = model(template @ fresh_rotation + fresh_translation[:, None])
    errors = rotation_error_deg(project_to_so3(rotation_raw), fresh_rotation)
    assert errors.max() < 1e-6
    np.testing.assert_allclose(predicted_translation.detach(), fresh_translation, atol=1e-8)


def test_scale_keeps_outputs_in_the_mesh_units() -> None:
    torch.manual_seed(0)
    model = FlatPoseRegressor(n_points=5, scale=10.0)
    points = torch.randn(2, 5, 3)
    reference = FlatPoseRegressor(n_points=5, scale=1.0)
    reference.load_state_dict({**model.state_dict(), "scale": torch.tensor(1.0)})
    rotation_raw, translation = model(points * 10)
    reference_rotation, reference_translation = reference(points)
    torch.testing.assert_close(rotation_raw, reference_rotation)
    torch.testing.assert_close(translation, reference_translation * 10)


def test_pointnet_output_ignores_point_order_and_takes_any_n() -> None:
    torch.manual_seed(0)
    model = build_pose_model("pointnet", 0, widths=[16, 32], head=[32], activation="relu", scale=5.0).eval()
    points = torch.randn(3, 200, 3) * 4 + 2
    permuted = points[:, torch.randperm(200)]
    rotation_raw, translation = model(points)
    torch.testing.assert_close(model(permuted)[0], rotation_raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(permuted)[1], translation, atol=1e-5, rtol=1e-5)
    for n_points in (1, 32, 5000):
        rotation_raw, translation = model(torch.randn(2, n_points, 3))
        assert rotation_raw.shape == (2, 3, 3) and translation.shape == (2, 3)


def test_pointnet_translation_follows_the_cloud() -> None:
    """The head predicts an offset from the cloud's centroid, so shifting the cloud shifts the answer."""
    torch.manual_seed(1)
    model = build_pose_model("pointnet", 0, widths=[16], head=[16], activation="elu", scale=1.0).eval()
    points = torch.randn(1, 50, 3)
    shift = torch.tensor([[3.0, -2.0, 0.5]])
    rotation_shifted, translation_shifted = model(points + shift[:, None])
    rotation, translation = model(points)
    torch.testing.assert_close(rotation_shifted, rotation)
    torch.testing.assert_close(translation_shifted, translation + shift)
