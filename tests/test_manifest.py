import json

import pytest

from edge_assist.errors import ManifestError
from edge_assist.heads import HeadSet
from edge_assist.manifest import load_manifest


def edit(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_loads_and_opens(tiny_engines):
    m = load_manifest(tiny_engines)
    assert m.input_size == (64, 64)
    with HeadSet(m) as heads:
        assert set(heads.heads) == {"quality", "guidance", "interpreter"}


def test_missing_and_malformed(tmp_path, tiny_engines):
    with pytest.raises(ManifestError, match="make models"):
        load_manifest(tmp_path / "empty")
    (tiny_engines / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tiny_engines)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("preprocess"), "preprocess"),
        (lambda m: m["heads"].pop("guidance"), "guidance"),
        (lambda m: m["heads"]["quality"]["outputs"].pop("score"), "score"),
        (lambda m: m["heads"]["quality"].update(file="nope.onnx"), "missing"),
        (lambda m: m["heads"]["quality"].update(sha256="0" * 64), "sha256"),
        (lambda m: m.update(format=99), "format"),
        (lambda m: m["preprocess"].update(size=[32, 32]), "does not match preprocess.size"),
    ],
)
def test_manifest_errors_are_one_line(tiny_engines, change, message):
    edit(tiny_engines, change)
    with pytest.raises(ManifestError, match=message) as e:
        load_manifest(tiny_engines)
    assert "\n" not in str(e.value)


def test_model_that_does_not_match_its_manifest(tiny_engines):
    def swap(m):
        m["heads"]["quality"]["input"]["name"] = "pixels"
    edit(tiny_engines, swap)
    with pytest.raises(ManifestError, match="does not match its manifest"):
        HeadSet(load_manifest(tiny_engines))


def test_quality_and_guidance_decode_match_numpy_even_at_extreme_logits():
    """The per-frame decode works on plain floats; it must agree with the
    numpy formulas and not overflow."""
    import dataclasses

    import numpy as np

    from edge_assist.heads import decode_guidance, decode_quality
    from edge_assist.manifest import HeadSpec

    spec = HeadSpec("h", None, None, "x", (1, 1, 4, 4), "float32", 1, {}, {"reasons": ["a", "b", "c", "d"],
                    "actions": ["p", "q", "r", "s"]}, {"temperature": 1.7}, "1", None, None)
    reasons = np.array([[-1000.0, -2.0, 0.0, 800.0]], np.float32)
    q = decode_quality(spec, {"score": np.array([[1.2]], np.float32), "reasons": reasons})
    want = 1 / (1 + np.exp(-reasons.astype(np.float64).ravel().clip(-700, 700)))
    assert q.score == 1.0 and q.reasons == ["d", "c"]
    assert np.allclose([q.reason_probs[k] for k in "abcd"], want, rtol=1e-12, atol=1e-300)
    logits = np.array([[3.0, -900.0, 3.5, 1.0]], np.float32)
    g = decode_guidance(spec, {"logits": logits})
    z = logits.astype(np.float64).ravel() / 1.7
    e = np.exp(z - z.max())
    assert g.action == "r" and np.allclose([g.probs[k] for k in "pqrs"], e / e.sum(), rtol=1e-12)
    assert g.confidence == g.probs["r"] and dataclasses.is_dataclass(g)
