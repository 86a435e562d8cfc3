import pytest
import torch
from torch import nn

from neurounlearn.models.encoders import (
    ENCODERS,
    SFCN3D,
    CompactCNN3D,
    PaperCNN3D,
    build_encoder,
)

NAMES = sorted(ENCODERS)
EMBEDDING = 6


def small(name: str, input_shape: tuple[int, ...] = (16, 16, 16)) -> nn.Module:
    """A tiny encoder of each kind (three stages of 4-8 channels)."""
    return build_encoder(
        name, input_shape=input_shape, embedding_dim=EMBEDDING, channels=(4, 8, 8), dropout=0.0
    )


def first_conv(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))


@pytest.mark.parametrize("shape", [(16, 16, 16), (20, 16, 24)])
@pytest.mark.parametrize("name", NAMES)
def test_output_is_batch_by_out_features(name, shape):
    model = small(name, shape)
    out = model(torch.randn(3, 1, *shape))
    assert model.out_features == EMBEDDING
    assert out.shape == (3, EMBEDDING)


def test_sfcn_embedding_is_the_pooled_channels_when_widths_agree():
    model = SFCN3D(channels=(4, 8), embedding_dim=8)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model(torch.randn(2, 1, 16, 16, 16)).shape == (2, 8)


def test_paper_flatten_size_follows_input_shape():
    # two blocks of 2x2x2 pooling: 16³ -> 4³ and 32³ -> 8³ voxels of 8 channels
    assert PaperCNN3D(input_shape=(16, 16, 16), channels=(4, 8)).flat_features == 8 * 4**3
    assert PaperCNN3D(input_shape=(32, 32, 32), channels=(4, 8)).flat_features == 8 * 8**3


def test_paper_stops_pooling_an_axis_at_one_voxel():
    # axis 0 reaches one voxel after the first block; pooling it again would empty it
    model = PaperCNN3D(input_shape=(2, 8, 4), channels=(4, 4, 4), embedding_dim=5)
    assert model.flat_features == 4 * 1 * 1 * 1
    assert model(torch.randn(2, 1, 2, 8, 4)).shape == (2, 5)


def test_paper_rejects_input_of_another_shape():
    model = PaperCNN3D(input_shape=(16, 16, 16), channels=(4,))
    with pytest.raises(ValueError, match=r"\(16, 16, 16\).*\(16, 16, 20\)"):
        model(torch.randn(1, 1, 16, 16, 20))


def test_mismatched_channels_and_strides_name_both_lengths():
    with pytest.raises(ValueError, match=r"len\(channels\)=2.*len\(strides\)=3"):
        CompactCNN3D(channels=(4, 8), strides=(2, 2, 2))


def test_mismatched_channels_and_convs_per_block_name_both_lengths():
    with pytest.raises(ValueError, match=r"len\(channels\)=2.*len\(convs_per_block\)=3"):
        PaperCNN3D(input_shape=(8, 8, 8), channels=(4, 8), convs_per_block=(2, 2, 3))


def test_spatial_dims_error_shows_allowed_values_and_value_received():
    with pytest.raises(ValueError, match=r"2 or 3, got 4"):
        CompactCNN3D(spatial_dims=4)


def test_unknown_norm_lists_allowed_norms():
    with pytest.raises(
        ValueError, match=r"unknown norm 'layer'; choose one of: batch, instance, none"
    ):
        CompactCNN3D(norm="layer")


def test_non_positive_channels_are_rejected():
    with pytest.raises(ValueError, match=r"channels must be positive integers, got \(4, 0\)"):
        SFCN3D(channels=(4, 0))


def test_wrong_number_of_input_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, \*, \*, \*\)"):
        small("compact")(torch.randn(2, 2, 16, 16, 16))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_first_layer(name):
    model = small(name)
    # a fixed projection, not a plain sum: the sum of a layer-normalised vector is constant
    out = model(torch.randn(2, 1, 16, 16, 16))
    (out * torch.linspace(-1, 1, EMBEDDING)).sum().backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_output_is_finite(name):
    model = small(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 16, 16, 16))
    assert out.dtype in (torch.bfloat16, torch.float32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_output_equals_contiguous_output(name):
    model = small(name).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last_3d)
        got = model(x.to(memory_format=torch.channels_last_3d))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic(name):
    model = small(name).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_build_encoder_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match=r"'resnet'.*compact, paper, sfcn"):
        build_encoder("resnet", input_shape=(16, 16, 16), embedding_dim=4)


def test_build_encoder_rejects_strides_for_pooling_encoders():
    with pytest.raises(ValueError, match="strides apply only to the 'compact' encoder"):
        build_encoder("sfcn", input_shape=(16, 16, 16), embedding_dim=4, strides=(2, 2))


def test_build_encoder_gives_custom_compact_channels_one_stride_each():
    model = build_encoder("compact", input_shape=(16, 16), embedding_dim=4, channels=(4, 8))
    assert isinstance(model, CompactCNN3D)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_compact_runs_on_2d_slices():
    model = CompactCNN3D(spatial_dims=2, channels=(4, 8), strides=(2, 2), embedding_dim=5)
    assert isinstance(first_conv(model), nn.Conv2d)
    assert model(torch.randn(3, 1, 20, 24)).shape == (3, 5)
