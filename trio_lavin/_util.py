"""Small helpers shared by the trio layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_single_exception() -> Iterator[None]:
    """Re-raise the only exception of an exception group as itself.

    Our context managers own a nursery whose background tasks never raise, so
    a group escaping it holds exactly the exception raised in the user's
    ``async with`` body; the user should see that exception, not a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            only = group.exceptions[0]
            raise only from only.__cause__
        raise
