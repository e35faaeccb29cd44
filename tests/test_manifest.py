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
