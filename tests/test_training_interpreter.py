"""Interpreter: tokenizer, teacher (contrastive), student (distilled), calibration, export."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_assist import lexicon  # noqa: E402
from edge_assist.training.data import ArrayDataset, normalise  # noqa: E402
from edge_assist.vocab import ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, STRUCTURES  # noqa: E402

TINY_TEACHER = {"stem": 8, "widths": [8, 16, 24], "blocks": [1, 1, 1], "hidden": 48, "embed_dim": 32, "text_dim": 32, "text_layers": 1,
                "text_heads": 2, "text_ff": 64, "max_len": 128}
TINY_STUDENT = {"widths": [8, 16, 24, 32], "depth": [1, 1, 1, 1], "hidden": 48}
ECHO_GREY = {"anechoic": 4, "hypoechoic": 35, "isoechoic": 80, "hyperechoic": 170}


def make_synthetic(n: int, seed: int = 0, size: int = 128, mm: float = 0.5, masks: bool = False) -> ArrayDataset:
    """Learnable toy frames: a few structures as textured bands, maybe one disc
    lesion (and its mask with masks=True)."""
    from edge_assist.training.data import mask_target

    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, size, size), np.uint8)
    names = ["liver", "kidney", "vessel", "rib"]
    bands = {"liver": (0.15, 0.55, 70), "kidney": (0.55, 0.9, 110), "vessel": (0.3, 0.4, 10), "rib": (0.02, 0.1, 200)}
    S = len(STRUCTURES)
    structures = np.zeros((n, S), np.float32)
    lesion = np.zeros(n, np.float32)
    size_frac = np.zeros(n, np.float32)
    echo, margins, location = (np.full(n, -1, np.int64) for _ in range(3))
    reports, reports_zh = [], []
    yy, xx = np.mgrid[0:size, 0:size]
    lesion_masks = np.zeros((n, 64, 64), np.uint8)
    for i in range(n):
        img = rng.rayleigh(18.0, (size, size))
        present = [s for s in names if rng.random() < 0.5]
        for s in present:
            a, b, g = bands[s]
            img[int(a * size) : int(b * size)] = rng.rayleigh(g * 0.8, (int(b * size) - int(a * size), size))
            structures[i, STRUCTURES.index(s)] = 1
        f = {"structures": present, "lesion_present": False}
        if rng.random() < 0.5:
            r = rng.uniform(4, 14)
            cy, cx = rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2)
            e = ECHOGENICITY[rng.integers(4)]
            mg = MARGINS[rng.integers(2)]
            ang = np.arctan2(yy - cy, xx - cx)
            rr = r * (1 + (0.25 * np.sin(5 * ang) if mg == "irregular" else 0))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rr**2
            img[disc] = rng.rayleigh(max(ECHO_GREY[e], 1) * 0.8, disc.sum())
            lesion_masks[i] = mask_target(disc, (0, 0, size, size))
            loc = LOCATIONS[min(2, int(3 * cy / size))]
            lesion[i], size_frac[i] = 1, 2 * r / size
            echo[i], margins[i], location[i] = ECHOGENICITY.index(e), MARGINS.index(mg), LOCATIONS.index(loc)
            f.update(lesion_present=True, size_mm=2 * r * mm, echogenicity=e, margins=mg, location=loc)
        imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
        reports.append(lexicon.sentence_en(**f))
        reports_zh.append(lexicon.sentence_zh(**f))
    quality = rng.uniform(0.3, 1.0, n).astype(np.float32)
    return ArrayDataset(
        images=imgs, quality=quality, reasons=np.full((n, len(QUALITY_REASONS)), np.nan, np.float32),
        action=np.full(n, -1, np.int64), structures=structures, lesion=lesion, size_frac=size_frac, echo=echo,
        margins=margins, location=location, reports=reports, reports_zh=reports_zh,
        mm_per_px=np.full((n, 2), mm, np.float32), lesion_mask=lesion_masks if masks else None,
    )


@pytest.fixture(scope="module")
def toy():
    return make_synthetic(160, seed=1), make_synthetic(64, seed=2)


@pytest.fixture(scope="module")
def teacher_ckpt(toy, tmp_path_factory):
    from edge_assist.training.teacher import train_teacher

    train, val = toy
    out = tmp_path_factory.mktemp("teacher")
    return train_teacher(train, val, out, epochs=4, seed=0, batch_size=32, progress=False, arch=TINY_TEACHER, lr=3e-3)


@pytest.fixture(scope="module")
def student_ckpt(toy, teacher_ckpt, tmp_path_factory):
    from edge_assist.training.interpreter import train_interpreter

    train, val = toy
    out = tmp_path_factory.mktemp("student")
    return train_interpreter(train, val, teacher_ckpt, out, epochs=3, seed=0, batch_size=32, progress=False,
                             arch=TINY_STUDENT, lr=3e-3)


# -- tokenizer -------------------------------------------------------------------------


def test_tokenizer_round_trips_english_and_chinese():
    from edge_assist.training.tokenizer import BOS, EOS, PAD, ByteTokenizer

    tok = ByteTokenizer(max_len=160)
    en = lexicon.sentence_en(["liver", "kidney"], True, 12.0, "hypoechoic", "irregular", "mid_field")
    zh = lexicon.sentence_zh(["liver", "kidney"], True, 12.0, "hypoechoic", "irregular", "mid_field")
    for text in (en, zh, "", "混合 mixed ✓"):
        ids = tok.encode(text)
        assert ids[0] == BOS and ids[-1] == EOS
        assert tok.decode(ids) == text
    ids, mask = tok.batch([en, zh, ""])
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    assert ids.shape[1] == max(len(tok.encode(en)), len(tok.encode(zh)))
    assert int(mask[2].sum()) == 2 and bool((ids[~mask] == PAD).all())
    assert [tok.decode(r) for r in ids] == [en, zh, ""]
    # truncation never splits a character: 3-byte Chinese characters, odd limit
    short = ByteTokenizer(max_len=12)
    ids = short.encode("肝脏肝脏肝脏")
    assert len(ids) <= 12 and short.decode(ids) == "肝脏肝"
    assert short.batch(["a"], pad_to_max=True)[0].shape == (1, 12)


# -- teacher ---------------------------------------------------------------------------


def test_teacher_lowers_info_nce_and_resumes(teacher_ckpt, toy, capsys):
    from edge_assist.training.teacher import load_teacher, rank_sentences, train_teacher

    ck = torch.load(teacher_ckpt, weights_only=False)
    hist = ck["history"]
    assert ck["epoch"] == 4 and hist[0]["epoch"] == 0 and "optimizer" in ck
    assert hist[-1]["val_info_nce"] < hist[0]["val_info_nce"] - 0.05
    assert hist[-1]["train_info_nce"] < hist[1]["train_info_nce"]
    # resume: the same epoch count is a no-op, one more epoch continues from the file
    train, val = toy
    assert train_teacher(train, val, teacher_ckpt.parent, epochs=4, seed=0, batch_size=32, arch=TINY_TEACHER) == teacher_ckpt
    assert "nothing to do" in capsys.readouterr().err
    with pytest.raises(ValueError, match="different architecture"):
        train_teacher(train, val, teacher_ckpt.parent, epochs=5, seed=0, progress=False, arch={**TINY_TEACHER, "hidden": 40})
    model, tok = load_teacher(teacher_ckpt)
    ranked = rank_sentences(model, tok, train.images[0], [train.reports[0], train.reports_zh[1], "x"])
    assert len(ranked) == 3 and ranked[0][1] >= ranked[-1][1]


# -- student ---------------------------------------------------------------------------


def test_distillation_lowers_student_loss_and_writes_calibrated_checkpoint(student_ckpt):
    from edge_assist.training.interpreter import interpreter_manifest_entry

    ck = torch.load(student_ckpt, weights_only=False)
    hist = ck["history"]
    assert ck["complete"] and ck["epoch"] == 3
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert hist[-1]["train_loss"] < hist[1]["train_loss"] or hist[-1]["val_gt"] < hist[0]["val_gt"]
    entry = interpreter_manifest_entry(student_ckpt)
    assert set(entry["outputs"]) == {"structures", "lesion", "size", "echogenicity", "margins", "location"}
    assert entry["labels"]["structures"] == list(STRUCTURES) and entry["labels"]["locations"] == list(LOCATIONS)
    dec = entry["decode"]
    assert dec["temperature"] > 0 and dec["quality_threshold"] == 0.5
    assert {"lesion_threshold", "structure_threshold", "structure_thresholds"} <= set(dec)
    assert set(dec["structure_thresholds"]) == set(STRUCTURES) and all(0 < t < 1 for t in dec["structure_thresholds"].values())
    m = entry["metrics"]
    assert {"findings_macro_f1", "size_mae_mm", "ece_before", "ece_after", "nll_before", "nll_after"} <= set(m)
    assert m["nll_after"] <= m["nll_before"] + 1e-9
    import json

    json.dumps(entry)  # the manifest is JSON


def _logits_for(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_structure_thresholds_fit_where_the_shared_one_is_wrong_and_only_on_enough_positives():
    from edge_assist.training.interpreter import MIN_THRESHOLD_POSITIVES, STRUCTURE_THRESHOLD, evaluate_outputs, tune_structure_thresholds

    rng = np.random.default_rng(0)
    n = 400
    data = make_synthetic(n, seed=3, size=32)
    st = np.zeros((n, len(STRUCTURES)), np.float32)
    probs = np.full((n, len(STRUCTURES)), 0.05)
    gb, liver, heart = (STRUCTURES.index(s) for s in ("gallbladder", "liver", "heart"))
    # gallbladder: positives at p 0.75-1.0, a fifth of the negatives at 0.5-0.7 (half-learnt)
    st[:80, gb] = 1
    probs[:80, gb] = rng.uniform(0.75, 1.0, 80)
    probs[80:160, gb] = rng.uniform(0.5, 0.7, 80)
    # liver: cleanly separated at 0.5
    st[:200, liver] = 1
    probs[:200, liver] = 0.9
    # heart: the same confusion, but too few positives to fit a threshold on
    k = MIN_THRESHOLD_POSITIVES - 1
    st[:k, heart] = 1
    probs[:k, heart] = 0.9
    probs[k : k + 40, heart] = 0.6
    data.structures[:] = st
    out = {"structure_logits": _logits_for(probs)}
    thr = tune_structure_thresholds(out, data)
    assert 0.7 <= thr["gallbladder"] <= 0.75
    assert thr["liver"] == thr["heart"] == thr["rib"] == STRUCTURE_THRESHOLD
    shared = evaluate_outputs({**out, **_other_outputs(n)}, data)["f1"]["structure/gallbladder"]
    own = evaluate_outputs({**out, **_other_outputs(n)}, data, structure_threshold=thr)["f1"]["structure/gallbladder"]
    assert shared == pytest.approx(2 * 80 / (2 * 80 + 80), abs=1e-4) and own == 1.0  # 80 false positives at 0.5, none at its own


def _other_outputs(n: int) -> dict:
    return {"lesion_logit": np.zeros((n, 1)), "lesion_size": np.zeros((n, 1)), "echo_logits": np.zeros((n, len(ECHOGENICITY))),
            "margin_logits": np.zeros((n, len(MARGINS))), "location_logits": np.zeros((n, len(LOCATIONS)))}


def test_load_student_outputs_in_order(student_ckpt, toy):
    from edge_assist.training.interpreter import INTERPRETER_OUTPUTS, evaluate_student, load_student

    model = load_student(student_ckpt)
    assert not model.training
    x = torch.from_numpy(normalise(toy[1].images[:3]))
    out = model(x)
    assert isinstance(out, tuple) and len(out) == len(INTERPRETER_OUTPUTS)
    widths = [len(STRUCTURES), 1, 1, len(ECHOGENICITY), len(MARGINS), len(LOCATIONS)]
    assert [tuple(o.shape) for o in out] == [(3, w) for w in widths]
    assert bool(((out[2] >= 0) & (out[2] <= 1)).all())  # size is a sigmoid fraction
    m = evaluate_student(model, toy[1])
    assert 0 <= m["findings_macro_f1"] <= 1 and math.isfinite(m["size_mae_mm"]) and 0 <= m["ece"] <= 1
    assert m["n_frames"] == int((toy[1].quality >= 0.5).sum())


def test_temperature_fit_fixes_overconfident_logits():
    from edge_assist.training.interpreter import INTERPRETER_OUTPUTS, fit_temperature

    rng = np.random.default_rng(0)
    n = 3000
    data = make_synthetic(4, seed=0)
    data = data.subset(rng.integers(0, 4, n))
    true = {}
    # calibrated logits, labels drawn from them; then make them 3x overconfident
    true["structure_logits"] = rng.normal(0, 2, (n, len(STRUCTURES)))
    data.structures = (rng.random((n, len(STRUCTURES))) < 1 / (1 + np.exp(-true["structure_logits"]))).astype(np.float32)
    true["lesion_logit"] = rng.normal(0, 2, (n, 1))
    data.lesion = (rng.random(n) < 1 / (1 + np.exp(-true["lesion_logit"][:, 0]))).astype(np.float32)
    true["lesion_size"] = np.full((n, 1), 0.1)
    for name, key, k in (("echo_logits", "echo", 4), ("margin_logits", "margins", 2), ("location_logits", "location", 3)):
        z = rng.normal(0, 2, (n, k))
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = np.array([rng.choice(k, p=r) for r in p])
        setattr(data, key, np.where(data.lesion > 0, y, -1).astype(np.int64))
        true[name] = z
    over = {k: v * 3.0 for k, v in true.items() if k in INTERPRETER_OUTPUTS}
    cal = fit_temperature(over, data)
    assert 2.5 < cal["temperature"] < 3.5
    assert cal["nll_after"] < cal["nll_before"] - 0.05
    assert cal["ece_after"] < cal["ece_before"] and cal["ece_after"] < 0.03


def test_student_exports_to_onnx_with_ort_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edge_assist.training.interpreter import DEFAULT_STUDENT, INTERPRETER_OUTPUTS, MASK_OUTPUT, StudentNet

    torch.manual_seed(0)
    model = StudentNet(**DEFAULT_STUDENT, mask_head=True)  # the production size, its mask decoder's bilinear finish included
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.from_numpy(normalise(make_synthetic(2, seed=3).images))
    path = tmp_path / "interpreter.onnx"
    names = list(INTERPRETER_OUTPUTS) + [MASK_OUTPUT]
    torch.onnx.export(model, (x[:1],), str(path), input_names=["image"], output_names=names, dynamo=True, optimize=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == names
    for i in range(2):
        got = sess.run(None, {"image": x[i : i + 1].numpy()})
        with torch.no_grad():
            want = model(x[i : i + 1])
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            assert float(np.abs(g - w.numpy()).max()) <= 1e-4


def test_exported_student_decodes_through_the_run_time(student_ckpt, toy, tmp_path):
    """manifest entry + ONNX outputs -> heads.decode_interpreter -> template sentence."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edge_assist.frames import QualityResult
    from edge_assist.heads import decode_interpreter
    from edge_assist.manifest import HeadSpec
    from edge_assist.training.interpreter import INTERPRETER_OUTPUTS, interpreter_manifest_entry, load_student

    model = load_student(student_ckpt)
    path = tmp_path / "interpreter.onnx"
    x = normalise(toy[1].images[:1])
    torch.onnx.export(model, (torch.from_numpy(x),), str(path), input_names=["image"],
                      output_names=list(INTERPRETER_OUTPUTS), dynamo=True)
    entry = interpreter_manifest_entry(student_ckpt)
    spec = HeadSpec("interpreter", path, None, "image", (1, 1, 128, 128), "float32", 1, entry["outputs"], entry["labels"],
                    entry["decode"], "test", None, None, entry["metrics"])
    raw = dict(zip(INTERPRETER_OUTPUTS, ort.InferenceSession(str(path)).run(None, {"image": x})))
    out = {role: raw[name] for role, name in spec.outputs.items()}
    good = QualityResult(score=0.9, reasons=[], reason_probs={})
    res = decode_interpreter(spec, out, frame_index=7, quality=good, mm_per_px=(0.5, 0.5), input_hw=(128, 128))
    assert not res.abstained and res.findings is not None and res.text.endswith(".") and res.text_zh
    assert ("lesion seen" in res.text) != res.findings.lesion_present
    poor = QualityResult(score=0.2, reasons=["noise"], reason_probs={})
    assert decode_interpreter(spec, out, frame_index=8, quality=poor, mm_per_px=None, input_hw=(128, 128)).abstained
    # a structure's own threshold (decode.structure_thresholds) decides it, not the shared one
    p = 1 / (1 + np.exp(-np.asarray(out["structures"], np.float64).reshape(-1) / entry["decode"]["temperature"]))
    names = entry["labels"]["structures"]
    for above in (True, False):
        own = {n: (float(q) - 1e-6 if above else float(q) + 1e-6) for n, q in zip(names, p)}
        spec.decode["structure_thresholds"] = own
        said = decode_interpreter(spec, out, frame_index=9, quality=good, mm_per_px=None, input_hw=(128, 128)).findings.structures
        assert said == (names if above else [])


# -- lesion mask: a segmenting student measures lesions --------------------------------


def test_lesion_extent_measures_the_long_axis_of_the_largest_region():
    from edge_assist.lesion_measure import lesion_extent, lesion_size_frac

    h = 64
    yy, xx = np.mgrid[0:h, 0:h] + 0.5
    t = np.radians(30)
    u = (xx - 30) * np.cos(t) + (yy - 28) * np.sin(t)
    v = -(xx - 30) * np.sin(t) + (yy - 28) * np.cos(t)
    mask = ((u / 10) ** 2 + (v / 5) ** 2 <= 1).astype(np.float32)  # 20 cells long
    assert abs(lesion_extent(mask) * h - 21.0) < 1.0  # long axis plus one cell of footprint
    stray = mask.copy()
    stray[60, 2] = stray[2, 60] = 1.0  # single stray cells far away do not widen it
    assert lesion_extent(stray[None, None]) == pytest.approx(lesion_extent(mask))
    assert lesion_extent(np.zeros((h, h))) is None and lesion_extent(np.where(mask > 0, 0.4, 0.0)) is None
    assert lesion_size_frac(0.3, None) == (0.3, None) and lesion_size_frac(0.3, np.zeros((1, 1, h, h))) == (0.3, None)
    frac, m = lesion_size_frac(0.3, mask)
    assert m is not None and frac == pytest.approx(lesion_extent(mask)) == pytest.approx(m.extent)
    # the outline encloses the ellipse: its bounding box in fractions of the mask
    xs, ys = np.array([pt[0] for pt in m.outline]), np.array([pt[1] for pt in m.outline])
    cols, rows = np.nonzero(mask.T)[0], np.nonzero(mask)[0]
    assert 3 <= len(m.outline) <= 32
    assert abs(xs.min() * h - cols.min()) <= 1.5 and abs(xs.max() * h - (cols.max() + 1)) <= 1.5
    assert abs(ys.min() * h - rows.min()) <= 1.5 and abs(ys.max() * h - (rows.max() + 1)) <= 1.5


def test_student_with_lesion_masks_segments_and_the_run_time_measures(teacher_ckpt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edge_assist.frames import QualityResult
    from edge_assist.heads import decode_interpreter
    from edge_assist.lesion_measure import lesion_extent
    from edge_assist.manifest import HeadSpec
    from edge_assist.training.export import export_interpreter
    from edge_assist.training.interpreter import MASK_OUTPUT, load_student, train_interpreter

    train, val = make_synthetic(160, seed=1, masks=True), make_synthetic(64, seed=2, masks=True)
    ckpt = train_interpreter(train, val, teacher_ckpt, tmp_path / "student", epochs=4, seed=0, batch_size=32, progress=False,
                             arch=TINY_STUDENT, lr=3e-3)
    ck = torch.load(ckpt, weights_only=False)
    assert ck["arch"]["mask_head"] is True
    hist = ck["history"]
    assert hist[-1]["val_mask"] < hist[0]["val_mask"]
    student = load_student(ckpt)
    assert student.output_names[-1] == MASK_OUTPUT
    entry = export_interpreter(ckpt, tmp_path / "engines", frames_u8=val.images)
    assert entry["outputs"]["mask"] == MASK_OUTPUT and entry["parity_max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "engines" / "interpreter.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()][-1] == MASK_OUTPUT
    i = int(np.flatnonzero(val.lesion == 1)[0])
    x = normalise(val.images[i : i + 1])
    raw = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
    assert raw[MASK_OUTPUT].shape == (1, 1, 64, 64) and 0.0 <= raw[MASK_OUTPUT].min() <= raw[MASK_OUTPUT].max() <= 1.0
    spec = HeadSpec("interpreter", tmp_path / "engines" / "interpreter.onnx", None, "image", (1, 1, 128, 128), "float32", 1,
                    entry["outputs"], entry["labels"], entry["decode"], "test", None, None, entry["metrics"])
    out = {role: raw[name] for role, name in spec.outputs.items()}
    good = QualityResult(score=0.9, reasons=[], reason_probs={})
    res = decode_interpreter(spec, out, frame_index=0, quality=good, mm_per_px=(0.5, 0.5), input_hw=(128, 128))
    assert not res.abstained
    # a train-time mask with its lesion only reaches the measurement when the model says "lesion"
    if res.findings.lesion_present:
        assert res.findings.size_mm is not None and res.findings.size_mm > 0
        assert res.findings.size_measured == (lesion_extent(raw[MASK_OUTPUT]) is not None)
        assert (res.findings.lesion_outline is not None) == res.findings.size_measured
    with pytest.raises(ValueError, match="lesion masks"):
        train_interpreter(train, make_synthetic(8, seed=3), teacher_ckpt, tmp_path / "s2", epochs=1, seed=0, progress=False,
                          arch={**TINY_STUDENT, "mask_head": True})


def test_mask_decoder_stopping_short_of_the_finest_stage_still_gives_half_resolution():
    """finest_stage 1 skips the 64x64 merge (the costly conv) and finishes bilinearly to the same shape;
    a decoder with the default finest_stage keeps the old layout (committed checkpoints load)."""
    from edge_assist.training.interpreter import MaskDecoder, StudentNet

    stages = [torch.randn(2, c, 64 // 2**k, 64 // 2**k) for k, c in enumerate((16, 32, 64, 128))]
    short, full = MaskDecoder([16, 32, 64, 128], finest_stage=1), MaskDecoder([16, 32, 64, 128])
    assert short(stages).shape == full(stages).shape == (2, 1, 64, 64)
    assert len(short.lateral) == 3 and len(short.merge) == 2 and len(full.lateral) == 4 and len(full.merge) == 3
    assert set(StudentNet(mask_head=True).state_dict()) >= {"mask.lateral.3.weight", "mask.merge.2.0.weight"}
    with pytest.raises(ValueError, match="finest_stage"):
        MaskDecoder([16, 32], finest_stage=2)
