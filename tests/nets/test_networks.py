"""Every registered arch builds and runs; weights load from local files; bad weights say why."""

import pickle

import pytest
import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.networks import NETWORKS, build_network, list_networks


@pytest.mark.parametrize("arch", list_networks())
def test_every_arch_runs_at_its_input_size(arch: str):
    net = build_network(arch, num_classes=7).eval()
    size = NETWORKS[arch].input_size
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert net.fc.out_features == 7


def test_paper_victims_are_registered():
    assert {"gtsrb_5l", "cifar10_9l", "digits_cnn"} <= set(list_networks())
    assert {f"resnet{d}" for d in (18, 34, 50, 101, 152)} <= set(list_networks())


def test_weights_from_local_state_dict(tmp_path):
    source = build_network("digits_cnn", 10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = build_network("digits_cnn", 10, weights=str(tmp_path / "w.pt"))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_native_head_file_gets_new_head(tmp_path):
    """An ImageNet-style file (1000-class head) loads into the backbone; the head is replaced."""
    native = build_network("resnet18", 1000)
    torch.save(native.state_dict(), tmp_path / "resnet18-imagenet.pth")
    net = build_network("resnet18", 5, weights=str(tmp_path / "resnet18-imagenet.pth"))
    assert net.fc.out_features == 5
    assert torch.equal(net.conv1.weight, native.conv1.weight)


def test_state_dict_of_other_arch_names_disagreeing_tensors(tmp_path):
    torch.save(build_network("digits_cnn", 10).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(ConfigError, match=r"cnn.pt does not fit gtsrb_5l .*missing: "):
        build_network("gtsrb_5l", 10, weights=str(tmp_path / "cnn.pt"))
    state = build_network("digits_cnn", 4).state_dict()
    state["features.0.weight"] = state["features.0.weight"][:16]
    torch.save(state, tmp_path / "cnn_narrow.pt")
    with pytest.raises(ConfigError, match=r"shape: features.0.weight \(16, 3, 3, 3\) vs \(32"):
        build_network("digits_cnn", 3, weights=str(tmp_path / "cnn_narrow.pt"))


def test_a_network_of_another_task_is_fine_tuned_with_a_fresh_head(tmp_path):
    """The embedded public model (11 photos) starts a 10-class victim: backbone kept, new head."""
    public = build_network("digits_cnn", 11)
    torch.save(public.state_dict(), tmp_path / "public.pt")
    net = build_network("digits_cnn", 10, weights=str(tmp_path / "public.pt"))
    assert net.fc.out_features == 10
    assert torch.equal(net.features[0].weight, public.features[0].weight)
    assert not torch.isclose(net.fc.weight, public.fc.weight[:10]).any()  # fresh, not a slice


def test_missing_and_corrupt_weights_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.pt does not exist"):
        build_network("digits_cnn", 10, weights=str(tmp_path / "nope.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load weights file .*bad.pt"):
        build_network("digits_cnn", 10, weights=str(tmp_path / "bad.pt"))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _Payload()}, f)
    with pytest.raises(ConfigError, match="evil.pt"):
        build_network("digits_cnn", 10, weights=str(path))


def test_unknown_weights_name_lists_known_ones():
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_network("resnet18", 10, weights="IMAGENET_BEST")


def test_uncached_torchvision_weights_offline_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    with pytest.raises(ConfigError, match="are not in the cache .*resnet18-"):
        build_network("resnet18", 10, weights="IMAGENET1K_V1")


def test_unknown_arch_lists_known():
    with pytest.raises(ConfigError, match="known: cifar10_9l, digits_cnn"):
        build_network("vgg", 10)
