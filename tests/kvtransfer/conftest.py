import pytest

from kvtransfer.base import TransferError
from kvtransfer.factory import BACKENDS, create_backend


def ucx_unavailable_reason() -> str:
    try:
        from kvtransfer.ucx import load_ucx

        load_ucx()
    except TransferError as exc:
        return str(exc)
    return ""


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    if request.param == "ucx" and (reason := ucx_unavailable_reason()):
        pytest.skip(reason)
    return request.param


@pytest.fixture
def make_backend(backend_name):
    """Factory for backends of the parametrized kind; all are closed after the test."""
    made = []

    def make(**options):
        backend = create_backend(backend_name, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
