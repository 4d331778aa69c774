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
