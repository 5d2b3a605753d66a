"""Search a few street photos through the running fleet, print what was found,
and draw a result sheet: each photo with its boxes beside the top results of
each item.

    python scripts/demo.py --gateway http://127.0.0.1:8000 --out var/demo/result_sheet.png

The photos are held-out clothing-co-parsing photos, which no model saw in training.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import datasets  # noqa: E402

THUMB = 96
PHOTO_HEIGHT = 3 * THUMB + 40
RESULTS_SHOWN = 4
ITEMS_SHOWN = 5
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


def search(client: httpx.Client, gateway: str, path: Path) -> dict:
    with open(path, "rb") as handle:
        response = client.post(f"{gateway}/search", files={"image": (path.name, handle, "image/jpeg")}, data={"results_per_item": "5"})
    response.raise_for_status()
    return response.json()


def print_summary(path: Path, answer: dict) -> None:
    total = answer["timings_ms"].get("total", 0)
    print(f"\n{path.name}: {len(answer['items'])} items in {total:.0f} ms" + (f", degraded: {answer['degraded']}" if answer["degraded"] else ""))
    for number, item in enumerate(answer["items"], start=1):
        fine = item["fine_classes"][0]["name"] if item["fine_classes"] else "-"
        colour = item["attributes"].get("colour", {}).get("value", "-")
        print(f"  {number}. {item['class']:<9} score {item['score']:.2f}  type {fine:<13} colour {colour:<7} "
              f"genders {'/'.join(item['genders_searched'])}")
        for result in item["results"][:3]:
            print(f"       {result['distance']:.3f}  {result['title']}")
        if item.get("note"):
            print(f"       ({item['note']})")


def draw_row(client: httpx.Client, gateway: str, path: Path, answer: dict) -> Image.Image:
    photo = Image.open(path).convert("RGB")
    scale = PHOTO_HEIGHT / photo.height
    shown = photo.resize((int(photo.width * scale), PHOTO_HEIGHT))
    draw = ImageDraw.Draw(shown)
    items = [i for i in answer["items"] if i["results"]][:ITEMS_SHOWN]
    for number, item in enumerate(items, start=1):
        x1, y1, x2, y2 = (v * scale for v in item["box"])
        colour = COLOURS[(number - 1) % len(COLOURS)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=3)
        draw.text((x1 + 3, y1 + 2), f"{number} {item['class']}", fill=colour)

    columns = 1 + max(1, len(items))
    row = Image.new("RGB", (shown.width + 10 + (columns - 1) * (RESULTS_SHOWN // 2 * THUMB + 10), PHOTO_HEIGHT), "white")
    row.paste(shown, (0, 0))
    for column, item in enumerate(items):
        left = shown.width + 10 + column * (RESULTS_SHOWN // 2 * THUMB + 10)
        label = ImageDraw.Draw(row)
        label.text((left, 2), f"{column + 1} {item['class']}: {item['fine_classes'][0]['name']}", fill=COLOURS[column % len(COLOURS)])
        for index, result in enumerate(item["results"][:RESULTS_SHOWN]):
            response = client.get(f"{gateway}{result['image_url']}")
            if response.status_code != 200:
                continue
            thumb = Image.open(io.BytesIO(response.content)).convert("RGB").resize((THUMB, THUMB))
            x = left + (index % 2) * THUMB
            y = 16 + (index // 2) * (THUMB + 14)
            row.paste(thumb, (x, y))
            label.text((x + 2, y + THUMB), f"{result['distance']:.3f}", fill="black")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--photos", type=int, default=6, help="how many held-out street photos to search")
    parser.add_argument("--out", type=Path, default=Path("var/demo/result_sheet.png"), help="result sheet to write")
    args = parser.parse_args()

    root = datasets.datasets_dir()
    photo_ids = sorted(datasets.heldout_ids(datasets.CCP))[: args.photos]
    paths = [root / datasets.CCP / "photos" / f"{photo_id}.jpg" for photo_id in photo_ids]
    rows = []
    with httpx.Client(timeout=60) as client:
        for path in paths:
            answer = search(client, args.gateway, path)
            print_summary(path, answer)
            rows.append(draw_row(client, args.gateway, path, answer))
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height + 8 for r in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + 8
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"\nresult sheet: {args.out}")


if __name__ == "__main__":
    main()
