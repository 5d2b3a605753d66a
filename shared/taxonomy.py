"""The apparel taxonomy shared by training, services and evaluation.

Three layers, after Tran et al., "Searching for Apparel Products from Images in
the Wild" (2019):

* high-level classes, which the detector finds (plus ``person``);
* fine-grained classes under each high-level class, which the per-category
  classifier predicts and which, split by gender, name the search indices;
* attributes (colour, usage, pattern, season) predicted by extra classifier heads.

Every label of the three bundled datasets is mapped here, either to a class or
to ``Ignored`` with the reason, so that no label is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# High-level classes in the order the detector outputs them. ``earring`` and
# ``swimsuit`` belong to the taxonomy but have no detector output: the street
# photos contain one earring photo and no swimwear, too few to learn from.
HIGH_LEVEL_CLASSES: tuple[str, ...] = (
    "headwear", "eyewear", "earring", "belt", "bottom", "dress", "top", "suit",
    "tie", "footwear", "swimsuit", "bag", "wristwear", "scarf", "necklace",
    "one-piece",
)
PERSON = "person"
DETECTOR_CLASSES: tuple[str, ...] = tuple(
    c for c in HIGH_LEVEL_CLASSES if c not in ("earring", "swimsuit")
) + (PERSON,)

# Fine-grained classes per high-level class. Only classes with at least ten
# catalog products are listed, because a class the catalog barely covers can
# neither be learned nor searched.
FINE_CLASSES: dict[str, tuple[str, ...]] = {
    "top": ("tshirt", "shirt", "top", "tunic", "kurta", "sweater", "sweatshirt", "jacket"),
    "bottom": ("jeans", "trousers", "track pants", "shorts", "skirt", "leggings", "capris"),
    "footwear": ("casual shoes", "sports shoes", "formal shoes", "heels", "flats", "sandals", "flip flops"),
    "bag": ("handbag", "backpack", "clutch", "wallet", "laptop bag", "duffel bag", "pouch"),
    "eyewear": ("sunglasses",),
    "wristwear": ("watch",),
    "headwear": ("cap",),
    "belt": ("belt",),
    "dress": ("dress",),
    "tie": ("tie",),
    "scarf": ("scarf", "muffler"),
}

# High-level classes that have a trained classifier (and so are searchable).
CLASSIFIER_CATEGORIES: tuple[str, ...] = (
    "top", "bottom", "footwear", "bag", "eyewear", "wristwear", "headwear", "belt", "dress", "tie", "scarf",
)

GENDERS: tuple[str, ...] = ("men", "women", "boys", "girls", "unisex")
WEARER_CLASSES: tuple[str, ...] = ("man", "woman", "boy", "girl")
WEARER_TO_GENDER: dict[str, str] = {"man": "men", "woman": "women", "boy": "boys", "girl": "girls"}


@dataclass(frozen=True)
class Ignored:
    """A dataset label that maps to no class, with the reason."""

    reason: str


@dataclass(frozen=True)
class StreetLabel:
    """The target of a street-photo label: its high-level class and, when the
    label names one product type, its fine class (``None`` when it is ambiguous)."""

    high_level: str
    fine: str | None = None


# --- clothing-co-parsing: 59 pixel labels -----------------------------------

_BODY = Ignored("body part or background, not a product")
_HOSIERY = Ignored("hosiery: no high-level class covers it")
_INNERWEAR = Ignored("innerwear: not a search target")

CCP_LABELS: dict[str, StreetLabel | Ignored] = {
    "null": _BODY,
    "skin": _BODY,
    "hair": _BODY,
    "accessories": Ignored("unspecified accessory: the label names no product type"),
    "gloves": Ignored("gloves: no high-level class covers them"),
    "ring": Ignored("ring: no high-level class covers it"),
    "socks": _HOSIERY,
    "stockings": _HOSIERY,
    "tights": _HOSIERY,
    "intimate": _INNERWEAR,
    "panties": _INNERWEAR,
    "bra": _INNERWEAR,
    "bag": StreetLabel("bag"),
    "purse": StreetLabel("bag", "handbag"),
    "wallet": StreetLabel("bag", "wallet"),
    "belt": StreetLabel("belt", "belt"),
    "blazer": StreetLabel("top", "jacket"),
    "coat": StreetLabel("top", "jacket"),
    "jacket": StreetLabel("top", "jacket"),
    "cape": StreetLabel("top", "jacket"),
    "blouse": StreetLabel("top", "top"),
    "top": StreetLabel("top", "top"),
    "vest": StreetLabel("top", "top"),
    "shirt": StreetLabel("top", "shirt"),
    "t-shirt": StreetLabel("top", "tshirt"),
    "sweater": StreetLabel("top", "sweater"),
    "cardigan": StreetLabel("top", "sweater"),
    "jumper": StreetLabel("top", "sweater"),
    "sweatshirt": StreetLabel("top", "sweatshirt"),
    "hoodie": StreetLabel("top", "sweatshirt"),
    "jeans": StreetLabel("bottom", "jeans"),
    "pants": StreetLabel("bottom"),
    "shorts": StreetLabel("bottom", "shorts"),
    "skirt": StreetLabel("bottom", "skirt"),
    "leggings": StreetLabel("bottom", "leggings"),
    "dress": StreetLabel("dress", "dress"),
    "suit": StreetLabel("suit"),
    "romper": StreetLabel("one-piece"),
    "bodysuit": StreetLabel("one-piece"),
    "swimwear": StreetLabel("swimsuit"),
    "tie": StreetLabel("tie", "tie"),
    "scarf": StreetLabel("scarf", "scarf"),
    "necklace": StreetLabel("necklace"),
    "earrings": StreetLabel("earring"),
    "bracelet": StreetLabel("wristwear"),
    "watch": StreetLabel("wristwear", "watch"),
    "hat": StreetLabel("headwear"),
    "glasses": StreetLabel("eyewear"),
    "sunglasses": StreetLabel("eyewear", "sunglasses"),
    "shoes": StreetLabel("footwear"),
    "boots": StreetLabel("footwear"),
    "sneakers": StreetLabel("footwear"),
    "loafers": StreetLabel("footwear"),
    "clogs": StreetLabel("footwear"),
    "heels": StreetLabel("footwear", "heels"),
    "pumps": StreetLabel("footwear", "heels"),
    "wedges": StreetLabel("footwear", "heels"),
    "flats": StreetLabel("footwear", "flats"),
    "sandals": StreetLabel("footwear", "sandals"),
}

# --- colorful-fashion: 10 box labels ----------------------------------------

COLORFUL_LABELS: dict[str, StreetLabel | Ignored] = {
    "shoe": StreetLabel("footwear"),
    "shirt": StreetLabel("top"),
    "jacket": StreetLabel("top", "jacket"),
    "bag": StreetLabel("bag"),
    "skirt": StreetLabel("bottom", "skirt"),
    "pants": StreetLabel("bottom"),
    "shorts": StreetLabel("bottom", "shorts"),
    "dress": StreetLabel("dress", "dress"),
    "sunglass": StreetLabel("eyewear", "sunglasses"),
    "hat": StreetLabel("headwear"),
}

# --- fashion-product-images: 79 article types --------------------------------


@dataclass(frozen=True)
class CatalogType:
    """The target of a catalog ``articleType``: high-level and fine class."""

    high_level: str
    fine: str


_FEW = "fewer than ten catalog products, too few to learn or search"
_NOT_APPAREL = Ignored("not apparel: outside the search's scope")

CATALOG_TYPES: dict[str, CatalogType | Ignored] = {
    "Tshirts": CatalogType("top", "tshirt"),
    "Shirts": CatalogType("top", "shirt"),
    "Tops": CatalogType("top", "top"),
    "Tunics": CatalogType("top", "tunic"),
    "Kurtas": CatalogType("top", "kurta"),
    "Kurtis": CatalogType("top", "kurta"),
    "Kurta Sets": CatalogType("top", "kurta"),
    "Sweaters": CatalogType("top", "sweater"),
    "Shrug": CatalogType("top", "sweater"),
    "Sweatshirts": CatalogType("top", "sweatshirt"),
    "Jackets": CatalogType("top", "jacket"),
    "Waistcoat": CatalogType("top", "jacket"),
    "Jeans": CatalogType("bottom", "jeans"),
    "Trousers": CatalogType("bottom", "trousers"),
    "Track Pants": CatalogType("bottom", "track pants"),
    "Tracksuits": CatalogType("bottom", "track pants"),
    "Lounge Pants": CatalogType("bottom", "track pants"),
    "Shorts": CatalogType("bottom", "shorts"),
    "Lounge Shorts": CatalogType("bottom", "shorts"),
    "Skirts": CatalogType("bottom", "skirt"),
    "Leggings": CatalogType("bottom", "leggings"),
    "Churidar": CatalogType("bottom", "leggings"),
    "Capris": CatalogType("bottom", "capris"),
    "Dresses": CatalogType("dress", "dress"),
    "Casual Shoes": CatalogType("footwear", "casual shoes"),
    "Sports Shoes": CatalogType("footwear", "sports shoes"),
    "Formal Shoes": CatalogType("footwear", "formal shoes"),
    "Heels": CatalogType("footwear", "heels"),
    "Flats": CatalogType("footwear", "flats"),
    "Sandals": CatalogType("footwear", "sandals"),
    "Sports Sandals": CatalogType("footwear", "sandals"),
    "Flip Flops": CatalogType("footwear", "flip flops"),
    "Handbags": CatalogType("bag", "handbag"),
    "Backpacks": CatalogType("bag", "backpack"),
    "Rucksacks": CatalogType("bag", "backpack"),
    "Clutches": CatalogType("bag", "clutch"),
    "Wallets": CatalogType("bag", "wallet"),
    "Laptop Bag": CatalogType("bag", "laptop bag"),
    "Messenger Bag": CatalogType("bag", "laptop bag"),
    "Duffel Bag": CatalogType("bag", "duffel bag"),
    "Mobile Pouch": CatalogType("bag", "pouch"),
    "Waist Pouch": CatalogType("bag", "pouch"),
    "Sunglasses": CatalogType("eyewear", "sunglasses"),
    "Watches": CatalogType("wristwear", "watch"),
    "Caps": CatalogType("headwear", "cap"),
    "Hat": CatalogType("headwear", "cap"),
    "Belts": CatalogType("belt", "belt"),
    "Ties": CatalogType("tie", "tie"),
    "Scarves": CatalogType("scarf", "scarf"),
    "Stoles": CatalogType("scarf", "scarf"),
    "Dupatta": CatalogType("scarf", "scarf"),
    "Mufflers": CatalogType("scarf", "muffler"),
    "Headband": Ignored(_FEW),
    "Bracelet": Ignored(_FEW),
    "Necklace and Chains": Ignored(_FEW),
    "Sarees": Ignored(_FEW),
    "Gloves": Ignored("gloves: no high-level class covers them"),
    "Cufflinks": Ignored("cufflinks: no high-level class covers them"),
    "Socks": _HOSIERY,
    "Stockings": _HOSIERY,
    "Tights": _HOSIERY,
    "Shoe Accessories": Ignored("shoe accessory: not worn, so never in a street photo"),
    "Umbrellas": Ignored("umbrella: not apparel"),
    "Travel Accessory": Ignored("travel accessory: not apparel"),
    "Accessory Gift Set": Ignored("gift set of mixed items: no single product type"),
    "Boxers": _INNERWEAR,
    "Bra": _INNERWEAR,
    "Briefs": _INNERWEAR,
    "Innerwear Vests": _INNERWEAR,
    "Trunk": _INNERWEAR,
    "Free Gifts": _NOT_APPAREL,
    "Deodorant": _NOT_APPAREL,
    "Fragrance Gift Set": _NOT_APPAREL,
    "Perfume and Body Mist": _NOT_APPAREL,
    "Footballs": _NOT_APPAREL,
}

# --- attributes ---------------------------------------------------------------

COLOURS: tuple[str, ...] = (
    "black", "white", "grey", "brown", "beige", "red", "pink", "orange",
    "yellow", "green", "blue", "purple", "multi",
)

# The catalog's 44 baseColour names on the palette. "NA" has no colour.
CATALOG_COLOURS: dict[str, str | Ignored] = {
    "Black": "black", "Charcoal": "black",
    "White": "white", "Off White": "white", "Cream": "white",
    "Grey": "grey", "Grey Melange": "grey", "Silver": "grey", "Steel": "grey", "Metallic": "grey",
    "Brown": "brown", "Coffee Brown": "brown", "Tan": "brown", "Copper": "brown", "Bronze": "brown",
    "Rust": "brown", "Taupe": "brown",
    "Beige": "beige", "Khaki": "beige", "Nude": "beige", "Skin": "beige", "Peach": "beige",
    "Red": "red", "Maroon": "red", "Burgundy": "red",
    "Pink": "pink", "Magenta": "pink",
    "Orange": "orange",
    "Yellow": "yellow", "Gold": "yellow", "Mustard": "yellow",
    "Green": "green", "Olive": "green", "Sea Green": "green", "Fluorescent Green": "green", "Teal": "green",
    "Blue": "blue", "Navy Blue": "blue", "Turquoise Blue": "blue",
    "Purple": "purple", "Lavender": "purple", "Mauve": "purple",
    "Multi": "multi",
    "NA": Ignored("no colour given"),
}

# Reference sRGB values of the palette, used to name the colour of street-photo
# mask pixels (the street sets carry no colour labels). "multi" has none.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "white": (240, 240, 240), "grey": (128, 128, 128),
    "brown": (110, 70, 40), "beige": (215, 195, 160), "red": (190, 30, 40),
    "pink": (235, 140, 170), "orange": (240, 130, 40), "yellow": (235, 205, 60),
    "green": (60, 130, 60), "blue": (40, 70, 150), "purple": (110, 60, 140),
}

USAGES: tuple[str, ...] = ("casual", "formal", "sports", "ethnic")
CATALOG_USAGES: dict[str, str | Ignored] = {
    "Casual": "casual", "Smart Casual": "casual", "Travel": "casual",
    "Formal": "formal", "Sports": "sports", "Ethnic": "ethnic",
    "NA": Ignored("no usage given"), "": Ignored("no usage given"),
}

SEASONS: tuple[str, ...] = ("spring", "summer", "fall", "winter")

# Pattern is read from product titles: a title naming a pattern word is
# "patterned", one naming "solid" or "plain" is "solid", and any other title
# gives no pattern label (the heads are trained only on labelled rows).
PATTERNS: tuple[str, ...] = ("solid", "patterned")
_PATTERN_WORDS = re.compile(
    r"\b(print|printed|prints|striped|stripes|stripe|check|checks|checked|checkered|"
    r"floral|graphic|polka|dotted|camouflage|camo|paisley|embroidered|self-design|"
    r"self design|abstract|colourblocked|colorblocked|tie-dye|plaid)\b",
    re.IGNORECASE,
)
_SOLID_WORDS = re.compile(r"\b(solid|plain)\b", re.IGNORECASE)


def pattern_from_title(title: str) -> str | None:
    """Return the pattern a product title names, or None when it names none."""
    if _PATTERN_WORDS.search(title):
        return "patterned"
    if _SOLID_WORDS.search(title):
        return "solid"
    return None


CATALOG_GENDERS: dict[str, str] = {
    "Men": "men", "Women": "women", "Boys": "boys", "Girls": "girls", "Unisex": "unisex",
}
GENDER_TO_WEARER: dict[str, str | None] = {
    "men": "man", "women": "woman", "boys": "boy", "girls": "girl", "unisex": None,
}
# Garments of these classes are photographed on a model, so a catalog photo of
# one shows its wearer. Other products usually appear alone, where the
# product's gender gives no information about a person in the photo.
WORN_ON_MODEL: frozenset[str] = frozenset({"top", "bottom", "dress"})

# Attribute heads of every classifier, in output order, with their vocabularies.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "usage": USAGES,
    "pattern": PATTERNS,
    "season": SEASONS,
}


def catalog_target(article_type: str) -> CatalogType | None:
    """Return the class a catalog article type maps to, or None when ignored."""
    target = CATALOG_TYPES.get(article_type)
    if target is None:
        raise KeyError(f"article type {article_type!r} is not in the taxonomy")
    return target if isinstance(target, CatalogType) else None


def catalog_value(table: dict[str, str | Ignored], value: str) -> str | None:
    """Return the palette or usage name of a catalog value, None when ignored."""
    mapped = table.get(value)
    if mapped is None:
        raise KeyError(f"value {value!r} is not in the taxonomy")
    return mapped if isinstance(mapped, str) else None


def street_target(table: dict[str, StreetLabel | Ignored], label: str) -> StreetLabel | None:
    """Return where a street label goes, or None when the label is ignored."""
    target = table.get(label)
    if target is None:
        raise KeyError(f"street label {label!r} is not in the taxonomy")
    return target if isinstance(target, StreetLabel) else None


def index_key(fine_class: str, gender: str) -> str:
    """Name the HNSW index of one (fine class, gender) pair, e.g. ``top/tshirt/men``."""
    for high_level, fines in FINE_CLASSES.items():
        if fine_class in fines:
            return f"{high_level}/{fine_class}/{gender}"
    raise KeyError(f"fine class {fine_class!r} is not in the taxonomy")


def high_level_of_fine(fine_class: str) -> str:
    """Return the high-level class a fine class belongs to."""
    for high_level, fines in FINE_CLASSES.items():
        if fine_class in fines:
            return high_level
    raise KeyError(f"fine class {fine_class!r} is not in the taxonomy")


# Street labels whose fine class the catalog's article types can match, used
# when scoring retrieval: a result counts when its type is one of these.
STREET_LABEL_TO_ARTICLE_TYPES: dict[str, tuple[str, ...]] = {
    "pants": ("Trousers", "Jeans", "Track Pants", "Capris"),
    "blouse": ("Tops", "Shirts", "Tunics"),
    "shoes": ("Casual Shoes", "Sports Shoes", "Formal Shoes", "Flats", "Heels"),
    "boots": ("Casual Shoes", "Formal Shoes"),
    "sneakers": ("Casual Shoes", "Sports Shoes"),
    "loafers": ("Casual Shoes", "Formal Shoes"),
    "glasses": ("Sunglasses",),
    "hat": ("Caps", "Hat"),
    "bag": ("Handbags", "Backpacks", "Clutches", "Laptop Bag", "Messenger Bag", "Duffel Bag"),
}


def relevant_article_types(street_label: str) -> frozenset[str]:
    """Return the catalog article types that match a street item's label.

    A label that names one fine class matches every article type of that fine
    class; an ambiguous label matches the types listed in
    ``STREET_LABEL_TO_ARTICLE_TYPES``. Items drawn with several labels
    ("blazer+blouse") match the types of any of them.
    """
    types: set[str] = set()
    for label in street_label.split("+"):
        if label in STREET_LABEL_TO_ARTICLE_TYPES:
            types.update(STREET_LABEL_TO_ARTICLE_TYPES[label])
            continue
        target = CCP_LABELS.get(label) or COLORFUL_LABELS.get(label)
        if isinstance(target, StreetLabel) and target.fine is not None:
            types.update(
                name for name, mapped in CATALOG_TYPES.items()
                if isinstance(mapped, CatalogType) and mapped.high_level == target.high_level and mapped.fine == target.fine
            )
    return frozenset(types)
