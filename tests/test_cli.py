"""The command line: outputs of `run`, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
from pydicom.data import get_testdata_file

from edge_assist.cli import main

YBR = get_testdata_file("examples_ybr_color.dcm")


def run_cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "edge_assist", *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_run_dicom_every_frame_writes_outputs(tiny_engines, tmp_path):
    out = tmp_path / "out"
    rc = main(["run", "--source", f"dicom:{YBR}", "--every-frame", "--out", str(out), "--engines", str(tiny_engines)])
    assert rc == 0
    lines = (out / "hints.jsonl").read_text().splitlines()
    assert len(lines) == 30
    rec = json.loads(lines[0])
    for key in ("frame", "t_capture_ns", "e2e_ms", "stages_ms", "quality", "guidance", "interpreter", "missed_budget",
                "heads_parallel", "primed"):
        assert key in rec
    assert set(rec["quality"]) >= {"score", "reasons"} and set(rec["guidance"]) >= {"action", "confidence"}
    s = json.loads((out / "summary.json").read_text())
    assert s["frames_in"] == s["frames_processed"] == 30 and s["frames_dropped"] == 0
    assert set(s["e2e_ms"]) == {"p50", "p95", "p99", "p999", "max"}
    assert s["backend"] == "ort" and set(s["models"]) == {"quality", "guidance", "interpreter"}
    import cv2

    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 30


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--source", "bogus:thing"], "unknown source scheme"),
        (["run", "--source", "nocolon"], "no scheme"),
        (["run", "--source", "dicom:/no/such/file.dcm"], "dicom"),
        (["run", "--source", "file:/no/such/clip.mp4"], "clip.mp4"),
        (["run", "--source", "device:97"], "device"),
        (["run", "--source", "dicom:x", "--backend", "trt"], "trt"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, tiny_engines):
    rc, out, err = run_cli(*args, "--engines", str(tiny_engines))
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_empty_engines_folder(tmp_path):
    (tmp_path / "engines").mkdir()
    rc, out, err = run_cli("run", "--source", f"dicom:{YBR}", "--engines", str(tmp_path / "engines"))
    assert rc == 2 and "make models" in err and "Traceback" not in err


def test_backends_and_sources_commands():
    rc, out, err = run_cli("backends", "--json")
    assert rc == 0 and json.loads(out)["ort"]["available"] is True
    rc, out, err = run_cli("sources")
    assert rc == 0 and "igtl" in out and "dicom" in out


def test_run_primes_a_paced_source_only_when_asked(tiny_engines, tmp_path):
    modes = {}
    for prime in ("on", "off"):
        out = tmp_path / prime
        rc = main(["run", "--source", f"dicom:{YBR}", "--max-frames", "12", "--out", str(out), "--no-video",
                   "--engines", str(tiny_engines), "--prime", prime])
        assert rc == 0
        s = json.loads((out / "summary.json").read_text())
        recs = [json.loads(line) for line in (out / "hints.jsonl").read_text().splitlines()]
        modes[prime] = (s["prime"]["mode"], s["prime"]["passes"], sum(r["primed"] for r in recs))
    assert modes["off"] == ("off", 0, 0)
    mode, passes, primed = modes["on"]
    # every frame after the first can be primed; the last pass may be for a frame that never came
    assert mode == "on" and passes >= 6 and passes - 1 <= primed <= passes


def test_a_reader_that_closes_the_pipe_gets_no_traceback():
    """`edge-assist backends | head -0`: the writer stops quietly (exit 141, as for SIGPIPE), no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "edge_assist.cli", "backends"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
