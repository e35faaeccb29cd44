"""Draft sentences built ONLY from structured findings (never free text).

English and Chinese templates share one controlled lexicon so that the
sentence can never say more than the findings do.
"""

from __future__ import annotations

STRUCTURE_EN = {
    "liver": "liver", "kidney": "kidney", "gallbladder": "gallbladder", "vessel": "vessel",
    "thyroid": "thyroid", "heart": "heart", "rib": "rib", "muscle": "muscle",
}
STRUCTURE_ZH = {
    "liver": "肝脏", "kidney": "肾脏", "gallbladder": "胆囊", "vessel": "血管",
    "thyroid": "甲状腺", "heart": "心脏", "rib": "肋骨", "muscle": "肌肉",
}
ECHO_ZH = {"anechoic": "无回声", "hypoechoic": "低回声", "isoechoic": "等回声", "hyperechoic": "高回声"}
MARGIN_EN = {"circumscribed": "circumscribed margins", "irregular": "irregular margins"}
MARGIN_ZH = {"circumscribed": "边界清晰", "irregular": "边界不规则"}
LOCATION_EN = {"near_field": "near field", "mid_field": "mid field", "far_field": "far field"}
LOCATION_ZH = {"near_field": "近场", "mid_field": "中场", "far_field": "远场"}


def _join_en(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(phrase: str) -> str:
    """'An' before a vowel sound: 'an 8 mm', 'an 11 mm', 'an anechoic'."""
    first = phrase.split()[0]
    spoken_vowel = first[0] in "aeiou" or first.startswith(("8", "11", "18"))
    return "An" if spoken_vowel else "A"


def sentence_en(structures, lesion_present, size_mm=None, echogenicity=None, margins=None, location=None) -> str:
    parts = []
    names = [STRUCTURE_EN.get(s, s) for s in structures]
    if names:
        s = _join_en(names)
        parts.append(s[0].upper() + s[1:] + " in view.")
    else:
        parts.append("No named structure in view.")
    if lesion_present:
        desc = []
        if size_mm is not None:
            desc.append(f"{size_mm:.0f} mm")
        if echogenicity:
            desc.append(echogenicity)
        noun = " ".join(desc + ["lesion"])
        text = f"{_article(noun)} {noun}"
        if margins:
            text += f" with {MARGIN_EN.get(margins, margins)}"
        if location:
            text += f" in the {LOCATION_EN.get(location, location)}"
        parts.append(text + ".")
    else:
        parts.append("No focal lesion seen.")
    return " ".join(parts)


def sentence_zh(structures, lesion_present, size_mm=None, echogenicity=None, margins=None, location=None) -> str:
    names = [STRUCTURE_ZH.get(s, s) for s in structures]
    out = ("可见" + "、".join(names) + "。") if names else "未见明确结构。"
    if lesion_present:
        where = LOCATION_ZH.get(location, "") if location else ""
        size = f"约{size_mm:.0f}毫米的" if size_mm is not None else ""
        echo = ECHO_ZH.get(echogenicity, "") if echogenicity else ""
        margin = ("，" + MARGIN_ZH[margins]) if margins in MARGIN_ZH else ""
        out += f"{where}见一{size}{echo}病灶{margin}。"
    else:
        out += "未见局灶性病变。"
    return out
