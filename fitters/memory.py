"""Memory guards: refuse, before anything is allocated, a signal whose decoded size would exceed the machine's memory
and a fit whose training memory would exceed the device.

The estimates are rough on purpose (activations of one forward + backward, weights, gradients and optimizer state)
and err on the side of running: their job is to turn a certain out-of-memory crash minutes into a run into one line
at the start that names the flag to use instead.
"""

from __future__ import annotations

import os

import torch

from fitters.signals import Signal, SignalError
from nf_precond.nn import FieldConfig
from nf_precond.optim import optimizer_spec

FLOAT_BYTES = 4
ACTIVATION_COPIES = 4
"""Floats kept per hidden unit per point for forward + backward (pre-activation, activation, its derivative, the
gradient)."""
TILED_KINDS = {"image": "16x16", "video": "4x8x8"}
"""Signals that --kilo can tile, with an example tile count for the error messages."""


def memory_available(device: torch.device) -> int:
    """Bytes the device has in total (CUDA) or the machine's physical memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_free(device: torch.device) -> int:
    """Bytes free right now on the device (CUDA) or in the machine's memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


UINT8_BYTES = 1
"""Bytes per value of an 8-bit image or video kept as it is (the decoded array is the signal's storage)."""
CONVERTED_BYTES = 1 + 4 + 8
"""Bytes per value while an image is converted or resampled: the decoded 8-bit array, the float32 targets and
scikit-image's float64 resampling output, all alive at once."""


def check_signal_fits(samples: int, bytes_per_sample: int, what: str, fix: str) -> None:
    """Refuse, before decoding, a signal whose decoded form would exceed the machine's memory (decoding happens on the
    CPU, whatever the device). ``bytes_per_sample`` counts what is held at the peak of decoding: targets as stored and
    the decoder's working copies; coordinates are generated per batch, so they cost nothing here. ``what`` names the
    signal and its flags, ``fix`` the way out."""
    needed = samples * bytes_per_sample
    available = memory_available(torch.device("cpu"))
    if needed > available:
        raise SignalError(
            f"{what} decodes to {samples:,} samples, about {needed / 2**30:,.0f} GiB, more than the "
            f"{available / 2**30:.0f} GiB of memory here; {fix}"
        )


def activation_floats(field: FieldConfig, in_features: int) -> int:
    """Floats per point kept for backward: every hidden layer's units and, for relu-pe, the encoding's width."""
    encoding = field.encoding(in_features)
    widths = field.hidden * field.layers + (encoding.out_features if encoding is not None else 0)
    return widths * ACTIVATION_COPIES


BATCH_MEMORY_SHARE = 0.5
"""Share of the device's memory the activations of a batch the guard picks may take (the rest holds the signal,
the field, the optimizer state and evaluation)."""


def batch_bytes(batch: int, field: FieldConfig, in_features: int) -> int:
    """Activation memory of one forward + backward over ``batch`` points."""
    return batch * activation_floats(field, in_features) * FLOAT_BYTES


def safe_batch_size(signal: Signal, field: FieldConfig, device: torch.device) -> int | None:
    """None when a full batch of ``signal`` fits the device; else the largest power-of-two mini-batch whose
    activations take at most ``BATCH_MEMORY_SHARE`` of its memory."""
    available = memory_available(device)
    if batch_bytes(signal.num_samples, field, signal.in_features) <= available:
        return None
    per_point = batch_bytes(1, field, signal.in_features)
    return 1 << max(0, int(BATCH_MEMORY_SHARE * available // per_point).bit_length() - 1)


def check_full_batch_fits(signal: Signal, field: FieldConfig, batch_size: int, device: torch.device) -> None:
    """Refuse a full batch whose activations alone would exceed the device's memory, naming a mini-batch that fits
    (and tiles, for images and video)."""
    safe = None if batch_size else safe_batch_size(signal, field, device)
    if safe is None:
        return
    needed = batch_bytes(signal.num_samples, field, signal.in_features)
    tiles = f"in tiles with --kilo (e.g. --kilo {TILED_KINDS[signal.kind]}, one tiny MLP per tile) or " if signal.kind in TILED_KINDS else ""
    raise ValueError(
        f"a full batch of {signal.num_samples:,} samples needs about {needed / 2**30:.0f} GiB for the "
        f"{field.layers}x{field.hidden} field's activations, more than the {memory_available(device) / 2**30:.0f} GiB "
        f"here; fit it {tiles}in mini-batches with --batch-size {safe}"
    )


def tiles_bytes(num_tiles: int, points_per_tile: int, in_features: int, out_features: int, field: FieldConfig,
                optim: str) -> int:  # fmt: skip
    """Training memory of ``num_tiles`` tiles at once: activations, weights, gradients and the optimizer's per-weight
    state (L-BFGS: its curvature history, from the registry's batched defaults)."""
    weights = field.num_parameters(in_features, out_features)
    history = optimizer_spec(optim, batched=True).defaults.get("history_size")
    copies = 2 * history + 6 if history else 4
    activations = points_per_tile * activation_floats(field, in_features)
    return num_tiles * FLOAT_BYTES * (weights * copies + activations)


def check_tiles_fit(num_tiles: int, points_per_tile: int, in_features: int, out_features: int, field: FieldConfig,
                    optim: str, device: torch.device) -> None:  # fmt: skip
    """Refuse a --kilo group whose training memory would exceed the device, naming --kilo-group."""
    needed = tiles_bytes(num_tiles, points_per_tile, in_features, out_features, field, optim)
    available = memory_available(device)
    if needed > available:
        raise ValueError(
            f"training {num_tiles} tiles at once needs about {needed / 2**30:.1f} GiB, more than the "
            f"{available / 2**30:.0f} GiB here; stream them with a smaller --kilo-group"
        )
