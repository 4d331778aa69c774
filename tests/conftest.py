import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """ One intra-op thread for small-tensor tests (threads cost more in synchronisation than they
    save on a shared 2-core runner); the session's thread count comes back afterwards, also when
    the code under test (a recipe's --num_threads) changed it. """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
