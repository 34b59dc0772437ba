import hashlib

import torch

from knockoff_lab.core.digests import module_digest
from knockoff_lab.nets.networks import DigitsCNN


def test_a_network_in_any_dtype_has_an_identity_and_float32_keeps_its_old_one():
    torch.manual_seed(0)
    net = DigitsCNN(10)
    sha = hashlib.sha256()  # the digest before raw bytes: numpy's bytes of each float32 tensor
    for name, tensor in sorted(net.state_dict().items()):
        sha.update(name.encode())
        sha.update(tensor.contiguous().numpy().tobytes())
    assert module_digest(net) == sha.hexdigest()  # caches keyed before stay valid
    half = module_digest(net.to(torch.bfloat16))  # numpy has no bfloat16
    assert half != sha.hexdigest()
    assert half == module_digest(net)
