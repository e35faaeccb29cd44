"""The heads (quality, guidance, interpreter and the optional lesion head):
run a backend and decode its raw outputs into typed results."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_assist import lexicon
from edge_assist.backends import InferenceBackend, open_backend
from edge_assist.errors import BackendError, ManifestError
from edge_assist.frames import Finding, GuidanceResult, InterpreterResult, QualityResult, ScanRegion
from edge_assist.guidance_memory import one_hot
from edge_assist.lesion_crop import CropBox, box_from_measurement, cut, depth_fraction, depth_third
from edge_assist.lesion_measure import lesion_size_frac, measure_on_mask
from edge_assist.manifest import HeadSpec, Manifest
from edge_assist.preprocess import Preprocessor
from edge_assist.vocab import ABSTAIN_TEXT, ABSTAIN_TEXT_ZH, QUALITY_THRESHOLD


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = x / max(temperature, 1e-6)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


class Head:
    """A backend plus its manifest entry; checks that the two agree."""

    def __init__(self, spec: HeadSpec, backend: InferenceBackend):
        self.spec = spec
        self.backend = backend
        ins = {i.name: i for i in backend.inputs}
        want = spec.input_name
        wanted = [want] + ([spec.action_input] if spec.action_input else [])
        if sorted(ins) != sorted(wanted):
            raise ManifestError(
                f"{spec.path.name} does not match its manifest: it takes {[i.describe() for i in backend.inputs]}, "
                f"the manifest says {wanted}; re-export it with `edge-assist export`"
            )
        if spec.action_input and ins[spec.action_input].shape[-1:] != (len(spec.labels.get("actions", [])),):
            raise ManifestError(
                f"{spec.path.name} does not match its manifest: {spec.action_input} is {ins[spec.action_input].shape}, "
                f"one value per action expected; re-export it"
            )
        got = ins[want].shape
        if len(got) != len(spec.input_shape) or any(g is not None and g != w for g, w in zip(got, spec.input_shape)):
            raise ManifestError(
                f"{spec.path.name} does not match its manifest: input shape {got} vs {spec.input_shape}; re-export it"
            )
        outs = {o.name for o in backend.outputs}
        missing = [n for n in spec.outputs.values() if n not in outs]
        if missing:
            raise ManifestError(f"{spec.path.name} does not match its manifest: outputs {missing} are missing; re-export it")

    def run(self, tensor: np.ndarray, action: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Raw outputs by role. `action`: the previous-move one-hot of a
        guidance head with memory (zeros when not given)."""
        feed = {self.spec.input_name: tensor}
        if self.spec.action_input:
            feed[self.spec.action_input] = action if action is not None else one_hot(None)
        raw = self.backend.infer(feed)
        return {role: raw[name] for role, name in self.spec.outputs.items()}

    def close(self) -> None:
        self.backend.close()


# Quality and guidance are decoded on every frame from a handful of values:
# plain floats cost a tenth of numpy's per-call overhead there (~50 us a head).
def _sigmoid_floats(values: list[float]) -> list[float]:
    return [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in values]


def _softmax_floats(values: list[float], temperature: float = 1.0) -> list[float]:
    t = max(temperature, 1e-6)
    top = max(values)
    e = [math.exp((v - top) / t) for v in values]
    total = sum(e)
    return [v / total for v in e]


def decode_quality(spec: HeadSpec, out: dict[str, np.ndarray]) -> QualityResult:
    score = min(max(float(np.asarray(out["score"]).flat[0]), 0.0), 1.0)
    labels = spec.labels.get("reasons", [])
    probs = _sigmoid_floats(np.asarray(out["reasons"]).ravel().tolist())
    thr = float(spec.decode.get("reason_threshold", 0.5))
    reason_probs = dict(zip(labels, probs))
    active = sorted((n for n, p in reason_probs.items() if p >= thr), key=lambda n: -reason_probs[n])
    return QualityResult(score=score, reasons=active, reason_probs=reason_probs)


def decode_guidance(spec: HeadSpec, out: dict[str, np.ndarray]) -> GuidanceResult:
    labels = spec.labels["actions"]
    probs = _softmax_floats(np.asarray(out["logits"]).ravel().tolist(), float(spec.decode.get("temperature", 1.0)))
    i = max(range(len(probs)), key=probs.__getitem__)
    return GuidanceResult(action=labels[i], confidence=probs[i], probs=dict(zip(labels, probs)))


@dataclass(frozen=True)
class LesionLook:
    """The lesion head's reading of one crop (decode_lesion)."""

    echo_probs: np.ndarray
    margin_probs: np.ndarray
    size_mm: float | None  # long axis measured on its mask; None when the mask shows nothing or spacing is unknown
    outline: tuple[tuple[float, float], ...]  # what was measured, [x, y] fractions of the scan region
    location: str | None = None  # the depth third of its mask's centre; None when the mask shows nothing


def lesion_probability(spec: HeadSpec, out: dict[str, np.ndarray]) -> float:
    """p(lesion) from the interpreter's raw outputs, with its fitted temperature."""
    return float(_sigmoid(np.asarray(out["lesion"], dtype=np.float64).reshape(-1)[0] / float(spec.decode.get("temperature", 1.0))))


def lesion_decided(spec: HeadSpec, out: dict[str, np.ndarray]) -> bool:
    """Whether the interpreter's raw outputs report a lesion (its decode's rule)."""
    return lesion_probability(spec, out) >= float(spec.decode.get("lesion_threshold", 0.5))


def lesion_box(spec: HeadSpec, interp_mask: np.ndarray | None, region_hw: tuple[int, int]) -> CropBox | None:
    """Where the lesion head looks: around the region the interpreter's mask
    shows (at the lesion head's box threshold), in scan-region pixels."""
    if interp_mask is None:
        return None
    dec = spec.decode
    m = measure_on_mask(interp_mask, threshold=float(dec.get("box_threshold", 0.1)), min_cells=1, with_outline=False)
    if m is None:
        return None
    return box_from_measurement(m.centre, m.extent, region_hw, context=float(dec.get("context", 2.5)),
                                min_side=float(dec.get("min_side_px", 24)))


def decode_lesion(spec: HeadSpec, out: dict[str, np.ndarray], box: CropBox, region_hw: tuple[int, int],
                  spacing_mm: tuple[float, float] | None, fan_mask: np.ndarray | None = None) -> LesionLook:
    """Echogenicity and margins probabilities, and the lesion measured on the
    head's mask: its long axis in mm (with the source's row spacing) and the
    depth third its centre lies in (on the scan region's depth scale)."""
    temp = float(spec.decode.get("temperature", 1.0))
    echo = _softmax(np.asarray(out["echogenicity"], dtype=np.float64).reshape(-1), temp)
    margins = _softmax(np.asarray(out["margins"], dtype=np.float64).reshape(-1), temp)
    m = measure_on_mask(out["mask"])
    size_mm, outline, location = None, (), None
    if m is not None:
        x0, y0, side = box.grid()
        h, w = region_hw
        outline = tuple((round((x0 + fx * side) / w, 4), round((y0 + fy * side) / h, 4)) for fx, fy in m.outline)
        location = depth_third(depth_fraction(y0 + m.centre[1] * side, region_hw, fan_mask))
        if spacing_mm is not None:
            size_mm = round(m.extent * side * float(spacing_mm[0]), 1)
    return LesionLook(echo, margins, size_mm, outline, location)


def structure_thresholds(decode: dict, names) -> list[float]:
    """The interpreter's threshold for each structure of `names`: the manifest's
    decode.structure_thresholds where it fits one per structure, else
    decode.structure_threshold (0.5)."""
    shared = float(decode.get("structure_threshold", 0.5))
    own = decode.get("structure_thresholds") or {}
    return [float(own.get(n, shared)) for n in names]


def decode_interpreter(
    spec: HeadSpec,
    out: dict[str, np.ndarray],
    *,
    frame_index: int,
    quality: QualityResult,
    mm_per_px: tuple[float, float] | None,
    input_hw: tuple[int, int],
    look: LesionLook | None = None,
) -> InterpreterResult:
    """Findings and a template sentence; abstains below the quality threshold.
    With the lesion head's look, its echogenicity and margins (and its size
    where it measured one) replace the interpreter's."""
    q_thr = float(spec.decode.get("quality_threshold", QUALITY_THRESHOLD))
    if quality.score < q_thr:
        return InterpreterResult(frame_index, True, ABSTAIN_TEXT, None, ABSTAIN_TEXT_ZH)
    lab = spec.labels
    temp = float(spec.decode.get("temperature", 1.0))  # fitted on held-out data (calibration)
    s_probs = _sigmoid(np.asarray(out["structures"], dtype=np.float64).reshape(-1) / temp)
    structures = [n for n, p, t in zip(lab["structures"], s_probs, structure_thresholds(spec.decode, lab["structures"])) if p >= t]
    p_lesion = lesion_probability(spec, out)
    lesion = lesion_decided(spec, out)
    size_mm = echo = margins = location = None
    measurement = None
    confs = [max(p_lesion, 1 - p_lesion)] + [max(p, 1 - p) for p in s_probs]
    outline = None
    if lesion:
        def pick(probs, names):
            i = int(np.argmax(probs))
            confs.append(float(probs[i]))
            return names[i]

        def own(role):
            return _softmax(np.asarray(out[role], dtype=np.float64).reshape(-1), temp)

        echo = pick(look.echo_probs if look else own("echogenicity"), lab["echogenicity"])
        margins = pick(look.margin_probs if look else own("margins"), lab["margins"])
        if look is not None and look.location in lab["locations"]:
            location = look.location  # where its mask lies, not a guess from the whole frame
        else:
            location = pick(own("location"), lab["locations"])
        if look is not None and look.size_mm is not None:
            size_mm, outline = look.size_mm, [list(pt) for pt in look.outline]
        else:
            # Size as a fraction of the input height: measured on the lesion mask
            # when the model has one and it shows the lesion, else regressed. mm
            # only when the source told us the pixel spacing — never invented.
            frac, measurement = lesion_size_frac(float(np.asarray(out["size"]).reshape(-1)[0]), out.get("mask"))
            if mm_per_px is not None and frac > 0:
                size_mm = round(frac * input_hw[0] * mm_per_px[0], 1)
            if size_mm is not None and measurement is not None:
                outline = [list(pt) for pt in measurement.outline]
    # Joint confidence: the weakest of the decisions the sentence rests on.
    confidence = float(min(confs))
    finding = Finding(structures, lesion, p_lesion, size_mm, echo, margins, location, confidence, size_measured=outline is not None,
                      lesion_outline=outline, second_look=bool(lesion and look is not None))
    kw = dict(structures=structures, lesion_present=lesion, size_mm=size_mm, echogenicity=echo, margins=margins, location=location)
    return InterpreterResult(frame_index, False, lexicon.sentence_en(**kw), finding, lexicon.sentence_zh(**kw))


class HeadSet:
    """The heads of a manifest for one backend and precision. A context manager."""

    def __init__(self, manifest: Manifest, backend: str = "ort", precision: str = "fp32", **backend_options):
        self.manifest = manifest
        self.backend_name = backend
        self.precision = precision
        self.heads: dict[str, Head] = {}
        try:
            for name, spec in manifest.heads.items():
                path = self._path(spec)
                opts = dict(backend_options)
                if backend == "trt":
                    # TensorRT builds an engine per precision: INT8 from the QDQ model.
                    opts["precision"] = "int8" if path == spec.int8_path else ("fp16" if precision == "fp16" else "fp32")
                elif precision == "fp16":
                    raise BackendError("fp16 needs the TensorRT backend (--backend trt); ONNX Runtime here runs fp32 or int8")
                self.heads[name] = Head(spec, open_backend(backend, path, **opts))
        except BaseException:
            self.close()
            raise

    def _path(self, spec: HeadSpec):
        # INT8 is kept only for heads where it was faster and as accurate
        # (see `edge-assist calibrate`); the others stay FP32.
        if self.precision == "int8" and spec.int8_path is not None:
            return spec.int8_path
        return spec.path

    @property
    def input_size(self) -> tuple[int, int]:
        return self.manifest.input_size

    def preprocessor(self) -> Preprocessor:
        """A new Preprocessor for these heads' input, normalised as the manifest says."""
        pre = self.manifest.preprocess
        return Preprocessor(size=self.input_size, mean=float(pre.get("mean", 0.0)), std=float(pre.get("std", 1.0)))

    def frames_for(self, name: str) -> int:
        return self.heads[name].spec.frames

    def quality(self, tensor: np.ndarray) -> QualityResult:
        h = self.heads["quality"]
        return decode_quality(h.spec, h.run(tensor))

    def has_memory(self, name: str = "guidance") -> bool:
        return self.heads[name].spec.action_input is not None

    def guidance(self, tensor: np.ndarray, action: np.ndarray | None = None) -> GuidanceResult:
        """tensor [1, frames, H, W]; action: the previous move's one-hot for a
        head with memory (edge_assist.guidance_memory), ignored otherwise."""
        h = self.heads["guidance"]
        return decode_guidance(h.spec, h.run(tensor, action))

    def has_move_check(self) -> bool:
        return "move_check" in self.heads

    def move_check(self, before: np.ndarray, after: np.ndarray, move: str) -> float:
        """The probability that `move`, made between the preprocessed frames
        `before` and `after` ([1, 1, H, W] each), brought the pose component it
        changes closer to the target view (edge_assist.move_check)."""
        h = self.heads["move_check"]
        logits = np.asarray(h.run(np.concatenate([before, after], axis=1))["better"], dtype=np.float64).reshape(-1)
        return float(_sigmoid(logits[h.spec.labels["actions"].index(move)]))

    def interpreter(self, tensor, *, frame_index, quality, mm_per_px, run_always: bool = False,
                    source: tuple[np.ndarray, ScanRegion] | None = None) -> InterpreterResult:
        """Findings, or an abstention below the manifest's quality gate.
        run_always (benchmarks) runs the model below the gate too, for its
        cost; the result still abstains there. source: the frame's pixels and
        its scan region, for the lesion head's second look (when the manifest
        has one and a lesion is reported)."""
        h = self.heads["interpreter"]
        gate = float(h.spec.decode.get("quality_threshold", QUALITY_THRESHOLD))
        if quality.score < gate and not run_always:
            # Abstain without spending the time to run the model.
            return decode_interpreter(h.spec, {}, frame_index=frame_index, quality=quality, mm_per_px=mm_per_px, input_hw=self.input_size)
        out = h.run(tensor)
        look = None
        if source is not None and quality.score >= gate and lesion_decided(h.spec, out):
            look = self.lesion_look(out.get("mask"), *source)
        return decode_interpreter(h.spec, out, frame_index=frame_index, quality=quality, mm_per_px=mm_per_px,
                                  input_hw=self.input_size, look=look)

    def lesion_look(self, interp_mask: np.ndarray | None, pixels: np.ndarray, region: ScanRegion) -> LesionLook | None:
        """The lesion head's reading around the lesion the interpreter's mask
        shows, cut from the frame at its own resolution; None without a lesion
        head or when the mask shows no region."""
        h = self.heads.get("lesion")
        if h is None:
            return None
        x0, y0, x1, y1 = region.box
        view = pixels[max(0, y0) : y1, max(0, x0) : x1]
        box = lesion_box(h.spec, interp_mask, view.shape[:2])
        if box is None:
            return None
        pre = self.manifest.preprocess
        crop = cut(view, box, size=int(h.spec.input_shape[-1])).astype(np.float32)
        tensor = ((crop / 255.0 - float(pre.get("mean", 0.0))) / float(pre.get("std", 1.0))).reshape(h.spec.input_shape)
        fan = region.mask if region.mask is not None and region.mask.shape[:2] == view.shape[:2] else None
        return decode_lesion(h.spec, h.run(tensor.astype(np.float32)), box, view.shape[:2], region.spacing_mm, fan)

    def model_info(self) -> dict:
        return {n: {"file": self._path(h.spec).name, "version": h.spec.version} for n, h in self.heads.items()}

    def close(self) -> None:
        for h in self.heads.values():
            h.close()
        self.heads = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
