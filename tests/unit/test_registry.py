import pytest

from edgekit.errors import UnsupportedFormatError
from edgekit.registry import Registry


def test_aliases_and_did_you_mean():
    reg: Registry[int] = Registry("target")
    reg.add("onnx", 1)
    reg.add("openvino", 2, aliases=("ov",))
    assert reg.get("ONNX") == 1 and reg.get("ov") == 2 and "ov" in reg
    assert reg.names() == ["onnx", "openvino"]
    with pytest.raises(UnsupportedFormatError, match="unknown target 'openvin'") as info:
        reg.get("openvin")
    assert "did you mean 'openvino'" in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        reg.add("ov", 3)
