"""Compact weights: int8 per output channel (and float16) round trips, file size, a network's outputs."""
import io

import pytest
import timm
import torch

from maskcls.quantize import expand_state, pack_state


def saved_bytes(state) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def test_int8_error_is_within_half_a_step_of_each_channel():
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3) * torch.linspace(0.01, 3, 16).reshape(-1, 1, 1, 1)  # channels of other scales
    packed = pack_state({"w": weight})
    assert packed["w"]["int8"].dtype == torch.int8
    step = packed["w"]["scale"].float()  # as stored: float16
    assert torch.allclose(step, weight.reshape(16, -1).abs().amax(1) / 127, rtol=1e-3)
    error = (expand_state(packed)["w"] - weight).abs().reshape(16, -1).amax(1)
    assert torch.all(error <= step / 2 + 1e-7)


def test_int8_keeps_its_companions_in_float16_and_a_silent_channel_expands_to_zeros():
    weight = torch.randn(4, 3)
    weight[2] = 0  # a channel that never learned (a zero-initialised head's row)
    packed = pack_state({"w": weight, "bias": torch.randn(4)})
    assert packed["bias"].dtype == torch.float16 and packed["w"]["scale"].dtype == torch.float16
    out = expand_state(packed)
    assert out["bias"].dtype == torch.float32 and torch.equal(out["w"][2], torch.zeros(3))
    assert torch.isfinite(out["w"]).all()


def test_vectors_and_integer_buffers_are_kept():
    state = {"bias": torch.randn(5), "num_batches_tracked": torch.tensor(7)}
    out = expand_state(pack_state(state))
    assert torch.allclose(out["bias"], state["bias"], rtol=1e-3) and out["num_batches_tracked"].item() == 7
    assert out["num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize("storage, tolerance, size", [("int8", 0.05, 0.30), ("float16", 0.005, 0.55)])
def test_a_network_predicts_as_before_from_a_smaller_file(storage, tolerance, size):
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = model(x).softmax(1)
        packed = pack_state(model.state_dict(), storage)
        model.load_state_dict(expand_state(packed))
        after = model(x).softmax(1)
    assert (after - before).abs().max() < tolerance
    assert saved_bytes(packed) < size * saved_bytes(model.state_dict())


def test_an_unknown_storage_is_refused():
    with pytest.raises(ValueError, match="storage"):
        pack_state({"w": torch.zeros(2, 2)}, "int4")
