"""PEtab SciML networks: the YAML graph format as a torch module, and HDF5 array files.

A network file lists ``layers`` (a torch.nn layer type with its constructor arguments) and a
``forward`` graph in torch.fx's node format (``placeholder``, ``call_module``, ``call_method``,
``call_function``, ``output``). Layer types and functions come from whitelists below; nothing
in a file is evaluated as code. Arrays (network parameters, network inputs) are HDF5 groups
``parameters/<network>/<layer>/<name>`` and ``inputs/<input>/<condition or 0>``, in PyTorch's
row-major layout unless ``metadata/pytorch_format`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from ude.errors import UdeError

LAYERS: dict[str, type[nn.Module]] = {
    name: getattr(nn, name)
    for name in (
        "Linear",
        "Bilinear",
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
        "MaxPool1d",
        "MaxPool2d",
        "MaxPool3d",
        "AvgPool1d",
        "AvgPool2d",
        "AvgPool3d",
        "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d",
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "Flatten",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "LayerNorm",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "Identity",
    )
}

# call_function / call_method targets: elementwise activations and tensor plumbing.
FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "gelu": F.gelu,
    "silu": F.silu,
    "mish": F.mish,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "leaky_relu": F.leaky_relu,
    "hardtanh": F.hardtanh,
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "logsigmoid": F.logsigmoid,
    "tanhshrink": F.tanhshrink,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sin": torch.sin,
    "cos": torch.cos,
    "cat": torch.cat,
    "stack": torch.stack,
    "flatten": torch.flatten,
    "reshape": torch.reshape,
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "truediv": torch.div,
    "div": torch.div,
    "pow": torch.pow,
    "neg": torch.neg,
    "getitem": lambda x, i: x[i],
}
_IGNORED_KWARGS = {"inplace"}  # no in-place operations on tensors autograd tracks


def _fail(source: str, where: str, message: str, fix: str | None = None) -> UdeError:
    return UdeError(message, source=source, where=where, fix=fix)


class Network(nn.Module):
    """A PEtab SciML network: ``forward(*inputs) -> output`` as its ``forward`` graph says.

    Inputs are unbatched tensors, one per input argument (``inputs[i]`` of the mapping table);
    the output is what the graph's ``output`` node returns (a tensor, or a tuple of them).
    """

    def __init__(self, net_id: str, layers: dict[str, nn.Module], graph: list[dict], n_in: int):
        super().__init__()
        self.net_id = net_id
        self.layers = nn.ModuleDict(layers)
        self.graph = graph
        self.n_inputs = n_in

    def forward(self, *inputs: torch.Tensor) -> Any:
        values: dict[str, Any] = {}
        placeholders = iter(inputs)

        def arg(a: Any) -> Any:
            if isinstance(a, str) and a in values:
                return values[a]
            if isinstance(a, list):
                return [arg(x) for x in a]
            return a

        for node in self.graph:
            op, name = node["op"], node["name"]
            args = [arg(a) for a in node.get("args") or []]
            kwargs = {k: arg(v) for k, v in (node.get("kwargs") or {}).items()}
            kwargs = {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS}
            if op == "placeholder":
                values[name] = next(placeholders)
            elif op == "call_module":
                values[name] = self.layers[node["target"]](*args, **kwargs)
            elif op in ("call_function", "call_method"):
                values[name] = FUNCTIONS[node["target"]](*args, **kwargs)
            elif op == "output":
                out = args[0]
                return tuple(out) if isinstance(out, list) else out
        raise RuntimeError(f"network {self.net_id}: the graph has no output node")


def read_network(path: str | Path, net_id: str) -> Network:
    """The network ``net_id`` from its PEtab SciML YAML file (float64 parameters)."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise _fail(source, f"network '{net_id}'", "network file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise _fail(
            source, "top level", f"not valid YAML: {getattr(err, 'problem', err)}"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), list):
        raise _fail(source, "top level", "expected a mapping with 'layers' and 'forward'")
    if not isinstance(raw.get("forward"), list) or not raw["forward"]:
        raise _fail(source, "forward", "expected a list of graph nodes")
    layers: dict[str, nn.Module] = {}
    for i, entry in enumerate(raw["layers"]):
        where = f"layers[{i}]"
        if not isinstance(entry, dict) or "layer_id" not in entry or "layer_type" not in entry:
            raise _fail(source, where, "expected layer_id, layer_type and args")
        kind = entry["layer_type"]
        if kind not in LAYERS:
            raise _fail(
                source,
                f"{where} ({entry['layer_id']})",
                f"layer type '{kind}' is not supported",
                "supported: " + ", ".join(LAYERS),
            )
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise _fail(source, f"{where}.args", "expected a mapping of constructor arguments")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        try:
            layer = LAYERS[kind](**args)
        except (TypeError, ValueError, RuntimeError) as err:
            raise _fail(source, f"{where} ({entry['layer_id']})", f"bad arguments: {err}") from None
        layers[str(entry["layer_id"])] = layer.double()
    names: set[str] = set()
    n_in = 0
    for i, node in enumerate(raw["forward"]):
        where = f"forward[{i}]"
        if not isinstance(node, dict) or not {"name", "op", "target"} <= set(node):
            raise _fail(source, where, "expected a node with name, op, target, args, kwargs")
        op, target = node["op"], node["target"]
        if op == "placeholder":
            n_in += 1
        elif op == "call_module" and target not in layers:
            raise _fail(source, where, f"calls layer '{target}', which is not in 'layers'")
        elif op in ("call_function", "call_method") and target not in FUNCTIONS:
            raise _fail(
                source,
                where,
                f"function '{target}' is not supported",
                "supported: " + ", ".join(FUNCTIONS),
            )
        elif op not in ("placeholder", "call_module", "call_function", "call_method", "output"):
            raise _fail(source, where, f"unknown op '{op}'")
        for a in _node_refs(node):
            if a not in names and isinstance(a, str) and _looks_like_ref(a, raw["forward"]):
                raise _fail(source, where, f"uses '{a}' before it is computed")
        names.add(node["name"])
    if raw["forward"][-1].get("op") != "output":
        raise _fail(source, "forward", "the last node must be the output")
    return Network(net_id, layers, list(raw["forward"]), n_in)


def _node_refs(node: dict) -> list[Any]:
    out: list[Any] = []
    for a in [*(node.get("args") or []), *(node.get("kwargs") or {}).values()]:
        out.extend(a if isinstance(a, list) else [a])
    return out


def _looks_like_ref(a: str, graph: list[dict]) -> bool:
    return any(n.get("name") == a for n in graph)


# -- HDF5 arrays --------------------------------------------------------------------------------


def _h5py():
    import h5py

    return h5py


def _pytorch_layout(f, source: str) -> bool:
    meta = f.get("metadata")
    if meta is None or "pytorch_format" not in meta:
        return True
    return bool(np.asarray(meta["pytorch_format"][()]))


def _array(dataset, pytorch: bool, source: str, where: str) -> np.ndarray:
    try:
        value = np.asarray(dataset[()], dtype=float)
    except (TypeError, ValueError) as err:
        raise _fail(source, where, f"malformed array: {err}") from None
    if not np.all(np.isfinite(value)):
        raise _fail(source, where, "the array has NaN or infinite entries")
    # Column-major writers (Julia, R) store the reversed shape.
    return value if pytorch else np.transpose(value)


def read_arrays(path: str | Path) -> tuple[dict, dict]:
    """``(parameters, inputs)`` of a PEtab SciML array file.

    ``parameters[network][layer][name]`` and ``inputs[input_id][condition]`` are float64
    arrays in PyTorch's layout (condition ``"0"``: the same for every condition).
    """
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise _fail(source, "array_files", "array file not found")
    h5py = _h5py()
    try:
        f = h5py.File(p, "r")
    except OSError as err:
        raise _fail(source, "top level", f"not an HDF5 file ({err})") from None
    params: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    inputs: dict[str, dict[str, np.ndarray]] = {}
    with f:
        pytorch = _pytorch_layout(f, source)
        unknown = set(f) - {"metadata", "parameters", "inputs"}
        if unknown:
            raise _fail(source, sorted(unknown)[0], "unknown group", "parameters, inputs, metadata")
        for net_id, net in (f.get("parameters") or {}).items():
            if not isinstance(net, h5py.Group):
                raise _fail(source, f"parameters/{net_id}", "expected a group per layer")
            for layer_id, layer in net.items():
                if not isinstance(layer, h5py.Group):
                    raise _fail(source, f"parameters/{net_id}/{layer_id}", "expected a group")
                for name, ds in layer.items():
                    where = f"parameters/{net_id}/{layer_id}/{name}"
                    params.setdefault(net_id, {}).setdefault(layer_id, {})[name] = _array(
                        ds, pytorch, source, where
                    )
        for input_id, group in (f.get("inputs") or {}).items():
            if not isinstance(group, h5py.Group):
                raise _fail(source, f"inputs/{input_id}", "expected a group per condition")
            for cond, ds in group.items():
                where = f"inputs/{input_id}/{cond}"
                inputs.setdefault(input_id, {})[cond] = _array(ds, pytorch, source, where)
    return params, inputs


def load_parameters(net: Network, arrays: dict[str, dict[str, np.ndarray]], source: str) -> None:
    """Copy ``arrays[layer][name]`` into the network's parameters, checking every shape."""
    own = dict(net.named_parameters())
    for layer_id, group in arrays.items():
        if layer_id not in net.layers:
            raise _fail(
                source,
                f"parameters/{net.net_id}/{layer_id}",
                f"network '{net.net_id}' has no layer '{layer_id}'",
            )
        for name, value in group.items():
            key = f"layers.{layer_id}.{name}"
            where = f"parameters/{net.net_id}/{layer_id}/{name}"
            if key not in own:
                raise _fail(source, where, f"layer '{layer_id}' has no parameter '{name}'")
            if tuple(value.shape) != tuple(own[key].shape):
                raise _fail(
                    source,
                    where,
                    f"malformed array: shape {tuple(value.shape)}, the layer needs "
                    f"{tuple(own[key].shape)}",
                )
            with torch.no_grad():
                own[key].copy_(torch.from_numpy(value))


def write_arrays(
    path: str | Path,
    parameters: dict[str, dict[str, dict[str, np.ndarray]]] | None = None,
    inputs: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Write a PEtab SciML array file (PyTorch layout)."""
    h5py = _h5py()
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("metadata/pytorch_format", data=np.uint8(1))
        for net_id, layers in (parameters or {}).items():
            for layer_id, group in layers.items():
                for name, value in group.items():
                    f.create_dataset(f"parameters/{net_id}/{layer_id}/{name}", data=value)
        for input_id, conds in (inputs or {}).items():
            for cond, value in conds.items():
                f.create_dataset(f"inputs/{input_id}/{cond}", data=value)
    return path


def network_arrays(net: Network) -> dict[str, dict[str, np.ndarray]]:
    """The network's parameters as ``{layer: {name: array}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in net.named_parameters():
        _, layer_id, name = key.split(".", 2)
        out.setdefault(layer_id, {})[name] = value.detach().cpu().numpy()
    return out
