"""Concord: coordination for fleets of AI agents that share one email tenant.

``pip install concord`` is the SDK and the client commands of the ``concord``
CLI; ``pip install 'concord[server]'`` adds the service (``concord serve``).

    from concord import Concord, LeaseConflict

    with Concord() as concord:  # CONCORD_URL, CONCORD_API_KEY
        agent = concord.register("sdr-agent", role="sdr")
        with agent.lease("alice@example.com") as lease:
            ...
"""

from importlib.metadata import PackageNotFoundError, version

from concord.client import *  # noqa: F403 (the SDK is the package's public face)
from concord.client import __all__ as _client_all

try:
    __version__ = version("concord")
except PackageNotFoundError:  # a checkout used without installing
    __version__ = "0+unknown"

__all__ = [*_client_all, "__version__"]
