"""What each layer does to the image: output shapes, receptive fields, parameters, MACs.

Receptive fields follow the standard recurrence for a window of k (dilated to
k_eff = d(k-1)+1) moved by stride s: r_out = r_in + (k_eff - 1) * j_in and
j_out = j_in * s, where j is the distance in input pixels between neighbouring
units. Merges (Add, Concatenate, ...) take the largest field of their inputs;
Flatten, Dense and global pooling end the spatial structure (None).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cnncli import compat

Field2 = tuple[int, int]


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list  # batch dimension first, as None
    params: int
    trainable_params: int
    receptive_field: list | None  # [h, w] in input pixels; None once spatial structure is gone
    macs: int

    def as_json(self) -> dict[str, Any]:
        """The row as plain data, for --json."""
        data = asdict(self)
        return data


@dataclass
class Summary:
    name: str
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    warnings: list[str] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        """The weights' size in MB as float32."""
        return self.total_params * 4 / 1e6  # float32 weights

    @property
    def total_macs(self) -> int:
        """Multiply-adds of one forward pass over all layers."""
        return sum(r.macs for r in self.layers)

    def as_json(self) -> dict[str, Any]:
        """The summary as plain data, for --json."""
        return {
            "name": self.name,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "size_mb": round(self.size_mb, 3),
            "total_macs": self.total_macs,
            "layers": [r.as_json() for r in self.layers],
            "warnings": self.warnings,
        }


@dataclass
class _State:
    """Receptive field and jump of one tensor, per spatial axis (None: no spatial structure)."""

    rf: Field2 | None
    jump: Field2 | None


def _pair(value, default=1) -> Field2:
    if value is None:
        return (default, default)
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return (value[0], value[1]) if len(value) >= 2 else (value[0], value[0])


def _window(layer) -> tuple[Field2, Field2, str, Field2] | None:
    """(kernel, strides, padding, dilation) for layers that slide a window over the image."""
    cfg = layer.get_config()
    if "kernel_size" in cfg:
        return (
            _pair(cfg["kernel_size"]),
            _pair(cfg.get("strides")),
            cfg.get("padding", "valid"),
            _pair(cfg.get("dilation_rate")),
        )
    if "pool_size" in cfg and not type(layer).__name__.startswith("Global"):
        strides = cfg.get("strides") or cfg["pool_size"]
        return _pair(cfg["pool_size"]), _pair(strides), cfg.get("padding", "valid"), (1, 1)
    return None


_ENDS_SPATIAL = (
    "Flatten",
    "Dense",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAvgPool2D",
    "GlobalMaxPool2D",
    "Reshape",
    "Dropout_",
)  # Dropout keeps whatever it gets


def all_layers(model: Any) -> Any:
    """Every layer of `model`, depth first, the layers of nested models (a backbone) after the model itself."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from all_layers(layer)


def _spatial(shape) -> bool:
    return len(shape) == 4  # (batch, h, w, c)


def _shape_list(shape) -> list:
    return [None if d is None else int(d) for d in shape]


def _macs(layer, in_shape, out_shape) -> int:
    kind = type(layer).__name__
    if out_shape is None:
        return 0
    if kind in ("Conv2D", "Conv1D", "Conv3D", "Conv2DTranspose") and hasattr(layer, "kernel"):
        k = int(
            layer.kernel.shape[:-1].num_elements()
            if hasattr(layer.kernel.shape, "num_elements")
            else _prod(layer.kernel.shape[:-1])
        )
        return _prod(out_shape[1:]) * k
    if kind == "DepthwiseConv2D":
        return _prod(out_shape[1:]) * _prod(layer.kernel_size)
    if kind == "SeparableConv2D":
        depth = _prod(in_shape[1:]) * _prod(layer.kernel_size)  # approximate: per input position
        return depth + _prod(out_shape[1:-1]) * in_shape[-1] * out_shape[-1]
    if kind == "Dense" and hasattr(layer, "kernel"):
        return _prod(out_shape[1:-1] or [1]) * _prod(layer.kernel.shape)
    return 0


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _tiling_warning(layer, in_shape, window) -> list[str]:
    """A valid-padded window that does not tile its input silently drops the edge."""
    (kh, kw), (sh, sw), padding, (dh, dw) = window
    if padding != "valid" or not _spatial(in_shape) or None in in_shape[1:3]:
        return []
    ke = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    strides = (sh, sw)
    lost = [
        name
        for name, size, k, s in zip(("row", "column"), in_shape[1:3], ke, strides, strict=True)
        if size >= k and (size - k) % s != 0
    ]
    if not lost:
        return []
    axis = 1 if lost == ["column"] else 0
    size, k, s = in_shape[1 + axis], ke[axis], strides[axis]
    what = "window" if "Pool" in type(layer).__name__ else "filter"
    return [
        f"{layer.name}: {in_shape[1]}×{in_shape[2]} input, {kh}×{kw} {what}, stride {s}: "
        f"({size}−{k})/{s}+1 is not an integer; the last {' and '.join(lost)} "
        f"{'is' if len(lost) == 1 else 'are'} ignored"
    ]


def _walk(
    model, states: dict[int, _State], rows: list[LayerRow], warnings: list[str], input_state: _State, prefix: str = ""
) -> _State:
    """Fill `rows` for every layer of a functional model; return the output's state."""
    for tensor in model.inputs:
        states[id(tensor)] = input_state
    last = input_state
    for layer in model.layers:
        kind = type(layer).__name__
        ins = compat.inbound_tensors(layer)
        in_states = [states.get(id(t), input_state) for t in ins]
        out_tensor = layer.output
        out_shape = _shape_list(out_tensor.shape)
        in_shape = _shape_list(ins[0].shape) if ins else out_shape
        if kind == "InputLayer":
            state = input_state
        elif hasattr(layer, "layers") and hasattr(layer, "inputs") and layer.inputs:  # nested model (backbone)
            state = _walk(layer, states, [], warnings, in_states[0] if in_states else input_state, layer.name + "/")
        elif not _spatial(out_shape):
            state = _State(None, None)
        else:
            state = _merge(in_states) if len(in_states) > 1 else (in_states[0] if in_states else input_state)
            window = _window(layer)
            if window and state.rf is not None:
                assert state.jump is not None  # a spatial state has both
                (kh, kw), (sh, sw), _, (dh, dw) = window
                rf = (state.rf[0] + (dh * (kh - 1)) * state.jump[0], state.rf[1] + (dw * (kw - 1)) * state.jump[1])
                state = _State(rf, (state.jump[0] * sh, state.jump[1] * sw))
            if window:
                warnings.extend(_tiling_warning(layer, in_shape, window))
        states[id(out_tensor)] = state
        last = state
        if kind == "InputLayer":
            continue
        rows.append(
            LayerRow(
                name=prefix + layer.name,
                type=kind,
                output_shape=out_shape,
                params=int(layer.count_params()),
                trainable_params=int(sum(_prod(w.shape) for w in layer.trainable_weights)),
                receptive_field=list(state.rf) if state.rf is not None and _spatial(out_shape) else None,
                macs=_macs(layer, in_shape, out_shape) if not hasattr(layer, "layers") else _nested_macs(layer),
            )
        )
    return last


def _nested_macs(model) -> int:
    rows: list[LayerRow] = []
    _walk(model, {}, rows, [], _State((1, 1), (1, 1)))
    return sum(r.macs for r in rows)


def _merge(states: list[_State]) -> _State:
    spatial = [(s.rf, s.jump) for s in states if s.rf is not None and s.jump is not None]
    if not spatial:
        return _State(None, None)
    rf = (max(r[0] for r, _ in spatial), max(r[1] for r, _ in spatial))
    jump = (max(j[0] for _, j in spatial), max(j[1] for _, j in spatial))
    return _State(rf, jump)


def summarize(model: Any) -> Summary:
    """Per-layer geometry and totals for a built functional model."""
    rows: list[LayerRow] = []
    warnings: list[str] = []
    _walk(model, {}, rows, warnings, _State((1, 1), (1, 1)))
    trainable = int(sum(_prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return Summary(model.name, rows, total, trainable, total - trainable, warnings)
