"""The virtual patient: rendering, speckle, artefacts, ground truth, policy."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from edge_assist.errors import EdgeAssistError, SourceError
from edge_assist.sim import LABELS, PRESETS, STEP, SimError, VirtualPatient
from edge_assist.sim.artefacts import ARTEFACTS, apply_artefact
from edge_assist.sim.tissues import LABEL_INDEX
from edge_assist.vocab import ACTIONS, ECHOGENICITY, LOCATIONS, MARGINS, QUALITY_REASONS, STRUCTURES

EXAMS = ("liver", "thyroid", "cardiac")
TRUTH_KEYS = {"quality", "reasons", "action", "pose_error", "at_target", "findings", "report_en", "report_zh", "preset", "seed", "frame"}


def test_presets_exist():
    assert set(EXAMS) <= set(PRESETS)
    kinds = {PRESETS[p].probe for p in EXAMS}
    assert kinds == {"linear", "curvilinear", "phased"}


@pytest.mark.parametrize("preset", EXAMS)
def test_render_frame_and_truth(preset):
    vp = VirtualPatient(preset, 3)
    img, truth, mask = vp.render(return_mask=True)
    assert img.dtype == np.uint8 and img.shape == (256, 256)
    assert mask.shape == img.shape and mask.max() < len(LABELS)
    assert TRUTH_KEYS <= set(truth)
    json.dumps(truth)  # JSON-serialisable
    f = truth["findings"]
    assert set(f) == {"structures", "lesion_present", "size_mm", "echogenicity", "margins", "location"}
    assert set(f["structures"]) <= set(STRUCTURES)
    assert set(truth["reasons"]) <= set(QUALITY_REASONS)
    assert truth["action"] in ACTIONS
    assert "total" in truth["pose_error"]
    # Fan: inside the region mask the image has speckle, outside it is black.
    region = vp.region
    assert region.kind == vp.probe.kind and region.box == (0, 0, 256, 256)
    assert region.mask.shape == img.shape
    inside, outside = img[region.mask > 0], img[region.mask == 0]
    assert inside.std() > 15 and (outside.size == 0 or outside.max() < 30)
    assert truth["spacing_mm"] == pytest.approx(list(vp.spacing_mm), rel=1e-4)


@pytest.mark.parametrize("preset", EXAMS)
def test_target_view_is_good_for_many_patients(preset):
    for seed in range(8):
        vp = VirtualPatient(preset, seed)
        _, truth = vp.render()
        assert truth["at_target"] and truth["action"] == "hold"
        assert truth["reasons"] == [], (seed, truth["reasons"], truth["reason_severity"])
        assert truth["quality"] >= 0.8
        assert PRESETS[preset].target_label in truth["findings"]["structures"]


def _envelope_snr(vp):
    """Envelope SNR (mean/std, before log compression, TGC-compensated) on
    lines that cross only homogeneous background, in short depth blocks."""
    vp.keep_envelope = True
    vp.render()
    env, lab = vp.last_envelope, vp.last_beam.labels
    clean = (lab == vp.phantom._index["qa_background"]).all(axis=1)
    lines = np.nonzero(clean)[0]
    lines = lines[(lines > 5) & (lines < len(clean) - 5)]
    assert len(lines) > 40
    S = env.shape[1]
    snrs = []
    for j0 in range(int(0.1 * S), int(0.9 * S), 24):
        v = env[lines, j0 : j0 + 24].ravel()
        snrs.append(v.mean() / v.std())
    return float(np.mean(snrs))


@pytest.mark.parametrize("live", [True, False])
def test_speckle_snr_is_rayleigh(live):
    snr = _envelope_snr(VirtualPatient("phantom", 0, live_speckle=live))
    assert snr == pytest.approx(1.913, abs=0.06)


def test_speckle_is_fixed_to_the_tissue_in_live_mode_and_fresh_in_dataset_mode():
    def two_frames(live):
        vp = VirtualPatient("phantom", 0, live_speckle=live)
        a, _ = vp.render()
        b, _ = vp.render()
        m = vp.region.mask > 0
        return np.corrcoef(a[m].astype(float), b[m].astype(float))[0, 1]

    assert two_frames(True) > 0.9  # only receiver noise changes
    assert two_frames(False) < 0.5  # new speckle every frame
    # A slide along the image plane moves the speckle with the tissue.
    vp = VirtualPatient("phantom", 0, probe="linear")
    vp.set_pose(depth=40)
    a, _ = vp.render()
    vp.move("slide_left")  # the probe moves toward image left: the tissue moves right on screen
    b, _ = vp.render()
    shift = int(round(STEP["u"] / vp.spacing_mm[1]))
    h = 200
    same = np.corrcoef(a[:h, 20 : 220 - shift].ravel().astype(float), b[:h, 20 + shift : 220].ravel().astype(float))[0, 1]
    other = np.corrcoef(a[:h, 20:220].ravel().astype(float), b[:h, 20:220].ravel().astype(float))[0, 1]
    assert same > 0.6 and same > other + 0.3


def test_cyst_posterior_enhancement_and_rib_shadow():
    vp = VirtualPatient("phantom", 0)
    img, _ = vp.render()
    geo = vp.geometry()
    # 15 mm cyst at u=32, v=105: compare below it with the same depth beside it.
    s = geo.spacing_mm[0]
    col = int(round(256 / 2 + 32 / s))
    row_below = int(round((105 + 7.5 + 6 - geo.v_top) / s))
    below = img[row_below : row_below + 8, col - 5 : col + 5].mean()
    beside = img[row_below : row_below + 8, col - 45 : col - 35].mean()
    assert below > beside + 10
    # A rib under the left half of the probe darkens what lies below it.
    vp = VirtualPatient("liver", 2)
    base, _ = vp.render()
    vp.apply_degradations({"occluder": {"kind": "rib", "u_mm": -15.0, "width_mm": 20.0}})
    shadowed, truth = vp.render()
    assert "shadowing" in truth["reasons"]
    assert shadowed[120:200, 60:100].mean() < 0.3 * base[120:200, 60:100].mean()


# -- artefacts: each changes the image where it should and raises its flag -----------


def _pair(preset, name, seed=4):
    """Baseline at the exact target and the same state with the artefact (same speckle)."""
    vp = VirtualPatient(preset, seed)
    base, tb = vp.render()
    apply_artefact(vp, name, np.random.default_rng(11), from_target=False)
    img, tr = vp.render()
    return vp, base, tb, img, tr


def _band_mean(img, mask, r0, r1):
    m = np.zeros_like(mask, bool)
    m[r0:r1] = True
    return img[m & (mask > 0)].mean()


@pytest.mark.parametrize("preset", EXAMS)
@pytest.mark.parametrize("name", [a for a in ARTEFACTS if a != "good"])
def test_artefact_changes_image_and_sets_flag(preset, name):
    from edge_assist.sim.artefacts import REASON_OF

    vp, base, tb, img, tr = _pair(preset, name)
    assert tb["reasons"] == []
    assert REASON_OF[name] in tr["reasons"], (name, tr["reasons"], tr["reason_severity"])
    assert tr["quality"] < 0.5
    mask = vp.region.mask
    fan = mask > 0
    b, a = base.astype(float), img.astype(float)
    if name == "no_contact":
        assert tr["reasons"] == ["no_contact"] and tr["quality"] == 0.0
        rows = np.nonzero(fan.any(1))[0]
        r0, r1 = rows[0] + int(0.4 * len(rows)), rows[0] + int(0.8 * len(rows))
        assert _band_mean(img, mask, r0, r1) < 0.25 * _band_mean(base, mask, r0, r1)
        assert img[: 256 // 8][fan[: 256 // 8]].max() > 120  # reverberation bands under the face
    elif name == "partial_contact":
        side = tr["degradations"]["contact_side"]
        cols = slice(200, 240) if side > 0 else slice(16, 56)
        rows = slice(100, 160)
        assert a[rows, cols].mean() < 0.35 * b[rows, cols].mean()
        other = slice(16, 56) if side > 0 else slice(200, 240)
        assert abs(a[rows, other].mean() - b[rows, other].mean()) < 0.2 * b[rows, other].mean() + 3
    elif name == "shadowing":
        occ = tr["degradations"]["occluder"]
        geo = vp.geometry()
        col = int(round(256 / 2 + occ["u_mm"] / geo.spacing_mm[1]))
        rows = slice(int(0.6 * 256 * min(1.0, geo.depth_mm / (geo.depth_mm - geo.v_top))), 250)
        win = (slice(rows.start, rows.stop), slice(max(0, col - 3), col + 4))
        m = fan[win]
        assert m.sum() > 20
        assert a[win][m].mean() < 0.4 * b[win][m].mean() + 2
    elif name in ("gain_high", "gain_low"):
        d = a[fan].mean() - b[fan].mean()
        assert (d > 15) if name == "gain_high" else (d < -15)
    elif name in ("tgc_high", "tgc_low"):
        diff = np.abs(a - b)
        row_change = np.array([diff[r][fan[r]].mean() if fan[r].any() else 0 for r in range(256)])
        assert row_change.max() > 15
        assert np.percentile(row_change[row_change > 0], 20) < 6  # other depths unchanged
    elif name in ("depth_shallow", "depth_deep"):
        s0, s1 = tb["spacing_mm"][0], tr["spacing_mm"][0]
        assert (s1 < s0) if tr["depth_mm"] < tb["depth_mm"] else (s1 > s0)
        assert abs(tr["pose_error"]["depth_mm"]) >= 20
        assert tr["action"] in ("depth_up", "depth_down")
    elif name == "blur":
        gb = np.abs(np.diff(b, axis=1))[fan[:, 1:] & fan[:, :-1]].mean()
        ga = np.abs(np.diff(a, axis=1))[fan[:, 1:] & fan[:, :-1]].mean()
        assert ga < 0.6 * gb
    elif name == "noise":
        again, _ = vp.render()  # same state: a frame with fresh noise
        vp.apply_degradations({"noise_db": 0.0})
        clean, _ = vp.render()
        assert np.corrcoef(a[fan], again[fan])[0, 1] < np.corrcoef(b[fan], clean[fan].astype(float))[0, 1] - 0.05
    elif name == "off_target":
        assert np.abs(a - b)[fan].mean() > 10
        assert tr["action"] != "hold" and not tr["at_target"]


def test_good_scenario_has_no_flags():
    rng = np.random.default_rng(0)
    for preset in EXAMS:
        vp = VirtualPatient(preset, 1, live_speckle=False)
        for _ in range(3):
            apply_artefact(vp, "good", rng)
            _, tr = vp.render()
            assert tr["reasons"] == [] and tr["quality"] >= 0.5 and tr["action"] == "hold"


# -- policy -----------------------------------------------------------------------------


def test_optimal_action_reduces_pose_error():
    rng = np.random.default_rng(1)
    checked = 0
    for preset in EXAMS:
        for seed in range(5):
            vp = VirtualPatient(preset, seed)
            for _ in range(12):
                vp.randomize_pose(rng, spread=1.5)
                if rng.random() < 0.2:
                    vp.apply_degradations({"contact": float(rng.choice([0.0, 0.6]))})
                a = vp.optimal_action()
                e0 = vp.pose_error()["total"]
                if vp.at_target():
                    assert a == "hold"
                    continue
                vp.move(a)
                assert vp.pose_error()["total"] < e0
                checked += 1
    assert checked > 100


def test_the_target_view_is_judged_by_what_the_beam_cuts():
    """view_offset: 0 at the target; a slide along the image of one tolerance
    is the budget; an elevational slide changes the view and the policy
    moves; a fan that brings the beam back over the organ makes it the
    target view again although w alone is out of tolerance; components
    each within tolerance whose changes add up are not the target view."""
    vp = VirtualPatient("liver", 50_123, image_size=(64, 64))
    _, truth = vp.render()
    assert vp.view_offset() == 0.0 and truth["at_target"] and truth["view_offset"] == 0.0
    vp.set_pose_error(u=vp.tol["u"])
    assert vp.view_offset() <= 1.0 + 1e-9  # the budget is the worse of the two directions
    vp.set_pose_error(u=3 * vp.tol["u"])
    assert vp.view_offset() > 1.0 and vp.optimal_action() == "slide_left"
    vp.set_pose_error(w=1.5 * vp.tol["w"])
    _, truth = vp.render()
    assert truth["view_offset"] > 1.0 and not truth["at_target"] and truth["action"] == "slide_feet"
    assert "off_target" in truth["reasons"]
    vp.set_pose_error(w=1.5 * vp.tol["w"], fan=-1.0 * vp.tol["fan"])
    _, truth = vp.render()
    assert truth["view_offset"] <= 1.0 and truth["at_target"] and truth["action"] == "hold"
    assert "off_target" not in truth["reasons"]
    vp.reset_to_target()
    vp.set_pose(depth=vp.target["depth"] + 2 * vp.tol["depth"])
    _, truth = vp.render()
    assert vp.view_offset() == 0.0 and not truth["at_target"]  # same anatomy cut, the depth is off
    rng = np.random.default_rng(3)
    added_up = 0
    for _ in range(60):  # every component within 0.95 of its tolerance: the changes may add up
        vp.reset_to_target()
        vp.set_pose_error(**{c: float(rng.choice([-0.95, 0.95]) * vp.tol[c]) for c in ("u", "w", "rot", "fan", "rock")})
        if vp.view_offset() > 1.0:
            added_up += 1
            assert not vp.at_target() and vp.optimal_action() != "hold"
    assert added_up > 0


def test_policy_order_and_determinism():
    vp = VirtualPatient("liver", 0)
    t = vp.target
    vp.set_pose_error(u=20, rot=40)
    vp.set_pose(gain=10)
    assert vp.optimal_action() == "gain_down"  # the image's settings first
    vp.set_pose(gain=0)
    assert vp.optimal_action() == "slide_left"  # position before rotation; slides in the probe's frame
    vp.set_pose_error(rot=40)
    assert vp.optimal_action() == "rotate_cw"
    vp.set_pose_error()
    assert vp.pose["rot"] == t["rot"] and vp.pose["x"] == t["x"]
    vp.set_pose(gain=10)
    assert vp.optimal_action() == "gain_down"
    vp.apply_degradations({"contact": 0.0})
    assert vp.optimal_action() == "hold" and not vp.at_target()
    vp.move("hold")  # re-seat the probe
    assert vp.deg["contact"] == 1.0 and vp.optimal_action() == "gain_down"


def test_closed_loop_on_held_out_patients():
    n = ok = 0
    moves = []
    for preset in EXAMS:
        for seed in range(1000, 1007):
            vp = VirtualPatient(preset, seed)
            rng = np.random.default_rng(seed)
            for _ in range(3):
                vp.randomize_pose(rng)
                n += 1
                for k in range(41):
                    if vp.at_target():
                        ok += 1
                        moves.append(k)
                        break
                    vp.move(vp.optimal_action())
    assert n >= 50
    assert ok / n >= 0.95, (ok, n)
    # And the view it reaches is a good one.
    _, truth = vp.render()
    assert truth["quality"] >= 0.5 and truth["reasons"] == []


@pytest.mark.parametrize("preset", EXAMS)
def test_every_move_changes_the_image(preset):
    vp = VirtualPatient(preset, 2)
    a0, _ = vp.render()
    a1, _ = vp.render()
    fan = vp.region.mask > 0
    noise_only = np.abs(a0.astype(float) - a1)[fan].mean()
    for action in ACTIONS:
        if action == "hold":
            continue
        vp.reset_to_target()
        if action == "depth_down" and vp.pose["depth"] <= vp.probe.depth_min:
            continue
        base, _ = vp.render()
        vp.move(action)
        img, tr = vp.render()
        both = fan & (vp.region.mask > 0)
        d = np.abs(img.astype(float) - base)[both].mean()
        assert d > noise_only + 3, (action, d, noise_only)


def test_slides_are_in_the_probes_frame():
    vp = VirtualPatient("liver", 5)
    vp.set_pose(rot=vp.target["rot"] + 25)  # whatever the rotation, left/right slide along the image
    kidney = LABEL_INDEX["kidney"]

    def kidney_x():
        return np.argwhere(vp.render(return_mask=True)[2] == kidney).mean(0)[1]

    c0 = kidney_x()
    vp.move("slide_right")  # the probe 5 mm toward image right: the anatomy 5 mm to the left
    c1 = kidney_x()
    assert (c1 - c0) == pytest.approx(-STEP["u"] / vp.spacing_mm[1], abs=2.5)
    assert vp.pose_error()["u_mm"] == pytest.approx(5.0, abs=1e-6)
    vp.set_pose_error()  # at the target the kidney's long axis lies in the plane
    c2 = kidney_x()
    vp.move("slide_head")  # across the plane: the section changes, nothing shifts along the image
    assert kidney_x() == pytest.approx(c2, abs=2.5)
    assert vp.pose_error()["w_mm"] == pytest.approx(5.0, abs=1e-6) and vp.pose_error()["u_mm"] == pytest.approx(0.0, abs=1e-6)


def test_depth_and_gain_moves_are_visible():
    vp = VirtualPatient("thyroid", 1)
    img0, t0 = vp.render()
    vp.move("depth_up")
    _, t1 = vp.render()
    assert t1["spacing_mm"][0] > t0["spacing_mm"][0] and t1["depth_mm"] == t0["depth_mm"] + STEP["depth"]
    vp.move("depth_down")
    vp.move("gain_up")
    img2, _ = vp.render()
    fan = vp.region.mask > 0
    assert img2[fan].mean() > img0[fan].mean() + 4


# -- determinism and held-out patients -----------------------------------------------------------


def test_same_seed_same_frames_and_different_seeds_differ():
    def seq(seed, live=True):
        vp = VirtualPatient("cardiac", seed, live_speckle=live)
        out = []
        for a in ("slide_left", "rotate_cw", "gain_up"):
            vp.move(a)
            img, truth = vp.render()
            out.append((img, json.dumps(truth, sort_keys=True)))
        return out

    for live in (True, False):
        a, b = seq(7, live), seq(7, live)
        assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    c = seq(8)
    assert not np.array_equal(a[0][0], c[0][0])


@pytest.mark.parametrize("preset", EXAMS)
def test_held_out_patients_have_new_anatomy(preset):
    train = [VirtualPatient(preset, s).phantom for s in range(60)]
    held = [VirtualPatient(preset, s).phantom for s in range(1000, 1015)]
    keys = sorted(set.intersection(*(set(p.params) for p in train + held)))
    assert len(keys) >= 10
    X = np.array([[p.params[k] for k in keys] for p in train])
    Y = np.array([[p.params[k] for k in keys] for p in held])
    mu, sd = X.mean(0), X.std(0) + 1e-9
    X, Y = (X - mu) / sd, (Y - mu) / sd
    nn_train = np.sort(np.linalg.norm(X[:, None] - X[None], axis=2), axis=1)[:, 1]
    nn_held = np.linalg.norm(Y[:, None] - X[None], axis=2).min(1)
    # Held-out patients are as far from the training patients as those are from each other.
    assert nn_held.min() > 0.5 * np.median(nn_train)
    assert np.median(nn_held) > 0.7 * np.median(nn_train)


# -- findings and reports -----------------------------------------------------------------------


def test_findings_and_bilingual_report():
    hits = 0
    for seed in range(30):
        vp = VirtualPatient("liver", seed)
        _, truth = vp.render()
        f = truth["findings"]
        assert truth["report_en"].endswith(".") and truth["report_zh"].endswith("。")
        if not f["lesion_present"]:
            assert "No focal lesion" in truth["report_en"] and "未见" in truth["report_zh"]
            continue
        hits += 1
        les = truth["lesions_in_view"][0]
        assert f["echogenicity"] in ECHOGENICITY and f["margins"] in MARGINS and f["location"] in LOCATIONS
        assert 3.0 <= f["size_mm"] <= les["diameter_mm"] * 1.45 + 1.5
        assert f"{f['size_mm']:.0f} mm" in truth["report_en"] and f["echogenicity"] in truth["report_en"]
        zh_echo = {"anechoic": "无回声", "hypoechoic": "低回声", "isoechoic": "等回声", "hyperechoic": "高回声"}[f["echogenicity"]]
        assert zh_echo in truth["report_zh"]
    assert 5 <= hits <= 25  # lesions are common but not universal in the target view


def test_structures_follow_the_view():
    vp = VirtualPatient("liver", 3)
    _, t = vp.render()
    assert {"liver", "kidney"} <= set(t["findings"]["structures"])
    vp.apply_degradations({"contact": 0.0})
    _, t = vp.render()
    assert t["findings"]["structures"] == [] and not t["findings"]["lesion_present"]
    vp = VirtualPatient("thyroid", 3)
    _, t = vp.render()
    assert {"thyroid", "vessel"} <= set(t["findings"]["structures"])
    vp = VirtualPatient("cardiac", 3)
    _, t = vp.render()
    assert "heart" in t["findings"]["structures"]


# -- parameters and speed ------------------------------------------------------------------------


def test_bad_parameters_are_one_line_errors():
    cases = [
        lambda: VirtualPatient("spleen", 1),
        lambda: VirtualPatient("liver", -1),
        lambda: VirtualPatient("liver", 1, probe="convex"),
        lambda: VirtualPatient("liver", 1, image_size=(8, 8)),
        lambda: VirtualPatient("thyroid", 1).apply_degradations({"depth_mm": 200}),
        lambda: VirtualPatient("liver", 1).apply_degradations({"bogus": 1}),
        lambda: VirtualPatient("liver", 1).move("jump"),
    ]
    for make in cases:
        with pytest.raises(SimError) as exc:
            make()
        assert isinstance(exc.value, SourceError) and isinstance(exc.value, EdgeAssistError)
        assert "\n" not in str(exc.value)


def test_render_speed_live():
    prev = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for preset in EXAMS:
            vp = VirtualPatient(preset, 1)
            vp.render()
            ts = []
            for i in range(30):
                vp.move(("slide_left", "slide_right")[i % 2])  # full render every frame
                t = time.perf_counter_ns()
                vp.render()
                ts.append(time.perf_counter_ns() - t)
            fps = 1e9 / np.median(ts)
            print(f"{preset}: {fps:.0f} frames/s moving")
            assert fps >= 15  # target >= 50 on one core (measured ~130); the test machine may be shared and loaded
    finally:
        cv2.setNumThreads(prev)


def test_target_view_tolerances_are_the_measured_ones():
    from edge_assist.sim.patient import STEP, TOL, TOLERANCES
    from edge_assist.sim.tolerance import OUT_OF_PLANE, measure_tolerances

    # Measured on the phantoms of 2026-11-30. Since the gallbladder moved within reach of the liver's
    # target view (2026-12-01) the liver fan measures 5.5 deg; the table keeps 6.0 until the next full
    # retrain, since it sets the expert's order of corrections, on which the committed models were
    # trained (the target view itself is judged by view_offset, not by these; sim/README.md).
    drift = {("liver", "fan"): (6.0, 5.5)}
    for preset in ("liver", "thyroid", "cardiac"):
        measured = measure_tolerances(preset, range(1000, 1012))
        for k, v in measured.items():
            table, now = drift.get((preset, k), (TOLERANCES[preset][k], TOLERANCES[preset][k]))
            assert TOLERANCES[preset][k] == table and v == now, (preset, k, v)
        for k in OUT_OF_PLANE:
            assert 0.6 * STEP[k] <= TOLERANCES[preset][k] <= 2 * TOL[k]
    # the measurement itself: no change at the target, more with a larger error
    from edge_assist.sim.tolerance import view_change

    vp = VirtualPatient("liver", 1000, image_size=(64, 64))
    ref = vp.view_tissues()
    assert view_change(vp, ref) == 0.0
    assert 0.0 < view_change(vp, ref, fan=3.0) < view_change(vp, ref, fan=12.0)
