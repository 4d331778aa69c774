import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for small-tensor tests (threads cost more in synchronisation than they
    save on a shared 2-core runner); the session's thread count comes back afterwards, also when
    the code under test (a recipe's --num_threads) changed it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_auto_clamp():
    """The clamp after every optimizer step off (a test of an update's arithmetic), on again afterwards."""
    import timm_aconv

    previous = timm_aconv.set_auto_sigma_clamp(False)
    yield
    timm_aconv.set_auto_sigma_clamp(previous)


@pytest.fixture
def check_reference_convolution():
    """A check that an adaptive layer computes what ``reference`` (the ordinary convolution with the same
    options) computes holding the layer's product kernel and bias, and that the fused layer does too, on a
    float64 input ``x`` (to 1e-12)."""

    def check(layer, reference, x):
        with torch.no_grad():
            reference.weight.copy_(layer.product_kernel())
            if layer.bias is not None:
                reference.bias.copy_(layer.bias)
        torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.fuse()(x), reference(x), rtol=0, atol=1e-12)

    return check
