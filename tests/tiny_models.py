"""Tiny but real ONNX models with a manifest, built with onnx.helper, for
testing the run-time path before (and independently of) trained models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_assist.manifest import sha256_file
from edge_assist.vocab import ACTIONS, ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, STRUCTURES

SIZE = (64, 64)


def disc_logits(hw: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """[1,1,hw,hw] logits: +8 inside a disc (centre, radius in cells), -8 outside."""
    yy, xx = np.mgrid[0:hw, 0:hw] + 0.5
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    return np.where(inside, 8.0, -8.0).astype(np.float32).reshape(1, 1, hw, hw)


def _model(name: str, in_ch: int, outputs: dict[str, int], rng, sigmoid: set[str] = frozenset(), bias: dict | None = None, size=SIZE,
           action_in: int = 0, input_name: str = "image", mask: np.ndarray | None = None):
    """image -> conv(4, stride 4) -> relu -> global avg pool -> one Gemm per output.

    action_in > 0 (guidance with memory): a second input prev_action [1, A];
    the logits get + 20 * prev_action rolled by one, so the previous move k
    makes move k+1 win (tests can see that the memory reaches the model).
    mask: constant logits [1,1,h,w] -> an output `lesion_mask` = sigmoid(mask)."""
    nodes, inits = [], []
    w = rng.normal(0, 0.5, size=(4, in_ch, 3, 3)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "conv_w"))
    nodes += [
        helper.make_node("Conv", [input_name, "conv_w"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
    ]
    outs = []
    for out, width in outputs.items():
        wm = rng.normal(0, 1.0, size=(4, width)).astype(np.float32)
        b = np.full((width,), (bias or {}).get(out, 0.0), dtype=np.float32)
        inits += [numpy_helper.from_array(wm, f"{out}_w"), numpy_helper.from_array(b, f"{out}_b")]
        gemm_out = f"{out}_pre" if (out in sigmoid or action_in) else out
        nodes.append(helper.make_node("Gemm", ["f", f"{out}_w", f"{out}_b"], [gemm_out]))
        if action_in:
            inits.append(numpy_helper.from_array(20.0 * np.roll(np.eye(action_in, width, dtype=np.float32), 1, axis=1), f"{out}_a"))
            nodes += [helper.make_node("MatMul", ["prev_action", f"{out}_a"], [f"{out}_mem"]),
                      helper.make_node("Add", [gemm_out, f"{out}_mem"], [out])]
        if out in sigmoid:
            nodes.append(helper.make_node("Sigmoid", [gemm_out], [out]))
        outs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, width]))
    if mask is not None:
        inits.append(numpy_helper.from_array(mask.astype(np.float32), "mask_logits"))
        nodes.append(helper.make_node("Sigmoid", ["mask_logits"], ["lesion_mask"]))
        outs.append(helper.make_tensor_value_info("lesion_mask", TensorProto.FLOAT, list(mask.shape)))
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, in_ch, *size])]
    if action_in:
        inputs.append(helper.make_tensor_value_info("prev_action", TensorProto.FLOAT, [1, action_in]))
    graph = helper.make_graph(nodes, name, inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


LESION_CROP = 16  # the tiny lesion head's input side
# The tiny interpreter's mask (with lesion_head): a disc centred at (0.25, 0.5) of the
# region, radius 0.1 of its height. The tiny lesion head's mask: a disc in the middle
# of its crop, radius 2 of its 8 cells.
INTERP_DISC = ((0.25, 0.5), 0.1)
LESION_DISC_CELLS = 2.0


def write_tiny_engines(root: Path, *, seed: int = 0, quality_bias: float = 3.0, guidance_frames: int = 1, size=SIZE,
                       guidance_memory: float | None = None, lesion_head: bool = False) -> Path:
    """Write quality/guidance/interpreter ONNX models and manifest.json under root.

    quality_bias pushes the score towards 1 (good) or, negative, towards 0.
    guidance_memory (ms): a guidance head with memory (two frames and the
    previous move, edge_assist.guidance_memory) with that live interval.
    lesion_head: the interpreter gets a lesion mask (INTERP_DISC) and the
    manifest a lesion head (edge_assist.lesion_crop) whose mask is a disc.
    """
    if guidance_memory:
        guidance_frames = 2
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    specs = {
        "quality": (1, {"score": 1, "reason_logits": len(QUALITY_REASONS)}, {"score"}, {"score": quality_bias}),
        "guidance": (guidance_frames, {"action_logits": len(ACTIONS)}, set(), None),
        "interpreter": (
            1,
            {
                "structure_logits": len(STRUCTURES),
                "lesion_logit": 1,
                "lesion_size": 1,
                "echo_logits": len(ECHOGENICITY),
                "margin_logits": len(MARGINS),
                "location_logits": len(LOCATIONS),
            },
            {"lesion_size"},
            {"lesion_logit": 3.0},
        ),
    }
    roles = {
        "quality": {"score": "score", "reasons": "reason_logits"},
        "guidance": {"logits": "action_logits"},
        "interpreter": {
            "structures": "structure_logits", "lesion": "lesion_logit", "size": "lesion_size",
            "echogenicity": "echo_logits", "margins": "margin_logits", "location": "location_logits",
        },
    }
    labels = {
        "quality": {"reasons": list(QUALITY_REASONS)},
        "guidance": {"actions": list(ACTIONS)},
        "interpreter": {"structures": list(STRUCTURES), "echogenicity": list(ECHOGENICITY), "margins": list(MARGINS), "locations": list(LOCATIONS)},
    }
    masks = {}
    if lesion_head:
        mh = size[0] // 2
        (cx, cy), r = INTERP_DISC
        masks["interpreter"] = disc_logits(mh, (cx * mh, cy * mh), r * mh)
        roles["interpreter"]["mask"] = "lesion_mask"
        half = LESION_CROP // 2
        masks["lesion"] = disc_logits(half, (half / 2, half / 2), LESION_DISC_CELLS)
        specs["lesion"] = (1, {"echo_logits": len(ECHOGENICITY), "margin_logits": len(MARGINS)}, set(), {"echo_logits": 0.0})
        roles["lesion"] = {"echogenicity": "echo_logits", "margins": "margin_logits", "mask": "lesion_mask"}
        labels["lesion"] = {"echogenicity": list(ECHOGENICITY), "margins": list(MARGINS)}
    heads = {}
    for name, (ch, outs, sig, bias) in specs.items():
        path = root / f"{name}.onnx"
        memory = name == "guidance" and bool(guidance_memory)
        hw, in_name = ((LESION_CROP, LESION_CROP), "crop") if name == "lesion" else (size, "image")
        onnx.save(_model(name, ch, outs, rng, sig, bias, hw, action_in=len(ACTIONS) if memory else 0, input_name=in_name,
                         mask=masks.get(name)), str(path))
        heads[name] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "version": "test-0",
            "input": {"name": in_name, "shape": [1, ch, *hw], "dtype": "float32", "frames": ch},
            "outputs": roles[name],
            "labels": labels[name],
            "decode": {"quality_threshold": 0.5} if name == "interpreter" else {},
        }
        if name == "lesion":
            heads[name]["decode"] = {"temperature": 1.0, "box_threshold": 0.1, "context": 2.5, "min_side_px": 4}
        if memory:
            heads[name]["memory"] = {"action_input": "prev_action", "interval_ms": float(guidance_memory)}
    manifest = {"format": 1, "preprocess": {"size": list(size), "mean": 0.5, "std": 0.25}, "heads": heads}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root
