"""Two training steps timed in turns, for bench/train_torch.py and bench/train_mlx.py (imported as a sibling
module: bench/ is the scripts' own directory on sys.path).

A shared VM's speed drifts within seconds, so timing one model for a whole round and then the other
measures the drift as much as the models. Here each runs `turn` steps, then the other runs the same
batches, and so on; the ratio is the median of each turn's pair.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence


def alternate(ours, theirs, batches: Sequence, turn: int, tokens_per_second: Callable) -> tuple[list, list]:
    """Tokens/s of each turn for both steps: `turn` batches through ours, the same through theirs, on to the end."""
    ours_rates, theirs_rates = [], []
    for start in range(0, len(batches), turn):
        ours_rates.append(tokens_per_second(ours, batches[start : start + turn]))
        theirs_rates.append(tokens_per_second(theirs, batches[start : start + turn]))
    return ours_rates, theirs_rates


def medians(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """The median turn's tokens/s of each, and the median of the turns' ratios ours / theirs."""
    ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return statistics.median(ours), statistics.median(theirs), ratio


def spread(rates: list[float]) -> str:
    return f"{len(rates)} turns, {min(rates):,.0f}-{max(rates):,.0f}"
