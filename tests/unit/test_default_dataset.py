"""The embedded default data set meets its brief: >= 20 intents, >= 60 varied utterances each."""

from __future__ import annotations

from collections import Counter

from edgekit.data import load_dataset, load_splits
from edgekit.datasets import dataset_dir, split_path

REQUIRED = {
    "order_status", "return_item", "refund_status", "store_hours", "store_location", "product_availability",
    "price_check", "size_guide", "payment_problem", "coupon_promo", "loyalty_points", "gift_card",
    "delivery_options", "talk_to_human", "out_of_scope",
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_splits_load_and_cover_the_intents():
    train, val, test = load_splits(split_path("train"), split_path("validation"), split_path("test"))
    labels = set(train.labels)
    assert len(labels) >= 20
    assert REQUIRED <= labels
    counts = Counter(train.labels) + Counter(val.labels) + Counter(test.labels)
    assert min(counts.values()) >= 60, counts.most_common()[-3:]
    assert set(val.labels) == set(test.labels) == labels


def test_no_text_in_two_places():
    seen: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for text in load_dataset(split_path(split)).texts:
            key = _norm(text)
            assert key not in seen, f"{text!r} in {split} and {seen[key]}"
            seen[key] = split


def test_variety_not_one_template():
    ds = load_dataset(split_path("train"))
    lengths = [len(t.split()) for t in ds.texts]
    assert min(lengths) <= 2 and max(lengths) >= 25
    first_words = Counter(t.split()[0].lower() for t in ds.texts)
    assert first_words.most_common(1)[0][1] / len(ds) < 0.15  # no dominant opening
    assert sum(any(c.isdigit() for c in t) for t in ds.texts) >= 50  # order numbers, prices, sizes


def test_data_card_ships():
    card = (dataset_dir() / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "License" in card or "license" in card
