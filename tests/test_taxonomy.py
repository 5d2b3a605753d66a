"""Every label of the three bundled datasets maps to a class or is ignored with a reason."""

import csv

from shared import datasets, taxonomy


def test_ccp_labels_all_mapped():
    names = datasets.ccp_label_names(datasets.datasets_dir())
    assert len(names) == 59
    missing = [name for name in names if name not in taxonomy.CCP_LABELS]
    assert missing == []


def test_colorful_labels_all_mapped():
    folder = datasets.datasets_dir() / datasets.COLORFUL / "Annotations"
    labels = set()
    for path in sorted(folder.glob("*.xml")):
        labels.update(label for label, _ in datasets.parse_voc(path)[2])
    assert len(labels) == 10
    assert sorted(labels - set(taxonomy.COLORFUL_LABELS)) == []


def test_catalog_values_all_mapped():
    with open(datasets.datasets_dir() / datasets.CATALOG / "styles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["articleType"] for r in rows} - set(taxonomy.CATALOG_TYPES)) == []
    assert sorted({r["baseColour"] for r in rows} - set(taxonomy.CATALOG_COLOURS)) == []
    assert sorted({r["usage"] for r in rows} - set(taxonomy.CATALOG_USAGES)) == []
    assert sorted({r["gender"] for r in rows} - set(taxonomy.CATALOG_GENDERS)) == []


def test_mapped_targets_are_known_classes():
    for table in (taxonomy.CCP_LABELS, taxonomy.COLORFUL_LABELS):
        for label, target in table.items():
            if isinstance(target, taxonomy.StreetLabel):
                assert target.high_level in taxonomy.HIGH_LEVEL_CLASSES, label
                assert target.fine is None or target.fine in taxonomy.FINE_CLASSES[target.high_level], label
            else:
                assert target.reason, label
    for article_type, target in taxonomy.CATALOG_TYPES.items():
        if isinstance(target, taxonomy.CatalogType):
            assert target.fine in taxonomy.FINE_CLASSES[target.high_level], article_type
    for name, colour in taxonomy.CATALOG_COLOURS.items():
        assert isinstance(colour, taxonomy.Ignored) or colour in taxonomy.COLOURS, name


def test_every_fine_class_has_catalog_products():
    covered = {(t.high_level, t.fine) for t in taxonomy.CATALOG_TYPES.values() if isinstance(t, taxonomy.CatalogType)}
    for high_level, fines in taxonomy.FINE_CLASSES.items():
        for fine in fines:
            assert (high_level, fine) in covered


def test_pattern_from_title():
    assert taxonomy.pattern_from_title("Turtle Check Men Navy Blue Shirt") == "patterned"
    assert taxonomy.pattern_from_title("Manchester United Men Solid Black Track Pants") == "solid"
    assert taxonomy.pattern_from_title("Fila Men Cush Flex Black Slippers") is None
