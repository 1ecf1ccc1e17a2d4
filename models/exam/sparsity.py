"""L1 sparsity penalty, magnitude pruning with masks, and CSR weight storage.

Typical use on a trained model::

    masks = prune_magnitude(model, sparsity=0.9, scope="global")
    handle = hold_masks(optimizer, model, masks)  # fine-tune; zeros stay zero
    ...
    handle.remove()
    report = storage_report(model, masks)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

PruneScope = Literal["global", "layer"]


def prunable_weights(
    module: nn.Module, include_conv: bool = False, include_linear: bool = True
) -> Iterator[tuple[str, nn.Parameter]]:
    """Yields ``(parameter name, weight)`` of a module's Linear/Conv layers.

    Biases are never included: they are few and pruning them saves nothing.

    Args:
        module: Model to scan.
        include_conv: Include Conv1d/2d/3d weights.
        include_linear: Include Linear weights.

    Yields:
        Qualified parameter names (as in ``named_parameters``) and weights.
    """
    kinds: tuple[type[nn.Module], ...] = ()
    if include_linear:
        kinds += (nn.Linear,)
    if include_conv:
        kinds += (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for name, child in module.named_modules():
        if kinds and isinstance(child, kinds):
            yield (f"{name}.weight" if name else "weight"), child.weight


def l1_penalty(module: nn.Module, strength: float = 1.0, include_conv: bool = True) -> torch.Tensor:
    """Returns ``strength * sum_ij |W_ij|`` over Linear (and Conv) weights.

    Added to the loss, its subgradient ``strength * sign(W)`` pushes every
    weight towards 0 by a constant amount, which drives small weights to
    exactly zero (unlike L2, whose pull fades as the weight shrinks).

    Args:
        module: Model whose weights are penalised.
        strength: The factor lambda.
        include_conv: Also penalise convolution weights.

    Returns:
        Scalar tensor, differentiable with respect to the weights.

    Raises:
        ValueError: If the module has no such weights.
    """
    weights = [weight for _, weight in prunable_weights(module, include_conv=include_conv)]
    if not weights:
        raise ValueError("module has no Linear or Conv weights to penalise")
    return strength * torch.stack([weight.abs().sum() for weight in weights]).sum()


def _smallest_flat_indices(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    # A stable sort picks exactly `count` entries even when magnitudes tie,
    # which a threshold comparison would not.
    return torch.argsort(magnitudes, stable=True)[:count]


def prune_magnitude(
    module: nn.Module, sparsity: float, scope: PruneScope = "global", include_conv: bool = False
) -> dict[str, torch.Tensor]:
    """Zeros the smallest-magnitude weights of the Linear (and Conv) layers.

    ``round(sparsity * n)`` weights are removed, counted over all pruned
    layers together (``"global"``: layers with many small weights lose more)
    or per layer (``"layer"``: every layer ends at the same sparsity).

    Args:
        module: Model to prune in place.
        sparsity: Fraction of weights to remove, in [0, 1].
        scope: ``"global"`` or ``"layer"``.
        include_conv: Also prune convolution weights.

    Returns:
        Parameter name -> boolean keep-mask (True = weight kept), to be
        passed to :func:`apply_masks` or :func:`hold_masks`.

    Raises:
        ValueError: On a sparsity outside [0, 1], an unknown scope, or a module
            without prunable weights.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    weights = dict(prunable_weights(module, include_conv=include_conv))
    if not weights:
        raise ValueError("module has no prunable weights")

    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if scope == "layer":
            for name, weight in weights.items():
                keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
                keep[_smallest_flat_indices(weight.abs().flatten(), round(sparsity * weight.numel()))] = False
                masks[name] = keep.view_as(weight)
        else:
            magnitudes = torch.cat([weight.abs().flatten() for weight in weights.values()])  # (total,)
            keep = torch.ones(magnitudes.numel(), dtype=torch.bool, device=magnitudes.device)
            keep[_smallest_flat_indices(magnitudes, round(sparsity * magnitudes.numel()))] = False
            offset = 0
            for name, weight in weights.items():
                masks[name] = keep[offset : offset + weight.numel()].view_as(weight)
                offset += weight.numel()
    apply_masks(module, masks)
    return masks


def apply_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zeros the pruned weights again; call after every optimizer step.

    Args:
        module: The pruned model.
        masks: Parameter name -> boolean keep-mask from :func:`prune_magnitude`.

    Raises:
        KeyError: If a mask names a parameter the module does not have.
    """
    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for name, keep in masks.items():
            parameter = parameters[name]
            parameter.mul_(keep.to(device=parameter.device, dtype=parameter.dtype))


class MaskHandle:
    """Keeps masks applied after each step of an optimizer until removed."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, module: nn.Module, masks: Mapping[str, torch.Tensor]
    ) -> None:
        self._masks = dict(masks)
        self._module = module
        self._handle = optimizer.register_step_post_hook(lambda *_: apply_masks(self._module, self._masks))

    def remove(self) -> None:
        """Stops enforcing the masks."""
        self._handle.remove()


def hold_masks(
    optimizer: torch.optim.Optimizer, module: nn.Module, masks: Mapping[str, torch.Tensor]
) -> MaskHandle:
    """Re-applies the masks after every ``optimizer.step()`` during fine-tuning.

    Masking gradients alone is not enough: momentum, Adam's moment estimates
    and weight decay all move a zero weight without a gradient, so the weights
    themselves are reset after each step.

    Args:
        optimizer: Optimizer that updates ``module``.
        module: The pruned model.
        masks: Parameter name -> boolean keep-mask.

    Returns:
        Handle whose ``remove()`` stops the enforcement.
    """
    return MaskHandle(optimizer, module, masks)


def sparsity_of(module: nn.Module, include_conv: bool = False) -> float:
    """Fraction of exactly-zero entries among the prunable weights.

    Args:
        module: Model to inspect.
        include_conv: Include convolution weights.

    Returns:
        Zero fraction in [0, 1].
    """
    weights = [weight for _, weight in prunable_weights(module, include_conv=include_conv)]
    total = sum(weight.numel() for weight in weights)
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    return zeros / total if total else 0.0


class CsrWeight(NamedTuple):
    """Compressed sparse row arrays of a 2-D weight.

    Attributes:
        data: Non-zero values, row by row, shape (nnz,).
        indices: Column of each value, shape (nnz,).
        indptr: Row ``i`` occupies ``data[indptr[i]:indptr[i + 1]]``, shape (rows + 1,).
    """

    data: torch.Tensor
    indices: torch.Tensor
    indptr: torch.Tensor


def to_csr(weight: torch.Tensor, index_dtype: torch.dtype = torch.int32) -> CsrWeight:
    """Converts a 2-D weight to CSR (reshape conv weights to (out, -1) first).

    Args:
        weight: Matrix of shape (rows, columns).
        index_dtype: Integer type for ``indices`` and ``indptr``; int32 holds
            any layer below 2**31 entries and halves the index bytes.

    Returns:
        The CSR arrays, on the CPU.

    Raises:
        ValueError: If ``weight`` is not 2-D or too large for ``index_dtype``.
    """
    if weight.dim() != 2:
        raise ValueError(f"to_csr needs a 2-D weight, got shape {tuple(weight.shape)}")
    if weight.numel() > torch.iinfo(index_dtype).max:
        raise ValueError(f"{weight.numel()} entries do not fit {index_dtype} indices")
    matrix = weight.detach().cpu()
    nonzero = matrix != 0
    rows, columns = torch.nonzero(nonzero, as_tuple=True)  # row-major order
    counts = nonzero.sum(dim=1)
    indptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, dim=0)
    return CsrWeight(matrix[rows, columns].clone(), columns.to(index_dtype), indptr.to(index_dtype))


def from_csr(csr: CsrWeight, shape: tuple[int, int]) -> torch.Tensor:
    """Rebuilds the dense matrix from CSR arrays.

    Args:
        csr: Arrays from :func:`to_csr`.
        shape: ``(rows, columns)`` of the original matrix; the column count
            cannot be recovered from the arrays when trailing columns are empty.

    Returns:
        Dense matrix with ``csr.data``'s dtype.
    """
    rows_count, columns_count = shape
    indptr = csr.indptr.to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(rows_count), indptr[1:] - indptr[:-1])
    dense = torch.zeros(rows_count, columns_count, dtype=csr.data.dtype)
    dense[rows, csr.indices.to(torch.int64)] = csr.data
    return dense


def dense_bytes(weight: torch.Tensor) -> int:
    """Bytes of a dense weight: entries times the element size."""
    return weight.numel() * weight.element_size()


def csr_bytes(csr: CsrWeight) -> int:
    """Bytes of CSR storage: values + column indices + row pointers."""
    return sum(array.numel() * array.element_size() for array in csr)


@dataclass(frozen=True)
class StorageRow:
    """Dense versus CSR storage of one weight.

    Attributes:
        name: Parameter name.
        shape: Weight shape.
        nonzeros: Number of non-zero entries.
        dense_bytes: Bytes stored densely.
        csr_bytes: Bytes stored as CSR (conv weights reshaped to (out, -1)).
    """

    name: str
    shape: tuple[int, ...]
    nonzeros: int
    dense_bytes: int
    csr_bytes: int


def storage_report(module: nn.Module, include_conv: bool = False) -> list[StorageRow]:
    """Compares dense and CSR storage for every prunable weight.

    With float32 values and int32 indices CSR costs ``8 nnz + 4 (rows + 1)``
    bytes against ``4 rows columns``, so it only pays off below roughly 50%
    density.

    Args:
        module: Model to inspect (usually after pruning).
        include_conv: Include convolution weights.

    Returns:
        One row per weight.
    """
    rows = []
    for name, weight in prunable_weights(module, include_conv=include_conv):
        csr = to_csr(weight.reshape(weight.shape[0], -1))  # (out, in * kernel...)
        rows.append(
            StorageRow(name, tuple(weight.shape), int(csr.data.numel()), dense_bytes(weight), csr_bytes(csr))
        )
    return rows
