"""Export the score graph to ONNX: one input (images), every score, the error map, x_hat."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from vigil.core.bundle import (
    ANOMALY_MAP_OUTPUT,
    ERROR_MAP_OUTPUT,
    INPUT_NAME,
    LATENT_OUTPUT,
    RECONSTRUCTION_IMAGE_OUTPUT,
)
from vigil.training.models import AutoEncoder
from vigil.training.scores import ScoreGraph

OPSET = 18


class _Flat(nn.Module):
    """The score graph with outputs as a tuple in a fixed order, as ONNX wants them."""

    def __init__(self, graph: ScoreGraph, names: list[str]) -> None:
        super().__init__()
        self.graph, self.names = graph, names

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.graph(x)
        return tuple(out[name] for name in self.names)


def output_names(graph: ScoreGraph) -> list[str]:
    maps = [ANOMALY_MAP_OUTPUT] if graph.has_local else []
    return [
        *graph.score_names(),
        ERROR_MAP_OUTPUT,
        RECONSTRUCTION_IMAGE_OUTPUT,
        LATENT_OUTPUT,
        *maps,
    ]


def export_onnx(graph: ScoreGraph, path: Path) -> list[str]:
    """Write `graph` as a self-contained ONNX file with a dynamic batch axis; returns outputs."""
    cfg = graph.model.cfg
    graph = graph.cpu().eval()
    names = output_names(graph)
    example = torch.rand(2, cfg.channels, cfg.height, cfg.width)
    _export(_Flat(graph, names), example, path, INPUT_NAME, names)
    return names


class _Decoder(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model.decode(z)


def export_decoder(model: AutoEncoder, path: Path) -> None:
    """The decoder alone (latent -> image), so reports can draw samples from a bundle."""
    model = model.cpu().eval()
    _export(_Decoder(model), torch.zeros(2, model.cfg.latent_dim), path, LATENT_OUTPUT, ["images"])


def _export(
    module: nn.Module, example: Tensor, path: Path, input_name: str, names: list[str]
) -> None:
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about constant folding
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=names,
            dynamic_axes={input_name: batch, **{name: batch for name in names}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
