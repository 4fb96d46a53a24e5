"""Per-dimension normalizers fitted on the dataset and saved inside the policy.

The affine ones are ``normalize(x) = (x - shift) / scale`` with per-dimension ``shift``/``scale`` (D,), so
one implementation serves numpy arrays and torch tensors of any leading shape (..., D); the CDF normalizer
(the Decision Diffuser's) overrides the transforms with a per-dimension piecewise-linear CDF. The statistics
are plain float32 tensors in :meth:`Normalizer.state_dict`, so a checkpoint holding them still loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class Normalizer:
    """Base class: subclasses define which statistics :meth:`fit` keeps and how they map to shift/scale."""

    kind: ClassVar[str] = ""
    state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._stats: dict[str, np.ndarray] = {}
        self._shift: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        # (device, dtype) -> (shift, scale): avoids a host->device copy on every call in the training loop.
        self._torch_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ subclass API
    def _compute_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics from data x (N, D) float64 -> dict of (D,) arrays named by ``state_keys``."""
        raise NotImplementedError

    def _affine(self, stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(shift, scale), both (D,) with scale > 0, from the statistics."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fitting and state
    def fit(self, x: np.ndarray | torch.Tensor) -> Normalizer:
        """Fit on data x (N, D); returns self. Raises ValueError for empty or non-finite data."""
        data = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if data.ndim != 2 or len(data) == 0:
            raise ValueError(
                f"{type(self).__name__}.fit expects data of shape (N, D) with N > 0, got {data.shape}"
            )
        data = data.astype(np.float64)  # float64 statistics: float32 sums drift on millions of rows
        if not np.isfinite(data).all():
            raise ValueError(f"{type(self).__name__}.fit: data contains NaN or inf")
        self._set_stats(self._compute_stats(data))
        return self

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        self._stats = {k: np.asarray(stats[k], dtype=np.float32).reshape(-1) for k in self.state_keys}
        shift, scale = self._affine({k: v.astype(np.float64) for k, v in self._stats.items()})
        self._shift, self._scale = shift.astype(np.float32), scale.astype(np.float32)
        self._torch_cache.clear()

    @property
    def fitted(self) -> bool:
        return self._shift is not None

    @property
    def dim(self) -> int:
        """D, the number of normalized dimensions."""
        return len(self._require()[0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Statistics as float32 CPU tensors (D,), e.g. ``{'mean', 'std'}`` or ``{'min', 'max'}``."""
        self._require()
        return {k: torch.from_numpy(v.copy()) for k, v in self._stats.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Restore statistics saved by :meth:`state_dict` (extra keys are an error, like ``nn.Module``)."""
        missing = [k for k in self.state_keys if k not in state]
        extra = [k for k in state if k not in self.state_keys]
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {extra}"
            )
        stats = {
            k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).reshape(-1)
            for k, v in state.items()
        }
        dims = {k: len(v) for k, v in stats.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"{type(self).__name__}.load_state_dict: statistics differ in length {dims}")
        self._set_stats(stats)

    # ------------------------------------------------------------------ transforms
    def normalize(self, x: ArrayT) -> ArrayT:
        """(x - shift) / scale for x (..., D), numpy or torch; keeps the input's type and device."""
        shift, scale = self._params_like(x)
        return (x - shift) / scale

    def unnormalize(self, x: ArrayT) -> ArrayT:
        """Inverse of :meth:`normalize` for x (..., D)."""
        shift, scale = self._params_like(x)
        return x * scale + shift

    def _require(self) -> tuple[np.ndarray, np.ndarray]:
        if self._shift is None or self._scale is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call fit(data) or load_state_dict(state)"
            )
        return self._shift, self._scale

    def _params_like(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray | torch.Tensor, ...]:
        shift, scale = self._require()
        if x.shape[-1] != len(shift):
            raise ValueError(
                f"{type(self).__name__}: input has last dim {x.shape[-1]}, "
                f"normalizer was fitted on {len(shift)}"
            )
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            key = (x.device, dtype)
            if key not in self._torch_cache:
                self._torch_cache[key] = (
                    torch.as_tensor(shift, dtype=dtype, device=x.device),
                    torch.as_tensor(scale, dtype=dtype, device=x.device),
                )
            return self._torch_cache[key]
        dtype = x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float32
        return shift.astype(dtype, copy=False), scale.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim if self.fitted else '?'})"


class GaussianNormalizer(Normalizer):
    """Zero mean, unit variance per dimension. std is floored at ``min_std`` so (near-)constant dimensions
    stay finite: they map to ~0 instead of dividing by zero."""

    kind = "gaussian"
    state_keys = ("mean", "std")

    def __init__(self, min_std: float = 1e-4) -> None:
        super().__init__()
        self.min_std = min_std

    def _compute_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": x.mean(axis=0), "std": np.maximum(x.std(axis=0), self.min_std)}

    def _affine(self, stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return stats["mean"], np.maximum(stats["std"], self.min_std)


class LimitsNormalizer(Normalizer):
    """Maps the data range [min, max] of each dimension to [-1, 1] (Diffuser's default).

    A constant dimension (max - min below ``eps``) gets scale 1: it maps to 0 and back exactly instead of
    dividing by zero. Values outside the fitted range map outside [-1, 1]; nothing is clipped.
    """

    kind = "limits"
    state_keys = ("min", "max")

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def _compute_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"min": x.min(axis=0), "max": x.max(axis=0)}

    def _affine(self, stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = stats["min"], stats["max"]
        half_range = (hi - lo) / 2.0
        return (hi + lo) / 2.0, np.where(half_range > self.eps, half_range, 1.0)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation per dimension, clamped at the ends (``np.interp`` per column).

    x (..., D); xp (K, D) strictly increasing down each column; fp (K, D). Returns (..., D).
    (torch has no batched interp; numpy's works on one column at a time and on the CPU only.)
    """
    shape, K = x.shape, xp.shape[0]
    flat = x.reshape(-1, shape[-1]).T.contiguous()  # (D, N)
    xp_t, fp_t = xp.T.contiguous(), fp.T.contiguous()  # (D, K)
    hi = torch.searchsorted(xp_t, flat).clamp(1, K - 1)
    x0, x1 = xp_t.gather(1, hi - 1), xp_t.gather(1, hi)
    f0, f1 = fp_t.gather(1, hi - 1), fp_t.gather(1, hi)
    w = ((flat - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return (f0 + w * (f1 - f0)).T.reshape(shape)


class CDFNormalizer(Normalizer):
    """Maps each dimension through the data's empirical CDF to [-1, 1] (the Decision Diffuser's public
    ``CDFNormalizer``): the fitted data come out uniform on [-1, 1], so heavy-tailed dimensions keep their
    resolution where the data are, instead of being squeezed near the middle by their extremes.

    The CDF is piecewise linear between ``n_knots`` quantiles (K, D), so :meth:`unnormalize` inverts
    :meth:`normalize` exactly inside the data's range. Outside it values are clamped to the range (to +-1), as
    the public normalizer does. A constant dimension maps ``x -> x - c`` (0 at its value), like ``limits``.
    Not affine: it overrides the transforms; the knots are one float32 (K, D) tensor in :meth:`state_dict`.
    """

    kind = "cdf"
    state_keys = ("knots",)

    def __init__(self, n_knots: int = 1001, eps: float = 1e-6) -> None:
        super().__init__()
        self.n_knots, self.eps = n_knots, eps
        self._knot_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _compute_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        levels = np.linspace(0.0, 1.0, self.n_knots)
        knots = np.quantile(x, levels, axis=0)  # (K, D), non-decreasing down each column
        constant = knots[-1] - knots[0] <= self.eps
        knots[:, constant] = knots[0, constant] + (2.0 * levels[:, None] - 1.0)  # x -> x - c on [c-1, c+1]
        # Ties (repeated values) give flat CDF steps: nudge each knot to at least the next float32 above the
        # one before, so the knots are strictly increasing as stored and both directions stay single-valued.
        knots = knots.astype(np.float32)
        for k in range(1, len(knots)):
            knots[k] = np.maximum(knots[k], np.nextafter(knots[k - 1], np.float32(np.inf)))
        return {"knots": knots}

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        knots = np.asarray(stats["knots"], dtype=np.float32)
        if knots.ndim != 2 or len(knots) < 2 or not (np.diff(knots, axis=0) > 0).all():
            raise ValueError(f"{type(self).__name__}: knots must be (K >= 2, D), strictly increasing per column")
        self._stats = {"knots": knots}
        self._shift, self._scale = knots[0], np.ones(knots.shape[1], np.float32)  # marks fitted; dim
        self._knot_cache.clear()

    def load_state_dict(self, state: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Restore the (K, D) knots saved by :meth:`state_dict`."""
        if set(state) != {"knots"}:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing keys {[k for k in ('knots',) if k not in state]}, "
                f"unexpected keys {[k for k in state if k != 'knots']}"
            )
        knots = state["knots"]
        self._set_stats({"knots": knots.detach().cpu().numpy() if isinstance(knots, torch.Tensor) else knots})

    def _tables(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(knots, levels in [-1, 1]), both (K, D), on x's device in x's float dtype."""
        self._params_like(x)  # fitted and the last dim matches, else one clear error
        dtype = x.dtype if x.is_floating_point() else torch.float32
        key = (x.device, dtype)
        if key not in self._knot_cache:
            knots = torch.as_tensor(self._stats["knots"], dtype=dtype, device=x.device)
            levels = torch.linspace(-1.0, 1.0, len(knots), dtype=dtype, device=x.device)[:, None].expand_as(knots)
            self._knot_cache[key] = (knots, levels.contiguous())
        return self._knot_cache[key]

    def _apply(self, x: ArrayT, inverse: bool) -> ArrayT:
        t = torch.tensor(x) if isinstance(x, np.ndarray) else x  # a copy: read-only arrays (memory maps) too
        if not t.is_floating_point():
            t = t.float()
        knots, levels = self._tables(t)
        out = _interp(t, levels, knots) if inverse else _interp(t, knots, levels)
        return out.numpy() if isinstance(x, np.ndarray) else out  # type: ignore[return-value]

    def normalize(self, x: ArrayT) -> ArrayT:
        """The empirical CDF mapped to [-1, 1], for x (..., D), numpy or torch; clamped outside the data."""
        return self._apply(x, inverse=False)

    def unnormalize(self, x: ArrayT) -> ArrayT:
        """Inverse of :meth:`normalize` for x (..., D) in [-1, 1] (clamped to it)."""
        return self._apply(x, inverse=True)


NORMALIZERS: dict[str, type[Normalizer]] = {
    "gaussian": GaussianNormalizer, "limits": LimitsNormalizer, "cdf": CDFNormalizer,
}


def make_normalizer(kind: str, data: np.ndarray | torch.Tensor) -> Normalizer:
    """A ``kind`` normalizer (``'gaussian'``, ``'limits'`` or ``'cdf'``) fitted on data (N, D)."""
    if kind not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {kind!r}; valid: {sorted(NORMALIZERS)}")
    return NORMALIZERS[kind]().fit(data)


class NormalizerModule(nn.Module):
    """Holds a fitted :class:`Normalizer` inside a policy so it is saved and restored with the weights.

    The statistics travel through ``get_extra_state`` as a dict of tensors, so a checkpoint still loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(self, kind: str, data: np.ndarray | None = None, dim: int | None = None) -> None:
        super().__init__()
        if kind not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {kind!r}; valid: {sorted(NORMALIZERS)}")
        self.kind = kind
        self.normalizer: Normalizer = NORMALIZERS[kind]()
        if data is not None:
            self.normalizer.fit(np.asarray(data, dtype=np.float32))
        elif dim is not None:  # placeholder statistics, replaced when a checkpoint is loaded
            self.normalizer.fit(np.stack([-np.ones(dim, np.float32), np.ones(dim, np.float32)]))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize(x)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(x)

    def get_extra_state(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.normalizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        kind = state.pop("kind")
        if kind != self.kind:
            raise ValueError(f"checkpoint normalizer is {kind!r}, the config asks for {self.kind!r}")
        self.normalizer.load_state_dict(state)
