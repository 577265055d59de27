import os

import pytest
import torch

# Triton kernels run on CPU tensors through Triton's interpreter when there is no GPU; the variable
# must be set before anything imports triton (it is read when kernels are decorated).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread wastes nothing, two spin-wait on a busy machine. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
