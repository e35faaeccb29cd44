"""The controlled vocabularies shared by the simulator, the heads, training
and the UI. Changing an order here changes model outputs: bump the model
version in engines/manifest.json when you do."""

# Probe moves (guidance head classes), in the order of the head's outputs.
# They are in the probe's frame: left/right along the image's lateral axis;
# head/feet across the image plane, toward the probe's head or feet side (the
# side fan_toward leans the beam to; cranial/caudal in a transverse view).
ACTIONS = (
    "slide_left",  # toward image left
    "slide_right",
    "slide_head",  # across the plane, toward the head side
    "slide_feet",
    "rotate_cw",
    "rotate_ccw",
    "fan_toward",  # tilt the beam toward the marker side / cranial
    "fan_away",
    "rock_left",  # in-plane tilt
    "rock_right",
    "depth_up",  # more depth
    "depth_down",
    "gain_up",
    "gain_down",
    "hold",
)

# Each move's reverse: the moves come in pairs (2k, 2k + 1); hold has none.
REVERSE_ACTION = {a: ACTIONS[i ^ 1] for i, a in enumerate(ACTIONS) if a != "hold"}

ACTION_TEXT = {
    "slide_left": "Slide toward image left",
    "slide_right": "Slide toward image right",
    "slide_head": "Slide across the plane, toward the head side",
    "slide_feet": "Slide across the plane, toward the feet side",
    "rotate_cw": "Rotate clockwise",
    "rotate_ccw": "Rotate counter-clockwise",
    "fan_toward": "Fan toward the head",
    "fan_away": "Fan toward the feet",
    "rock_left": "Rock left",
    "rock_right": "Rock right",
    "depth_up": "Increase depth",
    "depth_down": "Decrease depth",
    "gain_up": "Increase gain",
    "gain_down": "Decrease gain",
    "hold": "Hold still – good view",
}

# Quality reason flags (multi-label), in the order of the head's outputs.
QUALITY_REASONS = (
    "no_contact",
    "partial_contact",
    "shadowing",
    "gain_high",
    "gain_low",
    "depth",  # too shallow or too deep for the target
    "blur",  # motion blur / persistence
    "noise",
    "off_target",
)

REASON_TEXT = {
    "no_contact": "No contact – apply gel and place the probe on the skin",
    "partial_contact": "Partial contact – add gel or press evenly",
    "shadowing": "Shadowing – move off the rib or bowel gas",
    "gain_high": "Gain too high – reduce gain",
    "gain_low": "Gain too low – increase gain",
    "depth": "Depth not suited to the target – adjust depth",
    "blur": "Motion blur – hold the probe steady",
    "noise": "Noisy image – check gain and contact",
    "off_target": "Target not in view – follow the arrow",
}

# Interpreter vocabularies (RadLex-style terms).
STRUCTURES = ("liver", "kidney", "gallbladder", "vessel", "thyroid", "heart", "rib", "muscle")
ECHOGENICITY = ("anechoic", "hypoechoic", "isoechoic", "hyperechoic")
MARGINS = ("circumscribed", "irregular")
LOCATIONS = ("near_field", "mid_field", "far_field")  # depth third of the image

QUALITY_THRESHOLD = 0.5  # below this the interpreter abstains
ABSTAIN_TEXT = "Image quality insufficient for interpretation."
ABSTAIN_TEXT_ZH = "图像质量不足，无法判读。"
