"""Progress reporting for sampling and editing: ``progress=True`` shows a tqdm bar (with an ETA) on stderr, a
callable receives the number of steps done since its last call, False/None shows nothing."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional


def validate_progress(progress) -> None:
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress must be True/False or a callable taking a step count, got {type(progress).__name__}")


@contextlib.contextmanager
def progress_ticks(progress, total: int, desc: str) -> Iterator[Optional[Callable[[int], object]]]:
    """Yields ``tick(steps)`` (None when progress is off); a bar is closed when the block ends."""
    validate_progress(progress)
    if not progress:
        yield None
    elif progress is True:
        from tqdm.auto import tqdm  # imported on use: the default, progress=False, never needs it

        with tqdm(total=total, desc=desc, unit="step") as bar:
            yield bar.update
    else:
        yield progress
