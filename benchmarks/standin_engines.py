"""Stand-in engines for benchmarking before trained models exist.

Exports the training code's own architectures (QualityNet, GuidanceNet and the
interpreter's StudentNet from edge_assist.training), untrained, to ONNX with a
manifest edge-assist can load. Latency does not depend on the weights, so
these time like the real models of the same architecture; their outputs mean
nothing. Needs torch (the `train` extra).

    .venv/bin/python benchmarks/standin_engines.py OUT_DIR [--guidance-frames N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--guidance-frames", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from edge_assist.manifest import sha256_file
    from edge_assist.training.interpreter import StudentNet
    from edge_assist.training.models import GuidanceExport, GuidanceNet, NetConfig, QualityExport, QualityNet
    from edge_assist.vocab import ACTIONS, ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, STRUCTURES

    torch.manual_seed(0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    size = (128, 128)
    gf = args.guidance_frames
    nets = {
        "quality": (QualityExport(QualityNet()).eval(), 1, ["score", "reason_logits"]),
        "guidance": (GuidanceExport(GuidanceNet(NetConfig(in_ch=gf))).eval(), gf, ["action_logits"]),
        "interpreter": (StudentNet(input_hw=size).eval(), 1,
                        ["structure_logits", "lesion_logit", "lesion_size", "echo_logits", "margin_logits", "location_logits"]),
    }
    roles = {
        "quality": {"score": "score", "reasons": "reason_logits"},
        "guidance": {"logits": "action_logits"},
        "interpreter": {"structures": "structure_logits", "lesion": "lesion_logit", "size": "lesion_size",
                        "echogenicity": "echo_logits", "margins": "margin_logits", "location": "location_logits"},
    }
    labels = {
        "quality": {"reasons": list(QUALITY_REASONS)},
        "guidance": {"actions": list(ACTIONS)},
        "interpreter": {"structures": list(STRUCTURES), "echogenicity": list(ECHOGENICITY), "margins": list(MARGINS), "locations": list(LOCATIONS)},
    }
    heads = {}
    for name, (net, ch, outs) in nets.items():
        path = out / f"{name}.onnx"
        x = torch.zeros(1, ch, *size)
        with torch.no_grad():
            torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=outs, opset_version=18, dynamo=False)
        heads[name] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "version": "standin-untrained",
            "input": {"name": "image", "shape": [1, ch, *size], "dtype": "float32", "frames": ch},
            "outputs": roles[name],
            "labels": labels[name],
            # the quality score of untrained weights is ~0.5: a threshold of 0 lets the interpreter run on every frame
            "decode": {"quality_threshold": 0.0} if name == "interpreter" else {},
        }
    manifest = {"format": 1, "preprocess": {"size": list(size), "mean": 0.2, "std": 0.2}, "heads": heads,
                "note": "stand-in: the training code's architectures, untrained; for latency benchmarks only"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {out}/manifest.json and 3 models", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
