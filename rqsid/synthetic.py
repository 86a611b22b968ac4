"""A realistic synthetic catalog and user histories, so the whole pipeline runs on a machine without data.

Every item is labelled synthetic twice: its `extra` text starts with "synthetic demo item" and the table's
schema metadata carries `rqsid.synthetic=true`. The shape mimics a real shop: a 3-level category tree,
Zipf-like popularity of categories and of items, brands per top category, titles composed from brand,
attribute and category words, and users who mostly stay within a few categories (so a next-item model
has something to learn). Deterministic under `seed`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rqsid import RqsidError
from rqsid.schema import CATALOG_SCHEMA, INTERACTIONS_SCHEMA

SYNTHETIC_KEY = b"rqsid.synthetic"
SYNTHETIC_MARK = "synthetic demo item"

# top category -> second level -> leaves (product nouns). Plural names read like shop navigation.
TAXONOMY: dict[str, dict[str, list[str]]] = {
    "Kitchen & Dining": {
        "Cookware": ["Frying Pans", "Saucepans", "Dutch Ovens", "Woks", "Stock Pots"],
        "Cutlery": ["Chef Knives", "Paring Knives", "Knife Sets", "Knife Sharpeners"],
        "Small Appliances": ["Blenders", "Toasters", "Coffee Makers", "Electric Kettles", "Air Fryers"],
        "Tableware": ["Dinner Plates", "Coffee Mugs", "Wine Glasses", "Serving Bowls"],
    },
    "Beauty & Personal Care": {
        "Skin Care": ["Face Moisturizers", "Cleansers", "Serums", "Sunscreens", "Face Masks"],
        "Hair Care": ["Shampoos", "Conditioners", "Hair Oils", "Hair Dryers", "Flat Irons"],
        "Makeup": ["Lipsticks", "Mascaras", "Foundations", "Eyeshadow Palettes", "Nail Polish"],
        "Fragrance": ["Eau de Parfum", "Body Mists", "Colognes"],
    },
    "Sports & Outdoors": {
        "Camping": ["Tents", "Sleeping Bags", "Camping Stoves", "Headlamps"],
        "Fitness": ["Yoga Mats", "Dumbbells", "Resistance Bands", "Jump Ropes", "Foam Rollers"],
        "Cycling": ["Bike Helmets", "Bike Lights", "Bike Locks", "Cycling Gloves"],
        "Water Sports": ["Swim Goggles", "Snorkel Sets", "Dry Bags"],
    },
    "Electronics": {
        "Audio": ["Wireless Earbuds", "Headphones", "Bluetooth Speakers", "Soundbars"],
        "Computer Accessories": ["Keyboards", "Computer Mice", "USB Hubs", "Laptop Stands", "Webcams"],
        "Power": ["Power Banks", "Wall Chargers", "Charging Cables", "Surge Protectors"],
        "Smart Home": ["Smart Plugs", "Smart Bulbs", "Security Cameras", "Video Doorbells"],
    },
    "Home & Garden": {
        "Gardening": ["Pruning Shears", "Garden Hoses", "Planters", "Seed Kits", "Watering Cans"],
        "Bedding": ["Sheet Sets", "Pillows", "Duvet Covers", "Weighted Blankets"],
        "Lighting": ["Desk Lamps", "Floor Lamps", "String Lights", "Night Lights"],
        "Storage": ["Storage Bins", "Shelf Organizers", "Vacuum Storage Bags"],
    },
    "Pet Supplies": {
        "Dogs": ["Dog Food", "Dog Leashes", "Dog Beds", "Chew Toys"],
        "Cats": ["Cat Litter", "Scratching Posts", "Cat Treats", "Cat Toys"],
        "Aquarium": ["Aquarium Filters", "Fish Food", "Aquarium Heaters"],
    },
    "Office Products": {
        "Writing": ["Gel Pens", "Fountain Pens", "Highlighters", "Mechanical Pencils"],
        "Paper": ["Notebooks", "Sticky Notes", "Printer Paper", "Planners"],
        "Desk Organization": ["Desk Organizers", "File Folders", "Label Makers"],
    },
    "Toys & Games": {
        "Building Toys": ["Building Blocks", "Magnetic Tiles", "Model Kits"],
        "Games": ["Board Games", "Card Games", "Jigsaw Puzzles"],
        "Outdoor Play": ["Water Guns", "Kites", "Sidewalk Chalk", "Bubble Machines"],
    },
}

ADJECTIVES = ["Premium", "Compact", "Professional", "Lightweight", "Heavy Duty", "Classic", "Ultra Slim",
              "Portable", "Deluxe", "Eco-Friendly", "Adjustable", "Waterproof", "Ergonomic", "Mini", "Large"]
COLORS = ["Black", "White", "Silver", "Navy Blue", "Red", "Forest Green", "Rose Gold", "Grey", "Beige", "Teal"]
MATERIALS = ["Stainless Steel", "Bamboo", "Cotton", "Silicone", "Ceramic", "Aluminum", "Glass", "Leather",
             "Recycled Plastic", "Wool", "Cast Iron", "Natural"]
PACKS = ["Pack of 2", "Set of 3", "Pack of 6", "Single", "Value Pack", "Travel Size", "Family Size"]
USES = ["everyday use", "travel", "gifting", "small spaces", "beginners", "professionals", "outdoor use", "kids"]
SYLLABLES = ["ka", "lo", "ve", "ri", "za", "no", "ta", "mi", "sol", "bri", "vo", "lu", "den", "ar", "qu", "ex",
             "on", "tel", "ra", "ny", "fi", "mo", "zen", "pa"]


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Weights proportional to rank^-exponent, ranks shuffled (so popularity is not tied to order)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(weights / weights.sum())


def _leaves() -> tuple[list[list[str]], np.ndarray]:
    """Category paths of every leaf, and the index of each leaf's top category."""
    paths, tops = [], []
    for t, (top, mids) in enumerate(TAXONOMY.items()):
        for mid, leaves in mids.items():
            for leaf in leaves:
                paths.append([top, mid, leaf])
                tops.append(t)
    return paths, np.asarray(tops)


def _brand_names(n: int, rng: np.random.Generator) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        k = rng.integers(2, 4)
        names.add("".join(rng.choice(SYLLABLES, size=k)).capitalize())
    return sorted(names, key=lambda s: (len(s), s))


def _pick(words: list[str], rng: np.random.Generator, n: int) -> np.ndarray:
    return np.asarray(words, dtype=object)[rng.integers(0, len(words), size=n)]


def make_demo_catalog(
    n_items: int = 3000,
    n_users: int | None = None,
    seed: int = 0,
    brands_per_top: int = 12,
    mean_history: float = 8.0,
    min_history: int = 5,
) -> tuple[pa.Table, pa.Table]:
    """(catalog, interactions): a synthetic shop of `n_items` items and `n_users` users (default 2 per item)."""
    if n_items < 10:
        raise RqsidError(f"demo catalog needs at least 10 items, got {n_items}")
    n_users = 2 * n_items if n_users is None else n_users
    if n_users < 1:
        raise RqsidError(f"demo catalog needs at least one user, got {n_users}")
    rng = np.random.default_rng(seed)
    catalog, item_leaf, item_weight = _items(n_items, brands_per_top, rng)
    interactions = _histories(item_leaf, item_weight, n_users, mean_history, min_history, rng)
    return catalog, interactions


def _items(n_items: int, brands_per_top: int, rng: np.random.Generator):
    paths, leaf_top = _leaves()
    n_leaves = len(paths)
    leaf_weight = _zipf_weights(n_leaves, 0.8, rng)
    # Every leaf gets an item when there are enough items; the rest follow category popularity.
    base = np.arange(n_items) % n_leaves if n_items >= n_leaves else rng.choice(n_leaves, n_items, replace=False)
    extra = rng.choice(n_leaves, size=max(n_items - n_leaves, 0), p=leaf_weight)
    item_leaf = np.sort(np.concatenate([base[: min(n_items, n_leaves)], extra]))
    brands = np.asarray(_brand_names(brands_per_top * len(TAXONOMY), rng), dtype=object).reshape(len(TAXONOMY), -1)
    brand_weight = _zipf_weights(brands_per_top, 1.1, rng)
    item_brand = brands[leaf_top[item_leaf], rng.choice(brands_per_top, size=n_items, p=brand_weight)]

    adjective, color, material = _pick(ADJECTIVES, rng, n_items), _pick(COLORS, rng, n_items), _pick(MATERIALS, rng, n_items)
    pack, use = _pick(PACKS, rng, n_items), _pick(USES, rng, n_items)
    model = rng.integers(100, 1000, size=n_items)
    titles, descriptions, categories = [], [], []
    for i in range(n_items):  # string assembly per item: cheap next to embedding it
        top, mid, leaf = paths[item_leaf[i]]
        titles.append(f"{item_brand[i]} {adjective[i]} {material[i]} {leaf} {model[i]}, {color[i]}, {pack[i]}")
        descriptions.append(f"For {use[i]}.")  # short: demo texts must embed fast
        categories.append([top, mid, leaf])
    extra = [SYNTHETIC_MARK] * n_items
    ids = [f"demo-{i:06d}" for i in range(n_items)]
    order = rng.permutation(n_items)  # items not grouped by category in the file
    catalog = pa.table(
        {
            "item_id": [ids[i] for i in range(n_items)],
            "title": [titles[i] for i in order],
            "brand": [str(item_brand[i]) for i in order],
            "categories": [categories[i] for i in order],
            "description": [descriptions[i] for i in order],
            "extra": [extra[i] for i in order],
        },
        schema=CATALOG_SCHEMA,
    ).replace_schema_metadata({SYNTHETIC_KEY: b"true"})
    item_weight = _zipf_weights(n_items, 0.6, rng)[order]
    return catalog, item_leaf[order], item_weight


class _LeafSampler:
    """Draws an item of a given leaf by item popularity, vectorised over many requests."""

    def __init__(self, item_leaf: np.ndarray, item_weight: np.ndarray):
        self.order = np.argsort(item_leaf, kind="stable")
        leaves = item_leaf[self.order]
        self.cum = np.cumsum(item_weight[self.order])
        n_leaves = int(item_leaf.max()) + 1
        self.start = np.searchsorted(leaves, np.arange(n_leaves), side="left")
        self.end = np.searchsorted(leaves, np.arange(n_leaves), side="right")
        self.leaf_weight = np.bincount(item_leaf, weights=item_weight, minlength=n_leaves)

    def draw(self, leaves: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo = np.where(self.start[leaves] > 0, self.cum[np.maximum(self.start[leaves] - 1, 0)], 0.0)
        hi = self.cum[self.end[leaves] - 1]
        pos = np.searchsorted(self.cum, lo + rng.random(len(leaves)) * (hi - lo), side="right")
        return self.order[np.clip(pos, self.start[leaves], self.end[leaves] - 1)]


def _histories(item_leaf, item_weight, n_users, mean_history, min_history, rng) -> pa.Table:
    """Each user has 1-3 favourite leaves (by leaf popularity), mostly within one top category; each step
    stays in the previous item's leaf (60%), moves to another favourite (30%) or wanders anywhere (10%)."""
    sampler = _LeafSampler(item_leaf, item_weight)
    leaf_p = sampler.leaf_weight / sampler.leaf_weight.sum()
    n_fav = 3
    favourites = rng.choice(len(leaf_p), size=(n_users, n_fav), p=leaf_p)
    _, leaf_top = _leaves()
    same_top = leaf_top[favourites[:, 1:]] == leaf_top[favourites[:, :1]]
    # Favourites outside the first one's top category are mostly redrawn inside it (users are focused).
    for j in range(1, n_fav):
        redraw = ~same_top[:, j - 1] & (rng.random(n_users) < 0.8)
        favourites[redraw, j] = favourites[redraw, 0]
    lengths = min_history + rng.geometric(1.0 / max(mean_history - min_history + 1, 1.0), size=n_users) - 1
    lengths = np.minimum(lengths, 50)
    max_len = int(lengths.max())
    items = np.full((n_users, max_len), -1, dtype=np.int64)
    leaf = favourites[:, 0].copy()
    for t in range(max_len):  # vectorised over users, one step at a time
        move = rng.random(n_users)
        other_fav = favourites[np.arange(n_users), rng.integers(0, n_fav, n_users)]
        anywhere = rng.choice(len(leaf_p), size=n_users, p=leaf_p)
        leaf = np.where(move < 0.6, leaf, np.where(move < 0.9, other_fav, anywhere))
        items[:, t] = sampler.draw(leaf, rng)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    users = np.repeat(np.arange(n_users), lengths)
    seq = np.nonzero(mask)[1].astype(np.int32)
    n = int(lengths.sum())
    return pa.table(
        {
            "user_id": pa.array([f"u{u:06d}" for u in users], pa.string()),
            "item_id": pa.array([f"demo-{i:06d}" for i in items[mask]], pa.string()),
            "seq": pa.array(seq, pa.int32()),
            "timestamp": pa.nulls(n, pa.int64()),
            "query": pa.nulls(n, pa.string()),
        },
        schema=INTERACTIONS_SCHEMA,
    ).replace_schema_metadata({SYNTHETIC_KEY: b"true"})


def is_synthetic(table: pa.Table) -> bool:
    return (table.schema.metadata or {}).get(SYNTHETIC_KEY) == b"true"
