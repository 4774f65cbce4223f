"""The Python SDK: ``Concord`` (sync) and ``AsyncConcord`` (asyncio)."""

from concord.client.sync import *  # noqa: F403
from concord.client.sync import __all__ as __all__
