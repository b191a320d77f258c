"""``QuantConfig``: every setting of a model's conversion, checked once, when
the config is built (``tq.quantize_(model, config)`` applies it).

A config is a frozen dataclass, so it can be shared, compared and written
out (``to_dict`` / ``from_dict``: plain JSON types, as Hugging Face's
``quantization_config`` stores it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Sequence, Tuple, Union

from ..nn import ACT_GRANULARITIES, ACT_MODES
from .smoothing import SEARCH_ALPHAS, STATIC_MAX_ALPHA

__all__ = ["QuantConfig"]

SMOOTHING_NAMES = ("auto", "search", "off")


@dataclass(frozen=True)
class QuantConfig:
    """How ``tq.quantize_`` converts a model's linear layers.

    Weights are always int8, symmetric, per output channel. The settings:

    * ``act_mode``: how activations are quantized: "symmetric" (int8, zero
      point 0), "asymmetric" (uint8 with a zero point) or "auto": per layer,
      the mode whose output on the layer's calibration inputs is closer to
      the float layer's (then checked on the model's output). "auto" needs
      calibration data.
    * ``act_granularity``: "per_token" (dynamic: a scale per row, computed on
      every call) or "per_tensor" (static: one scale and zero point per layer
      from calibration data, which it needs).
    * ``smoothing``: activation smoothing (SmoothQuant, with a Hadamard
      rotation as one more candidate): "search" (per group of layers sharing
      an input, the candidate whose layer outputs on the calibration rows are
      closest to float; needs calibration data), an alpha in [0, 1] (needs
      calibration data), "off" / None, or "auto" (the default): "search" when
      calibration data is given, else off.
    * ``skip``: module names or glob patterns (``fnmatch``) to leave in float,
      e.g. ``("lm_head",)``; a single string is one pattern.
    * ``percentile``: static ranges from these percentiles of the calibration
      inputs (e.g. 99.99: [p0.01, p99.99]) instead of min and max. Only with
      ``act_granularity="per_tensor"``.

    A bad value raises ``ValueError`` (or ``TypeError`` for a wrong type)
    naming the setting, when the config is built."""

    act_mode: str = "symmetric"
    act_granularity: str = "per_token"
    smoothing: Union[None, str, float] = "auto"
    skip: Tuple[str, ...] = ()
    percentile: Optional[float] = None

    def __post_init__(self) -> None:
        where = "tq.QuantConfig"
        _check_choice(where, "act_mode", self.act_mode, (*ACT_MODES, "auto"))
        _check_choice(where, "act_granularity", self.act_granularity, ACT_GRANULARITIES)
        object.__setattr__(self, "skip", _skip_patterns(where, self.skip))
        s = self.smoothing
        if isinstance(s, str):
            _check_choice(where, "smoothing", s, SMOOTHING_NAMES)
        elif s is not None:
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise TypeError(f"{where}: smoothing must be 'auto', 'search', 'off', None or an "
                                f"alpha in [0, 1], got {s!r}")
            if not (math.isfinite(s) and 0.0 <= s <= 1.0):
                raise ValueError(f"{where}: smoothing alpha must be in [0, 1], got {s!r}")
            object.__setattr__(self, "smoothing", float(s))
        p = self.percentile
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise TypeError(f"{where}: percentile must be a number, got {p!r}")
            if self.act_granularity != "per_tensor":
                raise ValueError(f"{where}: percentile applies to act_granularity='per_tensor' "
                                 f"(per-token ranges are taken from each row)")
            if not 50.0 < p <= 100.0:
                raise ValueError(f"{where}: percentile must be in (50, 100], got {p!r}")
            object.__setattr__(self, "percentile", float(p))

    def smoothing_alphas(self, calibrated: bool) -> Optional[List[Optional[float]]]:
        """The smoothing candidates (None = no smoothing) given whether there
        is calibration data, or None when smoothing is off. Static activations
        search only alphas up to STATIC_MAX_ALPHA (smoothing.py says why)."""
        s = self.smoothing
        if isinstance(s, float):
            return [s]
        if s == "search" or (s == "auto" and calibrated):
            return [None, *(a for a in SEARCH_ALPHAS
                            if self.act_granularity == "per_token" or a <= STATIC_MAX_ALPHA)]
        return None

    def needs_calibration(self) -> List[str]:
        """The settings that need calibration data, as ``name=value`` strings."""
        needs = []
        if self.smoothing not in (None, "off", "auto"):
            needs.append(f"smoothing={self.smoothing!r}")
        if self.act_mode == "auto":
            needs.append("act_mode='auto'")
        if self.act_granularity == "per_tensor":
            needs.append("act_granularity='per_tensor'")
        return needs

    def to_dict(self) -> dict:
        """The settings as JSON types (``skip`` a list)."""
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        """The config ``to_dict`` wrote; an unknown key is a ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"tq.QuantConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"tq.QuantConfig.from_dict: unknown settings {unknown}; known: "
                             f"{sorted(known)}")
        return cls(**d)


def _check_choice(where: str, name: str, value: object, allowed: Sequence[str]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be one of {', '.join(map(repr, allowed))}, got "
                        f"{value!r}")
    if value not in allowed:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, allowed))}, got "
                         f"{value!r}")


def _skip_patterns(where: str, skip: object) -> Tuple[str, ...]:
    if skip is None:
        return ()
    if isinstance(skip, str):
        return (skip,)
    try:
        patterns = tuple(skip)
    except TypeError:
        raise TypeError(f"{where}: skip must be a string or a sequence of strings, got "
                        f"{type(skip).__name__}") from None
    if not all(isinstance(s, str) for s in patterns):
        raise TypeError(f"{where}: skip must be a string or a sequence of strings, got "
                        f"{patterns!r}")
    return patterns
