"""edge-assist: an on-device, real-time ultrasound scanning assistant.

A research and training tool, not a diagnostic device.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "edge-assist is a research and training tool, not a medical device: "
    "its output must not be used for diagnosis."
)
