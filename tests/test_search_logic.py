"""The gateway's pure search logic: item selection, index keys, merging."""

import numpy as np
import pytest
from pydantic import ValidationError

from services.gateway.catalog import IndexMetadata
from services.gateway.search import Item, SearchOptions, keys_for_item, merge_hits, suppress_overlapping_classes
from services.gateway.settings import GatewaySettings


def make_index(keys, products=None):
    routing = {"created": "t", "keys": {key: {"shard": "shard-0"} for key in keys}}
    return IndexMetadata(routing, products or {})


def classified(label, fine_probabilities, genders=("women", "unisex")):
    item = Item(np.array([0, 0, 10, 10], np.float32), label, 0.9, genders=genders)
    item.classification = {"fine_classes": [{"name": n, "probability": p} for n, p in fine_probabilities]}
    return item


def test_overlapping_classes_keep_best():
    top = Item(np.array([10, 10, 100, 200], np.float32), "top", 0.7)
    suit = Item(np.array([12, 10, 100, 198], np.float32), "suit", 0.4)
    bag = Item(np.array([150, 150, 200, 220], np.float32), "bag", 0.5)
    kept = suppress_overlapping_classes([top, bag, suit], 0.7)
    assert [item.label for item in kept] == ["top", "bag"]


def test_keys_cover_top_classes_and_genders():
    settings = GatewaySettings(top_fine_classes=2, fine_class_floor=0.15)
    index = make_index(["top/shirt/women", "top/shirt/unisex", "top/tshirt/women"])
    item = classified("top", [("shirt", 0.6), ("tshirt", 0.3), ("top", 0.1)])
    assert keys_for_item(item, index, settings) == ["top/shirt/women", "top/shirt/unisex", "top/tshirt/women"]


def test_keys_skip_second_class_below_floor():
    settings = GatewaySettings(top_fine_classes=2, fine_class_floor=0.15)
    index = make_index(["top/shirt/women", "top/tshirt/women"])
    item = classified("top", [("shirt", 0.9), ("tshirt", 0.05)])
    assert keys_for_item(item, index, settings) == ["top/shirt/women"]


def test_keys_fall_back_to_lower_ranked_class():
    settings = GatewaySettings(top_fine_classes=2, fine_class_floor=0.15)
    index = make_index(["top/kurta/women"])
    item = classified("top", [("shirt", 0.5), ("tshirt", 0.3), ("kurta", 0.1), ("top", 0.05)])
    assert keys_for_item(item, index, settings) == ["top/kurta/women"]


def test_merge_sorts_and_drops_repeats():
    products = {
        "1": {"title": "Red Shirt", "fine_class": "shirt"},
        "2": {"title": "Blue Shirt", "fine_class": "shirt"},
        "3": {"title": "Blue  shirt", "fine_class": "shirt"},
    }
    hits = [
        {"product_id": "2", "distance": 0.2, "key": "a"},
        {"product_id": "1", "distance": 0.1, "key": "a"},
        {"product_id": "1", "distance": 0.1, "key": "b"},
        {"product_id": "3", "distance": 0.2, "key": "b"},
        {"product_id": "unknown", "distance": 0.05, "key": "b"},
    ]
    merged = merge_hits(hits, make_index([], products), limit=10)
    assert [result["product_id"] for result in merged] == ["1", "2"]
    assert merged[0]["distance"] <= merged[1]["distance"]


@pytest.mark.parametrize("options, word", [
    ({"results_per_item": 0}, "results_per_item"),
    ({"classes": ["hat"]}, "unknown classes"),
    ({"region": [1, 2, 3]}, "got 3 numbers"),
    ({"region": [10, 10, 5, 20]}, "x2 > x1"),
    ({"region_class": "top"}, "without a region"),
    ({"gender": "aliens"}, "gender"),
    ({"colour": "red"}, "extra"),
])
def test_invalid_options_rejected(options, word):
    with pytest.raises(ValidationError) as error:
        SearchOptions.model_validate(options)
    assert word in str(error.value)


def test_keys_widen_gender_before_fine_class():
    settings = GatewaySettings(top_fine_classes=2, fine_class_floor=0.15)
    index = make_index(["bottom/skirt/women", "bottom/leggings/men"])
    item = classified("bottom", [("skirt", 0.98), ("leggings", 0.01)], genders=("men", "unisex"))
    assert keys_for_item(item, index, settings) == ["bottom/skirt/women"]


def test_nested_box_of_same_class_dropped():
    from services.gateway.search import suppress_nested_same_class

    pair = Item(np.array([100, 700, 300, 800], np.float32), "footwear", 0.6)
    inner = Item(np.array([110, 710, 190, 790], np.float32), "footwear", 0.5)
    other_shoe = Item(np.array([400, 700, 480, 790], np.float32), "footwear", 0.4)
    bag_inside = Item(np.array([120, 720, 180, 780], np.float32), "bag", 0.45)
    kept = suppress_nested_same_class([pair, inner, bag_inside, other_shoe])
    assert kept == [pair, bag_inside, other_shoe]
